"""Building a tenant's `ProviderChain` from its manifest, and pricing what it used."""

from __future__ import annotations

from app.config import LlmSettings
from app.llm.anthropic_chat import AnthropicProvider
from app.llm.breaker import BreakerPolicy, BreakerRegistry
from app.llm.clients import SdkClients
from app.llm.keys import SecretResolver
from app.llm.local import LocalProvider
from app.llm.openai_chat import OpenAIProvider
from app.llm.provider import Provider
from app.llm.router import ChainLink, ChainPolicy, ProviderChain, UnavailableProvider
from app.llm.sdk_provider import RemoteProvider
from app.tenancy.manifest import ChainEntry


def chain_policy(settings: LlmSettings) -> ChainPolicy:
    """The router's policy from settings."""
    return ChainPolicy(
        connect_timeout=settings.connect_timeout_seconds,
        first_token_timeout=settings.first_token_timeout_seconds,
        hedge_after=settings.hedge_after_seconds,
        attempt_timeout=settings.attempt_timeout_seconds,
        request_deadline=settings.request_deadline_seconds,
        max_retries=settings.max_retries,
        backoff_base=settings.backoff_base_seconds,
        backoff_cap=settings.backoff_cap_seconds,
        retry_after_cap=settings.retry_after_cap_seconds,
        unavailable_retry_after=settings.unavailable_retry_after_seconds,
        breaker=BreakerPolicy(
            consecutive_failures=settings.breaker_consecutive_failures,
            failure_rate=settings.breaker_failure_rate,
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            open_seconds=settings.breaker_open_seconds,
        ),
    )


def provider_for(
    entry: ChainEntry, resolver: SecretResolver, settings: LlmSettings, clients: SdkClients
) -> Provider:
    """The provider serving one chain entry (`UnavailableProvider` when it cannot be built)."""
    if entry.provider == "local":
        return LocalProvider()
    if entry.secret is None:
        return UnavailableProvider(entry.provider, "has no secret in the manifest")
    kinds: dict[str, type[RemoteProvider]] = {
        "openai": OpenAIProvider,
        "anthropic": AnthropicProvider,
    }
    try:
        return kinds[entry.provider](
            entry,
            resolver,
            clients=clients,
            connect_timeout=settings.connect_timeout_seconds,
            max_output_tokens=settings.max_output_tokens,
        )
    except ValueError:
        return UnavailableProvider(entry.provider, "names an invalid secret ref")


def build_chain(
    entries: tuple[ChainEntry, ...],
    *,
    resolver: SecretResolver,
    settings: LlmSettings,
    breakers: BreakerRegistry,
    capture_content: bool = False,
    clients: SdkClients | None = None,
) -> ProviderChain:
    """The tenant's chain: SDK-backed providers with its keys, `local` as the last resort.

    `clients` is the process's shared `SdkClients`; without one the chain gets its own, and
    closes it with the chain.
    """
    shared = clients if clients is not None else SdkClients()
    links = [ChainLink(entry, provider_for(entry, resolver, settings, shared)) for entry in entries]
    return ProviderChain(
        links,
        policy=chain_policy(settings),
        breakers=breakers,
        capture_content=capture_content,
        owned_clients=None if clients is not None else shared,
    )


def estimate_cost(
    prices: dict[str, tuple[float, float]],
    *,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
) -> float:
    """Estimated USD cost from the price table (0 for `local` and unlisted models)."""
    input_price, output_price = prices.get(f"{provider}/{model}", (0.0, 0.0))
    return (input_tokens * input_price + output_tokens * output_price) / 1_000_000
