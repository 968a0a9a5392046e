"""A manifest's `retrieval.embedder` string, parsed.

Forms: `bm25`, `openai:<model>[/<dims>]` or `hybrid:openai:<model>[/<dims>]`.

Kept free of other app imports so the manifest model can validate the string at apply time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_FORM = re.compile(
    r"^(?:(?P<bm25>bm25)|(?P<hybrid>hybrid:)?openai:(?P<model>[A-Za-z0-9._:@-]{1,120})"
    r"(?:/(?P<dims>[1-9][0-9]{0,4}))?)$"
)
MAX_DIMENSIONS = 16_000


@dataclass(frozen=True, slots=True)
class EmbedderSpec:
    """How a tenant's chunks and queries become vectors.

    Attributes:
        kind: `bm25` (sparse only), `dense` (OpenAI vectors only) or `hybrid` (both, RRF).
        model: The OpenAI embeddings model (dense and hybrid).
        dimensions: Vector size (dense and hybrid).
        explicit_dimensions: Whether the manifest named the size (then it is sent to the API as
            `dimensions`; `text-embedding-ada-002` refuses that parameter).
    """

    kind: Literal["bm25", "dense", "hybrid"]
    model: str = ""
    dimensions: int = 0
    explicit_dimensions: bool = False

    @classmethod
    def parse(cls, text: str) -> EmbedderSpec:
        """Parse a manifest's embedder string.

        Raises:
            ValueError: Not one of the forms, or a model of unknown size without `/<dims>`.
        """
        match = _FORM.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not bm25, openai:<model>[/<dims>] or hybrid:openai:<model>[/<dims>]"
            )
        if match["bm25"]:
            return cls("bm25")
        model = match["model"]
        if match["dims"]:
            dims = int(match["dims"])
            if dims > MAX_DIMENSIONS:
                raise ValueError(f"{text!r}: at most {MAX_DIMENSIONS} dimensions")
        elif model in NATIVE_DIMENSIONS:
            dims = NATIVE_DIMENSIONS[model]
        else:
            raise ValueError(f"{text!r}: name the vector size of {model!r}: openai:{model}/<dims>")
        kind: Literal["dense", "hybrid"] = "hybrid" if match["hybrid"] else "dense"
        return cls(kind, model, dims, explicit_dimensions=bool(match["dims"]))

    @property
    def dense(self) -> bool:
        """Whether chunks carry a dense vector."""
        return self.kind != "bm25"

    @property
    def space(self) -> str | None:
        """The vector space the chunks live in (None: the BM25 store every tenant shares).

        `openai:m/256` and `hybrid:openai:m/256` share a space: both store dense and BM25
        vectors, so moving between them needs no re-embedding.
        """
        if not self.dense:
            return None
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", self.model)[:60]
        digest = hashlib.sha256(f"openai\x00{self.model}\x00{self.dimensions}".encode()).hexdigest()
        return f"openai-{readable}-{self.dimensions}-{digest[:8]}"

    def __str__(self) -> str:
        if self.kind == "bm25":
            return "bm25"
        suffix = f"/{self.dimensions}" if self.explicit_dimensions else ""
        return f"{'hybrid:' if self.kind == 'hybrid' else ''}openai:{self.model}{suffix}"


def space_dimensions(space: str) -> int:
    """The dense vector size of a space named by `EmbedderSpec.space` (it is in the name)."""
    return int(space.rsplit("-", 2)[1])
