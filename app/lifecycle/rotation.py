"""`bulkhead tenants rotate-key`: replace a tenant's provider key without a failed request.

The safe order: 1) store the new value beside the live one (a staged ref the chain never
reads), 2) verify it with one real completion through the provider layer, 3) switch: make
it the live ref's newest version (replicas drop their cached value at once on NOTIFY with the
local backend, within `secrets.cache_ttl_seconds` otherwise), 4) retire: drop the staged copy
and, once replicas have moved, tell the operator the old key can be revoked at the provider.
Requests in flight during the switch still hold the old key, which stays valid until step 4
is done, so none of them fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from app.config import Settings
from app.lifecycle.keycheck import verify_key
from app.secrets.backend import SecretsBackend
from app.secrets.values import SecretRef, SecretValue
from app.tenancy.manifest import TenantManifest
from app.tenancy.scope import TenantScope

STAGED_SUFFIX = ".rotating"


class RotationError(RuntimeError):
    """The rotation stopped; the message says at which step and that the live key is intact."""


@dataclass(frozen=True, slots=True)
class Rotation:
    """A completed rotation: the live ref and its version before and after."""

    ref: SecretRef
    previous_version: int
    version: int


def rotated_ref(manifest: TenantManifest, provider: str) -> SecretRef:
    """The one tenant-owned secret ref the manifest's `provider` entries use.

    Raises:
        RotationError: No such entry, several different refs, or a platform ref.
    """
    refs = {e.secret for e in manifest.llm.chain if e.provider == provider and e.secret}
    if not refs:
        raise RotationError(f"{manifest.id}: no {provider} entry with a secret in its chain")
    if len(refs) > 1:
        raise RotationError(
            f"{manifest.id}: its {provider} entries use several secrets"
            f" ({', '.join(sorted(refs))}); rotate each with `bulkhead secrets rotate REF`"
        )
    ref = SecretRef.parse(refs.pop())
    if ref.tenant_id != manifest.id:
        raise RotationError(f"{ref} is a platform key: the platform operator rotates it")
    return ref


async def rotate_provider_key(
    backend: SecretsBackend,
    manifest: TenantManifest,
    *,
    provider: str,
    value: SecretValue,
    settings: Settings,
    settle_seconds: float,
    say: Callable[[str], None],
) -> Rotation:
    """Store, verify, switch, retire (module docstring); `say` reports each step.

    Raises:
        RotationError: Nothing to rotate, or the new key failed verification (then nothing
            was switched and the staged copy is removed).
    """
    ref = rotated_ref(manifest, provider)
    scope = TenantScope.operator(manifest.id)
    versions = dict(await backend.list(scope=scope))
    previous = versions.get(ref)
    if previous is None:
        raise RotationError(
            f"{ref} holds no key yet: store the first one with `bulkhead secrets put {ref}`"
        )
    staged = SecretRef(ref.tenant_id, ref.name + STAGED_SUFFIX)
    await backend.put(staged, value, scope=scope)
    say(f"1/4 stored the new key at {staged} (the chain does not read it)")
    candidate = await backend.get(staged, scope=scope)
    for entry in manifest.llm.chain:
        if entry.provider != provider or entry.secret != str(ref):
            continue
        failure = await verify_key(entry, candidate, scope=scope, settings=settings.llm)
        if failure is not None:
            await backend.delete(staged, scope=scope)
            raise RotationError(
                f"2/4 the new key failed verification against {entry.provider}/{entry.model}"
                f" ({failure}); nothing was switched, {ref} still serves version {previous}"
            )
    say(f"2/4 verified the new key with one {provider} completion")
    version = await backend.put(ref, candidate, scope=scope)
    say(f"3/4 switched: {ref} now serves version {version}")
    if settle_seconds > 0:
        say(f"    waiting {settle_seconds:g} s for every replica's secret cache to move over")
        await asyncio.sleep(settle_seconds)
    await backend.delete(staged, scope=scope)
    say(
        f"4/4 retired version {previous}: no replica uses the old key any more;"
        f" revoke it at {provider} now"
    )
    return Rotation(ref=ref, previous_version=previous, version=version)
