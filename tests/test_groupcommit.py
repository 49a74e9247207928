"""Group commit (bgfunctions.journals._groupcommit), on its own: batching, failures confined to
their batch, order, shutdown and its threads. The journal's use of it is tested through
SQLiteJournal in test_sqlite_journal.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from bgfunctions.errors import JournalUnavailableError
from bgfunctions.journals._groupcommit import GroupCommit, Write


class Closed(Exception):
    pass


class Store:
    """A commit function that records its batches; ``hold`` makes the next batch wait for
    ``go`` (set ``entered`` first), ``fail`` the batch numbers whose every write fails,
    ``crash`` those whose commit raises."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.committed: list[Any] = []
        self.hold = False
        self.entered = threading.Event()
        self.go = threading.Event()
        self.fail: set[int] = set()
        self.crash: set[int] = set()
        self.threads: list[str] = []

    def commit(self, writes: Sequence[Write[Any]]) -> None:
        number = len(self.batches)
        self.batches.append([w.item for w in writes])
        self.threads.append(threading.current_thread().name)
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.go.wait(30)
        if number in self.crash:
            raise RuntimeError(f"batch {number} crashed")
        for write in writes:
            if number in self.fail:
                write.error = JournalUnavailableError(f"batch {number} failed")
            else:
                write.result = ("ok", write.item, number)
                self.committed.append(write.item)


def _group(store: Store, name: str = "test") -> GroupCommit[Any]:
    return GroupCommit(store.commit, name=name, closed_error=lambda: Closed("closed"))


def _committers(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"bgfunctions-journal-{name}"]


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def group(store: Store) -> Iterator[GroupCommit[Any]]:
    group = _group(store)
    yield group
    store.go.set()
    group.close()


def _lead_and_hold(store: Store, group: GroupCommit[Any], item: Any) -> threading.Thread:
    """A thread submits ``item`` and leads its batch, held in the commit until ``store.go``."""
    results: list[Any] = []
    store.hold = True
    thread = threading.Thread(target=lambda: results.append(group.submit(item)))
    thread.start()
    assert store.entered.wait(30)
    return thread


def test_a_lone_write_is_committed_by_its_own_thread(store: Store, group: GroupCommit[Any]) -> None:
    """With nobody else writing, submit() commits in the caller's thread, at once, and no
    committer thread is started."""
    assert group.submit("a") == ("ok", "a", 0)
    assert group.submit("b") == ("ok", "b", 1)
    assert store.batches == [["a"], ["b"]]
    assert store.threads == [threading.current_thread().name] * 2
    assert _committers("test") == []


def test_writes_queued_during_a_commit_share_the_next_one(
    store: Store, group: GroupCommit[Any]
) -> None:
    """While one batch commits, everything queued meanwhile goes in one next batch, in the
    order it was queued, and each caller is told its own result."""
    leader = _lead_and_hold(store, group, "lead")
    settled: list[tuple[Any, Any]] = []
    done = threading.Event()

    def on_settle(write: Write[Any]) -> None:
        settled.append((write.item, write.result))
        if len(settled) == 20:
            done.set()

    for i in range(20):
        group.submit_later(i, on_settle)
    store.go.set()
    leader.join()
    assert done.wait(30)
    assert store.batches == [["lead"], list(range(20))]
    assert settled == [(i, ("ok", i, 1)) for i in range(20)]


def test_a_failed_commit_fails_every_write_of_its_batch_and_not_the_next(
    store: Store, group: GroupCommit[Any]
) -> None:
    """Batch 1 fails: each of its writes gets the error, none a result; batch 2 commits."""
    store.fail = {1}
    leader = _lead_and_hold(store, group, "lead")
    outcomes: dict[Any, tuple[Any, BaseException | None]] = {}
    done = threading.Event()

    def on_settle(write: Write[Any]) -> None:
        outcomes[write.item] = (write.result, write.error)
        if len(outcomes) == 10:
            done.set()

    for i in range(10):
        group.submit_later(i, on_settle)
    store.go.set()
    leader.join()
    assert done.wait(30)
    assert store.batches == [["lead"], list(range(10))]
    for result, error in outcomes.values():
        assert result is None
        assert isinstance(error, JournalUnavailableError)
        assert "batch 1 failed" in str(error)
    assert group.submit("next") == ("ok", "next", 2)
    assert store.committed == ["lead", "next"]


