"""The Prometheus alert rules in deploy/prometheus/: valid, unit-tested, and named as exported.

`promtool` (Debian's `prometheus` package; `make test` unpacks it into the venv) checks the
rules and runs their unit tests (bulkhead-alerts.test.yml). The rest catches drift: every
metric and label the rules or their test series name must be one the OpenTelemetry collector
exports for an instrument that app/ declares and records, translated the way the collector's
`prometheus` exporter translates (its documented normalization: dots to underscores, unit
suffix, `_total` on counters).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.resources import Resource

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "bulkhead-alerts.yml"
RULE_TESTS = RULES_DIR / "bulkhead-alerts.test.yml"
PROMETHEUS_CONFIG = RULES_DIR / "prometheus.yml"
COLLECTOR_CONFIG = ROOT / "otel-collector.yaml"

# Meter methods, and whether the collector exports the instrument as a Prometheus counter
# (a monotonic sum: `_total`) or a histogram (`_bucket`, `_sum`, `_count`).
COUNTERS = frozenset({"create_counter", "create_observable_counter"})
HISTOGRAMS = frozenset({"create_histogram"})
GAUGES = frozenset(
    {"create_up_down_counter", "create_observable_up_down_counter"}
    | {"create_gauge", "create_observable_gauge"}
)
INSTRUMENT_METHODS = COUNTERS | HISTOGRAMS | GAUGES
RECORDING_METHODS = frozenset({"add", "record", "set"})

# The collector's unit words (pkg/translator/prometheus: "standard OpenTelemetry units").
UNIT_WORDS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "B": "bytes",
    "KB": "kilobytes",
    "MB": "megabytes",
    "GB": "gigabytes",
    "TB": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
    "$": "dollars",
}
# ...and after a `/` (m/s: meters_per_second).
PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
PER_UNIT_WORDS |= {"mo": "month", "y": "year"}
# Labels the exporter adds besides the data point's attributes.
EXPORTER_LABELS = frozenset({"job", "instance", "otel_scope_name", "otel_scope_version"})
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "inf", "nan"}
    | {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


# --------------------------------------------------------------------------- promtool


def _promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    # `make test` puts it next to the venv's interpreter, which need not be on PATH.
    beside = Path(sys.executable).with_name("promtool")
    if beside.is_file():
        return str(beside)
    pytest.fail(
        "promtool not found: run `make test` (it unpacks promtool from Debian's `prometheus`"
        " package into .venv/bin), or install that package (`apt-get install prometheus`)"
    )


def _run_promtool(*args: str) -> str:
    completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [_promtool(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=RULES_DIR,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    return output


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in _run_promtool("check", "rules", RULES.name)


def test_promtool_checks_the_prometheus_config_and_its_rule_files() -> None:
    output = _run_promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert "1 rule files found" in output


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in _run_promtool("test", "rules", RULE_TESTS.name)


# ----------------------------------------------------------------- the rules and tests


def _yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), path
    return loaded


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = _yaml(RULE_TESTS)["tests"]
    return tests


def test_the_prometheus_config_loads_these_rules() -> None:
    assert _yaml(PROMETHEUS_CONFIG)["rule_files"] == [RULES.name]
    assert _yaml(RULE_TESTS)["rule_files"] == [RULES.name]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """A rule whose test only ever expects silence would pass with a misspelt metric."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in _rule_tests():
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert names, "no alerts found"
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert firing | quiet <= names, "tests name alerts that do not exist"


def test_the_operations_guide_lists_every_alert() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = {alert["alert"] for alert in _alerts() if f"`{alert['alert']}`" not in guide}
    assert missing == set(), "docs/operations.md, section 4, does not list these alerts"


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for alert in _alerts():
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["annotations"]["description"], alert["alert"]


# ------------------------------------------------------------- what the collector exports


def _prometheus_exporter() -> dict[str, Any]:
    config = _yaml(COLLECTOR_CONFIG)
    assert "prometheus" in config["service"]["pipelines"]["metrics"]["exporters"]
    exporter: dict[str, Any] = config["exporters"]["prometheus"] or {}
    return exporter


