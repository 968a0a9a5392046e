"""The one settings module: every knob the service reads, from `BULKHEAD_*` environment variables.

Nested groups use a double underscore: `BULKHEAD_DB__POOL_MAX=20`. `DATABASE_URL` and
`OTEL_EXPORTER_OTLP_ENDPOINT` are also read under their conventional names.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseModel):
    """Postgres: the owner URL runs migrations; the app URL is the non-owner runtime role."""

    url: str | None = None
    """Owner connection (migrations, tenant registry). Empty: embedded Postgres in data_dir."""
    app_url: str | None = None
    """Runtime connection as a role that owns no table, so RLS applies. Empty: derived from
    `url` with the user swapped for `app_role` (works for trust/peer auth, as in dev)."""
    app_role: str = "bulkhead_app"
    pool_min: int = Field(default=2, ge=1)
    pool_max: int = Field(default=10, ge=1)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    """Opening one connection; past it the request is answered 503 `database_unavailable`."""
    retry_after_seconds: int = Field(default=2, ge=1)
    """`Retry-After` of a 503 `database_unavailable`."""
    readiness_timeout_seconds: float = Field(default=1.0, gt=0)
    """`/readyz` opens a new connection within this time, or reports `db` down."""
    readiness_cache_seconds: float = Field(default=1.0, ge=0)
    """One readiness check serves the probes of this long (a probe storm costs one connect)."""


class QdrantServerSettings(BaseModel):
    """Qdrant server / cluster through qdrant-client (`vectors.backend: qdrant`)."""

    url: str | None = None
    """Server URL (`https://qdrant.internal:6333`). Empty: qdrant-client's local mode in
    `path` (single process, pure Python, no auth: dev and tests only)."""
    path: Path | None = None
    """Local-mode directory when `url` is empty. Empty: `<data_dir>/qdrant-local`."""
    api_key_secret: str | None = None
    """Secret ref of the cluster API key, e.g. `platform/qdrant-api-key` (it signs the
    per-tenant JWTs and manages collections, never serves a request). Never read from plain
    config. Required outside dev mode; a platform ref needs a backend that stores platform
    secrets (vault, aws). Empty in dev: no per-tenant keys (local mode ignores keys anyway)."""
    prefer_grpc: bool = False
    timeout_seconds: int = Field(default=10, ge=1)
    collection_prefix: str = Field(default="bulkhead", pattern=r"^[a-z][a-z0-9_]{0,30}$")
    """Collections: `<prefix>_shared`, `<prefix>_t_<tenant>` (dedicated), `<prefix>_keys`."""
    jwt_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=3600)
    jwt_refresh_before_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """A tenant's JWT is re-minted once it expires within this window."""
    jwt_check_interval_seconds: float = Field(default=3600.0, gt=0)
    """How often the service looks for JWTs due for re-minting."""


class VectorSettings(BaseModel):
    """Vector store: the embedded Qdrant Edge shard (default) or a Qdrant server."""

    backend: Literal["edge", "qdrant"] = "edge"
    qdrant: QdrantServerSettings = QdrantServerSettings()
    path: Path | None = None
    """Edge shard directory. Empty: `<data_dir>/qdrant`."""
    search_threads: int | None = Field(default=1, ge=1)
    """Threads one query may use. 1 measured fastest for filtered top-k on 2 cores (p50 0.10 ms
    vs 0.23 ms with one per CPU): requests already run concurrently. Empty: one per CPU."""


class VaultSettings(BaseModel):
    """OpenBao / HashiCorp Vault: KV v2 for secrets; token or AppRole auth."""

    addr: str = "http://127.0.0.1:8200"
    token: str | None = Field(default=None, repr=False)
    """Static token. Empty: AppRole login with `role_id` and `secret_id`."""
    role_id: str | None = None
    secret_id: str | None = Field(default=None, repr=False)
    approle_mount: str = "approle"
    mount: str = "secret"
    """KV v2 mount; a ref `tenants/acme/openai` lives at `<mount>/data/tenants/acme/openai`."""
    namespace: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    ca_cert: Path | None = None


class AwsSecretsSettings(BaseModel):
    """AWS Secrets Manager; credentials come from boto3's usual chain."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    """Override (VPC endpoints, moto in tests). Empty: AWS's own endpoint."""
    prefix: str = "bulkhead/"
    """Secret names are `<prefix><ref>`, so one account can hold several deployments."""


