"""Usage ledger: one row per provider attempt, and the turn's statement that writes them.

Until now a chat request wrote one `usage` row, for the provider that answered, or for provider
`none` when every entry failed: the attempts that failed before a failover appeared nowhere.
From here on a request writes a row for every call it made (retries and hedged calls
included) and for every chain entry it skipped because its circuit was open, each under its
own provider and model with its outcome (`ok`, the failure reason, `cancelled`,
`circuit_open`) and the call's own latency. Exactly one row per request has `final` set: the
answer, or the failure the request ended with; only that row carries tokens and cost. So
counting `final` rows counts requests (no double counting across providers), and counting the
rest counts calls. Rows written before this revision were one per request: they are `final`.

`bulkhead_save_turn` gets a version taking the attempts as arrays (provider, model, outcome,
latency) and the index of the final one, still one statement per turn (migration 0006's
reasons hold). Its arity differs from 0006's, so a call names one version unambiguously; the
0006 version stays for processes of the previous release still running during a deploy (its
single row is `final` by default).

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op
from app.db.migrate import app_role

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = """bulkhead_save_turn(
    text, text, text, uuid, text, bytea, uuid, bytea, uuid, bytea,
    text[], text[], text[], real[], integer, integer, integer, text, double precision
)"""


def upgrade() -> None:
    role = app_role()
    op.execute("ALTER TABLE usage ADD COLUMN final boolean NOT NULL DEFAULT true")
    op.execute(
        """
        CREATE FUNCTION bulkhead_save_turn(
            p_tenant text,
            p_user text,
            p_credential text,
            p_conversation uuid,
            p_kek_id text,
            p_wrapped_key bytea,
            p_question_id uuid,
            p_question bytea,
            p_answer_id uuid,
            p_answer bytea,
            p_providers text[],
            p_models text[],
            p_outcomes text[],
            p_latencies_ms real[],
            p_final integer,
            p_input_tokens integer,
            p_output_tokens integer,
            p_trace_id text,
            p_cost_usd double precision
        ) RETURNS void
        LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
        DECLARE
            v_at timestamptz;
            v_count integer := coalesce(cardinality(p_providers), 0);
        BEGIN
            IF v_count = 0
               OR coalesce(cardinality(p_models), 0) <> v_count
               OR coalesce(cardinality(p_outcomes), 0) <> v_count
               OR coalesce(cardinality(p_latencies_ms), 0) <> v_count
               OR p_final IS NULL OR p_final NOT BETWEEN 1 AND v_count THEN
                RAISE EXCEPTION 'a turn needs one or more attempts of equal length arrays and'
                    ' a final attempt among them' USING ERRCODE = '22023';
            END IF;
            PERFORM set_config('bulkhead.tenant_id', p_tenant, true);
            IF p_question IS NOT NULL THEN
                PERFORM 1 FROM tenant_keys
                    WHERE tenant_id = p_tenant AND kek_id = p_kek_id
                      AND wrapped_key = p_wrapped_key;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'the data key the turn was sealed with is not the tenant''s'
                        USING ERRCODE = 'BK001';
                END IF;
                INSERT INTO conversations (id, tenant_id, user_id)
                    VALUES (p_conversation, p_tenant, p_user)
                    ON CONFLICT (id) DO UPDATE SET updated_at = now();
                v_at := clock_timestamp();
                INSERT INTO messages (id, tenant_id, conversation_id, role, sealed, provider,
                                      model, created_at)
                    VALUES (p_question_id, p_tenant, p_conversation, 'user', p_question,
                            NULL, NULL, v_at),
                           (p_answer_id, p_tenant, p_conversation, 'assistant', p_answer,
                            p_providers[p_final], p_models[p_final],
                            v_at + interval '1 microsecond');
            END IF;
            INSERT INTO usage (tenant_id, user_id, credential_id, provider, model, input_tokens,
                               output_tokens, latency_ms, outcome, trace_id, cost_usd, final)
                SELECT p_tenant, p_user, p_credential, a.provider, a.model,
                       CASE WHEN a.n = p_final THEN p_input_tokens ELSE 0 END,
                       CASE WHEN a.n = p_final THEN p_output_tokens ELSE 0 END,
                       a.latency_ms, a.outcome, p_trace_id,
                       CASE WHEN a.n = p_final THEN p_cost_usd ELSE 0 END,
                       a.n = p_final
                FROM unnest(p_providers, p_models, p_outcomes, p_latencies_ms)
                     WITH ORDINALITY AS a(provider, model, outcome, latency_ms, n)
                ORDER BY a.n;
        END
        $$
        """
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
    # The previous ledger had one row per request: attempt rows would read as requests there.
    # Row-level security is forced on the owner too; lifted for this one statement (in the
    # migration's transaction) so the owner sees every tenant's rows.
    op.execute("ALTER TABLE usage NO FORCE ROW LEVEL SECURITY")
    op.execute("DELETE FROM usage WHERE NOT final")
    op.execute("ALTER TABLE usage FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE usage DROP COLUMN final")
