"""`bulkhead_rate_sync`: one statement carries a replica's batched rate-limit counts.

With local admission (`app/limits/local.py`) each replica counts requests in memory and, once
per sync interval, pushes what it counted since its last sync and reads back the shared
totals. This function does that for a whole batch, every tenant and bucket, in one call:

- for each tenant of the batch, in id order, it arms RLS itself (`set_config(..., true)`, as
  `bulkhead_rate_hit` of 0005 does) and runs as the caller (SECURITY INVOKER), so every row it
  reads or writes passes the runtime role's `tenant_isolation` policies: one statement per
  tenant inside the call, because a policy sees one tenant at a time;
- a delta belongs to the window it was counted in (`p_windows`: minutes since the epoch, the
  windows `bulkhead_rate_hit` counts in): it is added to the bucket's row when the row is in
  that window, starts the row over when the row is in an older one, and is dropped when the
  row has moved on (that window is over and nobody reads it). Of several windows sent for one
  bucket only the newest counts. Rows are locked in (tenant, bucket) order, like 0005's;
- it returns each bucket's row as it stands (`o_window`, `o_count`), and for each tenant of
  `p_token_tenants` the tokens charged on the current UTC day (`o_bucket` NULL, `o_window` the
  day as days since the epoch); `o_now` on every row is the database clock, which the
  replicas' windows follow;
- a tenant offboarded since its requests were counted is skipped (its counts would break the
  foreign key, and with it the whole batch).

The runtime role gets EXECUTE on it and nothing else: the tables' grants (0005) already cover
what it reads and writes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op
from app.db.migrate import app_role

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "bulkhead_rate_sync(text[], text[], bigint[], integer[], text[])"
RATE_SYNC_LOCK_CLASS = 0x524C494D
"""`app.limits.store.RATE_SYNC_LOCK_CLASS` as of this revision (a migration does not follow the
code)."""


def upgrade() -> None:
    role = app_role()
    op.execute(
        """
        CREATE FUNCTION bulkhead_rate_sync(
            p_tenants text[],
            p_buckets text[],
            p_windows bigint[],
            p_deltas integer[],
            p_token_tenants text[]
        ) RETURNS TABLE (
            o_tenant text, o_bucket text, o_window bigint, o_count bigint,
            o_now double precision
        )
        LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
        DECLARE
            v_now double precision := extract(epoch FROM now());
            v_date date := (now() AT TIME ZONE 'UTC')::date;
            v_tenant text;
        BEGIN
            FOR v_tenant IN
                SELECT DISTINCT t FROM unnest(p_tenants || p_token_tenants) AS t ORDER BY t
            LOOP
                -- Offboarding holds this lock exclusively while it deletes the tenant's rows:
                -- either it waits for this sync to commit (and deletes what it wrote), or this
                -- sync waits for it and finds no tenant (the check is a statement of its own,
                -- so it sees what offboarding committed). RATE_SYNC_LOCK_CLASS in app/limits.
                PERFORM pg_advisory_xact_lock_shared({lock_class}, hashtext(v_tenant));
                CONTINUE WHEN NOT EXISTS (SELECT FROM tenants WHERE tenants.id = v_tenant);
                PERFORM set_config('bulkhead.tenant_id', v_tenant, true);
                RETURN QUERY
                WITH batch AS (
                    SELECT DISTINCT ON (b.bucket) b.bucket, b.win, b.delta
                    FROM unnest(p_tenants, p_buckets, p_windows, p_deltas)
                        AS b (tenant, bucket, win, delta)
                    WHERE b.tenant = v_tenant
                    ORDER BY b.bucket, b.win DESC
                ), counted AS (
                    INSERT INTO rate_counters AS c (tenant_id, bucket, window_start, hits)
                    SELECT v_tenant, batch.bucket, to_timestamp(batch.win * 60), batch.delta
                    FROM batch ORDER BY batch.bucket
                    ON CONFLICT (tenant_id, bucket) DO UPDATE
                        SET hits = CASE
                                WHEN c.window_start = EXCLUDED.window_start
                                    THEN c.hits + EXCLUDED.hits
                                WHEN c.window_start < EXCLUDED.window_start THEN EXCLUDED.hits
                                ELSE c.hits END,
                            window_start = greatest(c.window_start, EXCLUDED.window_start)
                    RETURNING c.bucket, c.window_start, c.hits
                )
                SELECT v_tenant, counted.bucket,
                       (extract(epoch FROM counted.window_start) / 60)::bigint,
                       counted.hits::bigint, v_now
                FROM counted;
                IF v_tenant = ANY (p_token_tenants) THEN
                    RETURN QUERY
                    SELECT v_tenant, NULL::text, (v_date - date '1970-01-01')::bigint,
                           (SELECT coalesce(sum(t.tokens), 0)::bigint FROM token_usage_daily t
                             WHERE t.tenant_id = v_tenant AND t.day = v_date),
                           v_now;
                END IF;
            END LOOP;
        END
        $$
        """.replace("{lock_class}", str(RATE_SYNC_LOCK_CLASS))
    )
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                GRANT EXECUTE ON FUNCTION {SIGNATURE} TO {role};
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
