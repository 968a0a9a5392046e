"""The usage ledger: every provider attempt of every chat request, and the report over it.

Rows are written with the turn they account for (`app.chat.repository.save_turn`): one per call
a request made (retries and hedged calls included) and one per chain entry it skipped because
that entry's circuit was open, each under its own provider and model (as the manifest names
it), with its outcome and the call's latency. One row per request is `final`: the answer, or
the failure the request ended with; it alone carries tokens and cost.

Report, per (day, user, provider, model):

- `requests`: requests that ended there (answered, or failed as the last thing tried). Every
  request counts once, under one provider and model, so `requests` adds up across rows to the
  number of chat requests.
- `failed`: of those, the ones that got no answer (or a stream cut after it started).
- `attempts`: calls made there, whichever way they went; `failed_attempts`: calls that failed.
  A request that failed over from openai to anthropic counts 1 attempt (or more, retries) and
  1 failed attempt under openai, and 1 request and 1 attempt under anthropic.
- `outcomes`: rows by outcome (`ok`, a failure reason, `cancelled`: stopped because another
  entry answered first, `circuit_open`: skipped without a call).
- tokens and `cost_usd`: of the answers; `avg_latency_ms`: mean duration of the calls.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from app.db.pool import Connection

# Rows that are not calls: an entry skipped for its open circuit, and the `none` row of a
# request that ended before any call (or written before rows were kept per attempt).
_CALL = "outcome <> 'circuit_open' AND provider <> 'none'"
_FAILED_CALL = f"{_CALL} AND outcome NOT IN ('ok', 'cancelled')"


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
        f"""
        WITH picked AS (
            SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, user_id, provider, model,
                   outcome, final, input_tokens, output_tokens, cost_usd, latency_ms
            FROM usage
            WHERE ($1::date IS NULL OR occurred_at >= $1::date::timestamp AT TIME ZONE 'UTC')
              AND ($2::date IS NULL OR occurred_at < ($2::date + 1)::timestamp AT TIME ZONE 'UTC')
              AND ($3::text IS NULL OR user_id = $3)
              AND ($4::text IS NULL OR provider = $4)
              AND ($5::text IS NULL OR model = $5)
        ),
        by_outcome AS (
            SELECT day, user_id, provider, model, jsonb_object_agg(outcome, n) AS outcomes
            FROM (
                SELECT day, user_id, provider, model, outcome, count(*) AS n
                FROM picked GROUP BY 1, 2, 3, 4, 5
            ) counted
            GROUP BY 1, 2, 3, 4
        )
        SELECT p.day, p.user_id, p.provider, p.model,
               count(*) FILTER (WHERE final) AS requests,
               count(*) FILTER (WHERE final AND outcome <> 'ok') AS failed,
               count(*) FILTER (WHERE {_CALL}) AS attempts,
               count(*) FILTER (WHERE {_FAILED_CALL}) AS failed_attempts,
               sum(input_tokens)::bigint AS input_tokens,
               sum(output_tokens)::bigint AS output_tokens,
               sum(cost_usd) AS cost_usd,
               coalesce(avg(latency_ms) FILTER (WHERE {_CALL}), 0)::double precision
                   AS avg_latency_ms,
               o.outcomes
        FROM picked p JOIN by_outcome o USING (day, user_id, provider, model)
        GROUP BY p.day, p.user_id, p.provider, p.model, o.outcomes
        ORDER BY 1, 2, 3, 4
        """,  # noqa: S608 - the interpolated filters are constants above
        since,
        until,
        user_id,
        provider,
        model,
    )
    return [dict(row) for row in rows]
