"""`bulkhead serve` exempts its start-up heap from the cyclic GC (see `app.cli`)."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import uvicorn

from app import cli
from app.config import Settings


def test_served_app_freezes_its_heap_once_started(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    cli._serve(Settings())
    (app,) = served
    # After the lifespan managers (open_resources) have run: Litestar calls on_startup last.
    assert app.on_startup[-1] is cli._freeze_startup_heap
    assert gc.get_freeze_count() == 0
    try:
        cli._freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
