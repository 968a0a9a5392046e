"""The document ACL rule (`app/retrieval/acl.py`) on its own: visibility, write targets."""

from __future__ import annotations

import pytest

from app.retrieval.acl import AclExcludesCaller, can_see, check_writable, document_name, target
from app.retrieval.repository import StoredDocument
from app.tenancy.scope import Role, TenantScope


def caller(*groups: str) -> TenantScope:
    return TenantScope(tenant_id="t", subject="s", roles=frozenset({Role.INGEST}), groups=groups)


def test_visibility_is_any_shared_group_or_no_acl() -> None:
    assert can_see(None, ())
    assert can_see(["hr", "board"], ("eng", "board"))
    assert not can_see(["hr"], ())
    assert not can_see(["hr"], ("eng",))


def test_a_new_key_is_drawn_whether_or_not_a_hidden_document_shares_the_id() -> None:
    hidden = [StoredDocument("pay", 7, ["hr"]), StoredDocument("pay~00ff00ff00ff00ff", 2, ["hr"])]
    for stored in ([], hidden):
        created = target(caller("eng"), "pay", stored)
        assert (created.version, created.retired) == (1, ())
        assert document_name(created.key) == "pay"
        assert (created.key[:4], len(created.key)) == ("pay~", len("pay~") + 16)
        assert created.key not in {s.key for s in stored}


def test_visible_documents_merge_into_the_most_revised_and_hidden_ones_are_left() -> None:
    stored = [
        StoredDocument("pay", 1, None),
        StoredDocument("pay~aa", 4, ["eng"]),
        StoredDocument("pay~bb", 9, ["hr"]),
    ]
    merged = target(caller("eng"), "pay", stored)
    assert (merged.key, merged.version, merged.retired) == ("pay~aa", 5, ("pay",))


def test_a_write_the_writer_could_not_see_is_refused_for_the_whole_batch() -> None:
    check_writable(caller(), [("a", None)])
    check_writable(caller("hr"), [("a", None), ("b", ("board", "hr"))])
    with pytest.raises(AclExcludesCaller) as refused:
        check_writable(caller("eng"), [("a", None), ("b", ("hr",))])
    assert refused.value.status == 403
    assert refused.value.detail.startswith("documents[1].acl: document 'b'")
