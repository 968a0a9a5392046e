"""Initial schema: tenant registry, identity, documents, conversations, audit, usage, secrets.

Two kinds of table:
- platform tables (`tenants`, `issuers`) are written only by the owner role (the admin CLI);
  the runtime role may read them, since a request's tenant is unknown until its issuer is found;
- tenant-owned tables carry `tenant_id` and Row-Level Security keyed on the transaction-local
  setting `bulkhead.tenant_id`. With the setting absent, `current_setting(..., true)` is NULL and
  no row matches: a forgotten scope fails closed.

The runtime role (`bulkhead_app` unless `-x app_role=...` or the caller names another)
owns nothing, so RLS applies to it.
Creating it needs CREATEROLE; without that the migration prints what a DBA must run instead.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from app.db.migrate import app_role

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = (
    "api_keys",
    "documents",
    "conversations",
    "messages",
    "audit_events",
    "usage",
    "tenant_keys",
    "secrets",
)


SCHEMA = (
    """
    CREATE TABLE tenants (
            id text PRIMARY KEY CHECK (id ~ '^[a-z0-9-]{2,40}$'),
            name text NOT NULL,
            status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
            manifest jsonb NOT NULL,
            manifest_sha256 text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    """
    CREATE TABLE issuers (
            id bigserial PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            issuer text NOT NULL,
            audience text NOT NULL,
            jwks_uri text,
            tenant_claim text,
            tenant_claim_value text,
            roles_claim text NOT NULL DEFAULT 'roles',
            groups_claim text NOT NULL DEFAULT 'groups',
            UNIQUE NULLS NOT DISTINCT (issuer, tenant_claim_value)
        )
    """,
    """
    CREATE INDEX issuers_tenant_idx ON issuers (tenant_id)
    """,
    """
    CREATE TABLE api_keys (
            id text PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            name text NOT NULL,
            secret_hmac bytea NOT NULL,
            scopes text[] NOT NULL,
            allowed_cidrs cidr[] NOT NULL DEFAULT '{}',
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            revoked_at timestamptz,
            last_used_at timestamptz
        )
    """,
    """
    CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id)
    """,
    """
    CREATE TABLE documents (
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            id text NOT NULL,
            title text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}',
            acl_groups text[],
            chunk_count integer NOT NULL,
            content_sha256 text NOT NULL,
            version integer NOT NULL DEFAULT 1,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, id)
        )
    """,
    """
    CREATE TABLE conversations (
            id uuid PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            user_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    """
    CREATE INDEX conversations_owner_idx ON conversations (tenant_id, user_id, updated_at)
    """,
    """
    CREATE TABLE messages (
            id uuid PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            role text NOT NULL CHECK (role IN ('user', 'assistant')),
            content text NOT NULL,
            citations jsonb NOT NULL DEFAULT '[]',
            provider text,
            model text,
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    """
    CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at)
    """,
    """
    CREATE TABLE audit_events (
            id bigserial PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            occurred_at timestamptz NOT NULL,
            principal text NOT NULL,
            credential_id text NOT NULL,
            method text NOT NULL,
            route text NOT NULL,
            status integer NOT NULL,
            latency_ms real NOT NULL,
            source_ip inet,
            trace_id text
        )
    """,
    """
    CREATE INDEX audit_events_tenant_time_idx ON audit_events (tenant_id, occurred_at)
    """,
    """
    CREATE TABLE usage (
            id bigserial PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            occurred_at timestamptz NOT NULL DEFAULT now(),
            user_id text NOT NULL,
            credential_id text NOT NULL,
            provider text NOT NULL,
            model text NOT NULL,
            input_tokens integer NOT NULL,
            output_tokens integer NOT NULL,
            latency_ms real NOT NULL,
            outcome text NOT NULL,
            trace_id text
        )
    """,
    """
    CREATE INDEX usage_tenant_time_idx ON usage (tenant_id, occurred_at)
    """,
    """
    CREATE TABLE tenant_keys (
            tenant_id text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            kek_id text NOT NULL,
            wrapped_key bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            rotated_at timestamptz
        )
    """,
    """
    CREATE TABLE secrets (
            tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            ref text NOT NULL,
            version integer NOT NULL,
            nonce bytea NOT NULL,
            ciphertext bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, ref, version)
        )
    """,
)


def upgrade() -> None:
    role = app_role()
    for statement in SCHEMA:
        op.execute(statement)
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY tenant_isolation ON {table}
                USING (tenant_id = current_setting('bulkhead.tenant_id', true))
                WITH CHECK (tenant_id = current_setting('bulkhead.tenant_id', true))
            """
        )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} LOGIN;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'cannot create role {role}: ask a DBA to run CREATE ROLE {role} LOGIN '
                'PASSWORD ''...''; and to re-run this migration (see README, "Database roles")';
        END $$;
        """
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                EXECUTE format('GRANT CONNECT ON DATABASE %I TO {role}', current_database());
                GRANT USAGE ON SCHEMA public TO {role};
                GRANT SELECT ON tenants, issuers TO {role};
                GRANT SELECT, INSERT, UPDATE, DELETE
                    ON api_keys, documents, conversations, messages, secrets, tenant_keys
                    TO {role};
                GRANT SELECT, INSERT ON audit_events, usage TO {role};
                GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE secrets, tenant_keys, usage, audit_events, messages, conversations,"
        " documents, api_keys, issuers, tenants CASCADE"
    )
