"""SQLiteJournal: durable records in one file, group commit, claims, leases, refusals, faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import os
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bgfunctions import (
    App,
    Context,
    Event,
    EventKind,
    InlineExecutor,
    Registry,
    Request,
    RetryPolicy,
    ThreadExecutor,
    VirtualClock,
    discover,
)
from bgfunctions.errors import JournalError, JournalUnavailableError, NotAcceptedError
from bgfunctions.executors.processes import ProcessExecutor
from bgfunctions.invocation import InvocationRecord, Outcome, State
from bgfunctions.journals.sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteJournal
from bgfunctions.views import record_to_view

RETRY = RetryPolicy()
Opener = Callable[..., SQLiteJournal]


def _record(rid: str, *, function: str = "job-background", at: float = 1000.0) -> InvocationRecord:
    return InvocationRecord(
        request_id=rid,
        function=function,
        method="POST",
        url=f"/.netlify/functions/{function}?x=1",
        headers=(("content-type", "application/octet-stream"), ("x-a", "1")),
        body=bytes(range(256)),
        client="127.0.0.1",
        params={"id": rid},
        accepted_at=at,
        next_run_at=at,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1000.0)


@pytest.fixture
def open_journal(path: Path, clock: VirtualClock) -> Iterator[Opener]:
    """Open journals on ``path`` (virtual clock, short busy timeout); close them all after."""
    opened: list[SQLiteJournal] = []

    def make(**options: object) -> SQLiteJournal:
        options.setdefault("clock", clock)
        options.setdefault("busy_timeout", 0.2)
        journal = SQLiteJournal(options.pop("path", path), **options)  # type: ignore[arg-type]
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        journal.close()


def _rows(path: Path) -> dict[str, tuple[str, str | None]]:
    """request_id -> (state, lease_owner), read with a separate connection."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT request_id, state, lease_owner FROM invocations").fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# -- records ---------------------------------------------------------------------------------


def test_records_round_trip_through_the_file(open_journal: Opener, path: Path) -> None:
    """Every state change is stored, and a reopened journal reads back equal records."""
    journal = open_journal()
    first = _record("a", at=1000.0)
    journal.accepted(first)
    started = first.start_attempt(1001.0)
    assert journal.attempt_started(started)
    failed = started.end_attempt(
        1002.0, Outcome.ERROR, RETRY, error_type="ValueError", error_message="bad ☃"
    )
    journal.scheduled(failed)
    second = _record("b", function="other", at=1005.0)
    journal.accepted(second)
    done = second.start_attempt(1006.0)
    assert journal.attempt_started(done)
    done = done.end_attempt(1007.0, Outcome.SUCCEEDED, RETRY)
    journal.finished(done)
    journal.close()

    reopened = open_journal()
    assert reopened.get("a") == failed
    assert reopened.get("b") == done
    assert reopened.get("missing") is None
    assert failed.body == bytes(range(256))
    assert [r.request_id for r in reopened.select()] == ["b", "a"]
    # Listings leave bodies out (their size stays); get() has the whole record.
    assert reopened.select(function="other") == [done.without_body()]
    assert reopened.select(state=State.RETRY_SCHEDULED) == [failed.without_body()]
    both = [State.SUCCEEDED, State.RETRY_SCHEDULED]
    assert reopened.select(state=both, limit=1) == [done.without_body()]
    assert reopened.unfinished() == [failed.without_body()]
    assert reopened.unfinished()[0].body_size == 256


def test_select_newest_first_and_unfinished_oldest_first(
    open_journal: Opener,
) -> None:
    """select is newest accepted first; unfinished is oldest first; ties keep insertion order."""
    journal = open_journal()
    for rid, at in [("r1", 10.0), ("r2", 30.0), ("r3", 20.0), ("r4", 20.0)]:
        journal.accepted(_record(rid, at=at))
    assert [r.request_id for r in journal.select()] == ["r2", "r4", "r3", "r1"]
    assert [r.request_id for r in journal.unfinished()] == ["r1", "r3", "r4", "r2"]
    assert [r.request_id for r in journal.select(limit=2)] == ["r2", "r4"]


def test_accepted_row_is_committed_when_accepted_returns(open_journal: Opener, path: Path) -> None:
    """Once accepted() returns, another connection reads the row."""
    journal = open_journal()
    journal.accepted(_record("a"))
    assert _rows(path) == {"a": ("accepted", None)}


def test_a_known_request_id_is_refused(open_journal: Opener) -> None:
    """Accepting a request id twice raises ValueError and keeps the first record."""
    journal = open_journal()
    journal.accepted(_record("a", at=1.0))
    with pytest.raises(ValueError, match="'a' is already recorded"):
        journal.accepted(_record("a", at=2.0))
    assert journal.get("a") == _record("a", at=1.0)


def test_file_is_versioned(open_journal: Opener, path: Path) -> None:
    """A new file carries bgfunctions' application_id and the schema version, in WAL mode."""
    open_journal()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_files_are_owner_only(open_journal: Opener, path: Path) -> None:
    """The database, its -wal and its -shm are created readable by their owner only."""
    journal = open_journal()
    journal.accepted(_record("a"))
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
        assert mode == 0o600, f"{path}{suffix}: {mode:o}"


# -- group commit ----------------------------------------------------------------------------


