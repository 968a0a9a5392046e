"""Every operation and parameter of the served OpenAPI document, walked with hostile values.

No response is a 5xx; every refusal is problem+json naming the field.

The operations, parameters and body fields come from `/schema/openapi.json`, so a new
endpoint is walked the day it is added. Input classes: NUL, lone surrogates, invalid UTF-8
(raw in JSON, percent-escaped in paths and queries), JSON nested 10,000 deep, oversize
values, wrong types; multipart file names and field names likewise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant
from tests.edge.multipart import raw_multipart

Client = AsyncTestClient[Litestar]
ALL_ROLES = (Role.CHAT, Role.SEARCH, Role.INGEST, Role.ADMIN)
MARK = "__HOSTILE__"

# Raw JSON text put in place of a field's value (bytes: some are not valid UTF-8 on purpose).
BODY_VALUES: dict[str, bytes] = {
    "nul": b'"a\\u0000b"',
    "lone-surrogate": b'"\\ud800x"',
    "invalid-utf8": b'"\xff\xfe"',
    "deep-10k": b"[" * 10_000 + b"]" * 10_000,
    "oversize": b'"' + b"x" * 1_000_000 + b'"',
    "wrong-type-number": b"12345",
    "wrong-type-object": b'{"a": 1}',
    "wrong-type-array": b"[1, 2]",
    "null": b"null",
}
# Path and query values, already percent-encoded where that is the point.
PARAM_VALUES: dict[str, str] = {
    "nul": "a%00b",
    "invalid-utf8": "%FF%FE",
    "lone-surrogate-utf8": "%ED%A0%80",
    "oversize": "x" * 10_000,
    "wrong-type": "-1e999",
    "empty": "",
}


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, list[str | int]]]:
    """Every field of an example body (containers too): its JSON path and its key path."""
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            yield child, [key]
            for sub, keys in _leaves(item, child):
                yield sub, [key, *keys]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            child = f"{path}[{index}]"
            yield child, [index]
            for sub, keys in _leaves(item, child):
                yield sub, [index, *keys]


def _with_marker(example: Any, keys: list[str | int]) -> bytes:
    body = json.loads(json.dumps(example))
    target = body
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = MARK
    return json.dumps(body).encode()


def _names_the_field(problem: dict[str, Any], field: str, *, allow_body: bool) -> bool:
    """Whether an `errors` entry names `field` (or a part of it), and `detail` does too.

    `field` "*": what was replaced has no name of its own (a whole body, a part's name), and
    any field named will do. `body` names a field only for undecodable bodies.
    """
    root = field.split(".")[0].split("[")[0]
    for error in problem.get("errors") or []:
        key = str(error.get("key", ""))
        if key == "body":
            return allow_body or field == "*"
        # A multipart field is named by its file: `title` as `files[0].title`.
        component = re.search(rf"(^|[.\]]){re.escape(root)}($|[.\[])", key)
        if key and (field == "*" or component or field.startswith(key)):
            return key in problem["detail"]
    return False


@pytest.fixture(scope="module")
async def served(client: Client) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
async def headers(
    make_tenant: TenantFactory, app: Litestar, client: Client, auth: AuthHeaders
) -> dict[str, str]:
    tenant = await make_tenant("walk")
    await wait_for_tenant(app, tenant)
    return auth(tenant, roles=ALL_ROLES)


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _default_path_value(schema: dict[str, Any]) -> str:
    return "00000000-0000-0000-0000-000000000000" if schema.get("format") == "uuid" else "x1"


async def test_no_input_gets_a_5xx_and_every_refusal_names_the_field(
    client: Client, served: dict[str, Any], headers: dict[str, str]
) -> None:
    sent, failures = 0, []

    async def check(method: str, url: str, field: str, label: str, **kwargs: Any) -> None:
        nonlocal sent
        sent += 1
        response = await client.request(
            method, url, headers=headers | kwargs.pop("extra", {}), **kwargs
        )
        where = f"{method.upper()} {url[:80]} [{field} <- {label}]"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.status_code} {response.text[:200]}")
            return
        if response.status_code < 400:
            return
        if response.headers.get("content-type", "").split(";")[0] != "application/problem+json":
            failures.append(f"{where}: {response.status_code} not problem+json")
            return
        if response.status_code in (400, 422):
            problem = response.json()
            if not _names_the_field(problem, field, allow_body=response.status_code == 400):
                failures.append(f"{where}: {response.status_code} does not name it: {problem}")

    for template, item in served["paths"].items():
        for method, operation in item.items():
            parameters = operation.get("parameters", [])
            path_defaults = {
                p["name"]: _default_path_value(p.get("schema", {}))
                for p in parameters
                if p["in"] == "path"
            }
            base_url = _fill(template, path_defaults)
            for parameter in parameters:
                for label, value in PARAM_VALUES.items():
                    if parameter["in"] == "path":
                        if not value:
                            continue
                        url = _fill(template, path_defaults | {parameter["name"]: value})
                    else:
                        url = f"{base_url}?{quote(parameter['name'])}={value}"
                    content = None
                    if "requestBody" in operation:
                        example = operation["requestBody"]["content"].get("application/json", {})
                        content = json.dumps(example.get("example", {})).encode()
                    await check(
                        method,
                        url,
                        parameter["name"],
                        label,
                        content=content,
                        extra={"content-type": "application/json"} if content else {},
                    )
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if not body or "example" not in body:
                continue
            example = body["example"]
            for field, keys in [("*", []), *_leaves(example)]:
                for label, raw in BODY_VALUES.items():
                    content = (
                        raw
                        if not keys
                        else _with_marker(example, keys).replace(json.dumps(MARK).encode(), raw)
                    )
                    await check(
                        method,
                        base_url,
                        field,
                        label,
                        content=content,
                        extra={"content-type": "application/json"},
                    )
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form:
                for part, field, label in _hostile_parts(form["schema"]["properties"]):
                    content, content_type = raw_multipart(part)
                    await check(
                        method,
                        base_url,
                        field,
                        label,
                        content=content,
                        extra={"content-type": content_type},
                    )
    assert not failures, f"{len(failures)} of {sent} requests:\n" + "\n".join(failures[:40])
    assert sent > 450


FILE = (b'name="file"; filename="a.txt"', b"some words")
PART_NAMES: dict[str, bytes] = {
    "nul": b"a\x00b",
    "invalid-utf8": b"a\xff\xfe",
    "lone-surrogate-utf8": b"a\xed\xa0\x80",
    "oversize": b"n" * 10_000,
}


def _hostile_parts(
    properties: dict[str, Any],
) -> Iterator[tuple[list[tuple[bytes, bytes]], str, str]]:
    """Multipart bodies with one hostile file name, part name or text field each."""
    for label, raw in PART_NAMES.items():
        yield [(b'name="file"; filename="' + raw + b'.txt"', b"words")], "files[0]", label
        yield [FILE, (b'name="' + raw + b'"', b"v")], "*", label
    for name in properties:
        if name == "file":
            continue
        for label, raw in {
            "nul": b"a\x00b",
            "invalid-utf8": b"\xff",
            "deep-10k": b"[" * 10_000,
        }.items():
            yield [FILE, (f'name="{name}"'.encode(), raw)], name, label
