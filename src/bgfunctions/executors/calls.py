"""The threads an executor runs calls on: :class:`LoopThread` (the executor's own event loop,
on a thread of its own, for async handlers) and :class:`CallPool` (synchronous functions'
sync handlers, on threads a caller may give up on).

``CallPool``:

``concurrent.futures.ThreadPoolExecutor`` never gets back a thread whose call hangs: once all
its threads hold hung calls, every later call waits in its queue, times out and answers 500,
until a restart. Here a caller that gives up on a call (its time-out) *abandons* the call's
thread: the thread leaves the pool, ends when its call returns (its result is ignored), and
another thread may take its place. The background workers of the thread executor do the same.

Abandoned threads are bounded (``max_abandoned``): a handler that always hangs would otherwise
add a thread per time-out for as long as calls keep coming. Past the bound no replacement is
started, so later calls wait in the queue and their callers time out (a 500 each), until a hung
call returns and its thread ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bgfunctions.clock import Clock

__all__ = ["CallPool", "LoopThread", "finish_tasks", "wait_future"]

T = TypeVar("T")


class LoopThread:
    """An event loop on the executor's clock, on a thread of its own, started on first use."""

    def __init__(
        self,
        clock: Clock,
        *,
        on_blocked: Callable[[asyncio.Task[Any] | None, float], None],
        on_starved: Callable[[float, int], None],
        blocking_threshold: float,
    ) -> None:
        self.clock = clock
        self._on_blocked = on_blocked
        self._on_starved = on_starved
        self._blocking_threshold = blocking_threshold
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop once started, else None."""
        self._thread: threading.Thread | None = None

    def ensure(self) -> asyncio.AbstractEventLoop:
        """The loop, started (with its thread) if it was not yet."""
        with self._lock:
            if self.loop is None:
                loop = self.clock.new_event_loop(
                    on_blocked=self._on_blocked,
                    blocking_threshold=self._blocking_threshold,
                    on_starved=self._on_starved,
                )
                ready = threading.Event()
                thread = threading.Thread(
                    target=_loop_main, args=(loop, ready), name="bgfunctions-loop", daemon=True
                )
                thread.start()
                ready.wait()
                self.loop, self._thread = loop, thread
            return self.loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from another thread)."""
        return wait_future(self.clock, asyncio.run_coroutine_threadsafe(coro, self.ensure()), None)

    def stop(self, grace: float | None) -> None:
        """Give the loop's tasks ``grace`` seconds (None: all they need), cancel those still
        running (they record how they ended), then stop and close the loop."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(finish_tasks(None, grace), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _loop_main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


async def finish_tasks(given: set[asyncio.Task[None]] | None, grace: float | None) -> None:
    """Wait up to ``grace`` for ``given`` tasks (None: every other task of this loop), then
    cancel those still running and wait for them to record how they ended."""
    current = asyncio.current_task()
    pool = asyncio.all_tasks() if given is None else given
    tasks = [t for t in pool if t is not current and not t.done()]
    if not tasks:
        return
    _, still = await asyncio.wait(tasks, timeout=grace)
    for task in still:
        task.cancel()
    if still:
        await asyncio.wait(still)


def wait_future(clock: Clock, future: concurrent.futures.Future[T], timeout: float | None) -> T:
    """``future.result(timeout)``, waiting on ``clock`` (a virtual clock's time, too)."""
    done = threading.Condition()
    future.add_done_callback(lambda _: _notify(done))
    with done:
        if not future.done() and not clock.wait(done, timeout) and not future.done():
            raise concurrent.futures.TimeoutError
    return future.result()


def _notify(condition: threading.Condition) -> None:
    with condition:
        condition.notify_all()


@dataclass(slots=True)
class _Call(Generic[T]):
    future: concurrent.futures.Future[T]
    fn: Callable[..., T]
    args: tuple[Any, ...]


class CallPool:
    """Up to ``max_workers`` threads (not counting abandoned ones), started as calls wait, and
    at most ``max_workers + max_abandoned`` threads in all."""

    def __init__(self, max_workers: int, name: str, *, max_abandoned: int | None = None) -> None:
        self.max_workers = max_workers
        self.max_abandoned = 4 * max_workers if max_abandoned is None else max_abandoned
        self._name = name
        self._queue: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._left = threading.Condition(self._lock)  # a thread left the pool (ended, abandoned)
        self._threads: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        self._running: dict[concurrent.futures.Future[Any], threading.Thread] = {}
        self._waiting = 0  # calls queued, not yet taken by a thread
        self._idle = 0  # threads waiting for a call (or just started, about to)
        self._spawned = 0
        self._closed = False

    @property
    def abandoned(self) -> int:
        """Abandoned threads whose call has not returned yet."""
        with self._lock:
            return len(self._abandoned)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the call pool is shut down")
            self._waiting += 1
            self._queue.put(_Call(future, fn, args))
            try:
                self._fill()
            except BaseException:
                # No thread for it (the OS refused one): its caller gets the error, so the
                # call must never run; the thread that takes it from the queue skips it.
                future.cancel()
                raise
        return future

    def abandon(self, future: concurrent.futures.Future[Any]) -> bool:
        """Give up on ``future``'s call: cancel it if it has not started; else abandon its
        thread. True when a thread was abandoned."""
        if future.cancel():
            return False  # the thread that takes it skips it
        with self._lock:
            thread = self._running.pop(future, None)
            if thread is None:
                return False  # it returned meanwhile
            self._threads.discard(thread)
            self._abandoned.add(thread)
            self._fill()
            self._left.notify_all()
        return True

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads once they finish their calls. Abandoned threads are not waited
        for, nor is a call that its caller abandons while this waits."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        if wait:
            me = threading.current_thread()
            with self._left:
                while self._threads - {me}:
                    self._left.wait()

    def _fill(self) -> None:
        """Start threads for the calls no idle thread will take (lock held)."""
        while (
            self._waiting > self._idle
            and len(self._threads) < self.max_workers
            and len(self._threads) + len(self._abandoned) < self.max_workers + self.max_abandoned
        ):
            if self._closed:
                return
            self._spawned += 1
            thread = threading.Thread(
                target=self._main, name=f"{self._name}-{self._spawned}", daemon=True
            )
            self._threads.add(thread)
            self._idle += 1
            try:
                thread.start()
            except BaseException:
                # Never started: it must not count as idle, nor be waited for at shutdown.
                self._threads.discard(thread)
                self._idle -= 1
                raise

    def _main(self) -> None:
        me = threading.current_thread()
        while True:
            call = self._queue.get()
            with self._lock:
                self._idle -= 1
                if call is None:
                    self._threads.discard(me)
                    self._left.notify_all()
                    return
                self._waiting -= 1
                future = call.future
                started = future.set_running_or_notify_cancel()
                if started:
                    self._running[future] = me
            if started:
                try:
                    result = call.fn(*call.args)
                except BaseException as exc:  # a call's failure is its caller's to read
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            del call  # nothing of the call stays referenced while this thread is idle
            with self._lock:
                self._running.pop(future, None)
                if me in self._abandoned:
                    self._abandoned.discard(me)
                    self._fill()  # past the bound, no replacement was started: start it now
                    return  # a replacement took this thread's place
                self._idle += 1
            del future
