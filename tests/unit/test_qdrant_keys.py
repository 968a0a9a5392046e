"""Per-tenant Qdrant keys: the claims against Qdrant's documented JWT RBAC format.

Qdrant reads `sub`, `exp`, `access` (a global "r"/"m", or a list of {collection, access} with
"r", "rw" or "prw") and `value_exists` ({collection, matches: [{key, value}]}); since 1.16 it
rejects a `payload` restriction inside an access entry. These tests check the shape only: no
Qdrant server runs here, and qdrant-client's local mode ignores API keys, so server-side JWT
enforcement (access denied outside the listed collections, revocation through a missing
`value_exists` record) cannot be exercised in this repository.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from app.secrets.values import SecretValue
from app.vectors.qdrant_keys import read_claims, sign, tenant_key_claims

CLUSTER_KEY = SecretValue("cluster-key-for-tests-0123456789abcdef")


def _claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "tenant_id": "acme",
        "collections": ["bulkhead_t_acme"],
        "keys_collection": "bulkhead_keys",
        "key_id": "4f1c",
        "exp": 1_900_000_000,
    }
    values.update(overrides)
    return tenant_key_claims(**values)


def _keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys_anywhere(v)}
    return set()


def test_claims_have_exactly_the_documented_fields() -> None:
    claims = _claims()

    assert claims == {
        "sub": "bulkhead:acme",
        "exp": 1_900_000_000,
        "access": [{"collection": "bulkhead_t_acme", "access": "prw"}],
        "value_exists": {
            "collection": "bulkhead_keys",
            "matches": [
                {"key": "tenant_id", "value": "acme"},
                {"key": "key_id", "value": "4f1c"},
            ],
        },
    }


def test_no_payload_restriction_anywhere() -> None:
    # Qdrant >= 1.16 refuses a token whose access entry carries `payload`.
    assert "payload" not in _keys_anywhere(_claims())


def test_access_is_points_read_write_on_the_listed_collections_only() -> None:
    claims = _claims(collections=["bulkhead_shared"])
    assert isinstance(claims["access"], list)  # never the global "r"/"m" form
    assert claims["access"] == [{"collection": "bulkhead_shared", "access": "prw"}]
    assert "m" not in {entry["access"] for entry in claims["access"]}


def test_token_is_hs256_signed_with_the_cluster_key() -> None:
    token = sign(_claims(), CLUSTER_KEY)

    header = jwt.get_unverified_header(token.reveal())
    assert header == {"alg": "HS256", "typ": "JWT"}
    decoded = jwt.decode(
        token.reveal(), CLUSTER_KEY.reveal(), algorithms=["HS256"], options={"verify_exp": False}
    )
    assert decoded == _claims()
    assert isinstance(decoded["exp"], int)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token.reveal(), "another-key-0123456789abcdef0123", algorithms=["HS256"])


def test_read_claims_refuses_a_token_signed_by_another_key() -> None:
    forged = SecretValue(jwt.encode(_claims(), "another-key-0123456789abcdef0123", "HS256"))
    assert read_claims(forged, CLUSTER_KEY) is None
    assert read_claims(sign(_claims(), CLUSTER_KEY), CLUSTER_KEY) == _claims()


def test_the_token_never_prints_itself() -> None:
    token = sign(_claims(), CLUSTER_KEY)
    assert token.reveal() not in f"{token} {token!r}"
