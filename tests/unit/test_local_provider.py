"""The offline extractive provider: deterministic, cited, heading-free, bounded answers."""

from __future__ import annotations

import re

from app.llm.local import MAX_SENTENCES, NO_ANSWER, LocalProvider
from app.llm.provider import Completion, CompletionRequest, ContextChunk

REFUNDS = ContextChunk(
    marker=7,
    document_id="doc-policy",
    chunk_id="c-1",
    title="Policy",
    text=(
        "## Refunds policy for refunds and purchase windows\n"
        "Refunds are issued within 14 days of purchase. Shipping is free worldwide."
    ),
    score=0.9,
)
SUPPORT = ContextChunk(
    marker=3,
    document_id="doc-support",
    chunk_id="c-9",
    title="Support",
    text="Support hours are 9 to 5 on weekdays.\n\n- Refunds need the original purchase receipt.",
    score=0.5,
)
UNRELATED = ContextChunk(
    marker=12,
    document_id="doc-other",
    chunk_id="c-4",
    title="Other",
    text="The cafeteria serves lunch from noon onwards. Parking permits renew each January.",
    score=0.2,
)


def _request(question: str, *chunks: ContextChunk, model: str = "extractive") -> CompletionRequest:
    return CompletionRequest(question=question, context=chunks, model=model)


def _markers(answer: str) -> list[int]:
    return [int(m) for m in re.findall(r"\[(\d+)\]", answer)]


async def _ask(request: CompletionRequest) -> Completion:
    return await LocalProvider().complete(request)


async def test_same_input_gives_same_answer_and_response_id() -> None:
    request = _request("How soon are refunds issued after purchase?", REFUNDS, SUPPORT)
    first, second = await _ask(request), await _ask(request)
    assert first == second
    assert first.response_id.startswith("local-")
    assert len(first.response_id) == len("local-") + 24


async def test_different_question_gives_different_response_id() -> None:
    a = await _ask(_request("When are refunds issued?", REFUNDS))
    b = await _ask(_request("Is shipping free?", REFUNDS))
    assert a.text != b.text
    assert a.response_id != b.response_id


async def test_quotes_matching_sentences_with_their_chunks_markers() -> None:
    completion = await _ask(
        _request("How soon are refunds issued after purchase?", REFUNDS, SUPPORT, UNRELATED)
    )
    text = completion.text
    assert "Refunds are issued within 14 days of purchase. [7]" in text
    assert "Refunds need the original purchase receipt. [3]" in text
    # Chunk order (retrieval rank) is kept in the answer.
    assert _markers(text) == [7, 3]
    assert "cafeteria" not in text
    assert "Shipping" not in text


async def test_every_quoted_sentence_comes_from_the_chunk_it_cites() -> None:
    chunks = {c.marker: c for c in (REFUNDS, SUPPORT, UNRELATED)}
    completion = await _ask(
        _request("refunds purchase shipping support parking", REFUNDS, SUPPORT, UNRELATED)
    )
    parts = re.findall(r"(.+?) \[(\d+)\]", completion.text)
    assert parts
    for sentence, marker in parts:
        assert sentence.strip() in chunks[int(marker)].text


async def test_never_quotes_heading_lines() -> None:
    # The heading shares more words with the question than any body sentence.
    completion = await _ask(_request("refunds policy purchase windows", REFUNDS))
    assert "Refunds policy" not in completion.text
    assert "#" not in completion.text
    assert completion.text == "Refunds are issued within 14 days of purchase. [7]"


async def test_list_bullets_are_stripped_from_quotes() -> None:
    completion = await _ask(_request("What receipt do refunds need?", SUPPORT))
    assert completion.text == "Refunds need the original purchase receipt. [3]"


async def test_no_overlap_answers_no_answer_without_citations() -> None:
    completion = await _ask(_request("What colour is the sky on Mars?", REFUNDS, SUPPORT))
    assert completion.text == NO_ANSWER
    assert _markers(completion.text) == []


async def test_stopword_only_overlap_is_not_an_answer() -> None:
    completion = await _ask(_request("What is the how of it?", REFUNDS, SUPPORT))
    assert completion.text == NO_ANSWER


async def test_empty_context_answers_no_answer() -> None:
    completion = await _ask(_request("When are refunds issued?"))
    assert completion.text == NO_ANSWER
    assert completion.output_tokens > 0


async def test_answer_has_at_most_max_sentences_and_prefers_best_matches() -> None:
    sentences = [f"Widget model {n} ships in a blue box." for n in range(8)]
    best = "Widget warranty covers the blue box for five years."
    chunk = ContextChunk(
        marker=1,
        document_id="d",
        chunk_id="c",
        title="t",
        text=" ".join([*sentences, best]),
        score=1.0,
    )
    completion = await _ask(_request("widget warranty blue box years", chunk))
    assert len(_markers(completion.text)) == MAX_SENTENCES
    assert best in completion.text


async def test_usage_and_identity_fields() -> None:
    completion = await _ask(_request("When are refunds issued?", REFUNDS, model="my-model"))
    assert completion.provider == "local"
    assert LocalProvider.name == "local"
    assert completion.model == "my-model"
    assert completion.finish_reason == "stop"
    assert completion.input_tokens > len(completion.text.split()) > 0
    assert completion.output_tokens == len(completion.text.split())
