"""Every error leaves as application/problem+json with a stable code, and a 500 says nothing.

A tiny Litestar app (Litestar's own test client, in process) raises each kind of error through
`EXCEPTION_HANDLERS`; no Bulkhead service or database is involved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar, get, post
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.params import FromPath, JSONBody
from litestar.testing import TestClient, create_test_client

from app.edge.handlers import EXCEPTION_HANDLERS, PROBLEM_JSON
from app.llm.router import ProvidersUnavailable
from app.problems import (
    ApiError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TenantMismatch,
    Unauthenticated,
    ValidationFailed,
)

CANARY = "secret-canary-xyz"

_API_ERRORS: dict[str, ApiError] = {
    "base": ApiError("plain api error"),
    "unauthenticated": Unauthenticated("token expired", reason="expired"),
    "forbidden": Forbidden("needs the ingest role"),
    "tenant-mismatch": TenantMismatch("path names another tenant"),
    "not-found": NotFound("no document 'd-1'"),
    "validation": ValidationFailed(
        "filter.x: bad", errors=[{"key": "filter.x", "message": "invalid key"}]
    ),
    "too-large": PayloadTooLarge("documents[0].text: at most 10 characters"),
    "unavailable": ServiceUnavailable("vector store is down"),
    "providers": ProvidersUnavailable("every provider failed", retry_after=17),
}


class Body(msgspec.Struct, forbid_unknown_fields=True):
    question: str


@get("/api-error/{kind:str}", sync_to_thread=False)
def raise_api_error(kind: FromPath[str]) -> None:
    raise _API_ERRORS[kind]


@get("/litestar/not-found", sync_to_thread=False)
def raise_not_found() -> None:
    raise NotFoundException(detail=f"missing {CANARY}")


@get("/litestar/not-authorized", sync_to_thread=False)
def raise_not_authorized() -> None:
    raise NotAuthorizedException(detail="no bearer token")


@get("/litestar/permission-denied", sync_to_thread=False)
def raise_permission_denied() -> None:
    raise PermissionDeniedException(detail="not allowed")


@get("/litestar/teapot", sync_to_thread=False)
def raise_teapot() -> None:
    raise HTTPException(status_code=418, detail="short and stout", headers={"X-Pot": "tea"})


@get("/litestar/rate-limited", sync_to_thread=False)
def raise_rate_limited() -> None:
    raise HTTPException(status_code=429, detail="slow down", headers={"Retry-After": "3"})


@post("/echo", sync_to_thread=False)
def echo(data: JSONBody[Body]) -> dict[str, str]:
    return {"question": data.question}


@get("/crash", sync_to_thread=False)
def crash() -> None:
    raise RuntimeError(CANARY)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Litestar]]:
    with create_test_client(
        route_handlers=[
            raise_api_error,
            raise_not_found,
            raise_not_authorized,
            raise_permission_denied,
            raise_teapot,
            raise_rate_limited,
            echo,
            crash,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        debug=False,
    ) as test_client:
        yield test_client


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:bulkhead:problem:{code}"
    assert body["title"]
    assert body["instance"] == response.request.url.path
    return body


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("base", 400, "bad_request"),
        ("unauthenticated", 401, "unauthenticated"),
        ("forbidden", 403, "forbidden"),
        ("tenant-mismatch", 403, "tenant_mismatch"),
        ("not-found", 404, "not_found"),
        ("validation", 422, "validation_error"),
        ("too-large", 413, "payload_too_large"),
        ("unavailable", 503, "unavailable"),
        ("providers", 503, "providers_unavailable"),
    ],
)
def test_api_errors_become_problems_with_stable_codes(
    client: TestClient[Litestar], kind: str, status: int, code: str
) -> None:
    body = _problem(client.get(f"/api-error/{kind}"), status, code)
    assert body["detail"] == _API_ERRORS[kind].detail


def test_validation_failed_carries_its_field_errors(client: TestClient[Litestar]) -> None:
    body = _problem(client.get("/api-error/validation"), 422, "validation_error")
    assert body["errors"] == [{"key": "filter.x", "message": "invalid key"}]


def test_errors_member_is_absent_when_there_are_none(client: TestClient[Litestar]) -> None:
    body = _problem(client.get("/api-error/forbidden"), 403, "forbidden")
    assert "errors" not in body


def test_unauthenticated_carries_www_authenticate(client: TestClient[Litestar]) -> None:
    response = client.get("/api-error/unauthenticated")
    _problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == 'Bearer realm="bulkhead"'


def test_providers_unavailable_carries_retry_after(client: TestClient[Litestar]) -> None:
    response = client.get("/api-error/providers")
    _problem(response, 503, "providers_unavailable")
    assert response.headers["retry-after"] == "17"


def test_providers_unavailable_error_object() -> None:
    error = ProvidersUnavailable("all down", retry_after=5)
    assert isinstance(error, ApiError)
    assert error.status == 503
    assert error.headers == {"Retry-After": "5"}


def test_unknown_route_is_not_found(client: TestClient[Litestar]) -> None:
    body = _problem(client.get("/no/such/route"), 404, "not_found")
    assert body["detail"] == "no such resource"


def test_litestar_not_found_detail_is_not_echoed(client: TestClient[Litestar]) -> None:
    response = client.get("/litestar/not-found")
    _problem(response, 404, "not_found")
    assert CANARY not in response.text


def test_litestar_not_authorized_is_unauthenticated(client: TestClient[Litestar]) -> None:
    response = client.get("/litestar/not-authorized")
    _problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == 'Bearer realm="bulkhead"'


def test_litestar_permission_denied_is_forbidden(client: TestClient[Litestar]) -> None:
    _problem(client.get("/litestar/permission-denied"), 403, "forbidden")


def test_wrong_method_is_method_not_allowed(client: TestClient[Litestar]) -> None:
    _problem(client.delete("/echo"), 405, "method_not_allowed")


def test_other_http_exceptions_keep_status_and_headers(client: TestClient[Litestar]) -> None:
    response = client.get("/litestar/rate-limited")
    _problem(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "3"

    response = client.get("/litestar/teapot")
    body = _problem(response, 418, "error")
    assert body["detail"] == "short and stout"
    assert response.headers["x-pot"] == "tea"


@pytest.mark.parametrize(
    "content",
    [
        b'{"question": "q", "tenant_id": "other"}',
        b'{"question": 5}',
        b"{}",
        b"[]",
    ],
)
def test_bad_body_is_validation_error(client: TestClient[Litestar], content: bytes) -> None:
    response = client.post("/echo", content=content, headers={"content-type": "application/json"})
    body = _problem(response, 422, "validation_error")
    assert body["errors"]
    for error in body["errors"]:
        assert set(error) <= {"key", "message", "source"}
        # Each field is named where a person reads it, and in plain words.
        assert error["key"] in body["detail"]
        assert error["source"] == "body"


def test_malformed_json_is_bad_request(client: TestClient[Litestar]) -> None:
    response = client.post(
        "/echo", content=b"not json", headers={"content-type": "application/json"}
    )
    _problem(response, 400, "bad_request")


def test_good_body_passes(client: TestClient[Litestar]) -> None:
    response = client.post("/echo", json={"question": "q"})
    assert response.status_code == 201
    assert response.json() == {"question": "q"}


def test_unexpected_error_is_a_bare_500_that_reveals_nothing(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="app.edge.handlers"):
        response = client.get("/crash")
    body = _problem(response, 500, "internal_error")
    assert CANARY not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert set(body) == {"type", "title", "status", "code", "detail", "instance"}
    # The failure is logged for operators, with the exception attached.
    records = [r for r in caplog.records if r.name == "app.edge.handlers"]
    assert records
    assert records[0].exc_info is not None
    assert CANARY in str(records[0].exc_info[1])
