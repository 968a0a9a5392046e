"""The input boundary as ASGI middleware: every request's strings checked before its handler.

It sits right after authentication and rate limiting (the caller is known and counted, so a
refusal is audited under them) and before the route's guards and handler. It checks:

- the path and its parameters: UTF-8 percent-escapes, no NUL;
- the query string: UTF-8 percent-escapes, no NUL in names or values;
- every header value: no NUL;
- a JSON body (any body sent to a handler that takes JSON): read within the size limit and
  the time limits, decoded once, checked by `app.edge.text`, and handed to Litestar already
  decoded (the handler does not decode it again);
- a multipart body: part names and file names as they stream in (`app.edge.multipart`);
- the body's arrival: `408 request_timeout` when it stops or drags (`app.edge.deadline`).

`OPTIONS` is answered here (204 with `Allow`), so class-level guards never see a request that
carries no credential; CORS preflights, when CORS is configured, are answered before routing.
"""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import unquote_to_bytes

from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, HTTPReceiveMessage, HTTPScope, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from app.config import HttpSettings
from app.edge.deadline import BodyDeadline
from app.edge.errors import refuse_field
from app.edge.multipart import MultipartInspector
from app.edge.text import NUL, JsonRules, check_text, decode_json, label, nul_refusal
from app.problems import ApiError, PayloadTooLarge

JSON_MEDIA = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

NUL_TOLERANT_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    # Document text is normalised by the service, which removes control characters (NUL
    # included): extracted text often carries stray ones, and one should not refuse a batch.
    ("POST", "/v1/documents"): (r"documents\[\d+\]\.text",),
}
"""(method, path template) -> JSON paths where a NUL is removed later rather than refused."""


