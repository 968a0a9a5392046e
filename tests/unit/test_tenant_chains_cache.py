"""`TenantChains` rebuilds a tenant's chain when its manifest changes, and only then.

The manifest digest is computed once per manifest object (frozen, so the object cannot change
behind the cache); these tests check that a new manifest with another chain still gets a new
chain, and that an equal new manifest keeps the existing one.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest

from app.config import LlmSettings
from app.llm.tenant_chains import TenantChains
from app.tenancy.manifest import ChainEntry, LlmSpec, TenantManifest


@dataclass
class _Record:
    manifest: TenantManifest


class _Registry:
    def __init__(self) -> None:
        self.records: dict[str, _Record] = {}

    def tenant(self, tenant_id: str) -> _Record | None:
        return self.records.get(tenant_id)


async def test_digest_once_per_manifest_and_rebuild_on_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = TenantManifest.sha256

    def counting(self: TenantManifest) -> str:
        calls.append(self.id)
        return original(self)

    monkeypatch.setattr(TenantManifest, "sha256", counting)
    registry = _Registry()
    first = TenantManifest(id="acme", name="Acme")
    registry.records["acme"] = _Record(first)
    chains = TenantChains(registry, resolver=None, llm=LlmSettings())  # type: ignore[arg-type]
    try:
        chain = chains.chain("acme")
        assert chains.chain("acme") is chain
        assert chains.chain("acme") is chain
        assert calls == ["acme"]

        # An equal manifest, reloaded (new object): digested again, same chain kept.
        registry.records["acme"] = _Record(msgspec.structs.replace(first))
        assert chains.chain("acme") is chain
        assert calls == ["acme", "acme"]

        # Another chain in the manifest: a new chain.
        other = msgspec.structs.replace(
            first, llm=LlmSpec(chain=(ChainEntry(provider="local", model="extractive"),) * 2)
        )
        registry.records["acme"] = _Record(other)
        rebuilt = chains.chain("acme")
        assert rebuilt is not chain
        assert len(rebuilt.entries) == 2
        assert chains.chain("acme") is rebuilt
        assert calls == ["acme", "acme", "acme"]
    finally:
        await chains.aclose()
