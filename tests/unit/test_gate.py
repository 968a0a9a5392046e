"""VersionGate: searches together, never across a version switch."""

from __future__ import annotations

import asyncio

from app.vectors.gate import VersionGate


async def test_readers_share_the_gate() -> None:
    gate = VersionGate()
    inside = 0
    most = 0

    async def read() -> None:
        nonlocal inside, most
        async with gate.reading():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(read() for _ in range(5)))
    assert most == 5


async def test_a_switch_waits_for_running_readers_and_holds_new_ones_back() -> None:
    gate = VersionGate()
    events: list[str] = []
    reader_inside = asyncio.Event()

    async def early_reader() -> None:
        async with gate.reading():
            reader_inside.set()
            await asyncio.sleep(0.02)
            events.append("early reader done")

    async def switch() -> None:
        await reader_inside.wait()
        async with gate.switching():
            events.append("switch start")
            await asyncio.sleep(0.02)
            events.append("switch end")

    async def late_reader() -> None:
        await reader_inside.wait()
        await asyncio.sleep(0.005)  # arrives while the switch is waiting or running
        async with gate.reading():
            events.append("late reader")

    await asyncio.gather(early_reader(), switch(), late_reader())
    assert events == ["early reader done", "switch start", "switch end", "late reader"]


async def test_a_failed_switch_reopens_the_gate() -> None:
    gate = VersionGate()
    try:
        async with gate.switching():
            raise RuntimeError("update failed")
    except RuntimeError:
        pass
    async with asyncio.timeout(1), gate.reading():
        pass
