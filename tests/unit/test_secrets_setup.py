"""Backend selection, the env backend, and the 503 a client sees when secrets are down."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from litestar import get
from litestar.testing import create_test_client

from app.config import SecretsSettings, Settings, VaultSettings
from app.edge.handlers import EXCEPTION_HANDLERS, PROBLEM_JSON
from app.secrets.aws import AwsSecretsBackend
from app.secrets.backend import SecretNotFound, SecretsReadOnly
from app.secrets.cache import SecretsUnavailable
from app.secrets.env import EnvSecretsBackend, env_name
from app.secrets.local import LocalSecretsBackend
from app.secrets.setup import build_backend
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue, opted_in_platform_refs
from app.secrets.vault import VaultSecretsBackend
from app.tenancy.manifest import ManifestError, parse_manifest
from app.tenancy.scope import TenantScope

KEK = os.urandom(32)
ACME = TenantScope(tenant_id="acme", subject="alice", roles=frozenset())


def _settings(tmp_path: Path, backend: str, *, dev: bool = False) -> Settings:
    return Settings(
        dev=dev,
        data_dir=tmp_path,
        secrets=SecretsSettings(
            backend=backend,  # type: ignore[arg-type]
            vault=VaultSettings(token="t0ken-for-selection-test"),
        ),
    )


def test_backend_selection(tmp_path: Path) -> None:
    assert isinstance(
        build_backend(_settings(tmp_path, "vault"), pool=None, kek=KEK), VaultSecretsBackend
    )
    assert isinstance(
        build_backend(_settings(tmp_path, "aws"), pool=None, kek=KEK), AwsSecretsBackend
    )
    assert isinstance(
        build_backend(_settings(tmp_path, "env", dev=True), pool=None, kek=KEK), EnvSecretsBackend
    )
    with pytest.raises(ValueError, match="dev mode only"):
        build_backend(_settings(tmp_path, "env"), pool=None, kek=KEK)
    with pytest.raises(ValueError, match="pool"):
        build_backend(_settings(tmp_path, "local"), pool=None, kek=KEK)
    assert isinstance(
        build_backend(_settings(tmp_path, "aws"), pool=None, kek=None), AwsSecretsBackend
    )
    assert LocalSecretsBackend.name == "local"


def test_vault_token_is_not_in_the_settings_repr() -> None:
    assert "t0ken" not in repr(VaultSettings(token="t0ken-secret-value"))


async def test_env_backend_reads_its_variable_and_refuses_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = EnvSecretsBackend()
    ref = SecretRef.parse("tenants/acme/open-ai.key")
    assert env_name(ref) == "BULKHEAD_SECRET_TENANTS_ACME_OPEN_AI_KEY"
    with pytest.raises(SecretNotFound):
        await backend.get(ref, scope=ACME)
    monkeypatch.setenv(env_name(ref), "sk-env-0123456789")

    assert (await backend.get(ref, scope=ACME)).reveal() == "sk-env-0123456789"
    assert await backend.list(scope=ACME) == [(SecretRef(tenant_id="acme", name="OPEN_AI_KEY"), 1)]
    with pytest.raises(SecretAccessDenied):
        await backend.get(SecretRef.parse("tenants/globex/openai"), scope=ACME)
    with pytest.raises(SecretsReadOnly):
        await backend.put(ref, SecretValue("x"), scope=ACME)
    with pytest.raises(SecretsReadOnly):
        await backend.delete(ref, scope=ACME)


def test_secrets_unavailable_is_a_503_problem_with_retry_after() -> None:
    @get("/boom")
    async def boom() -> None:
        raise SecretsUnavailable("the secrets backend is unavailable; retry later", retry_after=7)

    with create_test_client([boom], exception_handlers=EXCEPTION_HANDLERS) as client:
        response = client.get("/boom")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["retry-after"] == "7"
    assert response.json()["code"] == "secrets_unavailable"


def _manifest(tenant: str, *secrets: str) -> dict[str, object]:
    return {
        "id": tenant,
        "name": tenant,
        "llm": {"chain": [{"provider": "openai", "model": "m", "secret": s} for s in secrets]},
    }


def test_platform_refs_are_opted_into_by_naming_them_in_the_chain() -> None:
    manifest = parse_manifest(
        _manifest("acme", "tenants/acme/openai", "platform/openai"), source="acme.yaml"
    )
    assert opted_in_platform_refs(manifest) == frozenset({"platform/openai"})
    assert opted_in_platform_refs(None) == frozenset()


def test_a_manifest_cannot_name_another_tenants_secret() -> None:
    with pytest.raises(ManifestError, match="only its own"):
        parse_manifest(_manifest("acme", "tenants/globex/openai"), source="acme.yaml")
