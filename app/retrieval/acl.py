"""Who may see and change which document: one rule for reads and for writes.

A document with `acl.groups` is visible to callers whose groups share one of them; a document
without is visible to the whole tenant. Roles say which operations a caller may run; groups
alone say on which documents. Every operation (list, search, chat, delete, re-ingest, upload)
treats a document the caller cannot see exactly as a missing one, and changes nothing of it:

- `admin` is no exception. It runs keys, usage and audit, none of which shows a document, and
  an admin credential (an API key, say) must not be a way around the groups the identity
  provider grants. Whoever must manage a group's documents gets the group.
- API keys (and the tokens exchanged for them) carry no groups, so they see and change
  tenant-wide documents only, exactly as they read.

A missing id on ingest creates the document, so an id the caller cannot see must too, or the
answer would tell that it exists. A document's identity is therefore its id *as the caller
sees it*: ingesting an id replaces every document under that id the caller can see (they become
one) and, when it sees none, creates one beside any it cannot see. The stored key of a created
document is its id, `~` (never part of an id) and a random suffix, whether or not another
document shares the id, so neither the key nor the chunk ids derived from it tell a collision.
Documents written before keys existed keep their id as their key.

Nobody may write a document they could not see: its groups must include one of the writer's.
Else the writer could neither change nor delete it afterwards, and its next write of that id
would create a second document instead of replacing the first.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from app.problems import ApiError
from app.retrieval.repository import StoredDocument
from app.tenancy.scope import TenantScope

KEY_SEPARATOR = "~"
"""Between a document's id and its key's random suffix; document ids never contain it."""


class AclExcludesCaller(ApiError):
    """A write whose ACL groups leave the writer out: it could not see what it wrote."""

    status, code, title = 403, "acl_excludes_caller", "ACL excludes the caller"


def can_see(acl_groups: Sequence[str] | None, groups: Collection[str]) -> bool:
    """Whether a caller with `groups` may see a document with `acl_groups` (None: everyone)."""
    return acl_groups is None or any(group in groups for group in acl_groups)


def document_name(key: str) -> str:
    """The document id callers see for a stored key."""
    return key.partition(KEY_SEPARATOR)[0]


def check_writable(scope: TenantScope, acls: Sequence[tuple[str, tuple[str, ...] | None]]) -> None:
    """Refuse a batch if the caller could not see one of its documents once written.

    Decided from the request and the credential alone, before anything is read or written,
    so the answer is the same whatever the tenant stores.

    Args:
        scope: The writer.
        acls: (document id, ACL groups) per document of the batch, in request order.

    Raises:
        AclExcludesCaller: A document's groups share none with the writer's.
    """
    for position, (document_id, groups) in enumerate(acls):
        if not can_see(groups, scope.groups):
            where = f"documents[{position}].acl"
            raise AclExcludesCaller(
                f"{where}: document {document_id!r} would be readable only by groups you are"
                " not in, so you could not see, change or delete it; include one of your groups"
                " or leave `acl` out (tenant-wide)",
                errors=[{"key": where, "message": "shares no group with the caller"}],
            )


@dataclass(frozen=True, slots=True)
class Target:
    """Where a document's new version goes."""

    key: str
    version: int
    retired: tuple[str, ...] = ()
    """Other keys of the id the caller could see: merged into `key`, so deleted."""


def target(scope: TenantScope, name: str, stored: Sequence[StoredDocument]) -> Target:
    """The key and version a write of `name` by `scope` goes to, given every document under it.

    The documents the caller can see are replaced: the most revised one (the first key among
    equals) takes the new version, so no version number a caller has seen goes backwards, and
    the others are retired. With none visible, a new key is drawn whether or not hidden ones
    exist.
    """
    visible = [s for s in stored if can_see(s.acl_groups, scope.groups)]
    if not visible:
        return Target(_new_key(name, taken={s.key for s in stored}), 1)
    kept, *others = sorted(visible, key=lambda s: (-s.version, s.key))
    return Target(kept.key, kept.version + 1, tuple(sorted(s.key for s in others)))


def _new_key(name: str, *, taken: Collection[str]) -> str:
    # Drawn under the name's lock with every existing key known: never one already stored.
    while True:
        key = f"{name}{KEY_SEPARATOR}{secrets.token_hex(8)}"
        if key not in taken:
            return key
