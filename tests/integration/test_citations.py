"""One citation rule on every chat surface, plain and streamed, `/v1/chat` and completions.

Five passages are retrieved (numbered 1..5 for the model); the provider emulator answers
citing `[4]`, `[1]`, `[4]` again and `[9]`, which names no passage. Every surface must give the
same `citations`: passages 4 then 1 (order of first citation, each once, `[9]` dropped), each
carrying its `marker`, so `[n]` in the answer is the citation whose `marker` is n.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import AuthHeaders
from tests.integration.conftest import LlmTenant, sse_events

Client = AsyncTestClient[Litestar]
QUESTION = "How much is the hotel limit per night?"
HOTEL_DOCS = [
    {
        "id": f"hotel-{i}",
        "title": f"Hotels {i}",
        "text": f"Hotel rule {i}: a night costs at most {i}00 euros.",
    }
    for i in range(2, 6)
]


def _key(citations: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(c["marker"], c["document_id"], c["chunk_id"]) for c in citations]


async def test_every_surface_cites_by_marker_the_same_way(
    client: Client, llm_tenant: LlmTenant, auth: AuthHeaders, emulator: Any
) -> None:
    tenant = await llm_tenant([("openai", "gpt-4o-mini@cite:4.1.4.9", emulator.url + "/v1")])
    headers = auth(tenant)
    ingested = await client.post("/v1/documents", json={"documents": HOTEL_DOCS}, headers=headers)
    assert ingested.status_code == 201, ingested.text
    ask = {"message": QUESTION, "top_k": 5}
    completions = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}], "top_k": 5}

    plain = (await client.post("/v1/chat", json=ask, headers=headers)).json()
    streamed = sse_events(
        (await client.post("/v1/chat", json=ask | {"stream": True}, headers=headers)).text
    )
    openai_plain = (
        await client.post("/v1/chat/completions", json=completions, headers=headers)
    ).json()
    openai_streamed = sse_events(
        (
            await client.post(
                "/v1/chat/completions", json=completions | {"stream": True}, headers=headers
            )
        ).text
    )

    answer = plain["answer"]
    assert re.findall(r"\[(\d+)\]", answer) == ["4", "1", "4", "9"]
    # Plain: passages 4 then 1, each once, `[9]` (no such passage) dropped.
    assert [c["marker"] for c in plain["citations"]] == [4, 1]
    expected = _key(plain["citations"])
    # Every other surface gives the same list.
    stream_citations = [data["citations"] for name, data in streamed if name == "citations"]
    assert [_key(c) for c in stream_citations] == [expected], "one citations event, the same list"
    assert next(data for name, data in streamed if name == "done")["cited"] == [4, 1]
    assert _key(openai_plain["citations"]) == expected
    finishing = [data for _, data in openai_streamed if data.get("choices") and "citations" in data]
    assert [_key(chunk["citations"]) for chunk in finishing] == [expected]
    # The same entries in full (titles, scores, snippets), whichever surface.
    assert stream_citations[0] == plain["citations"] == openai_plain["citations"]
    assert finishing[0]["citations"] == plain["citations"]
    # `[n]` is passage n of those the model was given (the stream lists them first, 1..5).
    passages = [data["passages"] for name, data in streamed if name == "passages"]
    assert [[p["marker"] for p in listed] for listed in passages] == [[1, 2, 3, 4, 5]]
    by_marker = {p["marker"]: (p["marker"], p["document_id"], p["chunk_id"]) for p in passages[0]}
    assert expected == [by_marker[4], by_marker[1]]
