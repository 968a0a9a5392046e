"""TenantScope: the pseudonymous end-user id and the attribution spans carry."""

from __future__ import annotations

import hashlib
import re

import pytest

from app.tenancy.scope import Role, TenantScope

SUBJECT = "alice@example.com"


def _scope(tenant_id: str = "acme", subject: str = SUBJECT, **kwargs: object) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject=subject, roles=frozenset({Role.CHAT}), **kwargs)  # type: ignore[arg-type]


def test_enduser_id_is_a_32_hex_hash_not_the_subject() -> None:
    enduser = _scope().enduser_id
    assert re.fullmatch(r"[0-9a-f]{32}", enduser)
    assert SUBJECT not in enduser
    assert "alice" not in enduser
    # Not the unsalted hash of the subject either, which anyone could recompute.
    assert enduser != hashlib.sha256(SUBJECT.encode()).hexdigest()[:32]


def test_enduser_id_is_stable_for_the_same_tenant_and_subject() -> None:
    a = _scope(credential_id="key-1", groups=("g1",))
    b = _scope(credential_id="key-2", groups=())
    assert a.enduser_id == b.enduser_id == _scope().enduser_id


def test_enduser_id_differs_across_tenants_for_the_same_subject() -> None:
    assert _scope("acme").enduser_id != _scope("globex").enduser_id


def test_enduser_id_differs_across_subjects() -> None:
    assert _scope(subject="alice").enduser_id != _scope(subject="bob").enduser_id


def test_tenant_subject_boundary_is_unambiguous() -> None:
    # ("ab", "c") and ("a", "bc") must not collide.
    assert _scope("ab", "c").enduser_id != _scope("a", "bc").enduser_id


def test_span_attributes_are_exactly_tenant_enduser_and_credential() -> None:
    scope = _scope(credential_id="apikey:0123")
    assert scope.span_attributes() == {
        "bulkhead.tenant.id": "acme",
        "enduser.id": scope.enduser_id,
        "bulkhead.credential.id": "apikey:0123",
    }


def test_span_attributes_never_contain_the_raw_subject() -> None:
    scope = _scope(subject="user-secret-subject-42", credential_id="cred-1")
    for key, value in scope.span_attributes().items():
        assert "user-secret-subject-42" not in value, key


def test_repr_hides_the_derived_enduser_field() -> None:
    scope = _scope()
    assert "_enduser_id" not in repr(scope)
    assert scope.enduser_id != scope.subject


def test_roles() -> None:
    scope = _scope()
    assert scope.has(Role.CHAT)
    assert not scope.has(Role.ADMIN)


def test_only_known_roles_are_granted_from_a_credential() -> None:
    # One parser for a token's roles claim, an exchanged token's and an API key's scopes.
    granted = Role.known(["chat", "superuser", "ADMIN", 7, None, "ingest", "chat"])
    assert granted == frozenset({Role.CHAT, Role.INGEST})
    assert Role.known([]) == frozenset()


def test_every_system_job_is_named_bulkhead_colon_job() -> None:
    scope = TenantScope.system("acme", actor="bulkhead:offboard", roles={Role.ADMIN})
    assert (scope.subject, scope.roles) == ("bulkhead:offboard", frozenset({Role.ADMIN}))
    for wrong in ("system:offboard", "bulkhead-reindex", "bulkhead:", "offboard"):
        with pytest.raises(ValueError, match="bulkhead:<job>"):
            TenantScope.system("acme", actor=wrong)


def test_a_platform_scope_names_no_tenant() -> None:
    # Tenant ids are 2-40 characters, so an empty one is nobody's: a platform job's scope
    # cannot stand in for a tenant (not even one called "platform").
    scope = TenantScope.platform(actor="bulkhead:qdrant")
    assert scope.tenant_id == ""
    assert scope.roles == frozenset()
    assert scope.subject == "bulkhead:qdrant"
