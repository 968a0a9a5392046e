"""Rate-limit counters, daily token budget, and a hash-chained, append-only audit trail.

- `rate_counters` (UNLOGGED: counters are worth losing on a crash, not a WAL flush per
  request): one row per (tenant, bucket), fixed one-minute windows on the database clock,
  so every replica counts in the same window. `bulkhead_rate_hit` bumps all of a request's
  buckets and reads the day's token total in one statement (one round trip).
- `token_usage_daily`: charged by a trigger on `usage`, in the same transaction as the ledger
  row, so the budget can never drift from the ledger. One row per (tenant, day, backend
  pid): a backend runs one transaction at a time, so concurrent chats of one tenant never
  wait on each other's row lock (held until their commit); the day's total is a short sum.
- `audit_events` gains `seq`, `prev_hash`, `row_hash` (see `app/audit/chain.py`) and the
  runtime role loses any UPDATE, DELETE or TRUNCATE on it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op
from app.db.migrate import app_role

revision: str = "0005"
# Chained after main's 0004 (sealed messages) when main was merged into this branch.
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_TENANT_TABLES = ("rate_counters", "token_usage_daily")

STATEMENTS = (
    """
    CREATE UNLOGGED TABLE rate_counters (
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            bucket text NOT NULL,
            window_start timestamptz NOT NULL,
            hits integer NOT NULL,
            PRIMARY KEY (tenant_id, bucket)
        )
    """,
    """
    CREATE TABLE token_usage_daily (
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            day date NOT NULL,
            slot integer NOT NULL,
            tokens bigint NOT NULL,
            PRIMARY KEY (tenant_id, day, slot)
        )
    """,
    """
    CREATE FUNCTION bulkhead_charge_tokens() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.input_tokens + NEW.output_tokens > 0 THEN
            INSERT INTO token_usage_daily AS d (tenant_id, day, slot, tokens)
            VALUES (NEW.tenant_id, (NEW.occurred_at AT TIME ZONE 'UTC')::date,
                    pg_backend_pid(), NEW.input_tokens + NEW.output_tokens)
            ON CONFLICT (tenant_id, day, slot)
                DO UPDATE SET tokens = d.tokens + EXCLUDED.tokens;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER usage_charges_tokens AFTER INSERT ON usage
        FOR EACH ROW EXECUTE FUNCTION bulkhead_charge_tokens()
    """,
    """
    CREATE FUNCTION bulkhead_rate_hit(p_tenant text, p_buckets text[])
    RETURNS TABLE (o_bucket text, o_hits integer, o_reset double precision, o_tokens bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_window timestamptz := date_trunc('minute', now());
    BEGIN
        -- Transaction-local, like db/pool.set_tenant: RLS sees the caller's tenant only.
        PERFORM set_config('bulkhead.tenant_id', p_tenant, true);
        RETURN QUERY
        WITH hit AS (
            INSERT INTO rate_counters AS c (tenant_id, bucket, window_start, hits)
            SELECT p_tenant, b, v_window, 1 FROM unnest(p_buckets) AS b ORDER BY b
            ON CONFLICT (tenant_id, bucket) DO UPDATE
                SET hits = CASE WHEN c.window_start = EXCLUDED.window_start
                                THEN c.hits + 1 ELSE 1 END,
                    window_start = EXCLUDED.window_start
            RETURNING c.bucket, c.hits
        )
        SELECT hit.bucket, hit.hits,
               extract(epoch FROM v_window + interval '1 minute' - now())::double precision,
               (SELECT coalesce(sum(t.tokens), 0)::bigint FROM token_usage_daily t
                 WHERE t.tenant_id = p_tenant
                   AND t.day = (now() AT TIME ZONE 'UTC')::date)
        FROM hit;
    END
    $$
    """,
    """
    CREATE FUNCTION bulkhead_tokens_today(p_tenant text) RETURNS bigint
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM set_config('bulkhead.tenant_id', p_tenant, true);
        RETURN (SELECT coalesce(sum(t.tokens), 0)::bigint FROM token_usage_daily t
                 WHERE t.tenant_id = p_tenant AND t.day = (now() AT TIME ZONE 'UTC')::date);
    END
    $$
    """,
    """
    ALTER TABLE audit_events
        ADD COLUMN seq bigint,
        ADD COLUMN prev_hash bytea,
        ADD COLUMN row_hash bytea
    """,
    """
    CREATE UNIQUE INDEX audit_events_tenant_seq_idx ON audit_events (tenant_id, seq)
    """,
)


def upgrade() -> None:
    role = app_role()
    for statement in STATEMENTS:
        op.execute(statement)
    for table in NEW_TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('bulkhead.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true))
            """
        )
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC")
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                GRANT SELECT, INSERT, UPDATE ON rate_counters, token_usage_daily TO {role};
                -- Append-only: whatever was granted before, the runtime role may only add.
                REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {role};
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX audit_events_tenant_seq_idx")
    op.execute(
        "ALTER TABLE audit_events DROP COLUMN seq, DROP COLUMN prev_hash, DROP COLUMN row_hash"
    )
    op.execute("DROP TRIGGER usage_charges_tokens ON usage")
    op.execute("DROP FUNCTION bulkhead_rate_hit(text, text[])")
    op.execute("DROP FUNCTION bulkhead_tokens_today(text)")
    op.execute("DROP FUNCTION bulkhead_charge_tokens()")
    op.execute("DROP TABLE token_usage_daily, rate_counters")
