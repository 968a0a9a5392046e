"""The tenant admin's whole cycle on the embedded default, as docs/tenants.md shows it.

apply → store the key → apply --verify-keys → serve → create a service key with the bootstrap
admin key → ingest and chat (OpenAI through the emulator) → rotate the OpenAI key while the
service runs → chat again (new key) → offboard with export while the service runs → nothing of
the tenant is left in the database or the vector store, and its keys no longer work.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.stack import DevStack
from tests.provider_emulator import EmulatorServer

pytestmark = pytest.mark.e2e

MANIFEST = """\
id: {tenant}
name: Acme Corp
identity:
  issuers:
    - issuer: urn:bulkhead:dev-issuer
      audience: bulkhead
      tenant_claim: tenant
      tenant_claim_value: {tenant}
llm:
  chain:
    - provider: openai
      model: gpt-4o-mini
      secret: tenants/{tenant}/openai
      base_url: {emulator}/v1
    - provider: local
"""


@pytest.fixture
def stack(server_url: str, tmp_path: Path) -> Iterator[DevStack]:
    deployment = DevStack(server_url, tmp_path)
    yield deployment
    deployment.stop()


async def _rows_mentioning(url: str, tenant: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.execute("SELECT set_config('bulkhead.tenant_id', $1, true)", tenant)
            tables = await connection.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
            found = {}
            for row in tables:
                found[row["table_name"]] = await connection.fetchval(
                    f'SELECT count(*) FROM "{row["table_name"]}" AS t WHERE t::text LIKE $1',  # noqa: S608 - catalog name
                    f"%{tenant}%",
                )
            return found
    finally:
        await connection.close()


def test_apply_use_rotate_offboard(
    stack: DevStack, emulator: EmulatorServer, tmp_path: Path
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    manifest = stack.tenants_dir / f"{tenant}.yaml"
    manifest.write_text(MANIFEST.format(tenant=tenant, emulator=emulator.url))
    first_key, second_key = f"sk-first-{uuid.uuid4().hex}", f"sk-second-{uuid.uuid4().hex}"

    assert stack.cli("migrate").returncode == 0
    applied = stack.cli("tenants", "apply", str(manifest))
    assert applied.returncode == 0, applied.stderr
    admin_key = applied.stdout.strip()
    assert admin_key.startswith("bk_")
    stored = stack.cli("secrets", "put", f"tenants/{tenant}/openai", stdin=first_key)
    assert stored.returncode == 0, stored.stderr
    verified = stack.cli("tenants", "apply", "--verify-keys", str(manifest))
    assert verified.returncode == 0, verified.stderr
    assert "present, verified" in verified.stderr

    stack.start()
    with httpx.Client(base_url=stack.base, timeout=15) as http:
        created = http.post(
            "/v1/admin/api-keys",
            json={"name": "frontend", "scopes": ["chat", "ingest"]},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        assert created.status_code == 201, created.text
        service = {"Authorization": f"Bearer {created.json()['key']}"}
        ingest = http.post(
            "/v1/documents",
            json={"documents": [{"id": "travel", "title": "Travel", "text": "Hotels: 180 euros."}]},
            headers=service,
        )
        assert ingest.status_code == 201, ingest.text
        answer = http.post("/v1/chat", json={"message": "hotel per night?"}, headers=service)
        assert answer.status_code == 200, answer.text
        assert answer.json()["provider"] == "openai"
        assert emulator.app.keys[first_key] >= 1

        rotated = stack.cli(
            "tenants", "rotate-key", tenant, "--provider", "openai", stdin=second_key
        )
        assert rotated.returncode == 0, rotated.stderr
        assert "4/4 retired" in rotated.stderr
        emulator.app.keys.pop(first_key)
        answer = http.post("/v1/chat", json={"message": "hotel per night?"}, headers=service)
        assert answer.json()["provider"] == "openai"
        assert emulator.app.keys[second_key] >= 1
        assert first_key not in emulator.app.keys

        export = tmp_path / "export"
        gone = stack.cli("tenants", "offboard", tenant, "--export", str(export), "--yes")
        assert gone.returncode == 0, gone.stderr
        conversations = (export / "conversations.ndjson").read_text().splitlines()
        assert len(conversations) == 2
        assert json.loads(conversations[0])["messages"][0]["content"] == "hotel per night?"
        assert (export / "documents.ndjson").read_text().count("\n") == 1
        assert second_key not in gone.stderr + rotated.stderr + verified.stderr
        refused = http.post("/v1/chat", json={"message": "hotel?"}, headers=service)
        assert refused.status_code == 401
        admin = http.get("/v1/admin/api-keys", headers={"Authorization": f"Bearer {admin_key}"})
        assert admin.status_code == 401
    leftovers = asyncio.run(_rows_mentioning(stack.database_url, tenant))
    assert {t: n for t, n in leftovers.items() if n} == {}
    # The service deleted the tenant's vectors on the NOTIFY before it stopped.
    stack.stop()
    assert f"tenant '{tenant}' offboarded: deleted its 1 vectors" in stack.log_path.read_text()
