"""Nothing a handler starts outlives its attempt on the process executor.

Each handler starts ``sleep 600`` and writes its pid to the file named by the request body; the
test then checks by pid that the process is gone once the attempt ended, timed out or crashed, or
once the executor shut down. Real processes and real time: marked ``realtime``; the only waits are
bounded polls (up to 10 s) for a killed process to disappear.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgfunctions import App, Limits, Outcome, Request, RetryPolicy, State, discover
from bgfunctions.executors.processes import ProcessExecutor

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX"),
]

START = """
    import subprocess
    from pathlib import Path

    def start_sleep(request):
        child = subprocess.Popen(["sleep", "600"])
        Path(request.body.decode()).write_text(str(child.pid))
        return child
"""

HANDLERS = {
    # The attempt succeeds and leaves its child running.
    "leave-background": START
    + """
    def handler(request, context):
        start_sleep(request)
    """,
    # The attempt hangs past its limit.
    "hang-background": START
    + """
    import time

    def handler(request, context):
        start_sleep(request)
        time.sleep(60)
    """,
    # The worker process dies under the attempt.
    "crash-background": START
    + """
    import os

    def handler(request, context):
        start_sleep(request)
        os._exit(3)
    """,
    # A daemon: the shell forks ``sleep`` into the background and exits at once.
    "daemon-background": """
    import subprocess
    from pathlib import Path

    def handler(request, context):
        out = subprocess.run(
            ["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
            capture_output=True, text=True, check=True,
        ).stdout
        Path(request.body.decode()).write_text(out.strip())
    """,
    # A synchronous function that leaves its child running.
    "leave-sync": START
    + """
    def handler(request, context):
        start_sleep(request)
        return "started"
    """,
    # A child that the handler waits for is no reason to replace the worker.
    "tidy-background": """
    import subprocess

    def handler(request, context):
        subprocess.run(["true"], check=True)
    """,
}

LIMIT = 2.0


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("functions")
    for name, source in HANDLERS.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def app(functions: Path) -> Iterator[App]:
    app = App(
        discover(functions),
        executor=ProcessExecutor(max_workers=1),
        limits=Limits(background_timeout=LIMIT, sync_timeout=LIMIT),
        retry=RetryPolicy(delays=()),
    )
    yield app
    app.shutdown(grace=0)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(pid: int) -> bool:
    """Whether ``pid`` stops running within 10 s (a SIGKILL is delivered at once; the margin
    is for a loaded machine)."""
    deadline = time.monotonic() + 10
    while running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, 9)  # do not leave it behind ourselves
            return False
        time.sleep(0.01)
    return True


def child_pid(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"the handler never wrote {path}"
        time.sleep(0.01)
    return int(path.read_text())


def run(app: App, name: str, pidfile: Path) -> State:
    request = Request("POST", f"/.netlify/functions/{name}", body=str(pidfile).encode())
    return app.enqueue(name, request).wait(30).state


def test_a_child_left_by_a_finished_attempt_is_killed(app: App, tmp_path: Path) -> None:
    """A process still running when its attempt succeeds is killed; the attempt still succeeds."""
    assert run(app, "leave-background", tmp_path / "pid") is State.SUCCEEDED
    assert gone(child_pid(tmp_path / "pid"))
    # The pool goes on with a fresh worker process.
    assert run(app, "leave-background", tmp_path / "pid2") is State.SUCCEEDED
    assert gone(child_pid(tmp_path / "pid2"))


def test_a_child_of_a_timed_out_attempt_is_killed(app: App, tmp_path: Path) -> None:
    """At an attempt's time-out, the processes it started die with its worker process."""
    record = app.enqueue(
        "hang-background",
        Request("POST", "/x", body=str(tmp_path / "pid").encode()),
    ).wait(30)
    assert [a.outcome for a in record.attempts] == [Outcome.TIMED_OUT]
    assert gone(child_pid(tmp_path / "pid"))


def test_a_child_of_a_crashed_worker_is_killed(app: App, tmp_path: Path) -> None:
    """When the worker process dies under an attempt, what the handler started dies too."""
    record = app.enqueue(
        "crash-background",
        Request("POST", "/x", body=str(tmp_path / "pid").encode()),
    ).wait(30)
    assert [a.outcome for a in record.attempts] == [Outcome.CRASHED]
    assert gone(child_pid(tmp_path / "pid"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers are Linux's")
def test_a_daemon_that_forked_twice_is_killed(app: App, tmp_path: Path) -> None:
    """A process orphaned by the handler's own child is still found and killed."""
    assert run(app, "daemon-background", tmp_path / "pid") is State.SUCCEEDED
    assert gone(child_pid(tmp_path / "pid"))


def test_a_child_of_a_sync_function_is_killed(app: App, tmp_path: Path) -> None:
    """A synchronous function's leftover process is killed once its response is back."""
    request = Request("POST", "/.netlify/functions/leave-sync", body=str(tmp_path / "pid").encode())
    response = app.handle(request)
    assert (response.status, response.body) == (200, b"started")
    assert gone(child_pid(tmp_path / "pid"))


def test_shutdown_kills_what_running_attempts_started(functions: Path, tmp_path: Path) -> None:
    """Shutting down with no grace kills running attempts and the processes they started."""
    app = App(
        discover(functions),
        executor=ProcessExecutor(max_workers=1),
        limits=Limits(background_timeout=600),
        retry=RetryPolicy(delays=()),
    )
    try:
        app.enqueue("hang-background", Request("POST", "/x", body=str(tmp_path / "pid").encode()))
        pid = child_pid(tmp_path / "pid")
    finally:
        app.shutdown(grace=0)
    assert gone(pid)


def test_a_tidy_handler_keeps_its_worker_process(app: App) -> None:
    """A handler whose children have all ended keeps its worker process for the next attempt."""
    for _ in range(3):
        assert app.enqueue("tidy-background").wait(30).state is State.SUCCEEDED
    executor = app.executor
    assert isinstance(executor, ProcessExecutor)
    assert executor.processes_spawned == 1
