"""Writes journal-v3.sqlite3 with bgfunctions 560107a (schema 3, before durable sleeps):
`git archive 560107a src | tar -x -C /tmp/v3 && PYTHONPATH=/tmp/v3/src python THIS_FILE`.
Kept to show how the file was made; the tests only read the file it wrote."""

from pathlib import Path
from typing import Any

from bgfunctions import App, Registry, RetryPolicy, VirtualClock
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.journals.sqlite import SCHEMA_VERSION, SQLiteJournal
from bgfunctions.testing import make_request

assert SCHEMA_VERSION == 3
path = Path(__file__).with_name("journal-v3.sqlite3")
path.unlink(missing_ok=True)
clock = VirtualClock()
journal = SQLiteJournal(path, clock=clock)


def done(request: Any, context: Any) -> None:
    context.step.run("reserve", lambda: {"order": 1})
    context.step.run("charge", lambda: "ch_1")


def retrying(request: Any, context: Any) -> None:
    context.step.run("reserve", lambda: {"order": 2})
    raise ConnectionError("card network down")


registry = Registry()
registry.add("done-background", done)
registry.add("retry-background", retrying)
executor = InlineExecutor(clock=clock, journal=journal)
app = App(registry, executor=executor, retry=RetryPolicy(delays=(3600.0,)))
app.enqueue("done-background", make_request(json={"n": 1})).wait()
app.enqueue("retry-background", make_request(json={"n": 2}))
executor.run_until(clock.now() + 1)  # attempt 1 failed; attempt 2 due in an hour
app.shutdown(wait=False)
journal.close()
print("wrote", path)
