"""One door per store: tenant context reaches Postgres through one module, from a TenantScope.

Read from the source, like the layer test: a second place that sets `bulkhead.tenant_id` (or
a caller that hands the pool's helpers a bare string) would be a second door to check.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from app.db import pool
from app.tenancy.scope import Role, TenantScope

ROOT = Path(__file__).resolve().parents[2]


def _modules_containing(text: str) -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "app").rglob("*.py")
        if text in path.read_text(encoding="utf-8")
    )


def test_only_the_pool_module_arms_row_level_security() -> None:
    assert _modules_containing("set_config(") == ["app/db/pool.py"]


def test_the_tenant_helpers_take_a_scope_and_no_tenant_string() -> None:
    for helper in (pool.tenant_transaction, pool.within_tenant):
        parameters = inspect.signature(helper).parameters
        assert parameters["scope"].annotation == "TenantScope", helper.__name__
        assert not any("tenant" in name for name in parameters), helper.__name__
    public = {name for name, _ in inspect.getmembers(pool, inspect.isfunction)}
    assert "set_tenant" not in public


def test_system_and_operator_scopes_say_who_acts() -> None:
    job = TenantScope.system("acme", actor="bulkhead:offboard")
    assert (job.tenant_id, job.subject, job.roles, job.credential_id) == (
        "acme",
        "bulkhead:offboard",
        frozenset(),
        "",
    )
    reindex = TenantScope.system("acme", actor="bulkhead-reindex", roles={Role.INGEST})
    assert reindex.roles == frozenset({Role.INGEST})
    person = TenantScope.operator("acme")
    assert person.subject.startswith("cli:")
    assert person.roles == frozenset({Role.ADMIN})
