"""ACLs guard writes: a document the caller cannot see is, to every operation, a missing one.

The real app, Postgres and Qdrant Edge. In each tenant pair, the first tenant holds `salaries`,
readable by the `hr` group only; the second tenant has no documents at all. An intruder of the
same tenant (a user outside `hr`, an `admin`, an API key) must get exactly the answers it gets
in the empty tenant, and leave the stored document, its row and its vectors, as they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.tenancy.scope import Role, TenantScope
from app.vectors.index import ChunkRecord
from tests.conftest import AuthHeaders

Client = AsyncTestClient[Litestar]
Headers = dict[str, str]

SECRET_TEXT = "Salary bands for narwhal engineers start at level four."
SALARIES = {"id": "salaries", "title": "Salaries", "text": SECRET_TEXT, "acl": {"groups": ["hr"]}}
SQUAT = {"id": "salaries", "title": "Squat", "text": "Narwhal squatting."}
WRITER = (Role.SEARCH, Role.INGEST)


@dataclass(frozen=True, slots=True)
class Intruder:
    """The same kind of credential in the tenant that holds `salaries` and in the empty one."""

    kind: str
    holder: Headers
    empty: Headers


@dataclass(frozen=True, slots=True)
class Stored:
    """A tenant's documents and chunks, read past the API."""

    rows: dict[str, dict[str, Any]]
    """By key (the row's primary key, the vectors' document id)."""
    chunks: dict[str, ChunkRecord]
    """By chunk id."""

    def keys_named(self, name: str) -> list[str]:
        return sorted(key for key in self.rows if key.split("~")[0] == name)


async def stored(app: Litestar, owner_pool: asyncpg.Pool, tenant: str) -> Stored:
    rows = await owner_pool.fetch(
        "SELECT id, title, acl_groups, version, chunk_count, content_sha256, created_by,"
        " updated_at FROM documents WHERE tenant_id = $1",
        tenant,
    )
    scope = TenantScope(tenant_id=tenant, subject="test", roles=frozenset())
    chunks: list[ChunkRecord] = []
    offset: str | None = None
    while True:
        page, offset = await app.state.resources.index.scroll_chunks(
            scope=scope, offset=offset, limit=256
        )
        chunks += page
        if offset is None:
            break
    return Stored({row["id"]: dict(row) for row in rows}, {c.chunk_id: c for c in chunks})


async def ingest(client: Client, headers: Headers, *documents: dict[str, Any]) -> Any:
    return await client.post("/v1/documents", json={"documents": list(documents)}, headers=headers)


async def search(client: Client, headers: Headers, query: str = "narwhal") -> list[dict[str, Any]]:
    response = await client.post("/v1/search", json={"query": query, "top_k": 50}, headers=headers)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def listing(client: Client, headers: Headers) -> list[dict[str, Any]]:
    response = await client.get("/v1/documents", params={"limit": "200"}, headers=headers)
    assert response.status_code == 200, response.text
    documents: list[dict[str, Any]] = response.json()["documents"]
    return documents


def without_times(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in d.items() if k not in {"created_at", "updated_at"}} for d in documents
    ]