class SecretsSettings(BaseModel):
    """Secrets backend. The local envelope-encrypted store is the default."""

    backend: Literal["local", "vault", "aws", "env"] = "local"
    master_key: str | None = Field(default=None, repr=False)
    """Base64 32-byte key-encryption key. Empty: read `master_key_file`."""
    master_key_file: Path | None = None
    """0600 file holding the KEK. Empty: `<data_dir>/master.key` (generated in dev only)."""
    kek: str | None = None
    """Who wraps tenant data keys. Empty: the master key. `vault-transit:<key>`: that Transit
    key of the Vault/OpenBao in `vault` (the master key is then only read to migrate)."""
    transit_mount: str = "transit"
    previous_master_keys: list[str] = Field(default_factory=list, repr=False)
    """Older KEKs (base64) still accepted while `bulkhead secrets rotate-kek` rewraps keys."""
    cache_ttl_seconds: float = Field(default=60.0, ge=0)
    max_stale_seconds: float = Field(default=300.0, ge=0)
    """How long past its TTL a cached value is served while the backend is down."""
    vault: VaultSettings = VaultSettings()
    aws: AwsSecretsSettings = AwsSecretsSettings()


class AuthSettings(BaseModel):
    """JWT verification."""

    dev_issuer: str = "urn:bulkhead:dev-issuer"
    dev_signing_key_file: Path | None = None
    """Ed25519 PEM of the dev issuer. Empty: `<data_dir>/dev-issuer.pem`."""
    audience: str = "bulkhead"
    leeway_seconds: int = Field(default=30, ge=0, le=60)
    max_token_lifetime_seconds: int = Field(default=24 * 3600, ge=60)
    max_authorization_header_bytes: int = Field(default=8192, ge=256)
    jwks_ttl_seconds: float = Field(default=300.0, gt=0)
    jwks_min_refetch_seconds: float = Field(default=30.0, ge=0)
    """An unknown kid refetches an issuer's JWKS at most once per this interval."""
    api_key_pepper: str | None = Field(default=None, repr=False)
    """HMAC-SHA256 pepper for API key secrets. Empty: derived (HKDF) from the master key."""
    api_key_cache_seconds: float = Field(default=60.0, gt=0)
    """Safety net only: revocations reach every replica's cache at once via NOTIFY."""
    api_key_last_used_flush_seconds: float = Field(default=5.0, gt=0)
    service_issuer: str = "urn:bulkhead:service"
    service_token_ttl_seconds: int = Field(default=600, ge=30, le=900)
    service_signing_key_file: Path | None = None
    """Ed25519 PEM signing exchanged service tokens. Empty: `<data_dir>/service-signing.pem`
    (generated in dev only; outside dev, token exchange is off until it exists)."""
    service_previous_key_files: list[Path] = []
    """Retired signing keys: still published and accepted until their tokens have expired."""
    trusted_proxies: list[str] = []
    """CIDRs of reverse proxies whose X-Forwarded-For is believed; nobody else's is."""


class AuditSettings(BaseModel):
    """The per-request audit trail written off the hot path."""

    buffer_size: int = Field(default=10_000, ge=1)
    """Rows held in memory before requests wait for the writer (back-pressure, never drop)."""
    batch_size: int = Field(default=500, ge=1)
    flush_interval_seconds: float = Field(default=0.5, gt=0)


class ShutdownSettings(BaseModel):
    """SIGTERM / SIGINT: stop accepting, drain, flush the audit trail, close, exit.

    The defaults fit within Kubernetes' default 30 s termination grace period.
    """

    drain_seconds: int = Field(default=20, ge=0)
    """Requests in flight get this long to finish; then they are cancelled."""
    audit_flush_seconds: float = Field(default=5.0, ge=0)
    """Queued audit rows get this long to reach Postgres; rows still unwritten after it are
    logged one by one and counted (`bulkhead.audit.unwritten`)."""


