"""`POST /v1/search` scores are the tenant's own: the issue's measurement, through the real app.

The real app, Postgres and the Qdrant Edge shard every other test of the session writes to
(so "other tenants" here also means every tenant those tests made).
"""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import AuthHeaders

Client = AsyncTestClient[Litestar]

QUERIES = ("zorblat", "quux", "zorblat quux")


async def _ingest(client: Client, headers: dict[str, str], docs: list[dict[str, object]]) -> None:
    response = await client.post("/v1/documents", json={"documents": docs}, headers=headers)
    assert response.status_code == 201, response.text


async def _scores(client: Client, headers: dict[str, str]) -> dict[str, dict[str, float]]:
    scores = {}
    for query in QUERIES:
        response = await client.post(
            "/v1/search", json={"query": query, "top_k": 50}, headers=headers
        )
        assert response.status_code == 200, response.text
        scores[query] = {hit["chunk_id"]: hit["score"] for hit in response.json()["results"]}
    return scores


async def test_another_tenants_documents_and_hidden_groups_never_move_search_scores(
    client: Client, tenant_pair: tuple[str, str], auth: AuthHeaders
) -> None:
    """Tenant b uses a made-up word in two documents; tenant a then uses it in 80.

    Before the fix b's score for `zorblat` fell from 6.39 to 1.78 and `quux` (a word only b
    uses) rose; the `board` documents of b's own tenant moved the scores of users outside that
    group the same way.
    """
    a, b = tenant_pair
    mine = [
        {"id": "memo-1", "title": "Memo", "text": "The zorblat shipment left on monday."},
        {"id": "memo-2", "title": "Memo", "text": "A zorblat and its quux arrived."},
        {"id": "memo-3", "title": "Memo", "text": "The quux inventory is counted weekly."},
        {"id": "memo-4", "title": "Memo", "text": "Plain words about the warehouse."},
    ]
    await _ingest(client, auth(b), mine)
    before = await _scores(client, auth(b))
    assert all(before[query] for query in QUERIES)

    theirs = [
        {"id": f"note-{n}", "title": "Note", "text": f"Zorblat zorblat, item {n}."}
        for n in range(80)
    ]
    await _ingest(client, auth(a), theirs)
    assert await _scores(client, auth(b)) == before

    for doc in theirs[:40]:
        response = await client.delete(f"/v1/documents/{doc['id']}", headers=auth(a))
        assert response.status_code == 204, response.text
    assert await _scores(client, auth(b)) == before

    board = [
        {
            "id": f"board-{n}",
            "title": "Minutes",
            "text": f"The board discussed zorblat pricing, item {n}.",
            "acl": {"groups": ["board"]},
        }
        for n in range(20)
    ]
    await _ingest(client, auth(b, groups=("board",)), board)  # a writer must be in the group
    assert await _scores(client, auth(b, groups=("staff",))) == before
    assert await _scores(client, auth(b, groups=("board",))) != before
