"""Each tenant's provider chain, rebuilt when its manifest changes, and model selection."""

from __future__ import annotations

import asyncio

from app.config import LlmSettings
from app.db.registry import TenantRegistry
from app.llm.breaker import BreakerRegistry
from app.llm.chains import build_chain, chain_policy
from app.llm.clients import SdkClients
from app.llm.keys import SecretResolver
from app.llm.router import ProviderChain
from app.problems import ApiError, NotFound
from app.tenancy.manifest import TenantManifest

AUTO_MODEL = "auto"


class ModelNotFound(ApiError):
    """The request named a model that is not in the tenant's chain."""

    status, code, title = 404, "model_not_found", "Model not found"


class TenantChains:
    """One `ProviderChain` per tenant (cached by manifest digest), narrowed by model name."""

    def __init__(
        self, registry: TenantRegistry, *, resolver: SecretResolver | None, llm: LlmSettings
    ) -> None:
        self._registry = registry
        self._resolver = resolver
        self._llm = llm
        self.breakers = BreakerRegistry(chain_policy(llm).breaker)
        self._chains: dict[str, tuple[str, ProviderChain]] = {}
        # The manifest object each digest was computed from: a frozen struct, so while the
        # registry hands out the same object its digest cannot have changed, and the canonical
        # JSON + SHA-256 (~3% of a chat request) is skipped.
        self._digested: dict[str, tuple[TenantManifest, str]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        # One set of connection pools for every tenant's chain (an SDK client with a pool of
        # its own costs ~15 ms to build).
        self._sdk_clients = SdkClients()

    def chain(self, tenant_id: str) -> ProviderChain:
        """The tenant's full chain, as its current manifest lists it."""
        tenant = self._registry.tenant(tenant_id)
        if tenant is None:  # pragma: no cover - authentication already required the tenant
            raise NotFound("tenant unknown")
        digest = self._digest(tenant_id, tenant.manifest)
        cached = self._chains.get(tenant_id)
        if cached is None or cached[0] != digest:
            entries = tenant.manifest.llm.chain
            chain = (
                ProviderChain.from_entries(entries)
                if self._resolver is None
                else build_chain(
                    entries,
                    resolver=self._resolver,
                    settings=self._llm,
                    breakers=self.breakers,
                    capture_content=tenant.manifest.privacy.trace_content,
                    clients=self._sdk_clients,
                )
            )
            if cached is not None:
                self._retire(cached[1])
            cached = (digest, chain)
            self._chains[tenant_id] = cached
        return cached[1]

    def _digest(self, tenant_id: str, manifest: TenantManifest) -> str:
        seen = self._digested.get(tenant_id)
        if seen is not None and seen[0] is manifest:
            return seen[1]
        digest = manifest.sha256()
        self._digested[tenant_id] = (manifest, digest)
        return digest

    def models(self, tenant_id: str) -> list[str]:
        """The model names a request may choose: `auto`, then each entry's `provider/model`."""
        entries = self.chain(tenant_id).entries
        return [AUTO_MODEL, *dict.fromkeys(f"{e.provider}/{e.model}" for e in entries)]

    def for_model(self, tenant_id: str, model: str) -> ProviderChain:
        """The whole chain for `auto`, else the entries named `model` or `provider/model`.

        Raises:
            ModelNotFound: No entry of the tenant's chain has that name.
        """
        chain = self.chain(tenant_id)
        if model == AUTO_MODEL:
            return chain
        picked = [
            i for i, e in enumerate(chain.entries) if model in (e.model, f"{e.provider}/{e.model}")
        ]
        if not picked:
            raise ModelNotFound(
                f"model {model!r} is not in this tenant's chain; use 'auto' or one of:"
                f" {', '.join(self.models(tenant_id)[1:])}"
            )
        return chain.narrowed(picked)

    def _retire(self, chain: ProviderChain) -> None:
        # Requests already running on the old chain keep it until their deadline.
        async def close_later() -> None:
            await asyncio.sleep(chain.policy.request_deadline)
            await chain.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Close every chain's provider connections."""
        for task in list(self._retiring):
            task.cancel()
        for _, chain in self._chains.values():
            await chain.aclose()
        self._chains.clear()
        self._digested.clear()
        await self._sdk_clients.aclose()
