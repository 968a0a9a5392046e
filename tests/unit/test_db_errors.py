"""Which errors count as "Postgres is unavailable" (503) and which stay bugs (500)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg
import pytest

from app.db.errors import database_unavailable


async def _connect_to_nothing() -> BaseException:
    with tempfile.TemporaryDirectory() as empty:  # a socket dir with no server in it
        try:
            await asyncpg.connect(f"postgresql://postgres@/postgres?host={empty}", timeout=2)
        except BaseException as exc:
            return exc
    raise AssertionError("connected to nothing")


async def test_a_refused_connection_is_unavailability() -> None:
    exc = await _connect_to_nothing()
    assert isinstance(exc, OSError)
    assert database_unavailable(exc)


def test_the_same_oserror_outside_asyncpg_is_not() -> None:
    with pytest.raises(FileNotFoundError) as raised:
        Path("/nonexistent/bulkhead").read_text()
    assert not database_unavailable(raised.value)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
    ],
)
def test_server_refusals_and_closed_connections_are_unavailability(exc: Exception) -> None:
    assert database_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.InsufficientPrivilegeError("permission denied"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        ValueError("not a database problem"),
    ],
)
def test_bugs_and_bad_data_are_not(exc: Exception) -> None:
    assert not database_unavailable(exc)


async def test_an_error_raised_from_an_outage_is_one_unless_from_none() -> None:
    refused = await _connect_to_nothing()
    with pytest.raises(RuntimeError) as chained:
        raise RuntimeError("lookup failed") from refused
    assert database_unavailable(chained.value)
    group = ExceptionGroup("tasks", [ValueError("x"), refused])  # type: ignore[list-item]
    assert database_unavailable(group)
    with pytest.raises(KeyError) as unrelated:
        _reraise_unrelated(refused)
    assert not database_unavailable(unrelated.value)


def _reraise_unrelated(outage: BaseException) -> None:
    try:
        raise outage
    except OSError:
        raise KeyError("unrelated") from None
