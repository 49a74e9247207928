"""PostgresJournal: records in a shared table, claims, leases, pruning, faults, an App on it.

Runs against the PostgreSQL on loopback (``BGFUNCTIONS_TEST_POSTGRES_DSN``, else
``postgresql://postgres@127.0.0.1:5432/test``, else ``root@``); each test uses its own table.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from bgfunctions import App, Context, InlineExecutor, Registry, Request, RetryPolicy, VirtualClock
from bgfunctions.errors import JournalError, JournalUnavailableError, NotAcceptedError
from bgfunctions.invocation import InvocationRecord, Outcome, State
from bgfunctions.journals.postgres import SCHEMA_VERSION, PostgresJournal

RETRY = RetryPolicy()
Opener = Callable[..., PostgresJournal]
CANDIDATES = [
    os.environ.get("BGFUNCTIONS_TEST_POSTGRES_DSN", ""),
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
]


def _find_dsn() -> tuple[str | None, list[str]]:
    failures = []
    for dsn in filter(None, CANDIDATES):
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
        except psycopg.Error as exc:
            failures.append(f"{dsn}: {' '.join(str(exc).split())}")
        else:
            return dsn, failures
    return None, failures


@pytest.fixture(scope="module")
def dsn() -> str:
    found, failures = _find_dsn()
    if found is None:
        pytest.skip(
            "PostgresJournal tests need PostgreSQL on loopback (set BGFUNCTIONS_TEST_POSTGRES_DSN "
            "or start one with trust auth and a database 'test'); tried: " + "; ".join(failures)
        )
    return found


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A fresh table name; the table and its meta table are dropped after the test."""
    name = f"bgf_test_{uuid.uuid4().hex}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        for suffix in ("", "_meta"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name + suffix)))


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1000.0)


@pytest.fixture
def open_journal(dsn: str, table: str, clock: VirtualClock) -> Iterator[Opener]:
    """Open journals on the test's table (virtual clock); close them all after."""
    opened: list[PostgresJournal] = []

    def make(**options: Any) -> PostgresJournal:
        options.setdefault("clock", clock)
        options.setdefault("table", table)
        journal = PostgresJournal(options.pop("dsn", dsn), **options)
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        journal.close()


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


