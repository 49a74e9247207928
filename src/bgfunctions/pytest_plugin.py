"""pytest fixtures for bgfunctions users, registered through the ``pytest11`` entry point.

- ``virtual_clock``: a fresh :class:`~bgfunctions.VirtualClock`.
- ``inline_executor``: an :class:`~bgfunctions.InlineExecutor` on ``virtual_clock``, shut down
  after the test.
- ``functions_app``: a factory ``functions_app(path, **App options)`` for an App on the inline
  executor over a site or functions directory; every app it made is shut down after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bgfunctions.app import App
from bgfunctions.clock import VirtualClock
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.registry import Registry
from bgfunctions.testing import make_app


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """A VirtualClock that starts at its fixed epoch."""
    return VirtualClock()


@pytest.fixture
def inline_executor(virtual_clock: VirtualClock) -> Iterator[InlineExecutor]:
    """An InlineExecutor on ``virtual_clock``."""
    executor = InlineExecutor(clock=virtual_clock)
    yield executor
    executor.shutdown()


@pytest.fixture
def functions_app(virtual_clock: VirtualClock) -> Iterator[Callable[..., App]]:
    """Build Apps on the inline executor over a directory: ``functions_app(tmp_path)``."""
    apps: list[App] = []

    def build(functions: str | Path | Registry, **options: Any) -> App:
        options.setdefault("clock", virtual_clock)
        app = make_app(functions, **options)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.shutdown()
