"""What a tenant admin reads of the audit trail and the usage ledger, under their own scope."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

import asyncpg

from app.audit.export import export_ndjson, started
from app.audit.usage import usage_report
from app.db.pool import tenant_transaction
from app.tenancy.scope import TenantScope


class AuditReports:
    """The usage report and the audit export of the caller's tenant (RLS keeps them to it)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def usage(
        self,
        scope: TenantScope,
        *,
        since: date | None,
        until: date | None,
        user_id: str | None,
        provider: str | None,
        model: str | None,
    ) -> list[dict[str, Any]]:
        """Usage totals by day, user, provider and model (`app/audit/usage.py`)."""
        async with tenant_transaction(self._pool, scope=scope) as connection:
            return await usage_report(
                connection,
                since=since,
                until=until,
                user_id=user_id,
                provider=provider,
                model=model,
            )

    async def export(
        self, scope: TenantScope, *, since: datetime | None, until: datetime | None, limit: int
    ) -> AsyncIterator[bytes]:
        """The audit rows as NDJSON lines, the first already fetched.

        Raises:
            Exception: Whatever reading the first row raised (so it is an error response,
                not a broken 200).
        """
        lines = export_ndjson(self._pool, scope=scope, since=since, until=until, limit=limit)
        return await started(lines)