def test_the_collector_exports_metrics_with_the_names_the_rules_use() -> None:
    """The translation below assumes these settings of the collector's prometheus exporter."""
    exporter = _prometheus_exporter()
    assert exporter.get("add_metric_suffixes", True) is True
    assert exporter.get("translation_strategy", "UnderscoreEscapingWithSuffixes") == (
        "UnderscoreEscapingWithSuffixes"
    )
    # The alerts group by service_instance_id, a resource attribute.
    assert exporter["resource_to_telemetry_conversion"]["enabled"] is True


def _sanitize(name: str) -> str:
    """Unsupported characters become `_`; repeated, leading and trailing `_` are dropped."""
    return re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_:]", "_", name)).strip("_")


def _unit_suffix(unit: str) -> str:
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()  # annotations such as {row} are dropped
    if not unit:
        return ""
    main, _, per = unit.partition("/")
    words = [UNIT_WORDS.get(main, re.sub(r"[^a-zA-Z0-9]", "", main))]
    if per:
        words += ["per", PER_UNIT_WORDS.get(per, re.sub(r"[^a-zA-Z0-9]", "", per))]
    return "_".join(word for word in words if word)


def prometheus_name(name: str, unit: str, method: str, namespace: str = "") -> str:
    """The metric family name the collector's prometheus exporter gives an instrument."""
    family = _sanitize(f"{namespace}_{name}" if namespace else name)
    suffix = _unit_suffix(unit)
    if unit == "1" and method in GAUGES:
        suffix = "ratio"
    elif unit == "1":
        suffix = ""
    if suffix and not family.endswith(f"_{suffix}"):
        family += f"_{suffix}"
    if method in COUNTERS and not family.endswith("_total"):
        family += "_total"
    return family


@pytest.mark.parametrize(
    ("name", "unit", "method", "expected"),
    [
        # The examples of the collector's translator documentation.
        ("system.filesystem.usage", "By", "create_gauge", "system_filesystem_usage_bytes"),
        ("system.network.dropped", "{packets}", "create_counter", "system_network_dropped_total"),
        ("system.memory.utilization", "1", "create_gauge", "system_memory_utilization_ratio"),
        ("astro.light.speed", "m/s", "create_gauge", "astro_light_speed_meters_per_second"),
        ("system.processes.created", "", "create_counter", "system_processes_created_total"),
        ("(lambda).function.executions(#)", "", "create_gauge", "lambda_function_executions"),
        ("http.server.duration", "s", "create_histogram", "http_server_duration_seconds"),
    ],
)
def test_prometheus_name_follows_the_collector(
    name: str, unit: str, method: str, expected: str
) -> None:
    assert prometheus_name(name, unit, method) == expected


# ----------------------------------------------------------- what app/ declares and records


@dataclass(frozen=True, slots=True)
class Instrument:
    """One instrument declared in app/, and the attribute keys it is recorded with."""

    name: str
    unit: str
    method: str
    module: str
    variable: str
    recordings: int = 0
    attributes: frozenset[str] = frozenset()


