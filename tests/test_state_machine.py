"""A stateful model of the executor: whatever the handlers do and however time moves, the
invariants of the retry schedule and of the journal hold."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from bgfunctions import (
    App,
    Config,
    Context,
    InlineExecutor,
    Invocation,
    Outcome,
    Registry,
    Request,
    RetryPolicy,
    State,
    VirtualClock,
)

DELAYS = RetryPolicy().delays
TIMEOUT = 900.0


@dataclass(frozen=True)
class Behaviour:
    """What the next attempt of one invocation does: after ``seconds`` of virtual time it
    returns (succeed), raises (fail), or it never ends by itself (hang: timed out)."""

    kind: str
    seconds: float = 0.0


# Quarters of a second keep every virtual time exact in binary floating point, so the
# schedule can be compared with ``==``.
seconds = st.integers(0, 4 * 1200).map(lambda n: n / 4)
behaviours = st.builds(Behaviour, st.sampled_from(["succeed", "fail", "hang"]), seconds)


class ExecutorMachine(RuleBasedStateMachine):
    """Accept invocations, move virtual time, and change what handlers do, in any order."""

    invocations = Bundle("invocations")

    @initialize()
    def build(self) -> None:
        self.clock = VirtualClock()
        self.executor = InlineExecutor(clock=self.clock)
        self.registry = Registry()
        self.behaviour: dict[str, Behaviour] = {}
        self.running: set[str] = set()
        self.handles: list[Invocation] = []
        self.registry.add("job", self.handler, config=Config(background=True))
        self.app = App(self.registry, executor=self.executor)

    async def handler(self, request: Request, context: Context) -> None:
        rid = context.request_id
        assert rid not in self.running, f"two attempts of {rid} at once"
        self.running.add(rid)
        try:
            behaviour = self.behaviour[rid]
            if behaviour.kind == "hang":
                await asyncio.sleep(10 * TIMEOUT)
            await asyncio.sleep(behaviour.seconds)
            if behaviour.kind == "fail":
                raise RuntimeError(f"attempt {context.attempt} told to fail")
        finally:
            self.running.discard(rid)

    @rule(target=invocations, behaviour=behaviours)
    def accept(self, behaviour: Behaviour) -> Invocation:
        handle = self.app.enqueue("job")
        self.behaviour[handle.request_id] = behaviour
        self.handles.append(handle)
        assert handle.state is State.ACCEPTED
        assert handle.record.accepted_at == self.clock.now()
        return handle

    @rule(delta=seconds)
    def advance(self, delta: float) -> None:
        before = self.clock.now()
        self.clock.advance(delta)
        assert self.clock.now() == before + delta

    @rule(handle=invocations, behaviour=behaviours)
    def set_behaviour(self, handle: Invocation, behaviour: Behaviour) -> None:
        self.behaviour[handle.request_id] = behaviour

    @invariant()
    def schedule_holds(self) -> None:
        for handle in getattr(self, "handles", ()):
            record = handle.record
            attempts = record.attempts
            assert len(attempts) <= len(DELAYS) + 1
            assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))
            if attempts:
                assert attempts[0].started_at >= record.accepted_at
            for i, (previous, following) in enumerate(itertools.pairwise(attempts)):
                assert previous.outcome is not None
                assert previous.outcome.failed
                assert previous.ended_at is not None
                # Never overlapping: the next attempt starts exactly its gap after the end.
                assert following.started_at - previous.ended_at == DELAYS[i]
            for attempt in attempts:
                if attempt.outcome is Outcome.TIMED_OUT:
                    assert attempt.duration == TIMEOUT
                if attempt.duration is not None:
                    assert 0 <= attempt.duration <= TIMEOUT
            unfinished = [a for a in attempts if a.ended_at is None]
            assert unfinished == [] or unfinished == [attempts[-1]]
            assert (record.state is State.RUNNING) == bool(unfinished)

    @invariant()
    def journal_matches_executor(self) -> None:
        for handle in getattr(self, "handles", ()):
            assert self.app.invocations.get(handle.request_id) == handle.record

    def teardown(self) -> None:
        if not hasattr(self, "app"):
            return
        try:
            self.executor.drain()
            for handle in self.handles:
                record = handle.record
                assert record.state in (State.SUCCEEDED, State.FAILED), record
                assert handle.done()
                last = record.last_attempt
                assert last is not None
                assert record.finished_at == last.ended_at
                if record.state is State.FAILED:
                    assert len(record.attempts) == len(DELAYS) + 1
                    assert all(a.outcome is not None and a.outcome.failed for a in record.attempts)
                else:
                    assert last.outcome is Outcome.SUCCEEDED
                assert self.app.invocations.get(handle.request_id) == record
            assert not self.running
            assert self.executor.stats().pending == 0
        finally:
            self.app.shutdown()


ExecutorMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestExecutorMachine = ExecutorMachine.TestCase
