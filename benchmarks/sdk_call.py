"""`python -m benchmarks.sdk_call`: CPU per Chat Completions call through the `openai` SDK.

The provider call is the largest single item of a `/v1/chat` request, so this isolates it:
the same non-streaming call (a RAG-sized prompt), made `-n` times from 8 concurrent tasks
against the provider emulator (its own process, zero latency), in four ways, interleaved in
rounds so each sees the same machine:

- `httpx2+model`: the SDK's default transport (httpx2/httpcore2), answer parsed into the SDK's
  pydantic `ChatCompletion` (what Bulkhead did before);
- `aiohttp+model`: the SDK's `DefaultAioHttpClient` (its `aiohttp` extra), same parsing;
- `aiohttp+msgspec`: what `OpenAIProvider.complete` does now: aiohttp, the body sent as
  msgspec-encoded bytes, the answer read as bytes and decoded by msgspec;
- `bare aiohttp`: the same request with aiohttp alone and `json.loads`, no SDK: the floor.

Reported: CPU milliseconds of this process per call (`time.process_time`), the figure that
decides how many chat requests one core serves; wall-clock calls per second for context.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx2
import msgspec
import openai
import uvloop
from openai._types import RequestOptions
from openai.types.chat import ChatCompletion

from app.llm.openai_chat import _decode_completion
from benchmarks.llm import EmulatorProcess

KEY = "sk-bench-0123456789abcdef"
BODY: dict[str, object] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Answer from the passages. " + "passage text " * 200},
        {"role": "user", "content": "How much is the hotel limit?"},
    ],
    "max_completion_tokens": 256,
}
OPTIONS: RequestOptions = {
    "timeout": httpx2.Timeout(10.0, connect=2.0),
    "security": {"bearer_auth": True},
}
TASKS = 8

Call = Callable[[], Awaitable[object]]


def _sdk(pool: httpx2.AsyncClient, base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0, http_client=pool)


async def _measure(call: Call, n: int) -> tuple[float, float]:
    """(CPU ms per call, calls per second) for `n` calls from `TASKS` concurrent tasks."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n // TASKS) for _ in range(TASKS)))
    done = (n // TASKS) * TASKS
    return 1000 * (time.process_time() - cpu) / done, done / (time.perf_counter() - wall)


async def run(base_url: str, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Every variant `rounds` times, interleaved, after a warm-up of each."""
    httpx_pool = openai.DefaultAsyncHttpxClient()
    aio_pool = openai.DefaultAioHttpClient()
    session = aiohttp.ClientSession()
    by_httpx, by_aiohttp = _sdk(httpx_pool, base_url), _sdk(aio_pool, base_url)
    headers = {"Authorization": f"Bearer {KEY}"}

    async def bare() -> object:
        async with session.post(f"{base_url}/chat/completions", json=BODY, headers=headers) as r:
            return json.loads(await r.read())

    async def msgspec_call() -> object:
        raw = await by_aiohttp.post(
            "/chat/completions",
            content=msgspec.json.encode(BODY),
            cast_to=bytes,
            options=OPTIONS,
        )
        return _decode_completion(raw)

    variants: dict[str, Call] = {
        "httpx2+model": lambda: by_httpx.post(
            "/chat/completions",
            body=BODY,
            cast_to=ChatCompletion,
            options=OPTIONS,
        ),
        "aiohttp+model": lambda: by_aiohttp.post(
            "/chat/completions",
            body=BODY,
            cast_to=ChatCompletion,
            options=OPTIONS,
        ),
        "aiohttp+msgspec": msgspec_call,
        "bare aiohttp": bare,
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        for call in variants.values():
            await _measure(call, 200)
        for round_no in range(rounds):
            for name, call in variants.items():
                results[name].append(await _measure(call, n))
            print(f"  round {round_no + 1}/{rounds} done", flush=True)
    finally:
        await httpx_pool.aclose()
        await aio_pool.aclose()
        await session.close()
    return results


def main(argv: list[str] | None = None) -> None:
    """Start the emulator, measure, print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sdk_call", description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="calls per variant per round (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    args = parser.parse_args(argv)
    if args.n < TASKS or args.rounds < 1:
        parser.error(f"-n must be at least {TASKS}, --rounds at least 1")
    emulator = EmulatorProcess()
    try:
        results = uvloop.run(run(f"{emulator.url}/v1", args.n, args.rounds))
    finally:
        emulator.stop()
    baseline = min(cpu for cpu, _ in results["httpx2+model"])
    columns = ("cpu ms/call (best)", "median", "calls/s", "vs httpx2")
    print(f"\n{'variant':18} {columns[0]:>19} {columns[1]:>8} {columns[2]:>9} {columns[3]:>10}")
    for name, runs in results.items():
        cpus = sorted(cpu for cpu, _ in runs)
        rate = sorted(r for _, r in runs)[len(runs) // 2]
        print(
            f"{name:18} {cpus[0]:19.3f} {cpus[len(cpus) // 2]:8.3f} {rate:9,.0f}"
            f" {cpus[0] / baseline:9.2f}x"
        )


if __name__ == "__main__":
    main()
