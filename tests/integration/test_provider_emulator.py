"""The emulator's embeddings endpoint and call counters, through the real `openai` SDK."""

from __future__ import annotations

import openai
import pytest

from tests.provider_emulator import EmulatorServer, embedding


async def test_embeddings_answer_with_usage_and_faults_count_calls(
    emulator: EmulatorServer,
) -> None:
    client = openai.AsyncOpenAI(
        api_key="sk-emb-test-123456", base_url=emulator.url + "/v1", max_retries=0
    )
    try:
        before = emulator.calls["/v1/embeddings"]
        response = await client.embeddings.create(
            model="text-embedding-3-small", input=["hotel limit", "train class"], dimensions=4
        )
        assert [len(d.embedding) for d in response.data] == [4, 4]
        assert response.usage.prompt_tokens == 4
        # The SDK asks for base64 by default; the vectors decode to the deterministic ones.
        assert response.data[1].embedding == pytest.approx(embedding("train class", 4), abs=1e-6)
        native = await client.embeddings.create(model="text-embedding-3-large", input="x")
        assert len(native.data[0].embedding) == 3072, "the model's native size by default"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.embeddings.create(model="text-embedding-3-small@429:3", input="x")
        assert caught.value.response.headers["retry-after"] == "3"
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.embeddings.create(model="text-embedding-3-small@401", input="x")
        assert "sk-emb-test-123456" in refused.value.message, "echoed, as the real API does"
        assert emulator.calls["/v1/embeddings"] == before + 4
    finally:
        await client.close()