def _query(dsn: str, text: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(text, args)
        return cursor.fetchall() if cursor.description is not None else []


def _rows(dsn: str, table: str) -> dict[str, tuple[str, str | None]]:
    """request_id -> (state, lease_owner), read with a separate connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT request_id, state, lease_owner FROM {}").format(sql.Identifier(table))
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _closed_port_dsn() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2"


def _race(journals: list[PostgresJournal], work: Callable[[PostgresJournal], None]) -> None:
    """Run ``work`` for every journal in its own thread, all released at once."""
    barrier = threading.Barrier(len(journals))
    errors: list[BaseException] = []

    def run(journal: PostgresJournal) -> None:
        try:
            barrier.wait()
            work(journal)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(j,)) for j in journals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- records ---------------------------------------------------------------------------------


def test_records_round_trip_through_the_table(open_journal: Opener) -> None:
    """Every state change is stored, and another journal object reads back equal records."""
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

    other = open_journal()
    assert other.get("a") == failed
    assert other.get("b") == done
    assert other.get("missing") is None
    assert [r.request_id for r in other.select()] == ["b", "a"]
    # Listings leave bodies out (their size stays); get() has the whole record.
    assert other.select(function="other") == [done.without_body()]
    assert other.select(state=State.RETRY_SCHEDULED) == [failed.without_body()]
    both = [State.SUCCEEDED, State.RETRY_SCHEDULED]
    assert other.select(state=both, limit=1) == [done.without_body()]
    assert other.unfinished() == [failed.without_body()]


def test_select_newest_first_and_unfinished_oldest_first(open_journal: Opener) -> None:
    """select is newest accepted first; unfinished is oldest first; ties keep insertion order."""
    journal = open_journal()
    for rid, at in [("r1", 10.0), ("r2", 30.0), ("r3", 20.0), ("r4", 20.0)]:
        journal.accepted(_record(rid, at=at))
    assert [r.request_id for r in journal.select()] == ["r2", "r4", "r3", "r1"]
    assert [r.request_id for r in journal.unfinished()] == ["r1", "r3", "r4", "r2"]
    assert [r.request_id for r in journal.select(limit=2)] == ["r2", "r4"]
    assert journal.select(limit=0) == []


def test_record_is_jsonb_and_committed_when_accepted_returns(
    open_journal: Opener, dsn: str, table: str
) -> None:
    """Once accepted() returns, another connection reads the row, its record a jsonb object."""
    journal = open_journal()
    journal.accepted(_record("a"))
    assert _rows(dsn, table) == {"a": ("accepted", None)}
    kind, url = _query(
        dsn,
        f"SELECT jsonb_typeof(record), record->>'url' FROM {table} WHERE request_id = 'a'",
    )[0]
    assert (kind, url) == ("object", "/.netlify/functions/job-background?x=1")


def test_a_known_request_id_is_refused(open_journal: Opener) -> None:
    """Accepting a request id twice raises ValueError and keeps the first record."""
    journal = open_journal()
    journal.accepted(_record("a", at=1.0))
    with pytest.raises(ValueError, match="'a' is already recorded"):
        journal.accepted(_record("a", at=2.0))
    assert journal.get("a") == _record("a", at=1.0)
    journal.accepted(_record("b"))  # the pooled connection is usable after the refusal
    assert journal.get("b") == _record("b")


def test_nul_characters_are_stored_as_replacement_characters(open_journal: Opener) -> None:
    """jsonb cannot hold U+0000: an error message carrying one is stored with U+FFFD."""
    journal = open_journal()
    record = _record("a")
    journal.accepted(record)
    started = record.start_attempt(1001.0)
    assert journal.attempt_started(started)
    ended = started.end_attempt(
        1002.0, Outcome.ERROR, RETRY, error_type="E", error_message="a\x00b"
    )
    journal.scheduled(ended)
    stored = journal.get("a")
    assert stored is not None
    assert stored.attempts[0].error_message == "a\ufffdb"


# -- the schema ------------------------------------------------------------------------------


def test_listing_reads_no_body_and_an_attempt_loads_it(open_journal: Opener) -> None:
    """select() and unfinished() carry body_size without the body; get() and with_body()
    return the body whole; the body never rides along in the JSONB."""
    journal = open_journal()
    big = dataclasses.replace(_record("big"), body=os.urandom(250_000), body_size=250_000)
    journal.accepted(big)
    listed = journal.select() + journal.unfinished()
    assert [(r.body, r.body_size, r.body_loaded) for r in listed] == [(b"", 250_000, False)] * 2
    assert journal.get("big") == big
    assert journal.with_body(listed[0]) == big
    assert journal.body("missing") is None
    with pytest.raises(ValueError, match="without it"):
        journal.accepted(dataclasses.replace(big, request_id="other").without_body())


def test_a_schema_1_table_moves_its_bodies_out_of_the_json(
    open_journal: Opener, dsn: str, table: str
) -> None:
    """A table of schema 1 (bodies base64 in the JSONB) is migrated on first use: the bodies
    move to their own column, listings carry body_size, get() returns the same body."""
    old = _record("old")
    data = old.to_json()
    del data["body_size"]  # schema 1's records had no body_size
    empty = dataclasses.replace(_record("empty"), body=b"", body_size=0)
    empty_data = empty.to_json()
    del empty_data["body_size"]
    _query(dsn, f"CREATE TABLE {table}_meta (key TEXT PRIMARY KEY, value TEXT)")
    _query(dsn, f"INSERT INTO {table}_meta VALUES ('schema_version', '1')")
    _query(
        dsn,
        f"CREATE TABLE {table} (seq BIGINT GENERATED ALWAYS AS IDENTITY, request_id TEXT "
        "PRIMARY KEY, function TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, "
        "accepted_at DOUBLE PRECISION NOT NULL, next_run_at DOUBLE PRECISION, finished_at "
        "DOUBLE PRECISION, lease_owner TEXT, lease_expires DOUBLE PRECISION, record JSONB "
        "NOT NULL)",
    )
    for record, doc in ((old, data), (empty, empty_data)):
        _query(
            dsn,
            f"INSERT INTO {table} (request_id, function, state, attempts, accepted_at, "
            "next_run_at, record) VALUES (%s, %s, 'accepted', 0, %s, %s, %s)",
            record.request_id,
            record.function,
            record.accepted_at,
            record.next_run_at,
            Jsonb(doc),
        )
    journal = open_journal()
    assert journal.get("old") == old
    assert journal.get("empty") == empty
    assert journal.unfinished() == [old.without_body(), empty]
    version = _query(dsn, f"SELECT value FROM {table}_meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]
    stored = _query(dsn, f"SELECT record ? 'body', body FROM {table} WHERE request_id = 'old'")
    assert stored == [(False, old.body)]


def test_a_schema_3_table_gets_a_priority_column_and_keeps_its_steps(
    open_journal: Opener, dsn: str, table: str
) -> None:
    """A table of schema 3 (made by the first three migrations, as bgfunctions before durable
    sleeps made it; a row with a committed step, its JSON without priority or not_before) is
    migrated to 4 on first use: the row reads back the same, priority 0, and takes sleeps."""
    from bgfunctions.invocation import EnqueueOptions, Step
    from bgfunctions.journals._postgres_schema import _MIGRATIONS, names

    old = _record("old")
    data = old.to_json(body=False, steps=False)
    del data["enqueue_options"]  # schema 3's records had none
    step = Step(id="charge", result='"ch_1"', attempt=1, started_at=1001.0, ended_at=1002.0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {m} (key TEXT PRIMARY KEY, value TEXT)").format(**names(table))
        )
        conn.execute(
            sql.SQL("INSERT INTO {m} VALUES ('schema_version', '3')").format(**names(table))
        )
        for migration in _MIGRATIONS[:3]:
            for statement in migration:
                conn.execute(sql.SQL(statement).format(**names(table)))
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (request_id, function, state, attempts, accepted_at, "
                "next_run_at, record, body, steps) VALUES (%s, %s, 'accepted', 0, %s, %s, %s, "
                "%s, %s)"
            ).format(**names(table)),
            (old.request_id, old.function, old.accepted_at, old.next_run_at, Jsonb(data),
             old.body, Jsonb([step.to_json()])),
        )  # fmt: skip
    journal = open_journal()
    assert journal.get("old") == old.with_steps((step,))
    assert _query(dsn, f"SELECT priority FROM {table}") == [(0,)]
    version = _query(dsn, f"SELECT value FROM {table}_meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)] == [("4",)]
    options = EnqueueOptions(priority=30, not_before=1500.0)
    urgent = dataclasses.replace(_record("urgent"), enqueue_options=options)
    journal.accepted(urgent)
    assert [r.request_id for r in journal.unfinished()] == ["urgent", "old"]
    assert _query(dsn, f"SELECT priority FROM {table} WHERE request_id = 'urgent'") == [(30,)]


def test_schema_is_created_on_first_use_and_versioned(
    open_journal: Opener, dsn: str, table: str
) -> None:
    """Nothing is created until the first call; then the table and a version row exist."""
    journal = open_journal()
    assert _query(dsn, "SELECT to_regclass(%s)::text", table) == [(None,)]
    assert journal.select() == []
    assert _query(dsn, "SELECT to_regclass(%s)::text", table) == [(table,)]
    version = _query(dsn, f"SELECT value FROM {table}_meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]


def test_journals_starting_together_create_the_schema_once(open_journal: Opener) -> None:
    """Eight journals making their first call at once all succeed on one schema."""
    journals = [open_journal(owner=f"j{i}") for i in range(8)]
    _race(journals, lambda j: j.accepted(_record(j.owner)))
    assert sorted(r.request_id for r in journals[0].select()) == [f"j{i}" for i in range(8)]


def test_a_newer_schema_is_refused(open_journal: Opener, dsn: str, table: str) -> None:
    """A table written by a newer bgfunctions is refused with JournalError, left as it was."""
    open_journal().accepted(_record("a"))
    _query(dsn, f"UPDATE {table}_meta SET value = %s", str(SCHEMA_VERSION + 1))
    journal = open_journal()
    with pytest.raises(JournalError, match=f"expected schema version <= {SCHEMA_VERSION}"):
        journal.accepted(_record("b"))
    with pytest.raises(JournalError, match="newer bgfunctions"):
        journal.get("a")
    assert _rows(dsn, table) == {"a": ("accepted", None)}


def test_another_applications_table_is_refused(open_journal: Opener, dsn: str, table: str) -> None:
    """A table of that name without our version row is refused and not changed."""
    _query(dsn, f"CREATE TABLE {table} (body TEXT)")
    _query(dsn, f"INSERT INTO {table} VALUES ('mine')")
    with pytest.raises(JournalError, match="another application's table"):
        open_journal().accepted(_record("a"))
    assert _query(dsn, f"SELECT body FROM {table}") == [("mine",)]


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("table", "Bad-Name", "PostgresJournal.table"),
        ("table", "x" * 51, "PostgresJournal.table"),
        ("lease", 0, "PostgresJournal.lease"),
        ("retention", -1.0, "PostgresJournal.retention"),
        ("pool_size", 0, "PostgresJournal.pool_size"),
    ],
)
def test_bad_options_are_refused(option: str, value: object, match: str) -> None:
    """Invalid options raise ValueError naming the option, before anything connects."""
    with pytest.raises(ValueError, match=match):
        PostgresJournal(_closed_port_dsn(), **{option: value})  # type: ignore[arg-type]


def test_a_bad_dsn_is_refused() -> None:
    """A connection string libpq cannot parse raises ValueError naming dsn."""
    with pytest.raises(ValueError, match=r"PostgresJournal\.dsn"):
        PostgresJournal("not a connection string")


# -- claims and leases -----------------------------------------------------------------------


def test_only_one_journal_claims_an_attempt(open_journal: Opener, dsn: str, table: str) -> None:
    """Two journals race for each attempt: exactly one wins every time."""
    one, two = open_journal(owner="one"), open_journal(owner="two")
    records = [_record(f"r{i}") for i in range(30)]
    for record in records:
        one.accepted(record)
    wins: dict[str, list[bool]] = {"one": [], "two": []}

    def claim(journal: PostgresJournal) -> None:
        for record in records:
            wins[journal.owner].append(journal.attempt_started(record.start_attempt(1001.0)))

    _race([one, two], claim)
    assert [a != b for a, b in zip(wins["one"], wins["two"], strict=True)] == [True] * 30
    rows = _rows(dsn, table)
    for record, won_by_one in zip(records, wins["one"], strict=True):
        assert rows[record.request_id] == ("running", "one" if won_by_one else "two")


def test_eight_threads_claim_each_attempt_once(open_journal: Opener, dsn: str, table: str) -> None:
    """Eight journals in eight threads race for 20 attempts: each is won exactly once."""
    journals = [open_journal(owner=f"t{i}", pool_size=1) for i in range(8)]
    records = [_record(f"r{i}") for i in range(20)]
    for record in records:
        journals[0].accepted(record)
    won: dict[str, list[str]] = {j.owner: [] for j in journals}

    def claim(journal: PostgresJournal) -> None:
        for record in records:
            if journal.attempt_started(record.start_attempt(1001.0)):
                won[journal.owner].append(record.request_id)

    _race(journals, claim)
    winners = sorted(rid for rids in won.values() for rid in rids)
    assert winners == sorted(r.request_id for r in records)
    rows = _rows(dsn, table)
    for owner, rids in won.items():
        for rid in rids:
            assert rows[rid] == ("running", owner)


def test_a_stale_or_cancelled_record_is_not_claimed(open_journal: Opener) -> None:
    """A claim for an attempt already run, or of a cancelled invocation, returns False."""
    one, two = open_journal(owner="one"), open_journal(owner="two")
    record = _record("a")
    one.accepted(record)
    stale = record.start_attempt(1001.0)
    first = record.start_attempt(1001.0)
    assert one.attempt_started(first)
    one.scheduled(first.end_attempt(1002.0, Outcome.ERROR, RETRY))
    assert not two.attempt_started(stale)
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
    assert three.expire_leases() == []
    one.attempt_ended(started.end_attempt(clock.now(), Outcome.SUCCEEDED, RETRY))
    assert two.get("a") == started
    interrupted = started.end_attempt(clock.now(), Outcome.INTERRUPTED, RETRY)
    two.scheduled(interrupted)
    assert one.get("a") == interrupted


def test_racing_expiries_hand_each_attempt_to_one_journal(
    open_journal: Opener, clock: VirtualClock, dsn: str, table: str
) -> None:
    """Eight journals expiring leases at once: every expired attempt is returned exactly once,
    oldest first, and leased to the journal it was returned to."""
    dead = open_journal(owner="dead", lease=5.0)
    for i in range(40):
        record = _record(f"r{i:02}", at=1000.0 + i)
        dead.accepted(record)
        assert dead.attempt_started(record.start_attempt(clock.now()))
    clock.advance(6.0)
    journals = [open_journal(owner=f"t{i}", lease=5.0, pool_size=1) for i in range(8)]
    taken: dict[str, list[str]] = {}

    def expire(journal: PostgresJournal) -> None:
        ids = [r.request_id for r in journal.expire_leases()]
        assert ids == sorted(ids)
        taken[journal.owner] = ids

    _race(journals, expire)
    every = sorted(rid for ids in taken.values() for rid in ids)
    assert every == [f"r{i:02}" for i in range(40)]
    rows = _rows(dsn, table)
    for owner, ids in taken.items():
        assert all(rows[rid] == ("running", owner) for rid in ids)


def test_heartbeat_keeps_a_lease_alive(open_journal: Opener, clock: VirtualClock) -> None:
    """Renewed every few seconds, a running attempt is never taken over; another owner's
    heartbeat renews nothing."""
    one = open_journal(owner="one", lease=10.0)
    two = open_journal(owner="two", lease=10.0)
    record = _record("a")
    one.accepted(record)
    assert one.attempt_started(record.start_attempt(clock.now()))
    for _ in range(5):
        clock.advance(6.0)
        one.heartbeat(["a"])
        two.heartbeat(["a"])
        assert two.expire_leases() == []
    clock.advance(10.5)
    assert [r.request_id for r in two.expire_leases()] == ["a"]


# -- retention -------------------------------------------------------------------------------


def test_old_finished_records_are_pruned(
    open_journal: Opener, clock: VirtualClock, dsn: str, table: str
) -> None:
    """prune() deletes finished records older than retention and keeps everything else."""
    journal = open_journal(retention=3600.0)
    for i in range(50):
        record = _record(f"old{i}", at=clock.now())
        journal.accepted(record)
        journal.finished(record.reject(clock.now()))
    journal.accepted(_record("waiting", at=clock.now()))
    clock.advance(3601.0)
    fresh = _record("fresh", at=clock.now())
    journal.accepted(fresh)  # the first write past a minute prunes on its own
    journal.finished(fresh.reject(clock.now()))
    assert sorted(_rows(dsn, table)) == ["fresh", "waiting"]
    assert journal.prune() == 0
    assert journal.stats()["pruned"] == 50


def test_writes_prune_automatically(
    open_journal: Opener, clock: VirtualClock, dsn: str, table: str
) -> None:
    """Under steady load the row count stays bounded: writes prune at most once a minute."""
    journal = open_journal(retention=600.0)
    counts = []
    for minute in range(25):
        for i in range(5):
            record = _record(f"{minute}-{i}", at=clock.now())
            journal.accepted(record)
            journal.finished(record.reject(clock.now()))
        counts.append(len(_rows(dsn, table)))
        clock.advance(60.0)
    assert max(counts[15:]) <= 65  # about 10 minutes of 5 per minute, plus one minute
    assert counts[-1] == counts[-2]


# -- faults ----------------------------------------------------------------------------------


def _accept_later(
    journal: PostgresJournal,
    records: list[InvocationRecord],
    queued: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """accept_later each record from its own thread at once; what each one settled with.
    ``queued`` is called once every call has returned (each record queued)."""
    settled: dict[str, Any] = {}
    done = threading.Event()
    lock = threading.Lock()
    start = threading.Barrier(len(records))

    def accept(record: InvocationRecord) -> None:
        def on_settled(error: Exception | None) -> None:
            with lock:
                settled[record.request_id] = error
                if len(settled) == len(records):
                    done.set()

        start.wait()
        journal.accept_later(record, on_settled)

    threads = [threading.Thread(target=accept, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if queued is not None:
        queued()
    assert done.wait(30)
    return settled


def test_accept_later_commits_groups_and_fails_only_a_known_request_id(
    open_journal: Opener, dsn: str, table: str
) -> None:
    """accept_later returns at once and settles each record once its row is committed (rows
    queued together share one INSERT); a known request id fails that record alone."""
    journal = open_journal()
    journal.accepted(_record("dup", at=1.0))
    records = [_record(f"r{i}") for i in range(40)] + [_record("dup", at=2.0)]
    # Another connection locks the table until all 41 are queued, so that they queue together
    # however the threads are scheduled (the first commit, if it started, waits for the lock).
    before = journal.stats()["commits"]
    with psycopg.connect(dsn) as locker:
        locker.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table)))
        settled = _accept_later(journal, records, queued=locker.rollback)
    assert {rid for rid, error in settled.items() if error is None} == {f"r{i}" for i in range(40)}
    assert isinstance(settled["dup"], ValueError)
    assert "'dup' is already recorded" in str(settled["dup"])
    assert set(_rows(dsn, table)) == {"dup", *(f"r{i}" for i in range(40))}
    assert journal.get("dup") == _record("dup", at=1.0)
    assert journal.get("r7") == _record("r7")
    # At most two batches: whatever the committer took before the lock held it up, and
    # everything queued behind it (the duplicate included).
    commits = journal.stats()["commits"] - before
    assert commits <= 2, f"41 accepts queued together took {commits} commits"
    journal.close()
    with pytest.raises(JournalUnavailableError, match="closed"):
        journal.accept_later(_record("late"), lambda error: None)


def test_accept_later_on_an_unreachable_database_settles_unavailable() -> None:
    """Nothing listening: accept_later settles with JournalUnavailableError (a 503)."""
    journal = PostgresJournal(_closed_port_dsn())
    try:
        settled = _accept_later(journal, [_record("a"), _record("b")])
        assert all(isinstance(e, JournalUnavailableError) for e in settled.values()), settled
    finally:
        journal.close()


def test_unreachable_database_makes_accepted_raise_unavailable() -> None:
    """With nothing listening, accepted raises JournalUnavailableError (a NotAcceptedError with
    a Retry-After), reads raise JournalError; neither message shows the password."""
    journal = PostgresJournal(_closed_port_dsn().replace("postgres@", "postgres:s3cret@"))
    try:
        with pytest.raises(JournalUnavailableError, match="cannot commit") as caught:
            journal.accepted(_record("a"))
        assert isinstance(caught.value, NotAcceptedError)
        assert caught.value.retry_after == 5.0
        assert "s3cret" not in str(caught.value)
        with pytest.raises(JournalError, match="cannot read"):
            journal.get("a")
    finally:
        journal.close()


def test_unreachable_database_makes_the_app_answer_503() -> None:
    """An App over an unreachable database answers 503 with Retry-After, not a 202."""
    registry = Registry()
    registry.add("job-background", lambda request, context: None)
    clock = VirtualClock()
    journal = PostgresJournal(_closed_port_dsn(), clock=clock)
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        response = app.handle(Request("POST", "/.netlify/functions/job-background"))
        assert response.status == 503
        assert response.headers["retry-after"] == "5"
    finally:
        app.shutdown()
        journal.close()


def test_dropped_connections_are_replaced(open_journal: Opener, dsn: str) -> None:
    """After the server drops every pooled connection (a restart), the next calls reconnect
    and succeed instead of failing."""
    journal = open_journal(owner=f"drop-{uuid.uuid4().hex[:8]}")
    _race([journal] * 3, lambda j: j.accepted(_record(uuid.uuid4().hex)))  # warm the pool
    killed = _query(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        f"bgfunctions {journal.owner}",
    )
    assert killed
    assert all(row[0] for row in killed)
    journal.accepted(_record("after"))
    assert journal.get("after") == _record("after")
    assert journal.stats()["reconnects"] >= 1


def test_pool_bounds_the_connections(open_journal: Opener, dsn: str) -> None:
    """Sixteen threads writing through a journal with pool_size=2 share two connections."""
    journal = open_journal(owner=f"pool-{uuid.uuid4().hex[:8]}", pool_size=2)
    seen: list[int] = []

    def work(j: PostgresJournal) -> None:
        for _ in range(10):
            j.accepted(_record(uuid.uuid4().hex))
        count = _query(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            f"bgfunctions {j.owner}",
        )
        seen.append(int(count[0][0]))

    _race([journal] * 16, work)
    assert len(journal.select()) == 160
    assert max(seen) <= 2


def test_a_closed_journal_refuses_calls(open_journal: Opener) -> None:
    """After close(), writes raise JournalUnavailableError and reads JournalError."""
    journal = open_journal()
    journal.accepted(_record("a"))
    journal.close()
    journal.close()
    with pytest.raises(JournalUnavailableError, match="is closed"):
        journal.accepted(_record("b"))
    with pytest.raises(JournalError, match="is closed"):
        journal.get("a")


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the module without psycopg raises ImportError that names the extra."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "bgfunctions.journals.postgres")
    with pytest.raises(ImportError, match=r"pip install 'bgfunctions\[postgres\]'"):
        importlib.import_module("bgfunctions.journals.postgres")


# -- with an App -----------------------------------------------------------------------------


def test_app_answers_202_only_after_the_row_is_committed(
    dsn: str, table: str, clock: VirtualClock
) -> None:
    """End to end: the row is in the table before the 202, attempts are recorded, and another
    journal object reads what app.invocations shows."""
    seen_at_accept: list[dict[str, tuple[str, str | None]]] = []
    calls: list[int] = []

    def handler(request: Request, context: Context) -> None:
        calls.append(context.attempt)
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")

    registry = Registry()
    registry.add("job-background", handler)
    journal = PostgresJournal(dsn, table=table, clock=clock)
    app = App(
        registry,
        executor=InlineExecutor(clock=clock, journal=journal),
        on_event=lambda event: (
            seen_at_accept.append(_rows(dsn, table)) if event.kind.value == "accepted" else None
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
    other = PostgresJournal(dsn, table=table, clock=clock)
    try:
        stored = other.get(rid)
        assert stored == shown
        assert stored.body == b"hi"
    finally:
        other.close()


def test_a_restarted_app_runs_what_a_dead_one_accepted(
    dsn: str, table: str, clock: VirtualClock
) -> None:
    """Accepted before a crash, run after the restart by a second executor on the same table; an
    attempt running in the dead process is ended as interrupted once its lease expires, then
    retried."""
    calls: list[str] = []
    registry = Registry()
    registry.add("job-background", lambda request, context: calls.append(context.request_id))
    dead = PostgresJournal(dsn, table=table, clock=clock, owner="dead", lease=10.0)
    waiting, running = _record("waiting", at=clock.now()), _record("running", at=clock.now())
    dead.accepted(waiting)
    dead.accepted(running)
    assert dead.attempt_started(running.start_attempt(clock.now()))
    dead.close()

    clock.advance(11.0)
    journal = PostgresJournal(dsn, table=table, clock=clock, owner="new")
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
        done = journal.get("waiting")
        assert done is not None
        assert done.state is State.SUCCEEDED
        assert journal.unfinished() == []
    finally:
        app.shutdown()
        journal.close()


def test_steps_are_stored_replayed_and_kept_apart_from_the_record(
    open_journal: Opener, clock: VirtualClock, dsn: str, table: str
) -> None:
    """A retry replays the step its first attempt committed; the steps column is the truth
    (the record's JSON leaves them out), read back by a second journal; a step of an
    invocation not running under this owner's lease is refused."""
    calls: list[str] = []

    def handler(request: Request, context: Context) -> None:
        context.step.run("reserve", calls.append, "reserve")
        context.step.run("charge", calls.append, "charge")
        if context.attempt == 1:
            raise RuntimeError("after the steps")

    registry = Registry()
    registry.add("order-background", handler)
    journal = open_journal()
    app = App(registry, executor=InlineExecutor(clock=clock, journal=journal))
    try:
        record = app.enqueue("order-background", Request("POST", "/")).wait()
    finally:
        app.shutdown()
    assert record.state is State.SUCCEEDED
    assert calls == ["reserve", "charge"]
    kept = open_journal().get(record.request_id)
    assert kept is not None
    assert [(s.id, s.attempt) for s in kept.steps] == [("reserve", 1), ("charge", 1)]
    assert journal.select()[0].steps == kept.steps
    stored = _query(dsn, f"SELECT record ? 'steps', jsonb_array_length(steps) FROM {table}")
    assert stored == [(False, 2)]
    with pytest.raises(JournalError, match="step charge of invocation nope not stored"):
        journal.step_completed("nope", kept.steps[1])
