"""Commit threads: where a durable journal's writes for an event loop's attempts run.

A claim, an attempt's end or a durable step on a durable journal waits for a commit (an fsync,
a round trip to PostgreSQL). Made on an event loop, it would hold every other attempt and
request on that loop, and concurrent attempts would commit one after another. :class:`Commits`
runs such a write on one of up to :data:`COMMIT_THREADS` threads and lets the loop await it:
the loop goes on serving, and the writes of concurrent attempts meet in the journal's group
commit. A :class:`~bgfunctions.lifecycle.Lifecycle` holds one; real-time engines turn it on
(``Lifecycle.commit_off_loop``), a virtual-time loop does not (it must not wait for other
threads).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["COMMIT_THREADS", "Commits"]

T = TypeVar("T")

COMMIT_THREADS = 32
"""Threads that commit for the loops: as many writes as can share one group commit."""


class Commits:
    """A pool of commit threads, started on first use and stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], *args: object) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on a commit thread."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=COMMIT_THREADS, thread_name_prefix="bgfunctions-commit"
                )
            return self._pool.submit(fn, *args)

    def stop(self) -> None:
        """End the threads once their writes are done (a later submit starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
