"""What only a streamed attempt needs: its two deadlines, and the break after content was sent.

A streamed attempt must produce its first content token within the first-token timeout and
finish within the attempt budget. Once content has reached the caller no failover is possible,
so a provider break becomes `StreamInterrupted` (an SSE `error` event for the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from app.llm.breaker import CircuitBreaker
from app.llm.policy import BREAKER_FAILURES
from app.llm.provider import ProviderError, StreamEvent
from app.llm.run import ChainRun, StreamInterrupted


class AttemptClock:
    """The deadlines of one streamed attempt (event-loop time)."""

    def __init__(self, *, budget: float, first_token_timeout: float) -> None:
        now = asyncio.get_running_loop().time()
        self.attempt_deadline = now + budget
        self.first_token_by = min(self.attempt_deadline, now + first_token_timeout)

    async def next_event(
        self, events: AsyncGenerator[StreamEvent, None], *, sent_content: bool
    ) -> StreamEvent:
        """The provider's next event, within the deadline that applies now.

        Raises:
            ProviderError: The stream ended early (`stream_interrupted`) or stalled past the
                first-token (`first_token_timeout`) or attempt (`timeout`) deadline.
        """
        by = self.attempt_deadline if sent_content else self.first_token_by
        try:
            async with asyncio.timeout_at(by):
                return await anext(events)
        except StopAsyncIteration:
            raise ProviderError(
                "the stream ended before the answer", reason="stream_interrupted"
            ) from None
        except TimeoutError:
            reason = "timeout" if sent_content else "first_token_timeout"
            raise ProviderError("the provider stopped sending in time", reason=reason) from None


def broken_off(
    run: ChainRun, breaker: CircuitBreaker | None, error: ProviderError
) -> StreamInterrupted:
    """Close the run after a break that followed content: the breaker's verdict, the span."""
    if breaker is not None and error.reason in BREAKER_FAILURES:
        breaker.failure()
    elif breaker is not None:
        breaker.release()
    run.failover_reason = error.reason
    run.abandon(error.reason)
    return StreamInterrupted(str(error), reason=error.reason)
