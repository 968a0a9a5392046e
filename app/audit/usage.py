"""The usage ledger: tokens, cost, provider, model, latency and outcome per chat request.

Rows are written with the turn they account for (`app.chat.repository.save_turn`).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from app.db.pool import Connection


async def usage_report(
    connection: Connection,
    *,
    since: date | None,
    until: date | None,
    user_id: str | None,
    provider: str | None,
    model: str | None,
) -> list[dict[str, Any]]:
    """Usage totals by day, user, provider and model (RLS limits rows to the tenant).

    `since` and `until` are inclusive UTC days; the other arguments filter when given.
    """
    rows = await connection.fetch(
        """
        SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, user_id, provider, model,
               count(*) AS requests,
               count(*) FILTER (WHERE outcome <> 'ok') AS failed,
               sum(input_tokens)::bigint AS input_tokens,
               sum(output_tokens)::bigint AS output_tokens,
               sum(cost_usd) AS cost_usd,
               avg(latency_ms)::double precision AS avg_latency_ms
        FROM usage
        WHERE ($1::date IS NULL OR occurred_at >= $1::date::timestamp AT TIME ZONE 'UTC')
          AND ($2::date IS NULL OR occurred_at < ($2::date + 1)::timestamp AT TIME ZONE 'UTC')
          AND ($3::text IS NULL OR user_id = $3)
          AND ($4::text IS NULL OR provider = $4)
          AND ($5::text IS NULL OR model = $5)
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        """,
        since,
        until,
        user_id,
        provider,
        model,
    )
    return [dict(row) for row in rows]
