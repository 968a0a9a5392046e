"""The usage ledger: tokens, provider, model, latency and outcome per answered request."""

from __future__ import annotations

from app.db.pool import Connection


async def record_usage(
    connection: Connection,
    *,
    tenant_id: str,
    user_id: str,
    credential_id: str,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    latency_ms: float,
    outcome: str,
    trace_id: str,
) -> None:
    """Append one row to the usage ledger."""
    await connection.execute(
        """
        INSERT INTO usage (tenant_id, user_id, credential_id, provider, model, input_tokens,
                           output_tokens, latency_ms, outcome, trace_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        tenant_id,
        user_id,
        credential_id,
        provider,
        model,
        input_tokens,
        output_tokens,
        latency_ms,
        outcome,
        trace_id,
    )
