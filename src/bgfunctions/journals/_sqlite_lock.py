"""The writers' queue of a journal file shared by several processes.

SQLite serializes writers itself, but a writer that finds the file locked *sleeps* in its busy
handler (1, 2, 5, 10 ... up to 100 ms between tries) instead of waking when the lock is free.
With two processes group-committing into one file, each commit then waits for a sleep rather
than for the other's commit, and the file sits idle between them: two uvicorn workers accepted
about half of what one did (benchmarks/bench_multiproc.py).

So a journal's leader takes an exclusive ``flock`` on a side file (``<journal>-lock``) around
each transaction: the processes take turns, the next one starts as soon as the previous one's
COMMIT returned, and while one commits the other's queue grows into a larger batch (one fsync
for more accepts). The lock is advisory and only orders our own writers: SQLite's own locks
still guard the file, so a writer that does not take it (an older bgfunctions, the sqlite3
shell) stays correct, only slower. The kernel drops a ``flock`` when its process dies, even by
``kill -9``: a dead process never holds the queue.

Waiting is a poll with short sleeps up to a deadline (``flock`` itself cannot time out): a
process stopped while it holds the lock (SIGSTOP, a debugger) makes the others' writes fail
after their ``busy_timeout``, with a 503, rather than hang.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from bgfunctions.clock import SystemClock

__all__ = ["WriterLock"]

_FIRST_SLEEP = 0.0002  # seconds; doubled up to _MAX_SLEEP while the lock is held elsewhere
_MAX_SLEEP = 0.002  # well under one commit (an fsync is 1-10 ms): the turn is taken promptly
# Real time even under a VirtualClock: the holder is another process, as SQLite's busy_timeout.
_REAL = SystemClock()


class WriterLock:
    """An exclusive, process-wide turn at writing the journal file ``db``.

    Only one thread of a process takes it at a time (the group commit's leader); ``acquire``
    returns False when another process held it for all of ``timeout`` seconds."""

    def __init__(self, db: Path) -> None:
        self.path = Path(f"{db}-lock")
        self._fd: int | None = None
        self._guard = threading.Lock()  # the fd: opened once, closed by close()

    def _open(self) -> int:
        with self._guard:
            if self._fd is None:
                # 0o600 as the journal itself; an existing file keeps its permissions.
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            return self._fd

    def acquire(self, timeout: float) -> bool:
        fd = self._open()
        deadline = _REAL.monotonic() + timeout
        sleep = _FIRST_SLEEP
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            now = _REAL.monotonic()
            if now >= deadline:
                return False
            _REAL.sleep(min(sleep, deadline - now))
            sleep = min(sleep * 2, _MAX_SLEEP)

    def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._guard:
            if self._fd is not None:
                os.close(self._fd)  # drops the lock, if held
                self._fd = None
