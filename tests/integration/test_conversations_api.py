"""`/v1/conversations`, history in follow-ups, sealed storage, and GDPR delete/export.

Isolation is attacked: another user of the same tenant, and a user with the same subject in
another tenant, get 404 for a conversation they do not own. The raw table is read as the
owner role and must hold no plaintext.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.chat import repository
from app.chat.crypto import ConversationCipher, ConversationDecryptionError
from app.config import Settings
from app.db.pool import tenant_transaction
from app.secrets.wrapping import as_wrapper
from app.tenancy.scope import Role, TenantScope
from tests.conftest import AuthHeaders
from tests.integration.conftest import LlmTenant
from tests.provider_emulator import EmulatorServer

Client = AsyncTestClient[Litestar]
SECRET_FACT = "The quarterly bonus pool is 7,654,321 zorkmids."


async def _seed(client: Client, headers: dict[str, str]) -> None:
    response = await client.post(
        "/v1/documents",
        json={"documents": [{"id": "bonus", "title": "Bonus memo", "text": SECRET_FACT}]},
        headers=headers,
    )
    assert response.status_code == 201, response.text


async def _chat(client: Client, headers: dict[str, str], message: str, **body: Any) -> Any:
    response = await client.post("/v1/chat", json={"message": message, **body}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_own_conversation_is_listed_read_and_deleted(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    first = await _chat(client, alice, "How big is the bonus pool?")
    conversation = first["conversation_id"]
    second = await _chat(
        client, alice, "Which quarter is the bonus pool for?", conversation_id=conversation
    )
    assert second["conversation_id"] == conversation

    listing = (await client.get("/v1/conversations", headers=alice)).json()
    assert [(c["id"], c["messages"]) for c in listing["conversations"]] == [(conversation, 4)]
    assert listing["next_cursor"] is None

    detail = (await client.get(f"/v1/conversations/{conversation}", headers=alice)).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "How big is the bonus pool?"),
        ("assistant", first["answer"]),
        ("user", "Which quarter is the bonus pool for?"),
        ("assistant", second["answer"]),
    ]
    assert detail["messages"][1]["id"] == first["message_id"]
    assert detail["messages"][1]["citations"] == [
        {"marker": 1, "document_id": "bonus", "chunk_id": first["citations"][0]["chunk_id"]}
    ]
    assert detail["messages"][1]["provider"] == "local"

    deleted = await client.delete(f"/v1/conversations/{conversation}", headers=alice)
    assert deleted.status_code == 204
    gone = await client.get(f"/v1/conversations/{conversation}", headers=alice)
    assert gone.status_code == 404
    assert gone.json()["code"] == "not_found"
    assert (await client.get("/v1/conversations", headers=alice)).json()["conversations"] == []
    again = await client.delete(f"/v1/conversations/{conversation}", headers=alice)
    assert again.status_code == 404


async def test_other_users_and_other_tenants_get_404(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, other_tenant = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    conversation = (await _chat(client, alice, "How big is the bonus pool?"))["conversation_id"]
    attackers = {
        "same tenant, other user": auth(tenant, user="mallory"),
        "other tenant, same subject": auth(other_tenant, user="alice"),
    }
    for who, headers in attackers.items():
        read = await client.get(f"/v1/conversations/{conversation}", headers=headers)
        assert read.status_code == 404, who
        assert read.json()["code"] == "not_found", who
        removed = await client.delete(f"/v1/conversations/{conversation}", headers=headers)
        assert removed.status_code == 404, who
        listing = await client.get("/v1/conversations", headers=headers)
        assert listing.json()["conversations"] == [], who
        follow_up = await client.post(
            "/v1/chat",
            json={"message": "And the previous answer?", "conversation_id": conversation},
            headers=headers,
        )
        assert follow_up.status_code == 404, who
    # Still there for its owner.
    assert (await client.get(f"/v1/conversations/{conversation}", headers=alice)).status_code == 200


async def test_pagination_and_bad_cursor(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    made = [(await _chat(client, alice, f"bonus pool {i}?"))["conversation_id"] for i in range(3)]
    first = (await client.get("/v1/conversations?limit=2", headers=alice)).json()
    assert [c["id"] for c in first["conversations"]] == made[::-1][:2]
    cursor = first["next_cursor"]
    second = (await client.get(f"/v1/conversations?limit=2&cursor={cursor}", headers=alice)).json()
    assert [c["id"] for c in second["conversations"]] == [made[0]]
    assert second["next_cursor"] is None
    for query in ("cursor=not-a-cursor", "limit=0", "limit=101"):
        bad = await client.get(f"/v1/conversations?{query}", headers=alice)
        assert bad.status_code in (400, 422), query
        assert bad.json()["code"] == "validation_error", query


async def test_raw_table_holds_no_plaintext(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
) -> None:
    """Read as the table owner (what a DBA or a stolen backup sees): only ciphertext."""
    tenant, _ = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    question = "Tell me the bonus pool figure, canary-q-8d1c?"
    body = await _chat(client, alice, question)
    assert "7,654,321" in body["answer"]
    async with owner_pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
        rows = await connection.fetch(
            "SELECT m.*, c.user_id FROM messages m JOIN conversations c"
            " ON c.id = m.conversation_id WHERE m.conversation_id = $1",
            uuid.UUID(body["conversation_id"]),
        )
    assert len(rows) == 2
    needles = [b"canary-q-8d1c", b"7,654,321", b"zorkmids", b"bonus", b"Bonus memo"]
    for row in rows:
        assert row["content"] is None
        assert row["citations"] is None
        raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in dict(row).values())
        for needle in needles:
            assert needle not in raw, needle


async def test_sealed_rows_are_bound_to_their_place(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
    app_pool: asyncpg.Pool,
    settings: Settings,
    kek: bytes,
) -> None:
    """A sealed answer copied onto another message (as the owner) no longer opens."""
    tenant, _ = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    one = await _chat(client, alice, "How big is the bonus pool?")
    two = await _chat(client, alice, "Is there a bonus pool?")
    async with owner_pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
        await connection.execute(
            "UPDATE messages SET sealed = (SELECT sealed FROM messages WHERE id = $1)"
            " WHERE id = $2",
            uuid.UUID(one["message_id"]),
            uuid.UUID(two["message_id"]),
        )
    cipher = ConversationCipher.from_settings(settings, kek)
    scope = TenantScope(tenant_id=tenant, subject="alice", roles=frozenset())
    async with tenant_transaction(app_pool, scope=scope) as connection:
        sealer = await cipher.sealer(connection, tenant_id=tenant)
        intact = await repository.read_turns(
            connection, sealer=sealer, conversation_ids=[uuid.UUID(one["conversation_id"])]
        )
        assert intact[1].text == one["answer"]
        with pytest.raises(ConversationDecryptionError):
            await repository.read_turns(
                connection, sealer=sealer, conversation_ids=[uuid.UUID(two["conversation_id"])]
            )


async def test_follow_up_sends_the_stored_history(
    client: Client, llm_tenant: LlmTenant, emulator: EmulatorServer, auth: AuthHeaders
) -> None:
    tenant = await llm_tenant([("openai", "gpt-4o-mini", emulator.url + "/v1")])
    first = await _chat(client, auth(tenant), "First question hist-5b2e?")
    await _chat(
        client,
        auth(tenant),
        "Follow-up hist-5b2e?",
        conversation_id=first["conversation_id"],
    )
    sent = [
        json.loads(body)
        for path, body in emulator.app.bodies
        if path.endswith("/chat/completions") and b"Follow-up hist-5b2e" in body
    ][-1]
    messages = sent["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "First question hist-5b2e?"
    assert messages[2]["content"] == first["answer"]
    assert messages[3]["content"].endswith("Question: Follow-up hist-5b2e?")


async def test_admin_exports_and_deletes_a_users_data(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, other_tenant = tenant_pair
    alice, bob = auth(tenant, user="alice"), auth(tenant, user="bob")
    await _seed(client, alice)
    kept = await _chat(client, bob, "How big is the bonus pool?")
    await _chat(client, alice, "How big is the bonus pool?")
    await _chat(client, alice, "Is the bonus pool big?")
    admin = auth(tenant, user="root", roles=(Role.ADMIN,))

    refused = await client.get("/v1/admin/users/alice/export", headers=alice)
    assert refused.status_code == 403

    exported = await client.get("/v1/admin/users/alice/export", headers=admin)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in exported.text.splitlines()]
    assert records[0] == records[0] | {"type": "user", "tenant_id": tenant, "user_id": "alice"}
    conversations = [r for r in records if r["type"] == "conversation"]
    assert len(conversations) == 2
    assert {c["messages"][0]["content"] for c in conversations} == {
        "How big is the bonus pool?",
        "Is the bonus pool big?",
    }
    assert SECRET_FACT in conversations[0]["messages"][1]["context"][0]["text"]
    assert len([r for r in records if r["type"] == "usage"]) == 2

    # Another tenant's admin sees nothing of alice.
    elsewhere = auth(other_tenant, user="root", roles=(Role.ADMIN,))
    foreign = await client.get("/v1/admin/users/alice/export", headers=elsewhere)
    assert [json.loads(line)["type"] for line in foreign.text.splitlines()] == ["user"]
    foreign_delete = await client.delete("/v1/admin/users/alice/data", headers=elsewhere)
    assert foreign_delete.json()["conversations_deleted"] == 0

    deleted = await client.delete("/v1/admin/users/alice/data", headers=admin)
    assert deleted.status_code == 200
    assert deleted.json() == {"user_id": "alice", "conversations_deleted": 2}
    assert (await client.get("/v1/conversations", headers=alice)).json()["conversations"] == []
    bobs = (await client.get("/v1/conversations", headers=bob)).json()["conversations"]
    assert [c["id"] for c in bobs] == [kept["conversation_id"]]


async def _counts(owner_pool: asyncpg.Pool, tenant: str) -> tuple[int, int]:
    async with owner_pool.acquire() as connection:
        messages = await connection.fetchval(
            "SELECT count(*) FROM messages WHERE tenant_id = $1", tenant
        )
        usage = await connection.fetchval("SELECT count(*) FROM usage WHERE tenant_id = $1", tenant)
    return messages, usage


async def test_a_rewrapped_data_key_is_read_again_and_the_turn_kept(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
    kek: bytes,
) -> None:
    """The service seals with the key it last read; a changed key row makes it read it again.

    The data key is rewrapped under the same KEK (new wrapped bytes, same key), as a KEK
    rotation does: the next turn must be stored, sealed, and readable.
    """
    tenant, _ = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    await _chat(client, alice, "How big is the bonus pool?")
    wrapper = as_wrapper(kek)
    async with owner_pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
        row = await connection.fetchrow(
            "SELECT kek_id, wrapped_key FROM tenant_keys WHERE tenant_id = $1", tenant
        )
        dek = await wrapper.unwrap(tenant, bytes(row["wrapped_key"]), row["kek_id"])
        rewrapped = await wrapper.wrap(tenant, dek)
        assert rewrapped != bytes(row["wrapped_key"])
        await connection.execute(
            "UPDATE tenant_keys SET wrapped_key = $2 WHERE tenant_id = $1", tenant, rewrapped
        )
    before = await _counts(owner_pool, tenant)
    second = await _chat(client, alice, "Is the bonus pool large?")
    assert await _counts(owner_pool, tenant) == (before[0] + 2, before[1] + 1)
    stored = await client.get(f"/v1/conversations/{second['conversation_id']}", headers=alice)
    assert stored.status_code == 200, stored.text
    assert stored.json()["messages"][1]["content"] == second["answer"]


async def test_a_destroyed_data_key_stores_nothing_more(
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
    owner_pool: asyncpg.Pool,
) -> None:
    """Deleting the key row (as offboarding does) stops the next turn at once.

    The service still holds the key it last read; the turn must fail and leave no row.
    """
    tenant, _ = tenant_pair
    alice = auth(tenant, user="alice")
    await _seed(client, alice)
    await _chat(client, alice, "How big is the bonus pool?")
    async with owner_pool.acquire() as connection:
        await connection.execute("DELETE FROM tenant_keys WHERE tenant_id = $1", tenant)
    before = await _counts(owner_pool, tenant)
    response = await client.post(
        "/v1/chat", json={"message": "Is the bonus pool large?"}, headers=alice
    )
    assert response.status_code >= 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await _counts(owner_pool, tenant) == before