Scope = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(APP.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _literal(node: ast.expr | None, what: str, path: Path) -> str:
    assert isinstance(node, ast.Constant), f"{path}: {what} is not a literal; extend this test"
    assert isinstance(node.value, str), f"{path}: {what} is not a string"
    return node.value


def _declared(path: Path, tree: ast.Module) -> Iterator[Instrument]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not (isinstance(call.func, ast.Attribute) and call.func.attr in INSTRUMENT_METHODS):
            continue
        (target,) = node.targets
        assert isinstance(target, ast.Name), f"{path}: instrument not assigned to a name"
        unit = next((kw.value for kw in call.keywords if kw.arg == "unit"), None)
        yield Instrument(
            name=_literal(call.args[0] if call.args else None, "instrument name", path),
            unit=_literal(unit, "unit", path) if unit is not None else "",
            method=call.func.attr,
            module=module,
            variable=target.id,
        )


def _sees(tree: ast.Module, instrument: Instrument, own: bool) -> bool:
    """Whether a module is the instrument's or imports its variable."""
    return own or any(
        isinstance(node, ast.ImportFrom)
        and node.module == instrument.module
        and any(alias.name == instrument.variable for alias in node.names)
        for node in ast.walk(tree)
    )


def _recordings(tree: ast.Module, variable: str) -> Iterator[tuple[ast.Call, Scope]]:
    """`VARIABLE.add(...)`/`.record(...)` calls, each with the innermost function it is in."""
    scopes: dict[ast.AST, Scope] = {}
    for scope in ast.walk(tree):
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            # ast.walk is breadth-first: inner functions come later and win.
            scopes |= dict.fromkeys(ast.walk(scope), scope)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in RECORDING_METHODS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == variable
        ):
            yield node, scopes.get(node, tree)


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _assigned_keys(name: str, scope: Scope, tree: ast.Module) -> set[str]:
    """Keys of what `name` is bound to in `scope`, and of `name["key"] = ...` there."""
    keys: set[str] = set()
    bound = False
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id == name:
                    bound = True
                    keys |= _attribute_keys(node.value, scope, tree)
                elif (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == name
                    and (key := _string(target.slice)) is not None
                ):
                    keys.add(key)
    assert bound, f"cannot follow the attributes `{name}`; extend this test"
    return keys


def _attribute_keys(expr: ast.expr, scope: Scope, tree: ast.Module) -> set[str]:
    """Attribute keys an expression evaluates to: dict literals, names bound to them, helpers.

    Anything else fails the test: a label check that silently saw no keys would pass blind.
    """
    if isinstance(expr, ast.Dict):
        keys = {key for node in expr.keys if (key := _string(node)) is not None}
        for key_node, value in zip(expr.keys, expr.values, strict=True):
            if key_node is None:  # {**other, ...}
                keys |= _attribute_keys(value, scope, tree)
        return keys
    if isinstance(expr, ast.Name):
        return _assigned_keys(expr.id, scope, tree)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name | ast.Attribute):
        helper = expr.func.id if isinstance(expr.func, ast.Name) else expr.func.attr
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == helper:
                returns = [r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value]
                return {key for value in returns for key in _attribute_keys(value, node, tree)}
    raise AssertionError(f"cannot follow the attributes {ast.unparse(expr)}; extend this test")


def _recorded(instrument: Instrument, trees: list[tuple[Path, ast.Module]]) -> Instrument:
    recordings = 0
    keys: set[str] = set()
    own = instrument.module.replace(".", "/") + ".py"
    for path, tree in trees:
        if not _sees(tree, instrument, own=path.relative_to(ROOT).as_posix() == own):
            continue
        for call, scope in _recordings(tree, instrument.variable):
            recordings += 1
            if len(call.args) > 1:
                keys |= _attribute_keys(call.args[1], scope, tree)
    return replace(instrument, recordings=recordings, attributes=frozenset(keys))


@cache
def instruments() -> tuple[Instrument, ...]:
    """Every instrument app/ declares, with how often and with which attributes it is recorded."""
    trees = list(_modules())
    found = [
        _recorded(declared, trees) for path, tree in trees for declared in _declared(path, tree)
    ]
    assert found, "no instruments found in app/"
    return tuple(found)


