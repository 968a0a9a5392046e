"""Layers point one way: every import in `app/` runs down the layers, none into the wiring.

The order below is the architecture. A module may import from its own package and from the
packages before it: earlier layers, and earlier packages of its own layer (the order inside a
layer is as binding as the order between layers, so there are no cycles anywhere). The wiring
modules build the service from everything else; only wiring imports them.

Every import counts: at module level, inside a function (lazy, for start-up time) and under
`TYPE_CHECKING`. A type named from a higher layer couples the lower one to it as surely as a
call does, and a lower layer that needs such a type is missing a protocol of its own.

The walk reads the source (no import runs), so the test is fast and sees lazy imports too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Config, the problem types every layer raises, the tenant scope and manifest.
    ("kernel", ("config", "problems", "tenancy")),
    # Postgres (and the tenant registry read from it), secrets, telemetry, redaction.
    ("stores", ("db", "secrets", "telemetry", "privacy")),
    # HTTP: the input boundary, problem+json rendering, route guards.
    ("edge", ("edge",)),
    # The domains, each on the ones before it.
    ("domains", ("audit", "identity", "limits", "llm", "vectors", "retrieval")),
    # Chat: retrieval-augmented answers over the domains.
    ("features", ("chat",)),
    # Tenant onboarding, offboarding, key rotation and checks, `bulkhead tenants`.
    ("lifecycle", ("lifecycle",)),
)
WIRING: frozenset[str] = frozenset({"openapi", "health", "resources", "main", "workers", "cli"})
"""Modules and packages that assemble the service; they may import anything, nothing them."""


@dataclass(frozen=True, slots=True)
class Import:
    """One `app.*` import: who imports what, where."""

    importer: str
    imported: str
    line: int
    type_checking: bool


def _rank() -> dict[str, int]:
    units = [unit for _, units in LAYERS for unit in units]
    return {unit: position for position, unit in enumerate(units)}


RANK = _rank()
WIRING_RANK = len(RANK)


def unit_of(module: str) -> str:
    """The package (or top-level module) of `app` that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def rank_of(unit: str) -> int:
    """The unit's place in the order; the wiring comes after everything."""
    return WIRING_RANK if unit in WIRING else RANK[unit]


def module_name(path: Path, root: Path) -> str:
    """`app/db/pool.py` -> `app.db.pool`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, root: Path) -> str:
    """The module an import binds: `app.db.pool.Connection` -> `app.db.pool`."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        base = root.joinpath(*parts[:end])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts[:end])
    return name


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(inner) for inner in ast.walk(node))
    return guarded


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every `app.*` import in one file, at any depth (lazy imports included)."""
    importer = module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    guarded = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "app" or name.startswith("app."):
                yield Import(importer, _resolve(name, root), node.lineno, id(node) in guarded)


def all_imports(root: Path = ROOT) -> list[Import]:
    """The `app.*` imports of every module under `root/app`."""
    found: list[Import] = []
    for path in sorted((root / "app").rglob("*.py")):
        found.extend(imports_of(path, root))
    return found


def upward(found: list[Import]) -> list[Import]:
    """The imports that run up the order or into the wiring from outside it."""
    return [
        item
        for item in found
        if unit_of(item.importer) != unit_of(item.imported)
        and rank_of(unit_of(item.imported)) >= rank_of(unit_of(item.importer))
        and not (unit_of(item.importer) in WIRING and unit_of(item.imported) in WIRING)
    ]


def test_every_package_of_app_has_a_place_in_the_order() -> None:
    units = {unit_of(module_name(path, ROOT)) for path in (ROOT / "app").rglob("*.py")}
    unplaced = sorted(units - RANK.keys() - WIRING - {"app"})
    assert not unplaced, f"add these to LAYERS or WIRING: {unplaced}"


def test_every_package_says_what_it_holds() -> None:
    silent = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "app").rglob("__init__.py"))
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not silent, f"packages without a docstring: {silent}"


def test_no_import_runs_up_the_layers_or_into_the_wiring() -> None:
    found = sorted(
        f"{item.importer} -> {item.imported} (line {item.line})" for item in upward(all_imports())
    )
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_the_walk_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The checker itself: an upward import is caught wherever in the file it hides."""
    package = tmp_path / "app" / "db"
    package.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text('"""app."""\n')
    (package / "__init__.py").write_text('"""db."""\n')
    (tmp_path / "app" / "main.py").write_text('"""main."""\n')
    (package / "pool.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from app.chat.service import ChatService\n"
        "def f():\n"
        "    import app.main\n"
        "from app.config import Settings\n"
    )
    found = upward(all_imports(tmp_path))
    assert [(i.imported, i.line, i.type_checking) for i in found] == [
        ("app.chat.service.ChatService", 3, True),
        ("app.main", 5, False),
    ]


def _importers_of(directory: str, package: str) -> list[str]:
    """Files under `directory` that import `package` (at any depth, like the walk above)."""
    found = []
    for path in sorted((ROOT / directory).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            if any(name == package or name.startswith(f"{package}.") for name in names):
                found.append(str(path.relative_to(ROOT)))
                break
    return found


def test_the_service_imports_none_of_the_tools_around_it() -> None:
    """`app` ships alone: the test doubles, benchmarks and scripts are not installed with it."""
    for tool in ("tests", "benchmarks", "scripts"):
        assert _importers_of("app", tool) == [], tool


def test_benchmarks_and_scripts_do_not_import_each_other() -> None:
    """Both may use `app` (and benchmarks the test doubles, e.g. the provider emulator)."""
    assert _importers_of("benchmarks", "scripts") == []
    assert _importers_of("scripts", "benchmarks") == []
    assert _importers_of("scripts", "tests") == []