class LimitSettings(BaseModel):
    """Input bounds enforced on every endpoint, and how replicas share rate-limit counts."""

    rate_limit_sync_seconds: float = Field(default=0.25, gt=0, le=10)
    """Local admission (manifest `limits.admission: local`, the default): how often each
    replica pushes the requests it counted and reads back the shared counts, in one round trip
    per store. Over-admission per window is at most what the other replicas admit in one
    interval plus one round trip (docs/rate-limits.md): at 0.25 s and 10 requests/s on a
    tenant per replica, 2-3 requests per other replica, for 4 statements/s per replica."""

    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Any request body but a multipart upload (JSON ingestion included)."""
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    """A whole multipart upload to `POST /v1/documents`, all parts included."""
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    """One uploaded file."""
    max_files_per_request: int = Field(default=20, ge=1)
    max_pdf_pages: int = Field(default=2_000, ge=1)
    max_documents_per_request: int = Field(default=100, ge=1)
    max_document_chars: int = Field(default=1_000_000, ge=1)
    max_title_chars: int = Field(default=500, ge=1)
    max_metadata_keys: int = Field(default=32, ge=0)
    max_query_chars: int = Field(default=4_000, ge=1)
    max_top_k: int = Field(default=50, ge=1)
    default_top_k: int = Field(default=5, ge=1)


class HttpSettings(BaseModel):
    """The HTTP edge: how long a client may take to send a request, CORS, the API document."""

    header_read_timeout_seconds: float = Field(default=10.0, gt=0)
    """From connection (or the previous response) to the end of the request's headers."""
    body_read_timeout_seconds: float = Field(default=60.0, gt=0)
    """From the start of a request to the last byte of its body (408 after that)."""
    body_idle_timeout_seconds: float = Field(default=15.0, gt=0)
    """Longest wait for the next piece of a body that is still coming (408 after that)."""
    max_json_depth: int = Field(default=32, ge=4, le=256)
    """Deepest nesting of arrays and objects any JSON body may have (400 deeper)."""
    cors_allowed_origins: list[str] = []
    """Origins a browser may call the API from (`https://app.example.com`). Empty: no CORS
    headers at all, so browsers refuse cross-origin calls (the default)."""
    openapi_ui: bool | None = None
    """Serve a browsable API UI at `/schema`. Empty: in dev mode only. The JSON document
    (`/schema/openapi.json`) is always served."""


class ChunkingSettings(BaseModel):
    """Chunker geometry, in characters."""

    target_chars: int = Field(default=1_200, ge=100)
    overlap_chars: int = Field(default=150, ge=0)


class TelemetrySettings(BaseModel):
    """OpenTelemetry. Export is on when an OTLP endpoint is configured."""

    service_name: str = "bulkhead"
    otlp_endpoint: str | None = None
    """OTLP/HTTP base URL. Empty: `OTEL_EXPORTER_OTLP_ENDPOINT`, else no export."""


