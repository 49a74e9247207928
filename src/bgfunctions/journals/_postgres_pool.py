"""The connections of a :class:`~bgfunctions.journals.postgres.PostgresJournal`: a small pool,
each call one statement in autocommit mode, dropped connections replaced when that is safe, and
the errors a caller sees (unavailable for a write, a JournalError for a read)."""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from bgfunctions.errors import BgFunctionsError, JournalError, JournalUnavailableError

__all__ = ["Conn", "Cursor", "Pool"]

log = logging.getLogger("bgfunctions.journal")

# The server ends the session instead of running the statement (admin_shutdown,
# crash_shutdown, cannot_connect_now): nothing of it was applied.
_TERMINATED = (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow)
# Errors after which the same write may well succeed in a moment (Retry-After: 1).
_TRANSIENT = (
    pg_errors.LockNotAvailable,
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.QueryCanceled,
)


_T = TypeVar("_T")
Conn = psycopg.Connection[tuple[Any, ...]]
Cursor = psycopg.Cursor[tuple[Any, ...]]


class Pool:
    """At most ``size`` connections to ``dsn`` (``options`` for ``psycopg.connect``), the warmest
    idle one first. ``prepare(conn, write)`` runs on each new connection (the schema check);
    once ``refused`` is set, every call raises it. ``where`` names the journal in messages."""

    def __init__(
        self,
        dsn: str,
        *,
        options: dict[str, Any],
        size: int,
        where: str,
        prepare: Callable[[Conn, bool], None],
    ) -> None:
        self._dsn = dsn
        self._options = options
        self._where = where
        self._prepare = prepare
        self.refused: JournalError | None = None
        self._idle: list[Conn] = []  # LIFO: the warmest connection first
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()  # _idle, _closed, _stats
        self._closed = False
        self._stats = {"commits": 0, "failed_commits": 0, "reconnects": 0}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        """Close every idle connection; connections in use close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def acquire(self, *, write: bool, fresh: bool) -> tuple[Conn, bool]:
        """A connection of the pool (``reused`` True) or a new one, with the schema ready."""
        self._slots.acquire()
        try:
            with self._lock:
                if self._closed:
                    raise self._closed_error(write)
                conn = self._idle.pop() if self._idle and not fresh else None
            if conn is not None:
                return conn, True
            try:
                conn = psycopg.connect(self._dsn, **self._options)
            except psycopg.Error as exc:
                raise self.failure(exc, write=write, unknown=False) from exc
            try:
                self._prepare(conn, write)
            except BaseException:
                conn.close()
                raise
            return conn, False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Conn, *, discard: bool) -> None:
        with self._lock:
            keep = not (discard or self._closed or conn.closed or conn.broken)
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()
        self._slots.release()

    def run(self, fn: Callable[[Cursor], _T], *, write: bool) -> _T:
        """Run ``fn``, one statement, as one transaction.

        The connections are in autocommit mode: the statement commits as it ends, in one round
        trip to the server (an explicit BEGIN and COMMIT around it would make three). Every
        write here is a single INSERT, UPDATE or DELETE, so nothing else is needed to keep it
        atomic.

        A pooled connection the server dropped meanwhile (a restart, an idle timeout, an
        administrator's ``pg_terminate_backend``) is replaced once, but only when the statement
        cannot have run: the drop shows on the idle socket before anything is sent (the
        server's termination notice or end of file), or the server answers with its own
        termination error (SQLSTATE class 57P, the session ends instead of running anything).
        A read is run again after any break. A write whose connection broke otherwise, after
        the statement was sent, has an unknown outcome and is not run again.
        """
        fresh = False
        while True:
            if self.refused is not None:
                raise self.refused
            conn, reused = self.acquire(write=write, fresh=fresh)
            if reused and not fresh and _dropped(conn):
                self.release(conn, discard=True)
                self._reconnecting("the server closed an idle connection")
                fresh = True
                continue
            try:
                with conn.cursor() as cursor:
                    result = fn(cursor)
            except psycopg.Error as exc:
                broken = conn.closed or conn.broken
                not_run = isinstance(exc, _TERMINATED)
                self.rollback(conn)
                self.release(conn, discard=broken)
                if broken and reused and not fresh and (not write or not_run):
                    self._reconnecting(_oneline(exc))
                    fresh = True
                    continue
                unknown = write and broken and not not_run
                raise self.failure(exc, write=write, unknown=unknown) from exc
            except BaseException:
                self.rollback(conn)
                self.release(conn, discard=conn.closed or conn.broken)
                raise
            self.release(conn, discard=False)
            if write:
                with self._lock:
                    self._stats["commits"] += 1
            return result

    def _reconnecting(self, why: str) -> None:
        with self._lock:
            self._stats["reconnects"] += 1
        log.info("PostgresJournal %s: reconnecting after %s", self._where, why)

    def rollback(self, conn: Conn) -> None:
        if conn.closed or conn.broken:
            return
        try:
            conn.rollback()
        except psycopg.Error:
            log.warning("PostgresJournal %s: ROLLBACK failed", self._where, exc_info=True)

    def failure(self, exc: psycopg.Error, *, write: bool, unknown: bool) -> BgFunctionsError:
        """The error a caller sees: unavailable for a write (the App answers 503), a
        JournalError for a read."""
        error: BgFunctionsError
        if write:
            with self._lock:
                self._stats["failed_commits"] += 1
            outcome = (
                "its outcome is unknown (the connection broke while the statement ran)"
                if unknown
                else "nothing was written"
            )
            error = JournalUnavailableError(
                f"PostgresJournal {self._where}: cannot commit ({_oneline(exc)}); {outcome}"
            )
            error.retry_after = 1.0 if isinstance(exc, _TRANSIENT) else 5.0
        else:
            error = JournalError(f"PostgresJournal {self._where}: cannot read ({_oneline(exc)})")
        return error

    def _closed_error(self, write: bool) -> BgFunctionsError:
        message = f"PostgresJournal {self._where} is closed"
        return JournalUnavailableError(message) if write else JournalError(message)


def _dropped(conn: Conn) -> bool:
    """True when an idle connection has something to read: nothing is due on it, so that is
    the server's termination notice or end of file (rarely a harmless notice: one reconnect)."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
