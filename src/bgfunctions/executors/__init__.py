"""The engines: where an attempt runs and how a stuck one is stopped.

* :mod:`~bgfunctions.executors.base`: :class:`Executor`, what every engine shares;
* :mod:`~bgfunctions.executors.inline`: :class:`InlineExecutor`, on a (virtual-time) loop, for
  tests;
* :mod:`~bgfunctions.executors.threads`: :class:`ThreadExecutor`, a loop thread and a call pool;
* :mod:`~bgfunctions.executors.processes`: :class:`ProcessExecutor`, worker processes that can be
  killed;
* :mod:`~bgfunctions.executors.celery`: ``CeleryExecutor``, Celery workers on other hosts (the
  ``[celery]`` extra; import it from its module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bgfunctions.executors.base import Binding, Executor, ExecutorStats, Invocation
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.executors.threads import ThreadExecutor

if TYPE_CHECKING:
    from bgfunctions.executors.processes import ProcessExecutor

__all__ = [
    "Binding",
    "Executor",
    "ExecutorStats",
    "InlineExecutor",
    "Invocation",
    "ProcessExecutor",
    "ThreadExecutor",
]


def __getattr__(name: str) -> Any:
    if name == "ProcessExecutor":  # imported on first use: it brings in multiprocessing
        from bgfunctions.executors.processes import ProcessExecutor

        return ProcessExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
