"""Identity: API key lookup before the tenant is known, rotation link, auth-failure log.

API keys are verified before the request's tenant is known, yet `api_keys` has Row-Level
Security keyed on that tenant. Two ways out were weighed:

- a second, non-RLS table `key_id -> tenant_id` that the runtime role reads: it must be kept in
  step with `api_keys` on every create/revoke, and a runtime role that could write it could map
  a key id to any tenant;
- a `SECURITY DEFINER` function owned by the table owner that returns the one row whose id is
  given (chosen). The runtime role gets `EXECUTE` on it and nothing more: it cannot enumerate
  keys, only fetch the row of a key id it was handed, which is exactly what verification needs.
  The function pins `search_path`, so nobody can shadow `api_keys` with their own table.

Because `api_keys` uses `FORCE ROW LEVEL SECURITY`, even the owner is subject to the tenant
policy; a `SELECT`-only policy for the owner role lets the function (which runs as the owner)
see every row. The owner can alter the table anyway, so this gives it nothing new, and the
runtime role never runs as the owner outside that function.

`auth_failures` is a platform table (no RLS, runtime role may only `INSERT`): a failed
authentication often has no verified tenant, so it cannot go into the tenant-scoped
`audit_events`. It never holds a token, only a reason code and the credential's key id / kid.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from app.db.migrate import app_role

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    role = app_role()
    op.execute("ALTER TABLE api_keys ADD COLUMN replaced_by text")
    op.execute("CREATE POLICY owner_key_lookup ON api_keys FOR SELECT TO CURRENT_USER USING (true)")
    op.execute(
        """
        CREATE FUNCTION bulkhead_api_key(p_key_id text)
        RETURNS TABLE (id text, tenant_id text, name text, secret_hmac bytea, scopes text[],
                       allowed_cidrs cidr[], expires_at timestamptz, revoked_at timestamptz)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, public
        AS $$
            SELECT k.id, k.tenant_id, k.name, k.secret_hmac, k.scopes, k.allowed_cidrs,
                   k.expires_at, k.revoked_at
            FROM public.api_keys AS k
            WHERE k.id = p_key_id
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION bulkhead_api_key(text) FROM PUBLIC")
    op.execute(
        """
        CREATE TABLE auth_failures (
            id bigserial PRIMARY KEY,
            occurred_at timestamptz NOT NULL DEFAULT now(),
            tenant_id text REFERENCES tenants (id) ON DELETE CASCADE,
            reason text NOT NULL,
            credential_id text,
            method text NOT NULL,
            route text NOT NULL,
            source_ip inet,
            trace_id text
        )
        """
    )
    op.execute("CREATE INDEX auth_failures_time_idx ON auth_failures (occurred_at)")
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                GRANT EXECUTE ON FUNCTION bulkhead_api_key(text) TO {role};
                GRANT INSERT ON auth_failures TO {role};
                GRANT USAGE ON SEQUENCE auth_failures_id_seq TO {role};
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE auth_failures")
    op.execute("DROP FUNCTION bulkhead_api_key(text)")
    op.execute("DROP POLICY owner_key_lookup ON api_keys")
    op.execute("ALTER TABLE api_keys DROP COLUMN replaced_by")
