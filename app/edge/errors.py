"""Refusals the edge raises, and field-naming problem details for Litestar's validation errors.

Status rule: input that cannot be decoded at all (not JSON, not UTF-8, a lone surrogate,
nested too deep, a percent-escape that is not UTF-8) is `400 malformed_request`; input that
decodes but breaks a rule (a NUL character, an unknown field, a wrong type, a value out of
range) is `422 validation_error`. Both name the offending field in `detail` and `errors`.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.types import ExceptionHandlersMap

from app.edge.fields import field_error
from app.edge.handlers import problem_response
from app.problems import ApiError, ValidationFailed

_log = logging.getLogger(__name__)


class MalformedRequest(ApiError):
    """A request the service cannot decode: not JSON, not UTF-8, nested too deep."""

    status, code, title = 400, "malformed_request", "Malformed request"


class RequestTimeout(ApiError):
    """The client did not send its request (headers or body) in time."""

    status, code, title = 408, "request_timeout", "Request timeout"

    def __init__(self, detail: str) -> None:
        # The connection is not reused: the rest of the body may still be on its way.
        super().__init__(detail, headers={"Connection": "close"})


def refuse_field(
    key: str, message: str, *, source: str, malformed: bool = False
) -> MalformedRequest | ValidationFailed:
    """The refusal for one bad field, its name in both `detail` and `errors`."""
    error = field_error(key, message, source=source)
    if malformed:
        return MalformedRequest(f"{key}: {message}", errors=[error])
    return ValidationFailed(f"{key}: {message}", errors=[error])


def handle_unstorable_text(
    request: Request[Any, Any, Any], exc: asyncpg.PostgresError
) -> Response[dict[str, Any]]:
    """Last line behind the edge: text Postgres cannot hold is the caller's error, not a 500.

    The edge refuses NUL characters before a handler runs; reaching this means a value got
    past it (a decoded cursor, say), so it is logged as a gap to close.
    """
    _log.warning(
        "unstorable text reached Postgres on %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    return problem_response(
        request,
        status=422,
        code="validation_error",
        title="Validation error",
        detail="the request contains a character that cannot be stored (NUL)",
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    asyncpg.CharacterNotInRepertoireError: handle_unstorable_text,
    asyncpg.UntranslatableCharacterError: handle_unstorable_text,
}
"""Merged into the app's handlers (app.main)."""
