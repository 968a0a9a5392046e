"""The `local` provider: an offline, deterministic extractive answerer that never fails.

It picks the context sentences that share the most words with the question and cites each
with its chunk's marker. It is the last entry of every chain and the whole chain in dev.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from app.llm.provider import Completion, CompletionRequest, Endpoint, StreamEvent

if TYPE_CHECKING:
    from app.tenancy.scope import TenantScope

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "my",
        "of",
        "on",
        "or",
        "our",
        "should",
        "the",
        "their",
        "there",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "me",
        "get",
        "much",
        "many",
    ]
)
NO_ANSWER = "I could not find an answer to that in your documents."
MAX_SENTENCES = 3


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def _count_tokens(text: str) -> int:
    return len(text.split())


class LocalProvider:
    """Extractive answers from the retrieved context, with `[n]` citation markers."""

    name = "local"
    endpoint = Endpoint("localhost", 0)

    async def complete(
        self,
        request: CompletionRequest,
        *,
        scope: TenantScope | None = None,
        time_budget: float = 0.0,
    ) -> Completion:
        """Answer with the best-matching context sentences, each cited."""
        return self.answer(request)

    async def stream(
        self,
        request: CompletionRequest,
        *,
        scope: TenantScope | None = None,
        time_budget: float = 0.0,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The same answer, streamed word by word."""
        completion = self.answer(request)
        for i, word in enumerate(completion.text.split(" ")):
            yield word if i == 0 else " " + word
        yield completion

    async def invalidate_key(self, *, scope: TenantScope) -> None:
        """Nothing to forget: `local` uses no key."""

    async def aclose(self) -> None:
        """Nothing to release."""

    def answer(self, request: CompletionRequest) -> Completion:
        """Answer with the best-matching context sentences, each cited."""
        question_terms = _terms(request.question)
        scored: list[tuple[float, int, int, str]] = []
        for rank, chunk in enumerate(request.context):
            # Headings name a section; they are not statements worth quoting.
            body = "\n".join(
                ln for ln in chunk.text.splitlines() if not ln.lstrip().startswith("#")
            )
            for position, raw in enumerate(_SENTENCE.split(body)):
                sentence = raw.strip().lstrip("-* ").strip()
                if len(sentence) < 12:
                    continue
                overlap = len(question_terms & _terms(sentence))
                if overlap:
                    # Earlier (better-ranked) chunks win ties; order within a chunk is kept.
                    scored.append((overlap - rank * 0.01, rank, position, sentence))
        best = sorted(scored, key=lambda s: (-s[0], s[1], s[2]))[:MAX_SENTENCES]
        best.sort(key=lambda s: (s[1], s[2]))
        if best:
            answer = " ".join(
                f"{sentence} [{request.context[rank].marker}]" for _, rank, _, sentence in best
            )
        else:
            answer = NO_ANSWER
        prompt = request.question + "".join(c.text for c in request.context)
        digest = hashlib.sha256(f"{request.question}\x00{answer}".encode()).hexdigest()[:24]
        return Completion(
            text=answer,
            provider=self.name,
            model=request.model,
            input_tokens=_count_tokens(prompt),
            output_tokens=_count_tokens(answer),
            finish_reason="stop",
            response_id=f"local-{digest}",
        )
