"""One door per store: each store is reached for a tenant through one place, from a TenantScope.

Postgres: only `app.db.pool` arms Row-Level Security, and only from a scope. Vectors: both
adapters take every condition from `app.vectors.scoping` (`forced_condition`) and only
translate it. Secrets: every store is a `GuardedBackend`, whose `get`/`put`/`delete` check the
ref against the scope before the store sees it. Read from the source, like the layer test: a
second place that sets `bulkhead.tenant_id`, an adapter that builds a filter of its own, or a
store with a read of its own would be a second door.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from app.db import pool
from app.secrets.aws import AwsSecretsBackend
from app.secrets.backend import GuardedBackend
from app.secrets.env import EnvSecretsBackend
from app.secrets.local import LocalSecretsBackend
from app.secrets.vault import VaultSecretsBackend
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
    reindex = TenantScope.system("acme", actor="bulkhead:reindex", roles={Role.INGEST})
    assert reindex.roles == frozenset({Role.INGEST})
    person = TenantScope.operator("acme")
    assert person.subject.startswith("cli:")
    assert person.roles == frozenset({Role.ADMIN})


ADAPTERS = ("app/vectors/edge.py", "app/vectors/qdrant_server.py")
TRANSLATORS = frozenset({"edge_filter", "_edge_clause", "_client_filter", "_client_clause"})
"""Each adapter's translation of a `scoping` condition into its client's types."""
NATIVE_CONDITIONS = frozenset(
    f"{client}.{kind}"
    for client in ("qe", "models")
    for kind in ("Filter", "FieldCondition", "HasIdCondition", "IsEmptyCondition", "MatchValue")
)
SCOPING_CLAUSES = frozenset(
    {"FieldEquals", "FieldIn", "FieldBelow", "FieldEmpty", "HasId", "AllOf", "AnyOf"}
)


def _calls_by_function(path: str) -> list[tuple[str, str]]:
    """(enclosing function, called name) of every call in the module."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    calls: list[tuple[str, str]] = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            calls.extend(
                (function.name, ast.unparse(node.func))
                for node in ast.walk(function)
                if isinstance(node, ast.Call)
            )
    return calls


def test_vector_adapters_build_no_condition_of_their_own() -> None:
    """Native filters only in the translators, and no clause outside `scoping`.

    Together: every filter an adapter sends is the translation of a condition `scoping`
    made, and `scoping.forced_condition` is where the tenant clause of each one comes from.
    """
    for path in ADAPTERS:
        calls = _calls_by_function(path)
        native = {function for function, name in calls if name in NATIVE_CONDITIONS}
        assert native <= TRANSLATORS, (path, native - TRANSLATORS)
        assert not {name for _, name in calls} & SCOPING_CLAUSES, path
        assert "forced_condition" in {name for _, name in calls}, path


def test_every_secrets_store_is_reached_through_the_guarded_path() -> None:
    stores = (AwsSecretsBackend, EnvSecretsBackend, LocalSecretsBackend, VaultSecretsBackend)
    defined = {
        node.name
        for path in (ROOT / "app" / "secrets").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name.endswith("SecretsBackend")
    }
    assert defined - {"SecretsBackend"} == {store.__name__ for store in stores}
    for store in stores:
        assert issubclass(store, GuardedBackend), store.__name__
        own = set(vars(store))
        assert not own & {"get", "put", "delete", "_guard"}, store.__name__


def test_the_ref_check_runs_in_the_guarded_path_and_the_cache_only() -> None:
    """The cache checks before it answers from memory; a store is checked by its guard."""
    assert _modules_containing("ensure_ref_allowed(") == [
        "app/secrets/backend.py",
        "app/secrets/cache.py",
        "app/secrets/values.py",
    ]