class LlmSettings(BaseModel):
    """The provider chain: timeouts, retries, circuit breakers, prices."""

    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    first_token_timeout_seconds: float = Field(default=10.0, gt=0)
    """A streamed attempt with no content token by then is abandoned (docs/llm-providers.md)."""
    hedge_after_seconds: float = Field(default=10.0, gt=0)
    """A plain answer not in by then starts the next chain entry alongside; first one wins."""
    attempt_timeout_seconds: float = Field(default=30.0, gt=0)
    request_deadline_seconds: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    """Retries of one chain entry (429, 5xx, broken connections; a timeout only on the last
    entry) before failover."""
    backoff_base_seconds: float = Field(default=0.2, ge=0)
    backoff_cap_seconds: float = Field(default=2.0, ge=0)
    retry_after_cap_seconds: float = Field(default=5.0, ge=0)
    """A Retry-After longer than this fails over instead of waiting."""
    unavailable_retry_after_seconds: int = Field(default=5, ge=1)
    breaker_consecutive_failures: int = Field(default=5, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_window: int = Field(default=20, ge=1)
    breaker_min_calls: int = Field(default=10, ge=1)
    breaker_open_seconds: float = Field(default=30.0, gt=0)
    max_output_tokens: int = Field(default=1024, ge=1)
    embedding_batch_size: int = Field(default=256, ge=1, le=2048)
    """Texts per embeddings request (the OpenAI API takes up to 2048 inputs per call)."""
    prices: dict[str, tuple[float, float]] = {
        "openai/gpt-4o-mini": (0.15, 0.60),
        "openai/gpt-4o": (2.50, 10.00),
        "openai/gpt-4.1-mini": (0.40, 1.60),
        "anthropic/claude-haiku-4-5": (1.00, 5.00),
        "anthropic/claude-sonnet-4-5": (3.00, 15.00),
    }
    """USD per million (input, output) tokens by `provider/model`; unlisted models cost 0."""


class ChatSettings(BaseModel):
    """Conversation history sent with each question (estimated tokens: ~4 characters each)."""

    history_tokens: int = Field(default=2_000, ge=0)
    """Budget for earlier turns when a model has no entry in `history_tokens_by_model`."""
    history_tokens_by_model: dict[str, int] = {}
    """Budgets by `provider/model`, e.g. `{"openai/gpt-4.1-mini": 16000}`. A request uses the
    smallest budget among the chain entries that may answer it, so the history fits whichever
    one does."""
    history_max_messages: int = Field(default=20, ge=0)
    """At most this many stored messages are read back for a follow-up question."""
    key_cache_size: int = Field(default=1_024, ge=1)
    """Unwrapped tenant data keys kept in memory (keyed by the wrapped key, so a destroyed
    or rewrapped key is never served from the cache)."""


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="BULKHEAD_", env_nested_delimiter="__", extra="ignore"
    )

    dev: bool = False
    """Dev mode: embedded defaults, generated keys, the dev issuer and its JWKS."""
    data_dir: Path = Path(".bulkhead")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    """Processes `bulkhead serve` runs (`--workers`). More than one needs a Qdrant server
    (`vectors.qdrant.url`); each process has its own pools: N x `db.pool_max` connections."""
    tenants_dir: Path = Path("tenants")
    redis_url: str | None = None
    """`BULKHEAD_REDIS_URL`: rate-limit counters in Redis instead of Postgres."""

    db: DatabaseSettings = DatabaseSettings()
    vectors: VectorSettings = VectorSettings()
    secrets: SecretsSettings = SecretsSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    limits: LimitSettings = LimitSettings()
    http: HttpSettings = HttpSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    llm: LlmSettings = LlmSettings()
    chat: ChatSettings = ChatSettings()

    @model_validator(mode="after")
    def _conventional_env_names(self) -> Settings:
        if self.db.url is None and os.environ.get("DATABASE_URL"):
            self.db.url = os.environ["DATABASE_URL"]
        if self.telemetry.otlp_endpoint is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            self.telemetry.otlp_endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        qdrant = self.vectors.qdrant
        if self.vectors.backend == "qdrant" and not self.dev:
            # Local mode has no auth and one process; a server without a key is open to all.
            if not qdrant.url:
                raise ValueError("vectors.qdrant.url is required outside dev mode")
            if not qdrant.api_key_secret:
                raise ValueError("vectors.qdrant.api_key_secret is required outside dev mode")
        if (
            self.vectors.backend == "qdrant"
            and (qdrant.api_key_secret or "").startswith("platform/")
            and self.secrets.backend == "local"
        ):
            raise ValueError(
                "vectors.qdrant.api_key_secret: the local secrets backend stores tenant secrets"
                " only; keep the cluster key in the vault or aws backend"
            )
        return self

    @property
    def vector_path(self) -> Path:
        """Directory of the Qdrant Edge shard."""
        return self.vectors.path or self.data_dir / "qdrant"

    @property
    def qdrant_local_path(self) -> Path:
        """Directory of qdrant-client's local mode (when no server URL is set)."""
        return self.vectors.qdrant.path or self.data_dir / "qdrant-local"

    @property
    def dense_vector_root(self) -> Path:
        """Directory of the dense embedding spaces' shards (one per model and size)."""
        path = self.vector_path
        return path.with_name(f"{path.name}-dense")

    @property
    def master_key_path(self) -> Path:
        """File holding the local secrets backend's key-encryption key."""
        return self.secrets.master_key_file or self.data_dir / "master.key"

    @property
    def service_signing_key_path(self) -> Path:
        """PEM file of the Ed25519 key that signs exchanged service tokens."""
        return self.auth.service_signing_key_file or self.data_dir / "service-signing.pem"

    @property
    def dev_signing_key_path(self) -> Path:
        """PEM file of the dev issuer's Ed25519 signing key."""
        return self.auth.dev_signing_key_file or self.data_dir / "dev-issuer.pem"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