async def api_key(client: Client, auth: AuthHeaders, tenant: str) -> Headers:
    response = await client.post(
        "/v1/admin/api-keys",
        json={"name": "sync-bot", "scopes": ["search", "ingest"]},
        headers=auth(tenant, roles=(Role.ADMIN,)),
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


@dataclass(frozen=True, slots=True)
class Scene:
    """The tenant whose `hr` group holds `salaries`, and how to look at it."""

    client: Client
    app: Litestar
    owner_pool: asyncpg.Pool
    auth: AuthHeaders
    tenant: str

    async def stored(self) -> Stored:
        return await stored(self.app, self.owner_pool, self.tenant)

    def member(self, user: str = "carol") -> Headers:
        return self.auth(self.tenant, user=user, roles=WRITER, groups=("hr",))

    def outsider(self) -> Headers:
        return self.auth(self.tenant, user="mallory", roles=WRITER)

    async def member_sees_the_original(self) -> bool:
        return SECRET_TEXT in {h["text"] for h in await search(self.client, self.member())}


@pytest.fixture
async def scene(
    client: Client,
    app: Litestar,
    owner_pool: asyncpg.Pool,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
) -> Scene:
    tenant, _ = tenant_pair
    created = Scene(client, app, owner_pool, auth, tenant)
    response = await ingest(client, created.member(), SALARIES)
    assert response.status_code == 201, response.text
    return created


@pytest.fixture(params=["user", "admin", "api_key"])
async def intruder(
    request: pytest.FixtureRequest,
    client: Client,
    tenant_pair: tuple[str, str],
    auth: AuthHeaders,
) -> Intruder:
    """A same-tenant caller with the ingest and search roles and no `hr` group."""
    tenant, empty = tenant_pair
    kind: str = request.param
    if kind == "user":
        return Intruder(
            kind,
            auth(tenant, user="mallory", roles=WRITER, groups=("eng",)),
            auth(empty, user="mallory", roles=WRITER, groups=("eng",)),
        )
    if kind == "admin":
        # `admin` is not above document ACLs: it runs keys, usage and audit, not documents.
        roles = (Role.ADMIN, *WRITER)
        return Intruder(
            kind, auth(tenant, user="root", roles=roles), auth(empty, user="root", roles=roles)
        )
    # A service credential carries no groups: it sees and changes tenant-wide documents only.
    return Intruder(kind, await api_key(client, auth, tenant), await api_key(client, auth, empty))


def assert_untouched(before: Stored, after: Stored, key: str) -> None:
    """The document stored under `key`: the same row, the same chunks (ids, version, ACL, text)."""
    assert after.rows.get(key) == before.rows[key]
    original = {i: c for i, c in before.chunks.items() if c.document_id == key}
    assert original
    assert {i: after.chunks.get(i) for i in original} == original


async def test_deleting_a_hidden_document_answers_as_for_a_missing_one_and_deletes_nothing(
    scene: Scene, intruder: Intruder
) -> None:
    client, before = scene.client, await scene.stored()

    hidden = await client.delete("/v1/documents/salaries", headers=intruder.holder)
    missing = await client.delete("/v1/documents/salaries", headers=intruder.empty)

    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert hidden.json() == missing.json()
    assert hidden.json()["code"] == "not_found"
    assert await scene.stored() == before
    assert [h["text"] for h in await search(client, scene.member())] == [SECRET_TEXT]


async def test_reingesting_a_hidden_id_creates_the_callers_own_document_and_changes_nothing(
    scene: Scene, intruder: Intruder
) -> None:
    client, before = scene.client, await scene.stored()
    (key,) = before.keys_named("salaries")
    mine = {"id": "salaries", "title": "My salaries", "text": "A narwhal lunch receipt."}

    hidden = await ingest(client, intruder.holder, mine)
    missing = await ingest(client, intruder.empty, mine)

    assert hidden.status_code == missing.status_code == 201, hidden.text
    assert hidden.json() == missing.json() == {"documents": [{"id": "salaries", "chunks": 1}]}
    after = await scene.stored()
    assert_untouched(before, after, key)
    # The intruder's document is its own, beside the hidden one (which it still cannot see).
    assert len(after.keys_named("salaries")) == 2
    assert without_times(await listing(client, intruder.holder)) == without_times(
        await listing(client, intruder.empty)
    )
    seen = await search(client, intruder.holder)
    assert [(h["document_id"], h["text"]) for h in seen] == [
        ("salaries", "A narwhal lunch receipt.")
    ]
    # Members still find the original, with its ACL; the intruder's is tenant-wide.
    assert {h["text"] for h in await search(client, scene.member())} == {
        SECRET_TEXT,
        "A narwhal lunch receipt.",
    }
    # Re-ingesting again replaces the intruder's own document, never the hidden one.
    again = await ingest(client, intruder.holder, {**mine, "text": "A narwhal dinner receipt."})
    assert again.status_code == 201, again.text
    assert_untouched(before, await scene.stored(), key)
    assert [(d["id"], d["version"]) for d in await listing(client, intruder.holder)] == [
        ("salaries", 2)
    ]
    assert [h["text"] for h in await search(client, intruder.holder)] == [
        "A narwhal dinner receipt."
    ]


async def test_uploading_a_file_under_a_hidden_id_creates_the_callers_own_document(
    scene: Scene, intruder: Intruder
) -> None:
    client, before = scene.client, await scene.stored()
    (key,) = before.keys_named("salaries")
    files = [("file", ("salaries.txt", b"Narwhal parking permits.", "text/plain"))]
    fields = {"id": "salaries"}

    hidden = await client.post("/v1/documents", files=files, data=fields, headers=intruder.holder)
    missing = await client.post("/v1/documents", files=files, data=fields, headers=intruder.empty)

    assert hidden.status_code == 201, hidden.text
    assert (hidden.status_code, hidden.json()) == (missing.status_code, missing.json())
    assert_untouched(before, await scene.stored(), key)
    assert [h["text"] for h in await search(client, intruder.holder)] == [
        "Narwhal parking permits."
    ]
    assert await scene.member_sees_the_original()


async def test_a_batch_naming_a_hidden_id_writes_nothing_of_the_hidden_document(
    scene: Scene, intruder: Intruder
) -> None:
    client, before = scene.client, await scene.stored()
    (key,) = before.keys_named("salaries")
    batch = [
        {"id": "lunch", "title": "Lunch", "text": "Narwhal-shaped cookies on Friday."},
        {"id": "salaries", "title": "Mine", "text": "Narwhal salaries are a myth."},
    ]

    hidden = await ingest(client, intruder.holder, *batch)
    missing = await ingest(client, intruder.empty, *batch)

    assert hidden.status_code == 201, hidden.text
    assert (hidden.status_code, hidden.json()) == (missing.status_code, missing.json())
    assert_untouched(before, await scene.stored(), key)
    assert await scene.member_sees_the_original()
    assert SECRET_TEXT not in {h["text"] for h in await search(client, intruder.holder)}


async def test_a_caller_cannot_write_a_document_it_could_not_see_and_the_batch_writes_nothing(
    scene: Scene, intruder: Intruder
) -> None:
    """Else it could neither change nor delete it afterwards (nor would the next write find it)."""
    client = scene.client
    own = {"id": "menu", "title": "Menu", "text": "Narwhal menu, first draft."}
    assert (await ingest(client, intruder.holder, own)).status_code == 201
    before = await scene.stored()

    # Alone, or beside a legitimate replacement of its own document: nothing is written.
    for batch in (
        [{**SALARIES, "id": "payroll"}],
        [{**own, "text": "Narwhal menu, second draft."}, {**SALARIES, "id": "payroll"}],
        [{**own, "acl": {"groups": ["hr"]}}],
    ):
        response = await ingest(client, intruder.holder, *batch)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "acl_excludes_caller"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert await scene.stored() == before

    # Refused whatever is stored: the answer depends on the request and the caller only.
    empty = await ingest(client, intruder.empty, {**SALARIES, "id": "payroll"})
    assert (empty.status_code, empty.json()["code"]) == (403, "acl_excludes_caller")


async def test_an_upload_for_a_group_the_caller_is_not_in_is_refused(scene: Scene) -> None:
    client, before = scene.client, await scene.stored()
    files = [("file", ("bonus.txt", b"Narwhal bonus plan.", "text/plain"))]
    fields = {"acl": json.dumps({"groups": ["hr"]})}
    refused = await client.post("/v1/documents", files=files, data=fields, headers=scene.outsider())
    assert (refused.status_code, refused.json()["code"]) == (403, "acl_excludes_caller")
    assert await scene.stored() == before
    accepted = await client.post("/v1/documents", files=files, data=fields, headers=scene.member())
    assert accepted.status_code == 201, accepted.text


async def test_members_replace_in_place_and_a_write_acts_on_every_document_they_can_see(
    scene: Scene,
) -> None:
    client, carol, outsider = scene.client, scene.member(), scene.outsider()
    (key,) = (await scene.stored()).keys_named("salaries")
    revised = {**SALARIES, "text": "Narwhal salary bands, revised."}
    assert (await ingest(client, scene.member("dave"), revised)).status_code == 201
    after = await scene.stored()
    assert after.keys_named("salaries") == [key]
    assert after.rows[key]["version"] == 2
    assert [h["text"] for h in await search(client, carol)] == ["Narwhal salary bands, revised."]

    # An outsider's `salaries`, created while ours was hidden from it: members see both ...
    assert (await ingest(client, outsider, SQUAT)).status_code == 201
    assert sorted(d["title"] for d in await listing(client, carol)) == ["Salaries", "Squat"]
    # ... and a member's re-ingest makes them one again: it continues the most revised one.
    final = {**SALARIES, "text": "Narwhal salary bands, final."}
    assert (await ingest(client, carol, final)).status_code == 201
    merged = await scene.stored()
    assert merged.keys_named("salaries") == [key]
    assert merged.rows[key]["version"] == 3
    assert {c.document_id for c in merged.chunks.values()} == {key}
    assert [h["text"] for h in await search(client, carol)] == ["Narwhal salary bands, final."]
    assert await listing(client, outsider) == []

    # A member's DELETE removes every `salaries` it can see: rows and vectors.
    assert (await ingest(client, outsider, SQUAT)).status_code == 201
    response = await client.delete("/v1/documents/salaries", headers=carol)
    assert response.status_code == 204
    gone = await scene.stored()
    assert (gone.rows, gone.chunks) == ({}, {})


async def test_an_outsiders_delete_takes_its_own_document_and_only_that(scene: Scene) -> None:
    client, outsider, before = scene.client, scene.outsider(), await scene.stored()
    assert (await ingest(client, outsider, SQUAT)).status_code == 201
    response = await client.delete("/v1/documents/salaries", headers=outsider)
    assert response.status_code == 204
    assert await scene.stored() == before
    again = await client.delete("/v1/documents/salaries", headers=outsider)
    assert (again.status_code, again.json()["code"]) == (404, "not_found")
    assert await scene.stored() == before


async def test_listing_pages_through_documents_sharing_an_id(scene: Scene) -> None:
    """Two `salaries` a member sees (in key order, so either first), one per page, each once."""
    client = scene.client
    assert (await ingest(client, scene.outsider(), SQUAT)).status_code == 201
    titles: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/documents", params=params, headers=scene.member())).json()
        titles += [d["title"] for d in page["documents"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(titles) == ["Salaries", "Squat"]
