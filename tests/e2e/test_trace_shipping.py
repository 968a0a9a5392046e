"""Traces leave Bulkhead as OTLP/HTTP protobuf and arrive as the tree an SRE expects.

A small OTLP/HTTP receiver runs inside the test (loopback `http.server`, decoding
`ExportTraceServiceRequest` from opentelemetry-proto): it stands in for the collector, whose
binary is not available here. Bulkhead runs as `bulkhead dev` with
`OTEL_EXPORTER_OTLP_ENDPOINT` pointing at it. One chat fails over once: the emulator answers
500 to the first chain entry (OpenAI), and Anthropic answers.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.stack import DevStack
from tests.provider_emulator import EmulatorServer
from tests.servers import free_port

pytestmark = pytest.mark.e2e

MANIFEST = """\
id: {tenant}
name: Traced Corp
identity:
  issuers:
    - issuer: urn:bulkhead:dev-issuer
      audience: bulkhead
      tenant_claim: tenant
      tenant_claim_value: {tenant}
llm:
  chain:
    - provider: openai
      model: gpt-4o-mini@500
      secret: tenants/{tenant}/openai
      base_url: {emulator}/v1
    - provider: anthropic
      model: claude-haiku-4-5
      secret: tenants/{tenant}/anthropic
      base_url: {emulator}
"""


class OtlpReceiver:
    """Collects every OTLP/HTTP export body (raw, and decoded for traces)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(self.path, self.headers.get("Content-Type", ""), body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, path: str, content_type: str, body: bytes) -> None:
        with self._lock:
            self.bodies.append(body)
            if path != "/v1/traces":
                return
            assert content_type == "application/x-protobuf"
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)

    def trace(self, trace_id: str) -> list[tuple[dict[str, Any], Span]]:
        with self._lock:
            return [(r, s) for r, s in self.spans if s.trace_id.hex() == trace_id]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class Node:
    span: Span

    @property
    def attributes(self) -> dict[str, Any]:
        return {a.key: _value(a.value) for a in self.span.attributes}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    otlp._thread.start()
    yield otlp
    otlp.server.shutdown()
    otlp.server.server_close()


def _traced_stack(
    server_url: str, tmp_path: Path, emulator: EmulatorServer, receiver: OtlpReceiver, **env: str
) -> tuple[DevStack, str, dict[str, str]]:
    """`bulkhead dev` exporting to `receiver`, and a tenant whose first chain entry fails.

    Returns the stack (not started), the tenant id and its provider keys.
    """
    stack = DevStack(
        server_url,
        tmp_path,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "BULKHEAD_LLM__MAX_RETRIES": "0",  # one failed attempt, then failover
            **env,
        },
    )
    tenant = f"traced-{uuid.uuid4().hex[:6]}"
    keys = {"openai": f"sk-trace-{uuid.uuid4().hex}", "anthropic": f"sk-ant-{uuid.uuid4().hex}"}
    manifest = stack.tenants_dir / f"{tenant}.yaml"
    manifest.write_text(MANIFEST.format(tenant=tenant, emulator=emulator.url))
    assert stack.cli("migrate").returncode == 0
    assert stack.cli("tenants", "apply", str(manifest)).returncode == 0
    for name, key in keys.items():
        stored = stack.cli("secrets", "put", f"tenants/{tenant}/{name}", stdin=key)
        assert stored.returncode == 0, stored.stderr
    return stack, tenant, keys


def _wait_for_span(receiver: OtlpReceiver, trace_id: str, found: Callable[[Span], bool]) -> None:
    deadline = time.monotonic() + 15
    while not any(found(s) for _, s in receiver.trace(trace_id)):
        assert time.monotonic() < deadline, f"the span never arrived (trace {trace_id})"
        time.sleep(0.05)


