"""`GET /v1/admin/usage`: the tenant's usage ledger, totalled by day, user, provider, model."""

from __future__ import annotations

from datetime import date
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromQuery

from app.audit.usage import usage_report
from app.db.pool import tenant_transaction
from app.identity.guards import requires
from app.tenancy.scope import Role, TenantScope


class UsageRow(msgspec.Struct):
    """Totals for one (day, user, provider, model)."""

    day: date
    user_id: str
    provider: str
    model: str
    requests: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    avg_latency_ms: float


class UsageReport(msgspec.Struct):
    """`GET /v1/admin/usage` response."""

    usage: list[UsageRow]


class UsageController(Controller):
    """`/v1/admin/usage`."""

    path = "/v1/admin/usage"

    @get(guards=[requires(Role.ADMIN)])
    async def usage(
        self,
        state: State,
        caller: NamedDependency[TenantScope],
        since: FromQuery[date | None] = None,
        until: FromQuery[date | None] = None,
        user: FromQuery[str | None] = None,
        provider: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
    ) -> UsageReport:
        """Usage of the caller's tenant by day, user, provider and model."""
        async with tenant_transaction(state.resources.pool, scope=caller) as connection:
            rows: list[dict[str, Any]] = await usage_report(
                connection, since=since, until=until, user_id=user, provider=provider, model=model
            )
        return UsageReport(usage=[msgspec.convert(row, UsageRow) for row in rows])
