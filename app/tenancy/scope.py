"""TenantScope: who is calling, for which tenant, with what rights. Built once per request."""

from __future__ import annotations

import getpass
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """Roles a credential can carry (docs/architecture.md, The HTTP contract)."""

    CHAT = "chat"
    SEARCH = "search"
    INGEST = "ingest"
    ADMIN = "admin"

    @classmethod
    def known(cls, names: Iterable[object]) -> frozenset[Role]:
        """The roles among `names` (a token's claim, a key's scopes); anything else is ignored.

        A credential may carry roles of other systems; they grant nothing here.
        """
        return frozenset(_BY_NAME[n] for n in names if isinstance(n, str) and n in _BY_NAME)


_BY_NAME: dict[str, Role] = {role.value: role for role in Role}

SYSTEM_ACTOR_PREFIX = "bulkhead:"
"""Every job of the service itself acts as `bulkhead:<job>` (`TenantScope.system`)."""
PLATFORM_TENANT = ""
"""The tenant id of a platform job's scope: no tenant's (tenant ids are never empty)."""


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The verified identity a request acts under; the only source of its tenant.

    Attributes:
        tenant_id: Tenant the credential belongs to.
        subject: The end user's or service's subject, as the issuer states it.
        roles: Roles granted by the credential.
        groups: Document ACL groups of the caller.
        credential_id: Stable id of the credential (issuer + key id, or API key id).
    """

    tenant_id: str
    subject: str
    roles: frozenset[Role]
    groups: tuple[str, ...] = ()
    credential_id: str = ""
    _enduser_id: str = field(default="", repr=False, compare=False)

    @classmethod
    def system(
        cls, tenant_id: str, *, actor: str, roles: Iterable[Role] = (), credential_id: str = ""
    ) -> TenantScope:
        """The scope a job of the service itself acts under for one tenant.

        No credential stands behind it (offboarding, reindexing, reconciling, the audit
        writer): `actor` names the job and becomes the subject, and it carries only the
        roles the job needs, none by default. Every job is named `bulkhead:<job>`, so audit rows
        and spans tell the service's own work from a caller's at a glance.

        Raises:
            ValueError: `actor` is not `bulkhead:<job>`.
        """
        if not actor.startswith(SYSTEM_ACTOR_PREFIX) or actor == SYSTEM_ACTOR_PREFIX:
            raise ValueError(f"a system actor is named {SYSTEM_ACTOR_PREFIX}<job>, not {actor!r}")
        return cls(
            tenant_id=tenant_id,
            subject=actor,
            roles=frozenset(roles),
            credential_id=credential_id,
        )

    @classmethod
    def platform(cls, *, actor: str) -> TenantScope:
        """The scope a job acts under for a platform secret (`platform/<name>`), in no tenant.

        Its tenant id is empty, which names no tenant (ids are 2-40 characters): it can read
        only the platform refs it is explicitly given, never a tenant's data or secrets.
        """
        return cls.system(PLATFORM_TENANT, actor=actor)

    @classmethod
    def operator(cls, tenant_id: str) -> TenantScope:
        """The scope an operator's command acts under for one tenant: `cli:<login>`, admin."""
        return cls(
            tenant_id=tenant_id, subject=f"cli:{getpass.getuser()}", roles=frozenset({Role.ADMIN})
        )

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.tenant_id}\x00{self.subject}".encode()).hexdigest()
        object.__setattr__(self, "_enduser_id", digest[:32])

    @property
    def enduser_id(self) -> str:
        """A pseudonymous, tenant-salted hash of the subject, safe for spans and metrics."""
        return self._enduser_id

    def has(self, role: Role) -> bool:
        """Whether the credential carries `role`."""
        return role in self.roles

    def span_attributes(self) -> dict[str, str]:
        """Attribution every span of this request carries."""
        return {
            "bulkhead.tenant.id": self.tenant_id,
            "enduser.id": self.enduser_id,
            "bulkhead.credential.id": self.credential_id,
        }