def test_a_failover_chat_arrives_as_one_attributed_tree_without_secrets(
    server_url: str, tmp_path: Path, emulator: EmulatorServer, receiver: OtlpReceiver
) -> None:
    stack, tenant, keys = _traced_stack(server_url, tmp_path, emulator, receiver)
    try:
        stack.start()
        token = stack.cli(
            "token", "--tenant", tenant, "--user", "alice", "--roles", "chat,ingest"
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=stack.base, timeout=15, headers=headers) as http:
            document = {"id": "travel", "title": "Travel", "text": "Hotels: 180 euros a night."}
            assert http.post("/v1/documents", json={"documents": [document]}).status_code == 201
            chat = http.post("/v1/chat", json={"message": "hotel per night?"})
        assert chat.status_code == 200, chat.text
        assert chat.json()["provider"] == "anthropic"
        trace_id = chat.json()["trace_id"]

        # The server span ends last: once it is here, the whole tree is.
        _wait_for_span(receiver, trace_id, lambda span: not span.parent_span_id)
        received = receiver.trace(trace_id)
    finally:
        stack.stop()

    assert {r["service.name"] for r, _ in received} == {"bulkhead"}
    spans = {s.span_id: Node(s) for _, s in received}
    by_name = {n.span.name: n for n in spans.values()}

    def parent(name: str) -> Node:
        return spans[by_name[name].span.parent_span_id]

    roots = [n for n in spans.values() if not n.span.parent_span_id]
    assert len(roots) == 1
    server = roots[0]
    assert server.span.kind == Span.SPAN_KIND_SERVER
    assert "/v1/chat" in server.span.name
    chat_span = by_name["chat"]
    ancestor = parent("chat")
    while ancestor is not server:  # Litestar may nest its own spans in between
        ancestor = spans[ancestor.span.parent_span_id]
    assert parent("retrieval bm25") is chat_span
    assert parent("chat chain") is chat_span
    first, second = by_name["chat gpt-4o-mini@500"], by_name["chat claude-haiku-4-5"]
    assert parent("chat gpt-4o-mini@500") is by_name["chat chain"]
    assert parent("chat claude-haiku-4-5") is by_name["chat chain"]
    assert first.span.status.code == Status.STATUS_CODE_ERROR
    assert first.attributes["bulkhead.attempt"] == 1
    assert first.attributes["error.type"] == "server_error"
    assert first.attributes["gen_ai.provider.name"] == "openai"
    assert second.attributes["bulkhead.attempt"] == 2
    assert second.attributes["bulkhead.failover.reason"] == "server_error"
    assert second.attributes["gen_ai.provider.name"] == "anthropic"
    assert second.span.status.code != Status.STATUS_CODE_ERROR
    assert first.span.start_time_unix_nano < second.span.start_time_unix_nano

    # Attribution on every span Bulkhead writes (and on the server span).
    enduser = hashlib.sha256(f"{tenant}\x00alice".encode()).hexdigest()[:32]
    for node in (
        server,
        chat_span,
        by_name["retrieval bm25"],
        by_name["chat chain"],
        first,
        second,
    ):
        assert node.attributes["bulkhead.tenant.id"] == tenant, node.span.name
        assert node.attributes["enduser.id"] == enduser, node.span.name
        assert node.attributes["bulkhead.credential.id"], node.span.name

    # No secret in anything that left the process: provider keys, the user's token.
    exported = b"".join(receiver.bodies)
    for secret in (*keys.values(), token):
        assert secret.encode() not in exported
    assert b"Bearer " not in exported


def test_an_unsampled_trace_still_exports_its_failover_and_nothing_else(
    server_url: str, tmp_path: Path, emulator: EmulatorServer, receiver: OtlpReceiver
) -> None:
    """Head sampling off: plain requests export nothing, a failover attempt is still kept."""
    stack, tenant, _ = _traced_stack(
        server_url, tmp_path, emulator, receiver, OTEL_TRACES_SAMPLER="parentbased_always_off"
    )
    try:
        stack.start()
        token = stack.cli(
            "token", "--tenant", tenant, "--user", "alice", "--roles", "chat,ingest,search"
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=stack.base, timeout=15, headers=headers) as http:
            document = {"id": "travel", "title": "Travel", "text": "Hotels: 180 euros a night."}
            assert http.post("/v1/documents", json={"documents": [document]}).status_code == 201
            assert http.post("/v1/search", json={"query": "hotel"}).status_code == 200
            chat = http.post("/v1/chat", json={"message": "hotel per night?"})
        assert chat.status_code == 200, chat.text
        assert chat.json()["provider"] == "anthropic"
        trace_id = chat.json()["trace_id"]
        assert trace_id != "0" * 32  # unsampled requests still have a trace id (audit, usage)
        _wait_for_span(receiver, trace_id, lambda span: span.name == "chat claude-haiku-4-5")
        # One export queue, first in first out: whatever the earlier requests had exported
        # would have arrived before this span.
        received = [span for _, span in receiver.spans]
    finally:
        stack.stop()

    assert [span.name for span in received] == ["chat claude-haiku-4-5"]
    failover = Node(received[0])
    assert failover.span.trace_id.hex() == trace_id
    assert failover.span.parent_span_id  # its parents were not sampled: a partial trace
    assert failover.attributes["bulkhead.failover.reason"] == "server_error"
    assert failover.attributes["bulkhead.tenant.id"] == tenant
