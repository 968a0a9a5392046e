"""`bulkhead tenants apply` and `rotate-vector-key` in Qdrant server mode.

Real Postgres and a real OpenBao holding the cluster key (a platform secret) and the tenant keys;
Qdrant is qdrant-client's local mode on disk (no server binary here; it ignores API keys, so the
server's refusal of a revoked key cannot run here).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from qdrant_client import AsyncQdrantClient

from app.cli import main
from app.config import Settings, VaultSettings, get_settings
from app.secrets.values import SecretRef, SecretValue
from app.secrets.vault import VaultSecretsBackend
from app.tenancy.scope import TenantScope
from app.vectors.qdrant_keys import jwt_ref, read_claims
from tests.servers import OpenBao

CLUSTER_KEY = SecretValue("cli-cluster-key-0123456789abcdef0123456789")


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


@pytest.fixture
def server_env(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openbao: OpenBao
) -> Iterator[dict[str, str]]:
    assert settings.db.url is not None
    env = {
        "DATABASE_URL": settings.db.url,
        "BULKHEAD_DEV": "1",
        "BULKHEAD_SECRETS__MASTER_KEY_FILE": str(settings.master_key_path),
        "BULKHEAD_DATA_DIR": str(settings.data_dir),
        "BULKHEAD_VECTORS__BACKEND": "qdrant",
        "BULKHEAD_VECTORS__QDRANT__PATH": str(tmp_path / "qdrant"),
        "BULKHEAD_VECTORS__QDRANT__API_KEY_SECRET": "platform/qdrant-api-key",
        "BULKHEAD_SECRETS__BACKEND": "vault",
        "BULKHEAD_SECRETS__VAULT__ADDR": openbao.addr,
        "BULKHEAD_SECRETS__VAULT__TOKEN": openbao.root_token,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


async def _cli(args: list[str]) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, args)


def _manifest(tmp_path: Path, isolation: str) -> tuple[str, Path]:
    tenant_id = f"cli-{uuid.uuid4().hex[:10]}"
    path = tmp_path / f"{tenant_id}.yaml"
    path.write_text(
        yaml.safe_dump({"id": tenant_id, "name": "CLI", "retrieval": {"isolation": isolation}})
    )
    return tenant_id, path


async def test_apply_provisions_and_rotation_revokes_then_remints(
    server_env: dict[str, str], tmp_path: Path, openbao: OpenBao
) -> None:
    secrets = VaultSecretsBackend(VaultSettings(addr=openbao.addr, token=openbao.root_token))
    platform_ref = SecretRef(tenant_id=None, name="qdrant-api-key")
    await secrets.put(
        platform_ref,
        CLUSTER_KEY,
        scope=_scope("platform"),
        platform_refs=frozenset({str(platform_ref)}),
    )
    tenant_id, path = _manifest(tmp_path, "dedicated")

    created = await _cli(["tenants", "apply", str(path)])
    again = await _cli(["tenants", "apply", str(path)])

    assert created.exit_code == 0, created.output
    assert f"Qdrant collection bulkhead_t_{tenant_id} ready; scoped key minted" in created.output
    assert again.exit_code == 0, again.output
    assert f"{tenant_id}: manifest unchanged" in again.output
    assert "no key minted (current key kept)" in again.output
    first = await secrets.get(jwt_ref(tenant_id), scope=_scope(tenant_id))
    claims = read_claims(first, CLUSTER_KEY)
    assert claims is not None
    assert claims["access"] == [{"collection": f"bulkhead_t_{tenant_id}", "access": "prw"}]

    rotated = await _cli(["tenants", "rotate-vector-key", tenant_id])

    assert rotated.exit_code == 0, rotated.output
    assert f"{tenant_id}: key revoked; new key stored as version 2" in rotated.output
    second = read_claims(
        await secrets.get(jwt_ref(tenant_id), scope=_scope(tenant_id)), CLUSTER_KEY
    )
    assert second is not None
    client = AsyncQdrantClient(path=server_env["BULKHEAD_VECTORS__QDRANT__PATH"])
    try:
        points, _ = await client.scroll("bulkhead_keys", limit=100)
        key_ids = {
            p.payload["key_id"] for p in points if p.payload and p.payload["tenant_id"] == tenant_id
        }
        assert await client.collection_exists(f"bulkhead_t_{tenant_id}")
    finally:
        await client.close()
    matches = {m["key"]: m["value"] for m in second["value_exists"]["matches"]}  # type: ignore[index]
    old = {m["key"]: m["value"] for m in claims["value_exists"]["matches"]}
    assert key_ids == {matches["key_id"]}
    assert old["key_id"] not in key_ids
    await secrets.close()


async def test_edge_refuses_a_dedicated_manifest_even_in_a_dry_run(
    server_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKHEAD_VECTORS__BACKEND", "edge")
    get_settings.cache_clear()
    _, path = _manifest(tmp_path, "dedicated")

    result = await _cli(["tenants", "apply", "--dry-run", str(path)])

    assert result.exit_code != 0
    assert "dedicated needs the Qdrant server backend" in result.output
