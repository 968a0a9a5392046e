"""ProviderChain: the tenant's ordered providers, tried in turn until one answers.

Each attempt is a `chat {model}` span following the OTel GenAI conventions, attributed to the
tenant, user and credential. When every entry fails the caller gets 503
`providers_unavailable` with Retry-After. (Retries, timeouts and circuit breaking per
(tenant, provider, model) extend this chain in the provider-chain work.)
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.trace import SpanKind, Status, StatusCode

from app.llm.local import LocalProvider
from app.llm.provider import Completion, CompletionRequest, Provider, ProviderError
from app.problems import ApiError
from app.telemetry.spans import scoped_span
from app.tenancy.manifest import ChainEntry
from app.tenancy.scope import TenantScope


class ProvidersUnavailable(ApiError):
    """Every provider in the tenant's chain failed."""

    status, code, title = 503, "providers_unavailable", "Providers unavailable"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class UnavailableProvider:
    """A chain entry whose provider this deployment cannot call; it fails over at once."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def complete(self, request: CompletionRequest) -> Completion:
        """Always fail with reason `not_configured`.

        Raises:
            ProviderError: Always.
        """
        raise ProviderError(f"provider {self.name!r} is not configured", reason="not_configured")


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A manifest chain entry with the provider that serves it."""

    entry: ChainEntry
    provider: Provider


class ProviderChain:
    """Tries the tenant's providers in manifest order."""

    def __init__(self, links: list[ChainLink], *, retry_after_seconds: int = 5) -> None:
        if not links:
            raise ValueError("a provider chain needs at least one entry")
        self._links = links
        self._retry_after = retry_after_seconds

    @classmethod
    def from_entries(cls, entries: tuple[ChainEntry, ...]) -> ProviderChain:
        """Build a chain from a manifest's `llm.chain`."""
        local = LocalProvider()
        links = [
            ChainLink(
                entry, local if entry.provider == "local" else UnavailableProvider(entry.provider)
            )
            for entry in entries
        ]
        return cls(links)

    async def complete(self, *, scope: TenantScope, request: CompletionRequest) -> Completion:
        """Answer with the first provider that succeeds.

        Raises:
            ProvidersUnavailable: Every entry failed.
        """
        failover_reason = ""
        with scoped_span("chat chain", scope=scope):
            for attempt, link in enumerate(self._links, start=1):
                model = link.entry.model
                with scoped_span(
                    f"chat {model}",
                    scope=scope,
                    kind=SpanKind.CLIENT,
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": link.entry.provider,
                        "gen_ai.request.model": model,
                        "gen_ai.request.stream": False,
                        "bulkhead.attempt": attempt,
                    },
                ) as span:
                    if failover_reason:
                        span.set_attribute("bulkhead.failover.reason", failover_reason)
                    try:
                        completion = await link.provider.complete(
                            CompletionRequest(
                                question=request.question, context=request.context, model=model
                            )
                        )
                    except ProviderError as exc:
                        failover_reason = exc.reason
                        span.set_attribute("error.type", exc.reason)
                        span.set_status(Status(StatusCode.ERROR, exc.reason))
                        continue
                    span.set_attributes(
                        {
                            "gen_ai.response.model": completion.model,
                            "gen_ai.response.id": completion.response_id,
                            "gen_ai.usage.input_tokens": completion.input_tokens,
                            "gen_ai.usage.output_tokens": completion.output_tokens,
                            "gen_ai.response.finish_reasons": [completion.finish_reason],
                        }
                    )
                    return completion
        raise ProvidersUnavailable(
            "every provider in the tenant's chain failed", retry_after=self._retry_after
        )
