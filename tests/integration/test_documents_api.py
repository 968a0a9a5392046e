"""Documents and search endpoints against the real app, Postgres and Qdrant Edge."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.tenancy.scope import Role
from tests.conftest import AuthHeaders

Client = AsyncTestClient[Litestar]

HANDBOOK = """# Parking

## Bicycles
Bicycle racks are in the basement; the code is posted at reception.

## Cars
Employees park on level two. Visitors park on level one near the lifts.
"""


async def ingest(
    client: Client, headers: dict[str, str], *docs: dict[str, object]
) -> dict[str, object]:
    response = await client.post("/v1/documents", json={"documents": list(docs)}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_ingest_then_search_returns_the_chunk_with_metadata(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    body = await ingest(
        client,
        auth(tenant),
        {"id": "parking", "title": "Parking", "text": HANDBOOK, "metadata": {"dept": "facilities"}},
    )
    # The title-only "# Parking" section carries no text: two sections, two chunks.
    assert body == {"documents": [{"id": "parking", "chunks": 2}]}
    response = await client.post(
        "/v1/search", json={"query": "where do visitors park", "top_k": 1}, headers=auth(tenant)
    )
    assert response.status_code == 200
    (hit,) = response.json()["results"]
    assert hit["document_id"] == "parking"
    assert "Visitors park on level one" in hit["text"]
    assert hit["metadata"] == {"dept": "facilities"}


async def test_reingest_replaces_chunks_instead_of_duplicating(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    await ingest(
        client, auth(tenant), {"id": "memo", "title": "Memo", "text": "The canteen opens at nine."}
    )
    await ingest(
        client, auth(tenant), {"id": "memo", "title": "Memo", "text": "The canteen opens at ten."}
    )
    response = await client.post(
        "/v1/search", json={"query": "canteen opens", "top_k": 10}, headers=auth(tenant)
    )
    texts = [hit["text"] for hit in response.json()["results"]]
    assert texts == ["The canteen opens at ten."]
    listing = (await client.get("/v1/documents", headers=auth(tenant))).json()
    assert [(d["id"], d["version"]) for d in listing["documents"]] == [("memo", 2)]


async def test_metadata_filter_narrows_results(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    await ingest(
        client,
        auth(tenant),
        {
            "id": "a",
            "title": "A",
            "text": "Quarterly report for sales.",
            "metadata": {"team": "sales"},
        },
        {
            "id": "b",
            "title": "B",
            "text": "Quarterly report for legal.",
            "metadata": {"team": "legal"},
        },
    )
    for condition, expected in (("legal", {"b"}), ({"in": ["sales", "legal"]}, {"a", "b"})):
        response = await client.post(
            "/v1/search",
            json={"query": "quarterly report", "filter": {"team": condition}},
            headers=auth(tenant),
        )
        assert {hit["document_id"] for hit in response.json()["results"]} == expected


async def test_listing_paginates_with_a_cursor(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    await ingest(
        client,
        auth(tenant),
        *({"id": f"doc-{i}", "title": f"Doc {i}", "text": f"Body number {i}."} for i in range(5)),
    )
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/documents", params=params, headers=auth(tenant))).json()
        seen += [d["id"] for d in page["documents"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"doc-{i}" for i in range(5)]


async def test_delete_removes_row_and_vectors(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    await ingest(
        client, auth(tenant), {"id": "gone", "title": "Gone", "text": "Ephemeral zebra facts."}
    )
    response = await client.delete("/v1/documents/gone", headers=auth(tenant))
    assert response.status_code == 204
    search = await client.post("/v1/search", json={"query": "zebra"}, headers=auth(tenant))
    assert search.json()["results"] == []
    again = await client.delete("/v1/documents/gone", headers=auth(tenant))
    assert again.status_code == 404
    assert again.json()["code"] == "not_found"


async def test_acl_groups_restrict_search_and_listing(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    await ingest(
        client,
        auth(tenant, user="carol", groups=("hr",)),
        {
            "id": "salaries",
            "title": "Salaries",
            "text": "Salary bands for walrus engineers.",
            "acl": {"groups": ["hr"]},
        },
        {"id": "menu", "title": "Menu", "text": "Walrus-shaped cookies on Friday."},
    )
    outsider = auth(tenant, user="bob")
    insider = auth(tenant, user="carol", groups=("hr",))
    search = {"query": "walrus", "top_k": 10}
    outside_hits = (await client.post("/v1/search", json=search, headers=outsider)).json()[
        "results"
    ]
    inside_hits = (await client.post("/v1/search", json=search, headers=insider)).json()["results"]
    assert {h["document_id"] for h in outside_hits} == {"menu"}
    assert {h["document_id"] for h in inside_hits} == {"menu", "salaries"}
    listed = (await client.get("/v1/documents", headers=outsider)).json()["documents"]
    assert [d["id"] for d in listed] == ["menu"]


async def test_roles_are_enforced_per_endpoint(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    tenant, _ = tenant_pair
    reader = auth(tenant, roles=(Role.SEARCH,))
    doc = {"documents": [{"title": "T", "text": "x y z"}]}
    denied = [
        await client.post("/v1/documents", json=doc, headers=reader),
        await client.delete("/v1/documents/any", headers=reader),
        await client.post("/v1/chat", json={"message": "hi"}, headers=reader),
        await client.post(
            "/v1/search", json={"query": "x"}, headers=auth(tenant, roles=(Role.CHAT,))
        ),
    ]
    assert [(r.status_code, r.json()["code"]) for r in denied] == [(403, "forbidden")] * 4
