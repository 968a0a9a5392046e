"""Time to first token of a streamed answer, one request at a time.

`/v1/chat` with `"stream": true` through Bulkhead (first `event: delta`) next to the same
streamed Chat Completions call sent straight to the emulator (first chunk with content), so the
difference is what Bulkhead adds before the first word reaches a user: authentication, rate
limit, retrieval, redaction, the provider call's set-up and the SSE framing.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from benchmarks.targets import Target


@dataclass(frozen=True, slots=True)
class FirstToken:
    """Milliseconds from sending a request to its first content, over `requests` requests."""

    name: str
    requests: int
    p50_ms: float
    p99_ms: float


def _bulkhead_delta(line: str) -> bool:
    return line == "event: delta"


def _emulator_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


def _streamed(target: Target) -> tuple[list[str], Callable[[str], bool]]:
    bodies = [json.dumps(json.loads(body) | {"stream": True}) for body in target.bodies]
    return bodies, (_bulkhead_delta if target.server == "bulkhead" else _emulator_content)


def measure(base_url: str, target: Target, *, requests: int, warmup: int = 20) -> FirstToken:
    """Stream `target`'s bodies (with `"stream": true`) one at a time; time the first content.

    Raises:
        RuntimeError: A response was not 200 or ended without content.
    """
    bodies, first = _streamed(target)
    tokens = target.tokens or [""]
    samples: list[float] = []
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for n in range(warmup + requests):
            headers = {"content-type": "application/json"}
            if tokens[n % len(tokens)]:
                headers["authorization"] = f"Bearer {tokens[n % len(tokens)]}"
            started = time.perf_counter()
            elapsed = None
            with client.stream(
                target.method, target.path, content=bodies[n % len(bodies)], headers=headers
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise RuntimeError(f"{target.name}: {response.status_code} {response.text}")
                for line in response.iter_lines():
                    if elapsed is None and first(line):
                        elapsed = time.perf_counter() - started
            if elapsed is None:
                raise RuntimeError(f"{target.name}: a stream ended without content")
            if n >= warmup:
                samples.append(elapsed * 1000)
    ordered = sorted(samples)
    return FirstToken(
        name=f"{target.name} stream@1",
        requests=len(samples),
        p50_ms=statistics.median(ordered),
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    )
