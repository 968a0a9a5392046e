"""CORS: off by default (no headers at all); configured origins get preflights answered."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.config import Settings
from app.main import create_app

Client = AsyncTestClient[Litestar]
ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.fixture(scope="module")
async def cors_client(settings: Settings, tmp_root: Path) -> AsyncIterator[Client]:
    configured = settings.model_copy(deep=True)
    configured.vectors.path = tmp_root / f"qdrant-cors-{uuid.uuid4().hex[:8]}"
    configured.http.cors_allowed_origins = [ORIGIN]
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


async def test_without_configuration_there_are_no_cors_headers(client: Client) -> None:
    response = await client.options("/v1/conversations", headers=PREFLIGHT)
    assert response.status_code == 204
    assert not any(name.startswith("access-control-") for name in response.headers)


@pytest.mark.parametrize("path", ["/v1/conversations", "/v1/admin/api-keys", "/v1/search"])
async def test_a_configured_origin_gets_its_preflight_answered(
    cors_client: Client, path: str
) -> None:
    response = await cors_client.options(path, headers=PREFLIGHT)
    assert response.status_code < 300, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_another_origin_is_not_allowed(cors_client: Client) -> None:
    response = await cors_client.options(
        "/v1/search", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert response.status_code < 500
    assert response.headers.get("access-control-allow-origin") != "https://evil.example"


async def test_an_actual_request_from_the_origin_exposes_the_trace_id(cors_client: Client) -> None:
    response = await cors_client.get("/healthz", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-trace-id" in response.headers["access-control-expose-headers"].lower()