class InputBoundaryMiddleware:
    """Refuses what the service cannot hold before any handler runs (see the module doc)."""

    def __init__(self, app: ASGIApp, *, http: HttpSettings, max_json_bytes: int) -> None:
        self.app = app
        self.http = http
        self.max_json_bytes = max_json_bytes
        self._allow: dict[str, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request; pass it on, or answer with the problem that names the field."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        http_scope: HTTPScope = scope
        if http_scope["method"] == "OPTIONS":
            await self._options(http_scope, send)
            return
        deadline = BodyDeadline(
            receive,
            total_seconds=self.http.body_read_timeout_seconds,
            idle_seconds=self.http.body_idle_timeout_seconds,
        )
        try:
            check_path(http_scope)
            check_query(http_scope)
            check_headers(http_scope)
            guarded = await self._guard_body(http_scope, deadline)
        except ApiError as exc:
            await _refuse(http_scope, deadline, send, exc)
            return
        await self.app(scope, guarded, send)

    async def _guard_body(self, scope: HTTPScope, deadline: BodyDeadline) -> Receive:
        media_type, options = _content_type(scope)
        if media_type == "multipart/form-data":
            return MultipartInspector(deadline, boundary=options.get("boundary", ""))
        if scope["method"] not in _BODY_METHODS or not _takes_json(scope, media_type):
            return deadline
        body = await _read_body(scope, deadline, limit=self.max_json_bytes)
        state = ScopeState.from_scope(scope)
        if not body:
            # Read already: the handler must still see the (empty) body, not wait for one.
            state.body = body
            return _replay(body, deadline)
        template = str(scope.get("path_template", ""))
        rules = JsonRules(
            max_depth=self.http.max_json_depth,
            nul_tolerant=NUL_TOLERANT_FIELDS.get((scope["method"], template), ()),
        )
        value = decode_json(body, rules=rules)
        # Litestar's `request.body()` and `request.json()` read these before the receive
        # channel, so the body is decoded exactly once; `replay` serves handlers that stream.
        state.body = body
        state.json = value
        return _replay(body, deadline)

    async def _options(self, scope: HTTPScope, send: Send) -> None:
        """Answer 204 with the route's methods, as Litestar's own OPTIONS handler does.

        Here rather than there: the controller guards would demand a credential that an
        OPTIONS request (a CORS preflight, say) never carries.
        """
        if self._allow is None:
            app: Litestar = scope["litestar_app"]
            self._allow = {
                route.path: ", ".join(sorted(route.methods))
                for route in app.routes
                if isinstance(route, HTTPRoute)
            }
        allow = self._allow.get(str(scope.get("path_template", "")), "OPTIONS")
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(b"allow", allow.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def check_path(scope: HTTPScope) -> None:
    """Refuse a path whose percent-escapes are not UTF-8, or whose parameters hold NUL.

    Raises:
        MalformedRequest: A percent-escape that does not decode as UTF-8.
        ValidationFailed: A NUL character in a path parameter (or anywhere in the path).
    """
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    # Some servers (and test clients) leave the query on `raw_path`; it is checked apart.
    raw = raw.partition(b"?")[0]
    params = scope.get("path_params") or {}
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        # The server decoded the bad escapes to U+FFFD: the parameter holding one is named.
        damaged = [str(n) for n, v in params.items() if isinstance(v, str) and "\ufffd" in v]
        raise refuse_field(
            label(damaged[0]) if len(damaged) == 1 else "path",
            "percent-escapes must encode UTF-8 text",
            source="path",
            malformed=True,
        ) from None
    for name, value in params.items():
        if isinstance(value, str):
            check_text(value, key=label(str(name)), source="path")
    if NUL in scope["path"]:
        raise nul_refusal("path", source="path")


def check_query(scope: HTTPScope) -> None:
    """Refuse a query string whose names or values are not UTF-8 or hold NUL.

    Raises:
        MalformedRequest: A name or value that does not decode as UTF-8.
        ValidationFailed: A NUL character in a name or value.
    """
    query = scope.get("query_string", b"")
    if not query:
        return
    for pair in query.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name = _query_part(raw_name, key="query")
        value = _query_part(raw_value, key=label(name))
        if NUL in name:
            raise nul_refusal("query", source="query")
        check_text(value, key=label(name), source="query")


def _query_part(raw: bytes, *, key: str) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise refuse_field(
            key, "percent-escapes must encode UTF-8 text", source="query", malformed=True
        ) from None


def check_headers(scope: HTTPScope) -> None:
    """Refuse a header value with a NUL byte (servers usually refuse it first).

    Raises:
        ValidationFailed: A NUL byte in a header value.
    """
    for name, value in scope["headers"]:
        if b"\x00" in value:
            raise nul_refusal(label(name.decode("latin-1")), source="header")


def _content_type(scope: HTTPScope) -> tuple[str, dict[str, str]]:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type, *params = value.decode("latin-1").split(";")
            options: dict[str, str] = {}
            for param in params:
                key, _, val = param.strip().partition("=")
                options[key.lower()] = val.strip('"')
            return media_type.strip().lower(), options
    return "", {}


def _takes_json(scope: HTTPScope, media_type: str) -> bool:
    """Whether the body is JSON to the handler.

    A JSON media type, or a handler with a `data` parameter: Litestar decodes those as JSON
    whatever the declared type.
    """
    if JSON_MEDIA.match(media_type):
        return True
    handler = scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    return signature is not None and "data" in signature.parameters


async def _read_body(scope: HTTPScope, receive: Receive, *, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    received = 0
    while True:
        message = cast("HTTPReceiveMessage", await receive())
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(scope: HTTPScope, receive: Receive, send: Send, exc: ApiError) -> None:
    """Render `exc` with the route's own exception handlers.

    The route's, so `/v1/chat/completions` answers OpenAI-shaped errors; here, inside the
    middleware stack, so the audit trail records the refusal.
    """
    request: Request[Any, Any, Any] = Request(scope, receive, send)
    handlers = scope["route_handler"].resolve_exception_handlers()
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            break
    else:  # pragma: no cover - ApiError always has a handler (app.main)
        raise exc
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