def _label(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _resource_labels() -> frozenset[str]:
    """Resource attributes (service.instance.id...) the SDK sends and the exporter copies."""
    attributes = Resource.create({"service.name": "bulkhead"}).attributes
    return frozenset(_label(key) for key in attributes)


@cache
def exported() -> dict[str, frozenset[str]]:
    """Each series name the collector exports for app/'s recorded instruments, with its labels."""
    namespace = _prometheus_exporter().get("namespace", "")
    common = EXPORTER_LABELS | _resource_labels()
    series: dict[str, frozenset[str]] = {}
    for instrument in instruments():
        if not instrument.recordings:
            continue
        family = prometheus_name(instrument.name, instrument.unit, instrument.method, namespace)
        labels = common | {_label(key) for key in instrument.attributes}
        if instrument.method in HISTOGRAMS:
            series[f"{family}_bucket"] = labels | {"le"}
            series[f"{family}_sum"] = labels
            series[f"{family}_count"] = labels
        else:
            series[family] = labels
    return series


def test_app_declares_the_instruments_the_docs_describe() -> None:
    """The scan finds the real instruments (an empty or wrong scan would check nothing)."""
    assert set(exported()) >= {
        "bulkhead_auth_failures_total",
        "bulkhead_audit_unwritten_total",
        "bulkhead_llm_failovers_total",
        "gen_ai_client_operation_duration_seconds_count",
    }
    assert {"tenant", "reason"} <= exported()["bulkhead_auth_failures_total"]


# ------------------------------------------------------------------- names in the rules


@dataclass(frozen=True, slots=True)
class Names:
    """The metric names and label names an expression or series uses."""

    metrics: frozenset[str]
    selected: dict[str, frozenset[str]]  # metric -> labels in its selector braces
    grouped: frozenset[str]  # labels in by/without/on/ignoring/group_* clauses


def promql_names(expr: str) -> Names:
    """Metric and label names in a PromQL expression, without a full PromQL parser.

    Strings, selector braces, ranges and grouping clauses are taken out first; what remains
    that is neither a keyword nor followed by `(` (a function or aggregation) is a metric.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    selected: dict[str, set[str]] = {}
    for metric, matchers in SELECTOR.findall(text):
        selected.setdefault(metric, set()).update(MATCHER.findall(matchers))
    grouped = {
        label.strip() for clause in GROUPING.findall(text) for label in clause.split(",")
    } - {""}
    text = GROUPING.sub(" ", SELECTOR.sub(r" \1 ", text))
    text = re.sub(r"\[[^\]]*\]", " ", text)
    metrics = {
        word for word, call in IDENTIFIER.findall(text) if not call and word not in PROMQL_KEYWORDS
    }
    return Names(
        frozenset(metrics),
        {metric: frozenset(labels) for metric, labels in selected.items()},
        frozenset(grouped),
    )


def test_promql_names_reads_selectors_groupings_and_functions() -> None:
    names = promql_names(
        'sum by (reason) ((a_total{reason!="x",b="{y}"} unless max_over_time(a_total[1d] '
        "offset 10m)) or increase(c_seconds_count[10m])) > 0.05 * d"
    )
    assert names.metrics == {"a_total", "c_seconds_count", "d"}
    assert names.selected == {"a_total": {"reason", "b"}}
    assert names.grouped == {"reason"}


def test_every_metric_in_the_rules_is_exported_by_app() -> None:
    for alert in _alerts():
        names = promql_names(alert["expr"])
        assert names.metrics, alert["alert"]
        unknown = names.metrics - set(exported())
        assert unknown == set(), f"{alert['alert']}: not exported by app/: {sorted(unknown)}"


def test_every_label_in_the_rules_is_exported_with_its_metric() -> None:
    for alert in _alerts():
        names = promql_names(alert["expr"])
        for metric, labels in names.selected.items():
            unknown = labels - exported().get(metric, frozenset())
            assert unknown == set(), f"{alert['alert']}: {metric} has no {sorted(unknown)}"
        available = frozenset().union(*(exported().get(m, frozenset()) for m in names.metrics))
        unknown = names.grouped - available
        assert unknown == set(), f"{alert['alert']}: grouped by unknown {sorted(unknown)}"


def test_every_test_series_is_one_app_exports() -> None:
    """Fed names app/ never exports, the unit tests would prove nothing about production."""
    for test in _rule_tests():
        for series in test["input_series"]:
            names = promql_names(series["series"])
            (metric,) = names.metrics
            assert metric in exported(), f"{metric} is not exported by app/"
            unknown = names.selected.get(metric, frozenset()) - exported()[metric]
            assert unknown == set(), f"{series['series']}: unknown labels {sorted(unknown)}"