def test_concurrent_accepts_share_transactions(open_journal: Opener, path: Path) -> None:
    """32 threads accepting at once: every row is committed, in fewer transactions than rows."""
    journal = open_journal()
    before = journal.stats()
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def accept(t: int) -> None:
        try:
            barrier.wait()
            for i in range(20):
                journal.accepted(_record(f"{t}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=accept, args=(t,)) for t in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_rows(path)) == 640
    stats = journal.stats()
    writes = stats["writes"] - before["writes"]
    commits = stats["commits"] - before["commits"]
    assert writes >= 640
    assert commits < writes


def test_a_known_request_id_fails_alone_in_a_shared_transaction(
    open_journal: Opener, path: Path
) -> None:
    """Concurrent accepts, some of ids already recorded: only those raise ValueError; every
    other row of the transactions they shared is committed, and the old rows are unchanged."""
    journal = open_journal()
    for i in range(8):
        journal.accepted(_record(f"old-{i}", at=1.0))
    before = journal.stats()
    barrier = threading.Barrier(32)
    refused: list[str] = []
    errors: list[BaseException] = []

    def accept(t: int) -> None:
        try:
            barrier.wait()
            for i in range(12):
                rid = f"old-{(t + i) % 8}" if i % 3 == 0 else f"{t}-{i}"
                try:
                    journal.accepted(_record(rid, at=2.0))
                except ValueError:
                    refused.append(rid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=accept, args=(t,)) for t in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(refused) == 32 * 4
    new = {f"{t}-{i}" for t in range(32) for i in range(12) if i % 3}
    assert set(_rows(path)) == new | {f"old-{i}" for i in range(8)}
    assert [journal.get(f"old-{i}") for i in range(8)] == [
        _record(f"old-{i}", at=1.0) for i in range(8)
    ]
    stats = journal.stats()
    assert stats["commits"] - before["commits"] < stats["writes"] - before["writes"]


def test_close_under_concurrent_accepts_keeps_every_answered_one(
    open_journal: Opener, path: Path
) -> None:
    """close() while 16 threads accept: each accept either returned (its row is committed) or
    raised JournalUnavailableError (no row); none hangs, none is half done."""
    journal = open_journal()
    returned: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    started = threading.Barrier(17)

    def accept(t: int) -> None:
        started.wait()
        for i in range(200):
            rid = f"{t}-{i}"
            try:
                journal.accepted(_record(rid))
            except JournalUnavailableError:
                refused.append(rid)
                return
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            returned.append(rid)

    threads = [threading.Thread(target=accept, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    started.wait()
    while len(returned) < 100:  # some commits done, others queued or under way
        threading.Event().wait(0.001)  # polling the threads' progress, not timing a schedule
    journal.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "an accept hung across close()"
    assert errors == []
    assert refused, "close() came after every accept"
    assert set(_rows(path)) == set(returned)


def test_a_caller_interrupted_while_it_waits_leaves_the_journal_working(
    open_journal: Opener, path: Path
) -> None:
    """Ctrl-C in the main thread while its accept waits behind another's commit: that accept
    raises KeyboardInterrupt, and later accepts and close() still complete."""
    journal = open_journal(busy_timeout=5.0)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the next commit waits
    leader = threading.Thread(target=journal.accepted, args=(_record("leader"),))
    leader.start()
    main = threading.main_thread().ident
    assert main is not None
    # A real SIGINT (it wakes a blocked wait), once main waits behind the leader.
    interrupt = threading.Timer(0.3, signal.pthread_kill, args=(main, signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            journal.accepted(_record("interrupted"))
    finally:
        interrupt.cancel()
        blocker.execute("ROLLBACK")
        blocker.close()
    leader.join(10)
    later = threading.Thread(target=journal.accepted, args=(_record("later"),))
    later.start()
    later.join(10)
    assert not later.is_alive(), "an accept after the interrupt hung"
    closing = threading.Thread(target=journal.close)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "close() hung"
    assert {"leader", "later"} <= set(_rows(path))


# -- claims and leases -----------------------------------------------------------------------


def test_only_one_journal_claims_an_attempt(open_journal: Opener, path: Path) -> None:
    """Two journals on one file race for each attempt: exactly one wins every time."""
    one, two = open_journal(owner="one"), open_journal(owner="two")
    records = [_record(f"r{i}") for i in range(30)]
    for record in records:
        one.accepted(record)
    wins: dict[str, list[bool]] = {"one": [], "two": []}
    barrier = threading.Barrier(2)

    def claim(journal: SQLiteJournal) -> None:
        barrier.wait()
        for record in records:
            wins[journal.owner].append(journal.attempt_started(record.start_attempt(1001.0)))

    threads = [threading.Thread(target=claim, args=(j,)) for j in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a != b for a, b in zip(wins["one"], wins["two"], strict=True)] == [True] * 30
    rows = _rows(path)
    for record, won_by_one in zip(records, wins["one"], strict=True):
        assert rows[record.request_id] == ("running", "one" if won_by_one else "two")


def test_a_row_another_journal_changed_is_read_as_it_is_now(open_journal: Opener) -> None:
    """A journal reads what another journal on the file wrote since, not its own last write."""
    one, two = open_journal(owner="one"), open_journal(owner="two")
    accepted = _record("a")
    one.accepted(accepted)
    assert one.get("a") == accepted
    assert one.unfinished() == [accepted.without_body()]
    started = accepted.start_attempt(1001.0)
    assert two.attempt_started(started)
    assert one.get("a") == started
    assert one.unfinished() == [started.without_body()]
    done = started.end_attempt(1002.0, Outcome.SUCCEEDED, RETRY)
    two.finished(done)
    assert one.get("a") == done
    assert one.unfinished() == []
    assert one.select() == [done.without_body()]


def test_a_stale_or_cancelled_record_is_not_claimed(open_journal: Opener) -> None:
    """A claim for an attempt already run, or of a cancelled invocation, returns False."""
    one, two = open_journal(owner="one"), open_journal(owner="two")
    record = _record("a")
    one.accepted(record)
    stale = record.start_attempt(1001.0)  # two read it while it was waiting for attempt 1
    first = record.start_attempt(1001.0)
    assert one.attempt_started(first)
    one.scheduled(first.end_attempt(1002.0, Outcome.ERROR, RETRY))
    assert not two.attempt_started(stale)  # attempt 1 already ran: not claimable again
    one.accepted(_record("b"))
    one.finished(_record("b").cancel(1003.0))
    assert not two.attempt_started(_record("b").start_attempt(1004.0))
    assert not two.attempt_started(_record("unknown").start_attempt(1004.0))


def test_expired_lease_is_taken_over_once(open_journal: Opener, clock: VirtualClock) -> None:
    """Past its lease a running attempt is claimed by exactly one other journal; the old owner's
    late end is ignored, the new owner's is stored."""
    one = open_journal(owner="one", lease=10.0)
    two = open_journal(owner="two", lease=10.0)
    three = open_journal(owner="three", lease=10.0)
    record = _record("a")
    one.accepted(record)
    started = record.start_attempt(clock.now())
    assert one.attempt_started(started)
    clock.advance(9.0)
    assert two.expire_leases() == []
    clock.advance(2.0)
    taken = two.expire_leases()
    assert taken == [started.without_body()]
    assert taken[0].state is State.RUNNING
    assert three.expire_leases() == []  # two holds a fresh lease now
    one.attempt_ended(started.end_attempt(clock.now(), Outcome.SUCCEEDED, RETRY))
    assert two.get("a") == started  # the late end of the lost lease changed nothing
    interrupted = started.end_attempt(clock.now(), Outcome.INTERRUPTED, RETRY)
    two.scheduled(interrupted)
    assert one.get("a") == interrupted


def test_heartbeat_keeps_a_lease_alive(open_journal: Opener, clock: VirtualClock) -> None:
    """Renewed every few seconds, a running attempt is never taken over."""
    one = open_journal(owner="one", lease=10.0)
    two = open_journal(owner="two", lease=10.0)
    record = _record("a")
    one.accepted(record)
    assert one.attempt_started(record.start_attempt(clock.now()))
    for _ in range(5):
        clock.advance(6.0)
        one.heartbeat(["a"])
        two.heartbeat(["a"])  # not its lease: renews nothing
        assert two.expire_leases() == []
    clock.advance(10.5)
    assert [r.request_id for r in two.expire_leases()] == ["a"]


def test_expire_leases_without_returning(
    open_journal: Opener, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite older than 3.35 (no RETURNING) expired leases are taken over the same way."""
    import bgfunctions.journals.sqlite as module

    monkeypatch.setattr(module, "_RETURNING", False)
    one, two = open_journal(owner="one", lease=1.0), open_journal(owner="two", lease=1.0)
    one.accepted(_record("a"))
    assert one.attempt_started(_record("a").start_attempt(clock.now()))
    clock.advance(2.0)
    assert [r.request_id for r in two.expire_leases()] == ["a"]
    assert two.expire_leases() == []


# -- retention -------------------------------------------------------------------------------


def test_old_finished_records_are_pruned(
    open_journal: Opener, clock: VirtualClock, path: Path
) -> None:
    """prune() deletes finished records older than retention and keeps everything else."""
    journal = open_journal(retention=3600.0)
    for i in range(200):
        record = _record(f"old{i}", at=clock.now())
        journal.accepted(record)
        journal.finished(record.reject(clock.now()))
    journal.accepted(_record("waiting", at=clock.now()))
    clock.advance(3601.0)
    fresh = _record("fresh", at=clock.now())
    journal.accepted(fresh)
    journal.finished(fresh.reject(clock.now()))
    assert journal.prune() >= 0  # an automatic prune may already have run on that write
    assert sorted(_rows(path)) == ["fresh", "waiting"]
    assert journal.prune() == 0


def test_writes_prune_automatically(open_journal: Opener, clock: VirtualClock, path: Path) -> None:
    """Under steady load the row count stays bounded: writes prune at most once a minute."""
    journal = open_journal(retention=600.0)
    counts = []
    for minute in range(40):
        for i in range(10):
            record = _record(f"{minute}-{i}", at=clock.now())
            journal.accepted(record)
            journal.finished(record.reject(clock.now()))
        counts.append(len(_rows(path)))
        clock.advance(60.0)
    assert max(counts[20:]) <= 130  # about 10 minutes of 10 per minute, plus one minute
    assert counts[-1] == counts[-2]


# -- refusals --------------------------------------------------------------------------------


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()


def _other_app(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 100)


def _journal_then(path: Path, *, newer: bool = False) -> None:
    journal = SQLiteJournal(path, clock=VirtualClock())
    for i in range(50):
        journal.accepted(_record(f"r{i}"))
    journal.close()  # checkpoints: everything is in the main file
    if newer:
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
        conn.close()


def _newer(path: Path) -> None:
    _journal_then(path, newer=True)


def _flip(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def _header_byte(path: Path) -> None:
    _journal_then(path)
    _flip(path, 21, 0x7F)  # the maximum payload fraction, which must be 64


def _application_id_byte(path: Path) -> None:
    _journal_then(path)
    _flip(path, 70, 0x00)


def _btree_page(path: Path) -> None:
    _journal_then(path)
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'invocations_state_next'"
    ).fetchone()[0]
    conn.close()
    _flip(path, (root - 1) * page_size, 0x07)  # not a valid b-tree page type


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_foreign, "another application's database"),
        (_other_app, "application_id 0x4d2"),
        (_garbage, "expected a SQLite database"),
        (_newer, "newer bgfunctions"),
        (_header_byte, "not a readable SQLite database"),
        (_application_id_byte, "expected a bgfunctions journal"),
        (_btree_page, "malformed|quick_check"),
    ],
    ids=["foreign", "other-app", "garbage", "newer", "header-byte", "app-id-byte", "btree"],
)
def test_refused_files_are_left_unchanged(
    path: Path, damage: Callable[[Path], None], why: str
) -> None:
    """A file that is not a readable journal of this version is refused, naming the file and
    why, and not one byte of it changes."""
    damage(path)
    before = path.read_bytes()
    with pytest.raises(JournalError, match=why) as info:
        SQLiteJournal(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_an_empty_sqlite_file_is_adopted(open_journal: Opener, path: Path) -> None:
    """An existing but empty SQLite database (or empty file) becomes a journal."""
    sqlite3.connect(path).close()
    journal = open_journal()
    journal.accepted(_record("a"))
    assert journal.get("a") == _record("a")


# -- crashes ---------------------------------------------------------------------------------

_CHILD = """
import sys
from bgfunctions import VirtualClock
from bgfunctions.invocation import InvocationRecord
from bgfunctions.journals.sqlite import SQLiteJournal
journal = SQLiteJournal(sys.argv[1], synchronous="FULL", clock=VirtualClock())
for i in range(10_000):
    journal.accepted(InvocationRecord(request_id=f"r{i}", function="f", method="POST", url="/",
                                      accepted_at=float(i)))
    print(f"r{i}", flush=True)
"""


def test_killed_process_loses_no_accepted_row(path: Path) -> None:
    """SIGKILL a process while it accepts: every row whose accepted() returned is in the file."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged = []
    for line in child.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 300:
            child.kill()
            break
    child.wait()
    acknowledged += [line.strip() for line in child.stdout]  # printed before the kill landed
    child.stdout.close()
    assert Path(f"{path}-wal").exists()  # the kill left an uncheckpointed WAL behind
    journal = SQLiteJournal(path, clock=VirtualClock())
    try:
        present = {r.request_id for r in journal.select()}
    finally:
        journal.close()
    assert set(acknowledged) <= present
    assert _integrity(path) == "ok"


def test_copy_of_db_and_wal_holds_committed_rows_and_a_torn_tail_is_dropped(
    open_journal: Opener, path: Path, tmp_path: Path
) -> None:
    """A crash image (db + WAL, no -shm) has every committed row; a WAL cut inside the last
    transaction silently loses that transaction only (SQLite cannot tell it was there)."""
    journal = open_journal()
    journal.accepted(_record("first"))
    journal.accepted(_record("second"))
    image = tmp_path / "image"
    image.mkdir()
    shutil.copyfile(path, image / "journal.db")
    shutil.copyfile(f"{path}-wal", image / "journal.db-wal")
    copy = open_journal(path=image / "journal.db")
    assert {r.request_id for r in copy.select()} == {"first", "second"}
    copy.close()

    torn = tmp_path / "torn"
    torn.mkdir()
    shutil.copyfile(path, torn / "journal.db")
    wal = Path(f"{path}-wal").read_bytes()
    page_size = int.from_bytes(wal[8:12], "big")
    frame = 24 + page_size
    frames = (len(wal) - 32) // frame
    (torn / "journal.db-wal").write_bytes(wal[: 32 + (frames - 1) * frame + frame // 2])
    reopened = open_journal(path=torn / "journal.db")
    assert [r.request_id for r in reopened.select()] == ["first"]
    assert _integrity(torn / "journal.db") == "ok"


# -- faults ----------------------------------------------------------------------------------


def test_disk_full_is_unavailable_then_recovers(open_journal: Opener, path: Path) -> None:
    """A full disk (SQLITE_FULL: the file at max_size_bytes) fails accepted() with
    JournalUnavailableError and writes nothing; with room again, accepts work."""
    open_journal().accepted(_record("before"))
    with contextlib.closing(sqlite3.connect(path)) as db:
        size = db.execute("PRAGMA page_count").fetchone()[0] * 4096  # 4 KiB pages
    journal = open_journal(max_size_bytes=size)
    big = dataclasses.replace(_record("big"), body=os.urandom(200_000), body_size=200_000)
    with pytest.raises(JournalUnavailableError, match="full") as info:
        journal.accepted(big)
    assert isinstance(info.value, NotAcceptedError)
    assert info.value.retry_after > 0
    assert journal.get("big") is None
    journal.accepted(_record("small"))  # what fits in the free room of its pages still goes
    roomy = open_journal(max_size_bytes=size + 400_000)
    roomy.accepted(big)
    assert journal.get("big") == big
    assert _integrity(path) == "ok"


def test_max_size_bytes_is_checked(path: Path) -> None:
    """max_size_bytes must be a positive int (or None): refused before the file is made."""
    for bad in (0, -1, 1.5, True, "4096"):
        with pytest.raises(ValueError, match="max_size_bytes"):
            SQLiteJournal(path, max_size_bytes=bad)  # type: ignore[arg-type]
    assert not path.exists()


def test_locked_file_is_unavailable_then_recovers(open_journal: Opener, path: Path) -> None:
    """A lock held past busy_timeout fails accepted(); releasing it lets accepts through."""
    journal = open_journal(busy_timeout=0.05)
    journal.accepted(_record("before"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(JournalUnavailableError, match="locked"):
            journal.accepted(_record("blocked"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert journal.get("blocked") is None
    journal.accepted(_record("after"))
    assert sorted(_rows(path)) == ["after", "before"]
    assert _integrity(path) == "ok"


def test_lease_maintenance_gives_way_to_a_lock_soon(open_journal: Opener, path: Path) -> None:
    """Under a lock, lease renewal and takeover fail within a moment (they are retried every
    few seconds anyway), not after busy_timeout: accepts queued behind them are not held."""
    journal = open_journal(busy_timeout=60.0)
    journal.accepted(_record("a"))
    assert journal.attempt_started(_record("a").start_attempt(1001.0))
    errors: list[JournalUnavailableError] = []

    def maintain() -> None:
        for call in (lambda: journal.heartbeat(["a"]), journal.expire_leases):
            try:
                call()
            except JournalUnavailableError as exc:
                errors.append(exc)

    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        thread = threading.Thread(target=maintain)
        thread.start()
        thread.join(20.0)
        gave_way = not thread.is_alive()
    finally:
        other.execute("ROLLBACK")
        other.close()
    thread.join()
    assert gave_way, "lease maintenance waited for the lock as long as busy_timeout"
    assert len(errors) == 2
    journal.heartbeat(["a"])  # the lock released, maintenance goes through again
    assert _rows(path) == {"a": ("running", journal.owner)}


def test_a_failed_batch_fails_every_write_in_it(open_journal: Opener, path: Path) -> None:
    """Concurrent accepts during a fault (another connection holds the write lock) all fail:
    none is lost after reporting success; the lock released, they go through again."""
    journal = open_journal(busy_timeout=0.05)
    results: dict[str, str] = {}

    def accept(rid: str) -> None:
        try:
            journal.accepted(_record(rid))
            results[rid] = "ok"
        except JournalUnavailableError:
            results[rid] = "unavailable"

    with _locked(path):
        threads = [threading.Thread(target=accept, args=(f"r{i}",)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(results.values()) == {"unavailable"}
    assert _rows(path) == {}
    journal.accepted(_record("after"))
    assert list(_rows(path)) == ["after"]
    assert _integrity(path) == "ok"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock meanwhile (a real lock, as another
    process would hold it)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_closed_journal_refuses_writes(open_journal: Opener) -> None:
    """After close(), accepted() raises JournalUnavailableError and reads raise JournalError."""
    journal = open_journal()
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(JournalUnavailableError, match="closed"):
        journal.accepted(_record("a"))
    with pytest.raises(JournalError, match="closed"):
        journal.get("a")


def test_invalid_options_are_refused(path: Path) -> None:
    """Bad options raise ValueError naming the option, before the file is created."""
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteJournal(path, synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        SQLiteJournal(path, lease=0)
    assert not path.exists()


# -- with an App -----------------------------------------------------------------------------


def test_app_answers_202_only_after_the_row_is_committed(path: Path, clock: VirtualClock) -> None:
    """End to end: the row is in the file before the 202, attempts are recorded, and a
    reopened journal reads what app.invocations shows."""
    seen_at_accept: list[dict[str, tuple[str, str | None]]] = []
    calls: list[int] = []

    def handler(request: Request, context: Context) -> None:
        calls.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")

    registry = Registry()
    registry.add("job-background", handler)
    journal = SQLiteJournal(path, clock=clock)
    app = App(
        registry,
        executor=InlineExecutor(clock=clock, journal=journal),
        on_event=lambda event: (
            seen_at_accept.append(_rows(path)) if event.kind.value == "accepted" else None
        ),
    )
    try:
        response = app.handle(Request("POST", "/.netlify/functions/job-background", body=b"hi"))
        assert response.status == 202
        rid = response.headers["x-nf-request-id"]
        assert seen_at_accept == [{rid: ("accepted", None)}]
        assert app.executor.get(rid).wait().state is State.SUCCEEDED
        assert calls == [1, 2]
        shown = app.invocations.get(rid)
        assert shown is not None
        assert [a.outcome for a in shown.attempts] == [Outcome.ERROR, Outcome.SUCCEEDED]
    finally:
        app.shutdown()
        journal.close()
    reopened = SQLiteJournal(path, clock=clock)
    try:
        assert reopened.get(rid) == shown
    finally:
        reopened.close()


def test_unavailable_journal_makes_the_app_answer_503(path: Path, clock: VirtualClock) -> None:
    """A journal that cannot commit turns the request into 503 with Retry-After, not a 202."""
    registry = Registry()
    registry.add("job-background", lambda request, context: None)
    journal = SQLiteJournal(path, clock=clock, busy_timeout=0.05)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        with _locked(path):
            response = app.handle(Request("POST", "/.netlify/functions/job-background"))
        assert response.status == 503
        assert "retry-after" in response.headers
        assert _rows(path) == {}
    finally:
        app.shutdown()
        journal.close()


def test_a_503_shows_the_client_no_path_or_sqlite_error_and_logs_them(
    path: Path, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 body is a generic text with the request id; the path and SQLite's error are logged."""
    registry = Registry()
    registry.add("job-background", lambda request, context: None)
    journal = SQLiteJournal(path, clock=clock, busy_timeout=0.05)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        with _locked(path), caplog.at_level("WARNING", logger="bgfunctions.app"):
            response = app.handle(Request("POST", "/.netlify/functions/job-background"))
            async_response = asyncio.run(
                app.handle_async(Request("POST", "/.netlify/functions/job-background"))
            )
    finally:
        app.shutdown()
        journal.close()
    for answer in (response, async_response):
        assert answer.status == 503
        text = answer.body.decode()
        rid = answer.headers["x-nf-request-id"]
        assert rid in text
        assert str(path) not in text
        assert path.name not in text
        assert "locked" not in text
        assert "SQLite" not in text
        logged = [r.getMessage() for r in caplog.records if rid in r.getMessage()]
        assert len(logged) == 1
        assert str(path) in logged[0]
        assert "database is locked" in logged[0]


def _thread_app(
    path: Path,
    calls: list[str],
    on_event: Callable[[Event], None] | None = None,
    *,
    busy_timeout: float = 5.0,
) -> tuple[App, SQLiteJournal]:
    registry = Registry()
    registry.add("job-background", lambda request, context: calls.append(context.request_id))
    journal = SQLiteJournal(path, busy_timeout=busy_timeout)
    executor = ThreadExecutor(journal=journal)
    return App(registry, executor=executor, on_event=on_event or ()), journal


def test_async_accepts_share_commits_and_each_202_is_on_disk(path: Path) -> None:
    """handle_async on a real loop: 64 concurrent requests, each 202 given once its row is
    committed; they share transactions (no thread held per accept); every one runs."""
    calls: list[str] = []
    app, journal = _thread_app(path, calls)
    committed_at_202: list[bool] = []

    async def one() -> str:
        response = await app.handle_async(Request("POST", "/.netlify/functions/job-background"))
        assert response.status == 202, response
        rid = response.headers["x-nf-request-id"]
        committed_at_202.append(rid in _rows(path))
        return rid

    async def main() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(64)))

    try:
        app.start()
        before = journal.stats()
        rids = asyncio.run(main())
        stats = journal.stats()
        for rid in rids:
            assert app.executor.get(rid).wait(10).state is State.SUCCEEDED
    finally:
        app.shutdown()
        journal.close()
    assert committed_at_202 == [True] * 64
    assert sorted(calls) == sorted(rids)
    assert stats["commits"] - before["commits"] < stats["writes"] - before["writes"]


def test_async_accept_on_an_unavailable_journal_is_a_503(path: Path) -> None:
    """handle_async with a journal that cannot commit: 503 with Retry-After, nothing kept."""
    calls: list[str] = []
    app, journal = _thread_app(path, calls, busy_timeout=0.05)
    try:
        app.start()
        request = Request("POST", "/.netlify/functions/job-background")
        with _locked(path):
            response = asyncio.run(app.handle_async(request))
        assert response.status == 503
        assert "retry-after" in response.headers
        assert app.executor.stats().pending == 0
    finally:
        app.shutdown()
        journal.close()
    assert _rows(path) == {}
    assert calls == []


def test_an_async_accept_whose_caller_is_cancelled_still_runs(path: Path) -> None:
    """The awaiting task is cancelled after its record went to the journal (a client gone):
    the invocation is committed and runs all the same; nothing accepted is lost."""
    calls: list[str] = []
    succeeded = threading.Event()

    def on_event(event: Event) -> None:
        if event.kind is EventKind.SUCCEEDED:
            succeeded.set()

    app, journal = _thread_app(path, calls, on_event)

    async def main() -> None:
        request = Request("POST", "/.netlify/functions/job-background")
        task = asyncio.ensure_future(app.handle_async(request))
        await asyncio.sleep(0)  # the task runs up to its await of the commit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop ends here, maybe before the commit: the dispatch must not need it.

    try:
        app.start()
        asyncio.run(main())
        assert succeeded.wait(10), "the invocation of the cancelled request never ran"
    finally:
        app.shutdown()
        journal.close()
    assert list(_rows(path)) == calls
    assert len(calls) == 1


def test_a_listener_that_writes_to_the_journal_on_accepted_does_not_hang_it(path: Path) -> None:
    """An on_event listener cancelling on ACCEPTED (a journal write, from the committing
    thread) under handle_async: the 202 comes, the invocation is cancelled, close() returns."""
    calls: list[str] = []
    cancelled = threading.Event()
    apps: list[App] = []

    def on_event(event: Event) -> None:
        if event.kind is EventKind.ACCEPTED:
            apps[0].executor.cancel(event.record.request_id)
        elif event.kind is EventKind.CANCELLED:
            cancelled.set()

    app, journal = _thread_app(path, calls, on_event)
    apps.append(app)
    registry_request = Request("POST", "/.netlify/functions/job-background")
    try:
        app.start()
        response = asyncio.run(asyncio.wait_for(app.handle_async(registry_request), 10))
        assert response.status == 202
        assert cancelled.wait(10)
        rid = response.headers["x-nf-request-id"]
        assert app.invocations.get(rid) is not None
    finally:
        app.shutdown()
        closing = threading.Thread(target=journal.close)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() hung"
    assert _rows(path)[rid][0] == "cancelled"


def test_max_pending_bounds_async_accepts_waiting_for_their_commit(path: Path) -> None:
    """max_pending counts accepts still waiting for their commit: 50 concurrent handle_async
    calls against max_pending=5 and a busy worker get 503s, and at most 5 wait."""
    release = threading.Event()
    registry = Registry()
    registry.add("job-background", lambda request, context: release.wait(10))
    journal = SQLiteJournal(path)
    app = App(registry, executor=ThreadExecutor(journal=journal, max_workers=1, max_pending=5))

    async def main() -> list[int]:
        request = Request("POST", "/.netlify/functions/job-background")
        responses = await asyncio.gather(*(app.handle_async(request) for _ in range(50)))
        return [r.status for r in responses]

    try:
        app.start()
        statuses = asyncio.run(main())
        waiting = app.executor.stats().pending
    finally:
        release.set()
        app.shutdown()
        journal.close()
    assert statuses.count(503) >= 44, statuses
    assert set(statuses) <= {202, 503}
    assert waiting <= 5
    assert len(_rows(path)) == statuses.count(202)


def test_a_restarted_app_runs_what_a_dead_one_accepted(path: Path, clock: VirtualClock) -> None:
    """Accepted before a crash, run after the restart; an attempt running in the dead process is
    ended as interrupted once its lease expires, then retried."""
    calls: list[str] = []
    registry = Registry()
    registry.add("job-background", lambda request, context: calls.append(context.request_id))
    dead = SQLiteJournal(path, clock=clock, owner="dead", lease=10.0)
    waiting, running = _record("waiting", at=clock.now()), _record("running", at=clock.now())
    dead.accepted(waiting)
    dead.accepted(running)
    assert dead.attempt_started(running.start_attempt(clock.now()))
    dead.close()  # the process dies: nothing more is written

    clock.advance(11.0)
    journal = SQLiteJournal(path, clock=clock, owner="new")
    executor = InlineExecutor(clock=clock, journal=journal)
    app = App(registry, executor=executor)
    try:
        app.start()
        executor.drain()
        assert sorted(calls) == ["running", "waiting"]
        again = journal.get("running")
        assert again is not None
        assert again.state is State.SUCCEEDED
        assert [a.outcome for a in again.attempts] == [Outcome.INTERRUPTED, Outcome.SUCCEEDED]
        assert again.attempts[1].started_at == (again.attempts[0].ended_at or 0.0) + 60.0
    finally:
        app.shutdown()
        journal.close()


# -- bodies of waiting work stay on disk ---------------------------------------------------------

BIG = 250_000  # a body near the background limit (262,144 bytes)
WAITING = 40  # 10 MB of bodies
BOUND = WAITING * BIG // 10  # what may be retained: a tenth of the bodies, far above the records


def _retained(baseline: int) -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - baseline


def test_waiting_bodies_stay_in_the_journal_and_each_attempt_loads_its_own(
    path: Path, clock: VirtualClock
) -> None:
    """40 waiting 250 KB invocations hold under a tenth of their bodies in memory, after a
    restart and between retries too; every attempt gets its whole body."""
    seen: list[tuple[int, int]] = []

    def handler(request: Request, context: Context) -> None:
        seen.append((context.attempt, len(request.body)))
        if context.attempt == 1:
            raise RuntimeError("the first attempt fails")

    registry = Registry()
    registry.add("job-background", handler)
    url = "/.netlify/functions/job-background"
    tracemalloc.start()
    try:
        baseline = _retained(0)
        journal = SQLiteJournal(path, clock=clock)
        app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
        for i in range(WAITING):
            response = app.handle(Request("POST", url, body=bytes([i]) * BIG))
            assert response.status == 202
        accepted = _retained(baseline)
        app.shutdown()
        journal.close()

        # A restart takes the backlog over without reading its bodies.
        journal = SQLiteJournal(path, clock=clock, owner="restarted")
        executor = InlineExecutor(clock=clock, journal=journal)
        app = App(registry, executor=executor)
        baseline = _retained(0)
        app.start()
        assert executor.stats().pending == WAITING
        recovered = _retained(baseline)
        executor.run_until(clock.now() + 1.0)  # attempt 1 of each: it fails, a retry waits
        assert len(seen) == WAITING
        assert {r.state for r in journal.select()} == {State.RETRY_SCHEDULED}
        retrying = _retained(baseline)
        executor.drain()
        app.shutdown()
        journal.close()
    finally:
        tracemalloc.stop()
    assert accepted < BOUND, f"{accepted} bytes retained by {WAITING} waiting invocations"
    assert recovered < BOUND, f"{recovered} bytes retained after recovering {WAITING}"
    assert retrying < BOUND, f"{retrying} bytes retained by {WAITING} scheduled retries"
    assert sorted(seen) == [(1, BIG)] * WAITING + [(2, BIG)] * WAITING


def test_listing_records_reads_no_body(open_journal: Opener) -> None:
    """select() and unfinished() return body_size without the body, and never hold the bodies
    in memory; get() and with_body() return it whole; the view shows the stored size."""
    journal = open_journal()
    for i in range(WAITING):
        record = _record(f"r{i}", at=1000.0 + i)
        journal.accepted(dataclasses.replace(record, body=bytes([i]) * BIG, body_size=BIG))
    tracemalloc.start()
    try:
        listed = journal.select(limit=WAITING)
        waiting = journal.unfinished()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUND, f"listing {WAITING} records peaked at {peak} bytes"
    assert len(listed) == len(waiting) == WAITING
    for record in listed + waiting:
        assert record.body == b""
        assert record.body_size == BIG
        assert not record.body_loaded
        assert record_to_view(record)["body_size"] == BIG
    whole = journal.get("r3")
    assert whole is not None
    assert whole.body == bytes([3]) * BIG
    assert journal.with_body(waiting[3]) == whole
    assert journal.body("r3") == whole.body
    assert journal.body("missing") is None


def test_a_schema_1_file_moves_its_bodies_out_of_the_json(path: Path) -> None:
    """A file of schema 1 (bodies inside the JSON) is migrated on open: bodies move to their
    own column, listings carry body_size, get() returns the same body."""
    old = _record("old")
    data = old.to_json()
    del data["body_size"]  # schema 1's records had no body_size
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(
            """
            CREATE TABLE invocations (
                request_id TEXT PRIMARY KEY NOT NULL, function TEXT NOT NULL,
                state TEXT NOT NULL, attempts INTEGER NOT NULL, accepted_at REAL NOT NULL,
                next_run_at REAL, finished_at REAL, lease_owner TEXT, lease_expires REAL,
                record TEXT NOT NULL
            );
            """
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO invocations VALUES (?, ?, 'accepted', 0, ?, ?, NULL, NULL, NULL, ?)",
            ("old", old.function, old.accepted_at, old.next_run_at, json.dumps(data)),
        )
    journal = SQLiteJournal(path)
    try:
        assert journal.get("old") == old
        assert journal.unfinished() == [old.without_body()]
        assert journal.unfinished()[0].body_size == len(old.body)
        journal.accepted(_record("new"))
        assert journal.get("new") == _record("new")
    finally:
        journal.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        text, body = conn.execute(
            "SELECT record, body FROM invocations WHERE request_id = 'old'"
        ).fetchone()
    assert "body" not in json.loads(text)
    assert body == old.body


def test_async_accepts_on_threads_keep_waiting_bodies_on_disk(path: Path) -> None:
    """handle_async on a ThreadExecutor (as `bgfunctions serve` runs): 40 waiting 250 KB
    accepts hold under a tenth of their bodies; each attempt then gets its whole body."""
    release = threading.Event()
    sizes: list[int] = []

    def handler(request: Request, context: Context) -> None:
        sizes.append(len(request.body))
        release.wait(30)

    registry = Registry()
    registry.add("job-background", handler)
    journal = SQLiteJournal(path)
    app = App(registry, executor=ThreadExecutor(journal=journal, max_workers=1))
    url = "/.netlify/functions/job-background"

    async def accept_all() -> list[str]:
        rids = []
        for i in range(WAITING):
            response = await app.handle_async(Request("POST", url, body=bytes([i]) * BIG))
            assert response.status == 202
            rids.append(response.headers["x-nf-request-id"])
        return rids

    tracemalloc.start()
    try:
        app.start()
        baseline = _retained(0)
        rids = asyncio.run(accept_all())
        held = _retained(baseline)
        release.set()
        for rid in rids:
            assert app.executor.get(rid).wait(30).state is State.SUCCEEDED
    finally:
        release.set()
        tracemalloc.stop()
        app.shutdown()
        journal.close()
    assert held < BOUND, f"{held} bytes retained by {WAITING} waiting async accepts"
    assert sizes == [BIG] * WAITING


# -- read-only files ------------------------------------------------------------------------------


def _where_permissions_apply(fn: Callable[[], str]) -> str:
    """``fn()`` where file permissions bind: here, or (root ignores them) in a forked child
    that becomes ``nobody``; what it returned, or the exception it raised, as text."""
    if os.geteuid() != 0:
        try:
            return fn()
        except Exception as exc:
            return f"raised {type(exc).__name__}: {exc}"
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child
        pid = os.fork()  # only opens a file and exits
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as exc:
            out = f"raised {type(exc).__name__}: {exc}"
        os.write(write_end, out.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        # Bounded: a child stuck on a lock some thread held at the fork must not hang the run.
        ready, _, _ = select.select([f], [], [], 30.0)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        data = f.read() if ready else b"the child gave no answer within 30 s"
    os.waitpid(pid, 0)
    return data.decode()


@pytest.fixture
def read_only_site() -> Iterator[Path]:
    """A site whose journal (two invocations) and its directory are read-only."""
    root = Path(tempfile.mkdtemp())
    root.chmod(0o755)  # traversable by the unprivileged child
    site = root / "site"
    journal_path = site / ".bgfunctions" / "journal.sqlite3"
    journal_path.parent.mkdir(parents=True)
    journal = SQLiteJournal(journal_path)
    journal.accepted(_record("a"))
    journal.accepted(_record("b", at=1001.0))
    journal.close()
    site.chmod(0o755)
    journal_path.chmod(0o444)
    journal_path.parent.chmod(0o555)
    try:
        yield site
    finally:
        journal_path.parent.chmod(0o755)
        shutil.rmtree(root)


def test_a_read_only_journal_is_called_read_only_and_invocations_lists_it(
    read_only_site: Path,
) -> None:
    """Opening a read-only journal to write says it is read-only; `bgfunctions invocations`
    opens it read-only and lists it, leaving the file and its directory untouched."""
    from bgfunctions.cli import main

    path = read_only_site / ".bgfunctions" / "journal.sqlite3"
    before = path.read_bytes()
    # The journal and the writers' lock file its writer left (see _sqlite_lock); nothing else.
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["journal.sqlite3", "journal.sqlite3-lock"]

    def open_for_writing() -> str:
        SQLiteJournal(path)
        return "opened"

    def list_invocations() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["invocations", str(read_only_site), "--json"])
        return f"{status} {out.getvalue()}"

    # Once here first, on a copy: the child (nobody) cannot read the standard library to
    # import what the command imports on first use.
    warm_up = read_only_site.with_name("copy")
    shutil.copytree(read_only_site, warm_up)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["invocations", str(warm_up), "--json"]) == 0
    refused = _where_permissions_apply(open_for_writing)
    assert refused.startswith("raised JournalError"), refused
    assert "read-only" in refused
    assert "not a readable SQLite database" not in refused
    listed = _where_permissions_apply(list_invocations)
    status, _, text = listed.partition(" ")
    assert status == "0", listed
    shown = json.loads(text)
    assert [(r["request_id"], r["body_size"]) for r in shown] == [("b", 256), ("a", 256)]
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == files


def test_a_read_only_journal_object_reads_a_live_file_and_takes_no_writes(
    open_journal: Opener, path: Path
) -> None:
    """read_only=True sees what a writer commits meanwhile, refuses writes with
    JournalUnavailableError, and refuses files it cannot read as a journal."""
    writer = open_journal()
    writer.accepted(_record("a"))
    reader = open_journal(read_only=True)
    writer.accepted(_record("b", at=1001.0))
    assert [r.request_id for r in reader.select()] == ["b", "a"]
    assert reader.get("a") == _record("a")
    with pytest.raises(JournalUnavailableError, match="read_only=True"):
        reader.accepted(_record("c"))
    with pytest.raises(JournalError, match="found none"):
        open_journal(path=path.with_name("missing.db"), read_only=True)
    foreign = path.with_name("foreign.db")
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(JournalError, match="another application's database"):
        open_journal(path=foreign, read_only=True)


def test_a_process_executor_over_the_journal_hands_each_attempt_its_body(
    tmp_path: Path, path: Path
) -> None:
    """The process executor keeps no body while work waits, and loads each attempt's body
    from the journal for the worker process (retries included)."""
    functions = tmp_path / "functions"
    functions.mkdir()
    sizes = tmp_path / "sizes.txt"
    (functions / "job-background.py").write_text(
        "def handler(request, context):\n"
        f"    with open({str(sizes)!r}, 'a') as f:\n"
        "        f.write(f'{context.attempt} {len(request.body)}\\n')\n"
        "    if context.attempt == 1:\n"
        "        raise RuntimeError('the first attempt fails')\n"
    )
    journal = SQLiteJournal(path)
    app = App(
        discover(functions),
        executor=ProcessExecutor(journal=journal, max_workers=1),
        retry=RetryPolicy(delays=(0.01,)),
    )
    try:
        body = os.urandom(BIG)
        invocation = app.enqueue("job-background", Request("POST", "/x", body=body))
        assert invocation.record.body_size == BIG
        assert not invocation.record.body_loaded
        assert invocation.wait(60).state is State.SUCCEEDED
    finally:
        app.shutdown(grace=0)
        journal.close()
    assert sizes.read_text().split("\n") == [f"1 {BIG}", f"2 {BIG}", ""]


def test_replaying_a_waiting_invocation_replays_its_body(path: Path, clock: VirtualClock) -> None:
    """A waiting invocation's live record has no body; replaying it still sends the body."""
    bodies: list[bytes] = []
    registry = Registry()
    registry.add("job-background", lambda request, context: bodies.append(request.body))
    journal = SQLiteJournal(path, clock=clock)
    executor = InlineExecutor(clock=clock, journal=journal)
    app = App(registry, executor=executor)
    try:
        response = app.handle(Request("POST", "/.netlify/functions/job-background", body=b"hi"))
        rid = response.headers["x-nf-request-id"]
        assert not app.get(rid).record.body_loaded  # waiting: the body is in the journal
        again = app.replay(rid)
        executor.drain()
        assert again.record.state is State.SUCCEEDED
    finally:
        app.shutdown()
        journal.close()
    assert bodies == [b"hi", b"hi"]


class _BodyReadFailsOnce(SQLiteJournal):
    """A journal whose first body read fails, as a read does when the disk or the database
    connection has a moment's trouble."""

    failed = False

    def body(self, request_id: str) -> bytes | None:
        if not self.failed:
            self.failed = True
            raise JournalUnavailableError("SQLiteJournal: disk I/O error (a moment's trouble)")
        return super().body(request_id)


def test_a_body_that_cannot_be_loaded_once_is_a_failed_attempt_that_is_retried(
    path: Path, clock: VirtualClock
) -> None:
    """An accepted invocation whose body read fails at its first attempt is retried on the
    function's schedule, and the retry runs with the body: a 202 is never lost to it."""
    bodies: list[bytes] = []
    registry = Registry()
    registry.add("job-background", lambda request, context: bodies.append(request.body))
    journal = _BodyReadFailsOnce(path, clock=clock)
    executor = InlineExecutor(clock=clock, journal=journal)
    app = App(registry, executor=executor)
    try:
        response = app.handle(Request("POST", "/.netlify/functions/job-background", body=b"hi"))
        executor.drain()
        record = app.get(response.headers["x-nf-request-id"]).record
    finally:
        app.shutdown()
        journal.close()
    assert [a.outcome for a in record.attempts] == [Outcome.ERROR, Outcome.SUCCEEDED]
    assert record.attempts[0].error_type == "bgfunctions.errors.JournalUnavailableError"
    assert record.state is State.SUCCEEDED
    assert bodies == [b"hi"]


def test_claims_and_ends_commit_without_fsync_and_accepts_with_it(
    open_journal: Opener, clock: VirtualClock
) -> None:
    """With synchronous=FULL, claims and attempt ends (a power cut losing one only repeats
    an attempt) commit with synchronous=NORMAL, accepts and cancellations with FULL, also when
    they share a batch; every write of a mixed batch is committed. (The writer connection's
    statements are traced: the sync level is not observable otherwise short of a power cut.)"""
    journal = open_journal()
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)
    level = {"now": "FULL"}
    seen: list[tuple[str, str]] = []  # (the statement's kind, the level it ran at)

    def classify(text: str) -> None:
        words = text.split()
        if text.startswith("PRAGMA synchronous"):
            level["now"] = words[-1]
        elif words and words[0] in ("INSERT", "UPDATE"):
            seen.append((words[0], level["now"]))

    for i in range(4):
        journal.accepted(_record(f"w{i}"))
    records = [journal.get(f"w{i}") for i in range(4)]
    barrier = threading.Barrier(8)
    claimed: list[bool] = []

    def claim(record: InvocationRecord | None) -> None:
        assert record is not None
        barrier.wait()
        claimed.append(journal.attempt_started(record.start_attempt(clock.now())))

    def accept(i: int) -> None:
        barrier.wait()
        journal.accepted(_record(f"n{i}"))

    threads = [threading.Thread(target=claim, args=(r,)) for r in records]
    threads += [threading.Thread(target=accept, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert claimed == [True] * 4
    running = journal.get("w0")
    assert running is not None
    journal.attempt_ended(running.end_attempt(clock.now(), Outcome.SUCCEEDED, RETRY))
    stopped = journal.get("w1")
    assert stopped is not None
    ended = stopped.end_attempt(clock.now(), Outcome.CANCELLED, RetryPolicy(delays=()))
    journal.attempt_ended(dataclasses.replace(ended, state=State.CANCELLED))
    for text in statements:
        classify(text)
    inserts = {lvl for kind, lvl in seen if kind == "INSERT"}
    updates = [lvl for kind, lvl in seen if kind == "UPDATE"]
    assert inserts == {"FULL"}
    assert updates[:5] == ["NORMAL"] * 5  # four claims, one end
    assert updates[5:] == ["FULL"]  # the cancellation
    assert {r.request_id for r in journal.select()} == {f"w{i}" for i in range(4)} | {
        f"n{i}" for i in range(4)
    }
    assert [journal.get(r).state for r in ("w0", "w1")] == [State.SUCCEEDED, State.CANCELLED]  # type: ignore[union-attr]
