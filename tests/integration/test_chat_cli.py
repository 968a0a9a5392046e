"""`bulkhead export` / `bulkhead forget`: a user's data, decrypted, as the operator sees it."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from app import config
from app.chat import repository
from app.chat.crypto import ConversationCipher
from app.cli import main
from app.config import Settings
from app.db.pool import connect, tenant_transaction
from app.llm.run import AttemptRecord
from app.tenancy.scope import TenantScope
from tests.conftest import TenantFactory


async def _store(database_url: str, cipher: ConversationCipher, tenant: str, user: str) -> None:
    connection = await connect(database_url)
    try:
        async with tenant_transaction(connection, scope=TenantScope.operator(tenant)):
            sealer = await cipher.sealer(connection, tenant_id=tenant)
        exchange = repository.Exchange(
            conversation_id=uuid.uuid4(),
            question=f"question of {user}",
            answer_id=uuid.uuid4(),
            answer=f"answer for {user} [1]",
            citations=[{"marker": 1, "document_id": "d", "chunk_id": "c"}],
            context=[{"marker": 1, "document_id": "d", "chunk_id": "c", "title": "T"}],
        )
        usage = repository.TurnUsage(
            attempts=(AttemptRecord("local", "extractive", "ok", 1.0),),
            final=0,
            input_tokens=1,
            output_tokens=1,
            trace_id="0" * 32,
            cost_usd=0.0,
        )
        scope = TenantScope(tenant_id=tenant, subject=user, roles=frozenset(), credential_id="k")
        await repository.save_turn(
            connection, scope=scope, usage=usage, exchange=exchange, sealer=sealer
        )
    finally:
        await connection.close()


def test_export_then_forget(
    settings: Settings,
    database_url: str,
    kek: bytes,
    make_tenant: TenantFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    tenant = asyncio.run(make_tenant("gdpr"))
    cipher = ConversationCipher.from_settings(settings, kek)
    for user in ("u-1", "u-1", "u-2"):
        asyncio.run(_store(database_url, cipher, tenant, user))
    runner = CliRunner()

    ndjson = runner.invoke(main, ["export", "--tenant", tenant, "--user", "u-1"])
    assert ndjson.exit_code == 0, ndjson.output
    records = [json.loads(line) for line in ndjson.stdout.splitlines()]
    types = [r["type"] for r in records]
    assert types == ["user", "conversation", "conversation", "usage", "usage"]
    assert {r["messages"][1]["content"] for r in records[1:3]} == {"answer for u-1 [1]"}
    assert records[1]["messages"][1]["context"][0]["title"] == "T"

    target = tmp_path / "u-1.json"
    as_json = runner.invoke(
        main,
        ["export", "--tenant", tenant, "--user", "u-1", "--format", "json", "--output", target],
    )
    assert as_json.exit_code == 0, as_json.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    document = json.loads(target.read_text())
    assert (document["tenant_id"], document["user_id"]) == (tenant, "u-1")
    assert len(document["conversations"]) == 2

    unconfirmed = runner.invoke(main, ["forget", "--tenant", tenant, "--user", "u-1"])
    assert unconfirmed.exit_code != 0
    forgotten = runner.invoke(main, ["forget", "--tenant", tenant, "--user", "u-1", "--yes"])
    assert forgotten.exit_code == 0, forgotten.output
    assert "2 conversations deleted" in forgotten.output
    after = runner.invoke(main, ["export", "--tenant", tenant, "--user", "u-1"])
    # The usage ledger (billing: tokens, model, latency; no content) outlives the conversations.
    assert [json.loads(line)["type"] for line in after.stdout.splitlines()] == [
        "user",
        "usage",
        "usage",
    ]
    other = runner.invoke(main, ["export", "--tenant", tenant, "--user", "u-2"])
    assert len(other.stdout.splitlines()) == 3

    unknown = runner.invoke(main, ["export", "--tenant", "no-such-tenant", "--user", "u-1"])
    assert unknown.exit_code != 0
    assert "no tenant" in unknown.output


def test_forget_and_export_stay_inside_the_named_tenant(
    settings: Settings,
    database_url: str,
    kek: bytes,
    make_tenant: TenantFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same subject in two tenants: the commands touch only the tenant they name.

    The owner role of the test server is a superuser, which RLS does not bind; this fails if the
    commands go back to running as the owner with only a `user_id` condition.
    """
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    mine, theirs = asyncio.run(make_tenant("gdpr-a")), asyncio.run(make_tenant("gdpr-b"))
    cipher = ConversationCipher.from_settings(settings, kek)
    for tenant in (mine, theirs):
        asyncio.run(_store(database_url, cipher, tenant, "alice"))
    runner = CliRunner()

    exported = runner.invoke(main, ["export", "--tenant", mine, "--user", "alice"])
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["type"] for r in records] == ["user", "conversation", "usage"]

    forgotten = runner.invoke(main, ["forget", "--tenant", mine, "--user", "alice", "--yes"])
    assert forgotten.exit_code == 0, forgotten.output
    assert "1 conversations deleted" in forgotten.output
    survivor = runner.invoke(main, ["export", "--tenant", theirs, "--user", "alice"])
    assert [json.loads(line)["type"] for line in survivor.stdout.splitlines()] == [
        "user",
        "conversation",
        "usage",
    ]
