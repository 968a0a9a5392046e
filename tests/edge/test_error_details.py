"""Error details a person can act on: the service's words intact, client secrets not echoed.

The scrubber used to treat any word after "token" as a credential: "token algorithm not
accepted" reached the caller as "token [REDACTED] not accepted". And a credential-shaped
string glued to an underscore (`_sk-...`) slipped past the word boundary and was echoed back
in errors.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.secrets.scrub import REDACTED, scrub
from app.tenancy.scope import Role
from tests.conftest import AuthHeaders, TenantFactory, wait_for_tenant

Client = AsyncTestClient[Litestar]
REPO = Path(__file__).resolve().parents[2]


def service_messages() -> list[str]:
    """Every refusal message the identity layer writes.

    Read from its source, so a new message is covered without editing this test.
    """
    messages: list[str] = []
    for path in (REPO / "app" / "identity").glob("*.py"):
        messages += re.findall(
            r'(?:Unauthenticated|CredentialRefused)\(\s*"([^"]+)"', path.read_text()
        )
    return sorted(set(messages))


def test_the_identity_layer_has_messages_to_check() -> None:
    assert "token algorithm not accepted" in service_messages()
    assert len(service_messages()) >= 15


@pytest.mark.parametrize("message", service_messages())
def test_the_services_own_words_are_not_scrubbed(message: str) -> None:
    assert scrub(message) == message


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abcdefgh1234", "abcdefgh1234"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("token Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
        ("token abcdefghijklmnopqrstuvwxyzabcd", "abcdefghijklmnopqrstuvwxyzabcd"),
        ("filter._sk-proj-abcdefghijklmnop: bad key", "sk-proj-abcdefghijklmnop"),
        ("key x_bk_live_0123456789abcdef0123", "bk_live_0123456789abcdef0123"),
        ("id_eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln", "eyJzdWIiOiJhIn0"),
    ],
)
def test_values_are_still_scrubbed(text: str, secret: str) -> None:
    scrubbed = scrub(text)
    assert secret not in scrubbed
    assert REDACTED in scrubbed


@pytest.fixture
async def tenant(make_tenant: TenantFactory, app: Litestar, client: Client) -> str:
    tenant_id = await make_tenant("details")
    await wait_for_tenant(app, tenant_id)
    return tenant_id


def _segment(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def test_a_forged_token_is_told_what_is_wrong_in_plain_words(client: Client) -> None:
    forged = ".".join(
        [_segment({"alg": "HS256", "typ": "JWT", "kid": "k"}), _segment({"sub": "x"}), "c2ln"]
    )
    response = await client.get("/v1/documents", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "token algorithm not accepted"


@pytest.mark.parametrize("prefix", ["_", "-", "9", "."])
async def test_a_secret_sent_as_a_filter_key_is_never_echoed(
    client: Client, tenant: str, auth: AuthHeaders, prefix: str
) -> None:
    secret = "sk-proj-HTTPechoCanary0123456789"
    response = await client.post(
        "/v1/search",
        json={"query": "q", "filter": {f"{prefix}{secret}": "v"}},
        headers=auth(tenant, roles=(Role.SEARCH,)),
    )
    assert response.status_code == 422
    assert "filter." in response.json()["detail"]
    assert "HTTPechoCanary" not in response.text


async def test_a_secret_sent_as_an_unknown_field_is_never_echoed(
    client: Client, tenant: str, auth: AuthHeaders
) -> None:
    response = await client.post(
        "/v1/search",
        json={"query": "q", "_sk-proj-HTTPechoCanary0123456789": 1},
        headers=auth(tenant, roles=(Role.SEARCH,)),
    )
    assert response.status_code == 422
    assert "HTTPechoCanary" not in response.text
