"""RFC 9457 problem details with Bulkhead's stable error codes: how every error leaves.

Every error leaves the service through `problem_response`, so the shape and the codes are the
same whether a guard, a validator, a service or Litestar itself raised it. The problem types
are `app.problems`; here they are rendered, Litestar's own exceptions mapped onto the same
codes, and a lost database turned into `database_unavailable` everywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from app.db.errors import database_unavailable
from app.edge.fields import (
    MAX_DETAIL_CHARS,
    bound,
    describe,
    errors_from_detail,
    validation_errors,
)
from app.problems import ApiError, DatabaseUnavailable
from app.secrets.scrub import scrub

PROBLEM_JSON = "application/problem+json"

_log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 2
"""`Retry-After` (seconds) of `database_unavailable` when the app state names none."""
_FIELD_STATUSES = frozenset({400, 413, 422})
"""Refusals of input, whose `errors` name the field."""

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, Any]]:
    """Build the problem+json response every error path uses."""
    if not errors and status in _FIELD_STATUSES:
        # Every refusal of input names its field: taken from the detail when not given.
        detail, errors = errors_from_detail(detail)
    body: dict[str, Any] = {
        "type": f"urn:bulkhead:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
        # Last line of defence: a message that quotes an upstream error may carry a key.
        "detail": scrub(bound(detail, MAX_DETAIL_CHARS)),
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = [
            {
                k: scrub(bound(v, MAX_DETAIL_CHARS)) if isinstance(v, str) else v
                for k, v in error.items()
            }
            for error in errors
        ]
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


def handle_api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    """Exception handler for Bulkhead's own errors."""
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
    )


def handle_http_exception(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[dict[str, Any]]:
    """Map Litestar's own exceptions (routing, body parsing, guards) to stable codes."""
    status = exc.status_code
    if isinstance(exc, ValidationException):
        # The fields are named in `detail` too: a person reads that, a program `errors`.
        errors = validation_errors(exc)
        return problem_response(
            request,
            status=422,
            code="validation_error",
            title="Validation error",
            detail=describe(errors),
            errors=errors,
        )
    if isinstance(exc, NotFoundException):
        return problem_response(
            request, status=404, code="not_found", title="Not found", detail="no such resource"
        )
    if isinstance(exc, NotAuthorizedException):
        return problem_response(
            request,
            status=401,
            code="unauthenticated",
            title="Authentication required",
            detail=str(exc.detail),
            headers={"WWW-Authenticate": 'Bearer realm="bulkhead"'},
        )
    if isinstance(exc, PermissionDeniedException):
        return problem_response(
            request, status=403, code="forbidden", title="Forbidden", detail=str(exc.detail)
        )
    code = _CODE_BY_STATUS.get(status, "error")
    return problem_response(
        request,
        status=status,
        code=code,
        title=code.replace("_", " ").capitalize(),
        detail=str(exc.detail),
        headers=exc.headers,
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Last resort: a database outage is a 503 to retry; anything else a bare 500 (logged).

    Every route and middleware lands here with an error it did not handle, so this one check
    turns a lost or refused Postgres connection into `database_unavailable` everywhere.
    """
    if database_unavailable(exc):
        retry_after: int = request.app.state.get("database_retry_after", DEFAULT_RETRY_AFTER)
        _OUTAGE_LOG.note(request.method, request.url.path, exc)
        return handle_api_error(request, DatabaseUnavailable(retry_after=retry_after))
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        status=HTTP_500_INTERNAL_SERVER_ERROR,
        code="internal_error",
        title="Internal error",
        detail="the request failed; the trace id identifies it for support",
    )


class _OutageLog:
    """One warning per interval while requests are refused, with how many were.

    An outage under load refuses thousands; a line for each would bury everything else.
    """

    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._last = -interval_seconds
        self._refused = 0

    def note(self, method: str, path: str, exc: BaseException) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        _log.warning(
            "database unavailable: %d requests answered 503 since the last report"
            " (latest %s %s: %s)",
            self._refused,
            method,
            path,
            f"{type(exc).__name__}: {exc}"[:300],
        )
        self._last, self._refused = now, 0


_OUTAGE_LOG = _OutageLog(interval_seconds=5.0)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
