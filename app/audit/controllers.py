"""`GET /v1/admin/usage` (usage ledger totals) and `GET /v1/admin/audit` (NDJSON export)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, Parameter
from litestar.response import Stream

from app.audit.reports import AuditReports
from app.edge.guards import requires
from app.problems import ValidationFailed
from app.tenancy.scope import Role, TenantScope


class UsageRow(msgspec.Struct):
    """Totals for one (day, user, provider, model); `app/audit/usage.py` defines each field."""

    day: date
    user_id: str
    provider: str
    model: str
    requests: int
    failed: int
    attempts: int
    failed_attempts: int
    outcomes: dict[str, int]
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
        caller: NamedDependency[TenantScope],
        audit_reports: NamedDependency[AuditReports],
        since: FromQuery[date | None] = None,
        until: FromQuery[date | None] = None,
        user: FromQuery[str | None] = None,
        provider: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
    ) -> UsageReport:
        """Usage of the caller's tenant by day, user, provider and model."""
        rows = await audit_reports.usage(
            caller, since=since, until=until, user_id=user, provider=provider, model=model
        )
        return UsageReport(usage=[msgspec.convert(row, UsageRow) for row in rows])


MAX_AUDIT_EXPORT_ROWS = 100_000


class AuditController(Controller):
    """`/v1/admin/audit`."""

    path = "/v1/admin/audit"

    @get(guards=[requires(Role.ADMIN)])
    async def export(
        self,
        request: Request[TenantScope, Any, Any],
        caller: NamedDependency[TenantScope],
        audit_reports: NamedDependency[AuditReports],
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_AUDIT_EXPORT_ROWS)] = 1_000,
    ) -> Stream:
        """The caller's tenant's audit rows in chain order as NDJSON (`since` ≤ t < `until`)."""
        unknown = sorted(set(request.query_params) - {"since", "until", "limit"})
        if unknown:
            raise ValidationFailed(f"unknown query parameters: {', '.join(unknown)}")
        since, until = _utc(since), _utc(until)
        if since is not None and until is not None and since >= until:
            raise ValidationFailed("since: must be earlier than until")
        lines = await audit_reports.export(caller, since=since, until=until, limit=limit)
        return Stream(lines, media_type="application/x-ndjson")


def _utc(moment: datetime | None) -> datetime | None:
    """A naive time is taken as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
