"""Telling "Postgres is unavailable" apart from "this statement is wrong", in one place.

An unavailable database (stopped, restarting, shutting down, refusing connections, a broken
connection mid-query) is something a client should retry: the service answers 503
`database_unavailable` with `Retry-After`. Anything else asyncpg raises (a constraint, a
syntax or RLS error) is a bug or bad data and stays a 500 or the caller's own error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

import asyncpg

_ASYNCPG_DIR = str(Path(asyncpg.__file__).resolve().parent)

# Server-side refusals and disconnections: class 08 (connection exception), 57P01-57P03
# (admin/crash shutdown, "cannot connect now": starting up or shutting down), 53300 (too
# many connections).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)

# asyncpg's client-side messages for a connection or pool that is gone; its other
# InterfaceErrors ("another operation is in progress", a released connection) are bugs.
_GONE_MESSAGES = ("connection is closed", "connection was closed", "pool is clos")


def _raised_in_asyncpg(traceback: TracebackType | None) -> bool:
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename.startswith(_ASYNCPG_DIR):
            return True
        traceback = traceback.tb_next
    return False


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return any(message in str(exc) for message in _GONE_MESSAGES)
    if isinstance(exc, asyncpg.InternalClientError):
        # "cannot switch to state N; another operation is in progress": the protocol lost
        # track of a connection that broke under it (seen when the server shuts down).
        return "cannot switch to state" in str(exc)
    # Socket errors (refused, reset, no such socket file, connect timeout) come out of
    # asyncpg's connect and protocol code as they are; elsewhere an OSError means something
    # else (a file, a provider), so only the ones raised inside asyncpg count.
    if isinstance(exc, OSError | asyncio.TimeoutError):
        return _raised_in_asyncpg(exc.__traceback__)
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from, or a member of its group) is an outage."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen or len(seen) > 32:
            continue
        seen.add(id(current))
        if _is_unavailable(current):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        # An error raised while handling an outage is its consequence, unless raised `from None`.
        if current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)
    return False
