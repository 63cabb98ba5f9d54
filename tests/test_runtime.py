"""The garbage collector's startup freeze (app/runtime.py)."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

from app.config import Settings, load_settings
from app.main import create_app
from app.runtime import GEN0_THRESHOLD


def test_the_freeze_is_on_outside_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GC_FREEZE_AFTER_STARTUP", raising=False)  # tests/conftest.py sets it
    assert load_settings(env="development").gc_freeze_after_startup is True
    assert load_settings(env="test").gc_freeze_after_startup is False
    assert load_settings(env="test", gc_freeze_after_startup=True).gc_freeze_after_startup


async def test_a_started_app_has_frozen_its_startup_heap(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(gc_freeze_after_startup=True))
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        async with app.router.lifespan_context(app):
            frozen = gc.get_freeze_count()
            # The services, the app and every module imported so far.
            assert frozen > 50_000
            assert gc.get_threshold()[0] == GEN0_THRESHOLD
            assert app.state.services.db is not None
    finally:
        gc.unfreeze()  # this test process goes on starting apps
        gc.set_threshold(*thresholds)


async def test_apps_in_tests_leave_the_collector_alone(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
