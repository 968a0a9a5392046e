"""`bulkhead_save_turn`: a chat turn (conversation, both sealed messages, usage) in one statement.

Saving a turn was seven round trips: BEGIN, arming RLS, reading the tenant's wrapped data key,
the conversation upsert, the two messages, the usage row, COMMIT. At 300 chats/s that was the
largest single cost of `/v1/chat` (~0.75 ms of the service's CPU per request, plus
Postgres's). This function does the same work in one call, as one implicit transaction:

- it arms RLS itself (`set_config(..., true)`: the setting dies with the statement's
  transaction, as with `SET LOCAL`), and runs as the caller (SECURITY INVOKER), so every row
  still passes the `tenant_isolation` policies of the runtime role;
- the messages were sealed by the service with a data key it had cached; the function checks,
  under RLS and in the same transaction, that this key (its KEK id and wrapped bytes) is
  still the tenant's, and raises SQLSTATE `BK001` otherwise (rotated or destroyed), in which
  case the service reads the key afresh and seals again. So a destroyed key stops working at
  once, as when the key was read on every turn;
- the answer is stamped one microsecond after the question, so it always sorts after it.

`p_question` NULL (the tenant or the endpoint stores no conversations) records the usage only.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op
from app.db.migrate import app_role

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = """bulkhead_save_turn(
    text, text, text, uuid, text, bytea, uuid, bytea, uuid, bytea,
    text, text, integer, integer, real, text, text, double precision
)"""


def upgrade() -> None:
    role = app_role()
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
            p_provider text,
            p_model text,
            p_input_tokens integer,
            p_output_tokens integer,
            p_latency_ms real,
            p_outcome text,
            p_trace_id text,
            p_cost_usd double precision
        ) RETURNS void
        LANGUAGE plpgsql SECURITY INVOKER SET search_path = public, pg_temp AS $$
        DECLARE
            v_at timestamptz;
        BEGIN
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
                            p_provider, p_model, v_at + interval '1 microsecond');
            END IF;
            INSERT INTO usage (tenant_id, user_id, credential_id, provider, model, input_tokens,
                               output_tokens, latency_ms, outcome, trace_id, cost_usd)
                VALUES (p_tenant, p_user, p_credential, p_provider, p_model, p_input_tokens,
                        p_output_tokens, p_latency_ms, p_outcome, p_trace_id, p_cost_usd);
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