def test_blocking_callers_see_their_own_batch_fail_or_commit(
    store: Store, group: GroupCommit[Any]
) -> None:
    """Callers that block in submit(), however they are batched: those whose batch failed
    get its error, every other one its result; nothing is reported committed that was not."""
    store.fail = {1}
    leader = _lead_and_hold(store, group, "lead")
    outcomes: dict[int, Any] = {}

    def submit(i: int) -> None:
        try:
            outcomes[i] = group.submit(i)
        except JournalUnavailableError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    store.go.set()
    for thread in threads:
        thread.join()
    leader.join()
    in_batch = {item: n for n, batch in enumerate(store.batches) for item in batch}
    assert set(in_batch) == {"lead", *range(16)}
    for i, outcome in outcomes.items():
        if in_batch[i] == 1:
            assert isinstance(outcome, JournalUnavailableError)
        else:
            assert outcome == ("ok", i, in_batch[i])
    assert set(store.committed) == {"lead", *(i for i in range(16) if in_batch[i] != 1)}


def test_a_commit_that_raises_fails_its_batch_and_the_group_goes_on(
    store: Store, group: GroupCommit[Any]
) -> None:
    """A commit function that raises (a bug, an interrupt): the caller that led gets the
    exception, the others of its batch a JournalUnavailableError; the next batch commits."""
    store.crash = {1}
    leader = _lead_and_hold(store, group, "lead")
    settled: list[Write[Any]] = []
    done = threading.Event()

    def on_settle(write: Write[Any]) -> None:
        settled.append(write)
        done.set()

    group.submit_later("queued", on_settle)
    store.go.set()
    leader.join()
    assert done.wait(30)
    [write] = settled
    assert write.result is None
    assert isinstance(write.error, JournalUnavailableError)
    store.crash = {2}
    with pytest.raises(RuntimeError, match="batch 2 crashed"):
        group.submit("crashes")
    assert group.submit("after") == ("ok", "after", 3)


def test_one_caller_s_writes_commit_in_the_order_it_queued_them(
    store: Store, group: GroupCommit[Any]
) -> None:
    """Writes are committed in queue order, within a batch and from one batch to the next."""
    leader = _lead_and_hold(store, group, "lead")
    done = threading.Event()
    count = 0

    def on_settle(write: Write[Any]) -> None:
        nonlocal count
        count += 1
        if count == 300:
            done.set()

    for i in range(300):
        group.submit_later(i, on_settle)
    store.go.set()
    leader.join()
    assert done.wait(30)
    assert store.committed == ["lead", *range(300)]


def test_close_drains_what_is_queued_then_refuses(store: Store) -> None:
    """close() returns only once the batch under way and everything queued are committed and
    called back; later submits raise the closed error; close is idempotent."""
    group = _group(store, "drain")
    leader = _lead_and_hold(store, group, "lead")
    settled: list[Any] = []
    for i in range(50):
        group.submit_later(i, lambda write: settled.append(write.result))
    closer = threading.Thread(target=group.close)
    closer.start()
    store.go.set()
    closer.join()
    leader.join()
    assert settled == [("ok", i, 1) for i in range(50)]
    assert group.closed
    with pytest.raises(Closed):
        group.submit("late")
    with pytest.raises(Closed):
        group.submit_later("late", lambda write: None)
    group.close()
    assert store.committed == ["lead", *range(50)]


def test_close_leaves_no_thread_behind(store: Store) -> None:
    """The committer thread, started by the first submit_later, ends with close()."""
    group = _group(store, "leak")
    settled = threading.Event()
    group.submit_later("a", lambda write: settled.set())
    assert settled.wait(30)
    assert len(_committers("leak")) == 1
    group.close()
    assert _committers("leak") == []


def test_a_callback_may_submit_again(store: Store, group: GroupCommit[Any]) -> None:
    """A settle callback runs after the lead was handed over: it can write again (as an
    accept's listener writing to the journal) without deadlock."""
    results: list[Any] = []
    done = threading.Event()

    def then_write(write: Write[Any]) -> None:
        results.append(write.result)
        results.append(group.submit("from the callback"))
        done.set()

    group.submit_later("first", then_write)
    assert done.wait(30)
    assert results == [("ok", "first", 0), ("ok", "from the callback", 1)]


def test_a_callback_that_raises_is_logged_and_ignored(
    store: Store, group: GroupCommit[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """One callback raising does not keep the others of its batch from being called."""
    leader = _lead_and_hold(store, group, "lead")
    called: list[Any] = []
    done = threading.Event()

    def boom(write: Write[Any]) -> None:
        raise ValueError("callback bug")

    def fine(write: Write[Any]) -> None:
        called.append(write.item)
        done.set()

    with caplog.at_level("ERROR", logger="bgfunctions.journal"):
        group.submit_later("boom", boom)
        group.submit_later("fine", fine)
        store.go.set()
        leader.join()
        assert done.wait(30)
    assert called == ["fine"]
    assert any("callback raised" in r.getMessage() for r in caplog.records)
