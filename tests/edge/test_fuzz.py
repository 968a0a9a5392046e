"""Schemathesis against a live server, over every operation of the served OpenAPI document.

Property-based requests (valid and invalid by the schema) with a dev token holding every role,
on a tenant made for the run in the run's own throwaway database: no 5xx, every response
conforms to its declared schema, status and content type. Bounded: a fixed number of examples
per operation, no shrinking, so the run fits the suite's time budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.identity.dev_issuer import DevIssuer
from app.tenancy.manifest import LimitsSpec
from app.tenancy.scope import Role
from tests.conftest import TenantFactory

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
REQUESTS: list[str] = []
SEEN: set[str] = set()
COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def fuzz_headers(
    live_server: str, make_tenant: TenantFactory, dev_issuer: DevIssuer
) -> dict[str, str]:
    """A tenant of the fuzzer's own (limits high enough not to throttle it), every role."""
    tenant = asyncio.run(make_tenant("fuzz", limits=LimitsSpec(requests_per_minute=100_000)))
    token = dev_issuer.mint(
        tenant=tenant,
        subject="fuzzer",
        roles=[Role.CHAT, Role.SEARCH, Role.INGEST, Role.ADMIN],
        ttl_seconds=3600,
    )
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=live_server) as http:
        while http.get("/v1/documents", headers=headers).status_code == 401:
            assert time.monotonic() < deadline, "the live server never learnt the tenant"
            time.sleep(0.05)
    return headers


# The committed document (equal to the served one: test_openapi checks), loaded at import so
# each operation is its own test; requests go to the live server.
schema = schemathesis.openapi.from_path(str(COMMITTED))


@pytest.fixture(scope="module", autouse=True)
def _report_count() -> Iterator[None]:
    yield
    print(f"\nfuzz: {len(REQUESTS)} requests over {len(SEEN)} operations")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_survives_schema_fuzzing(
    case: Any, live_server: str, fuzz_headers: dict[str, str]
) -> None:
    REQUESTS.append(f"{case.method} {case.path}")
    SEEN.add(case.operation.label)
    case.call_and_validate(base_url=live_server, headers=fuzz_headers, checks=CHECKS, timeout=30)
