"""Onboarding and rotation checks: a manifest's secret refs exist, and its provider keys work.

A key is verified with one minimal completion through the same provider layer the chain uses
(the official SDK, the manifest's `base_url` and model), so "verified" means the request path
would succeed with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import LlmSettings
from app.secrets.backend import SecretNotFound, SecretsBackend
from app.secrets.scrub import register_secret, scrub_exception
from app.secrets.values import SecretRef, SecretValue, opted_in_platform_refs
from app.tenancy.manifest import ChainEntry, TenantManifest
from app.tenancy.scope import TenantScope

VERIFY_QUESTION = "Reply with the single word OK."


@dataclass(slots=True)
class KeyCheck:
    """What was found about one chain entry's secret.

    Attributes:
        entry: The chain entry.
        present: The ref resolves in the secrets backend.
        verified: The provider accepted the key (None: not checked).
        detail: Why it is missing or failed (scrubbed; never the value).
    """

    entry: ChainEntry
    present: bool
    verified: bool | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Present, and verified unless verification was not asked for."""
        return self.present and self.verified is not False

    def render(self) -> str:
        """One line for the CLI."""
        state = "present" if self.present else "MISSING"
        if self.verified is True:
            state += ", verified"
        elif self.verified is False:
            state += ", VERIFY FAILED"
        suffix = f" ({self.detail})" if self.detail else ""
        return f"{self.entry.secret} [{self.entry.provider}/{self.entry.model}]: {state}{suffix}"


class _FixedKey:
    """A `SecretResolver` that serves one already-fetched value (the value under test)."""

    def __init__(self, value: SecretValue) -> None:
        self._value = value

    async def get(self, ref: SecretRef, *, scope: TenantScope) -> SecretValue:
        return self._value

    async def invalidate(self, ref: SecretRef, *, scope: TenantScope) -> None:
        return None


async def verify_key(
    entry: ChainEntry, value: SecretValue, *, scope: TenantScope, settings: LlmSettings
) -> str | None:
    """Make one minimal completion with `value` for `entry`; None if it worked, else why.

    The returned reason is scrubbed: providers echo refused keys in their error bodies.
    """
    # Imported here: the provider SDKs are over a second of imports, and only `--verify-keys`
    # calls a provider (`bulkhead tenants apply` answers sooner without them).
    from app.llm.chains import provider_for
    from app.llm.clients import SdkClients
    from app.llm.provider import CompletionRequest, ProviderError

    register_secret(value)
    minimal = settings.model_copy(update={"max_output_tokens": 1})
    clients = SdkClients()
    provider = provider_for(entry, _FixedKey(value), minimal, clients)
    try:
        await provider.complete(
            CompletionRequest(question=VERIFY_QUESTION, context=(), model=entry.model),
            scope=scope,
            time_budget=settings.attempt_timeout_seconds,
        )
    except ProviderError as exc:
        return f"{exc.reason}: {exc}"
    finally:
        await provider.aclose()
        await clients.aclose()
    return None


async def check_keys(
    backend: SecretsBackend, manifest: TenantManifest, *, verify: bool, settings: LlmSettings
) -> list[KeyCheck]:
    """Check every chain entry that names a secret: present, and (with `verify`) working."""
    scope = TenantScope.operator(manifest.id)
    platform = opted_in_platform_refs(manifest)
    checks: list[KeyCheck] = []
    for entry in manifest.llm.chain:
        if entry.secret is None:
            continue
        try:
            value = await backend.get(
                SecretRef.parse(entry.secret), scope=scope, platform_refs=platform
            )
        except SecretNotFound:
            checks.append(KeyCheck(entry, present=False, detail="not stored"))
            continue
        except (LookupError, PermissionError, RuntimeError, OSError) as exc:
            checks.append(KeyCheck(entry, present=False, detail=scrub_exception(exc)))
            continue
        check = KeyCheck(entry, present=True)
        if verify:
            failure = await verify_key(entry, value, scope=scope, settings=settings)
            check.verified = failure is None
            check.detail = failure or ""
        checks.append(check)
    return checks
