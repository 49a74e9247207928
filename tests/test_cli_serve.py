"""`bgfunctions serve` as a real server in a subprocess, and `bgfunctions invoke`.

The server tests are marked ``server`` and ``realtime``: they bind a free loopback port, run
uvicorn, and wait (with generous deadlines, up to 15 s) for lines on its stdout.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bgfunctions.cli import main
from bgfunctions.clock import SystemClock

EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "examples" / "site"
FLAKY = (
    "def handler(request, context):\n"
    "    if context.attempt == 1:\n"
    "        raise RuntimeError('first attempt fails')\n"
)


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the example site, plus a background function that fails once."""
    root = tmp_path / "site"
    shutil.copytree(EXAMPLE_SITE, root)
    write(root, "netlify/functions/flaky-background.py", FLAKY)
    return root


# -- invoke -------------------------------------------------------------------------------------


def test_invoke_a_failing_function_shows_three_attempts_at_0_60_180(
    capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    """A function that always fails: attempts at 0, 60 and 180 s of virtual time, status 1."""
    status, out, err = run(
        capsys,
        "invoke",
        "send-email-background",
        "--site",
        str(site),
        "--data",
        '{"fail_attempts": 9}',
    )
    assert status == 1
    # The last attempt's traceback follows on stderr, in the library's format (issue 11, 13).
    request_id = re.search(r"request (\w+)", out)
    assert request_id is not None
    assert err.startswith(f"[{request_id[1]}] send-email-background: attempt 3 traceback:\n")
    assert err.rstrip().endswith("RuntimeError: mail server unavailable (attempt 3)")
    attempts = re.findall(r"t=\s*([\d.]+)s\s+attempt (\d)\s+(\w+)", out)
    assert attempts == [
        ("0.000", "1", "error"),
        ("60.000", "2", "error"),
        ("180.000", "3", "error"),
    ]
    assert "RuntimeError: mail server unavailable (attempt 3)" in out
    assert out.splitlines()[-1].strip() == "failed after 3 attempt(s)"


def test_invoke_a_function_that_succeeds_exits_0(
    capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    """Failing once then succeeding: two attempts, at 0 and 60 s, status 0."""
    status, out, _ = run(capsys, "invoke", "flaky-background", "--site", str(site))
    assert status == 0
    attempts = re.findall(r"t=\s*([\d.]+)s\s+attempt (\d)\s+(\w+)", out)
    assert attempts == [("0.000", "1", "error"), ("60.000", "2", "succeeded")]
    assert out.splitlines()[-1].strip() == "succeeded after 2 attempt(s)"


def test_invoke_a_sync_function_prints_its_response(
    capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    """A synchronous function: its status and body, status 0."""
    status, out, _ = run(capsys, "invoke", "hello", "--site", str(site), "--method", "GET")
    assert status == 0
    assert out.splitlines() == ["200  hello (synchronous)", "Hello, world!"]


def test_invoke_an_unknown_function_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    """An unknown name: exit 2, one line on stderr naming it and what exists."""
    status, out, err = run(capsys, "invoke", "nope", "--site", str(site))
    assert status == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("bgfunctions: error: ")
    assert "'nope'" in err
    assert "hello" in err


def test_invoke_a_malformed_header_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], site: Path
) -> None:
    """-H without a colon: exit 2 and the expected form."""
    status, _, err = run(capsys, "invoke", "hello", "--site", str(site), "-H", "broken")
    assert status == 2
    assert "expected NAME:VALUE; got 'broken'" in err


# -- serve: arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--retry-delays", "60,soon"],
        ["--retry-delays", "-1"],
        ["--background-timeout", "nan"],
        ["--executor", "fork"],
        ["--port", "http"],
        ["--allowed-hosts", "example.com:80"],
        ["--max-pending", "0"],
    ],
)
def test_serve_refuses_bad_options(
    capsys: pytest.CaptureFixture[str], site: Path, argv: list[str]
) -> None:
    """Malformed options are usage errors (exit 2), before anything is served."""
    status, out, err = run(capsys, "serve", str(site), *argv)
    assert status == 2
    assert out == ""
    assert "error" in err


def test_serve_a_missing_site_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A site without a functions directory: exit 2, one line, no server started."""
    status, out, err = run(capsys, "serve", str(tmp_path / "missing"), "--no-reload")
    assert status == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("bgfunctions: error: ")


def test_serve_a_zero_timeout_is_refused(capsys: pytest.CaptureFixture[str], site: Path) -> None:
    """--sync-timeout 0 is refused with a message naming the option."""
    status, _, err = run(capsys, "serve", str(site), "--sync-timeout", "0")
    assert status == 2
    assert "--sync-timeout" in err


# -- serve: a real server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A `bgfunctions serve` subprocess whose stdout lines are collected as they come."""

    def __init__(self, site: Path, *options: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "bgfunctions", "serve", str(site), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*argv, *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.clock = SystemClock()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first stdout line (seen so far or to come) that satisfies ``predicate``."""
        deadline = self.clock.monotonic() + timeout
        for line in self.lines:
            if predicate(line):
                return line
        while True:
            left = deadline - self.clock.monotonic()
            if left <= 0:
                raise AssertionError(f"no such line within {timeout} s; got {self.lines!r}")
            try:
                new = self._new.get(timeout=left)
            except queue.Empty:
                continue
            if new is None:
                raise AssertionError(f"the server exited; its output: {self.lines!r}")
            self.lines.append(new)
            if predicate(new):
                return new

    def wait_until_listening(self, timeout: float = 15.0) -> None:
        self.wait_for_line(lambda line: line.startswith("serving "), timeout)
        deadline = self.clock.monotonic() + timeout
        while self.clock.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                self.clock.sleep(0.05)
        raise AssertionError(f"nothing listens on port {self.port} after {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the process (by its pid) and wait for it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
                self.process.kill()
                self.process.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


@pytest.fixture
def serve(site: Path) -> Iterator[Callable[..., Server]]:
    """Start `bgfunctions serve SITE ...`; every server started is stopped afterwards."""
    servers: list[Server] = []

    def start(*options: str) -> Server:
        server = Server(site, *options)
        servers.append(server)
        server.wait_until_listening()
        return server

    yield start
    for server in servers:
        server.stop()


def check_background_invocation(server: Server) -> None:
    response = httpx.post(f"{server.base}/.netlify/functions/flaky-background", timeout=10)
    assert response.status_code == 202
    assert response.content == b""
    request_id = response.headers["x-nf-request-id"]
    prefix = f"[{request_id}] flaky-background: "
    server.wait_for_line(lambda line: line == prefix + "succeeded after 2 attempt(s)")
    steps = [line[len(prefix) :] for line in server.lines if line.startswith(prefix)]
    assert steps[0] == "queued"
    assert any(re.fullmatch(r"attempt 1 error in [\d.]+ s \(RuntimeError: .*\)", s) for s in steps)
    assert any(s.startswith("retry scheduled in ") for s in steps)
    assert any(re.fullmatch(r"attempt 2 succeeded in [\d.]+ s", s) for s in steps)


@pytest.mark.server
@pytest.mark.realtime
def test_serve_runs_a_background_function_and_prints_its_lines(
    serve: Callable[..., Server],
) -> None:
    """202 at once; stdout shows the table, then queued ... succeeded with the request id."""
    server = serve("--retry-delays", "0.2", "--no-reload")
    assert any(line.startswith("NAME ") for line in server.lines)
    assert any(line.startswith("flaky-background ") for line in server.lines)
    assert server.lines[-1].startswith("serving ")
    assert server.lines[-1].endswith(f"on http://127.0.0.1:{server.port}")
    # The test extra installs uvicorn[standard]: serve runs on its uvloop and httptools, not
    # on asyncio.run's stdlib loop.
    assert server.lines[-2].startswith("uvicorn ")
    assert server.lines[-2].endswith(": uvloop loop, httptools parser")
    assert not any(line.startswith("warning:") for line in server.lines)
    check_background_invocation(server)
    home = httpx.get(f"{server.base}/", timeout=10)
    assert home.status_code == 200
    assert "bgfunctions example site" in home.text
    assert httpx.get(f"{server.base}/.netlify/functions/hello", timeout=10).text == "Hello, world!"
    assert httpx.get(f"{server.base}/nope", timeout=10).status_code == 404
    # Ctrl-C: uvicorn shuts down, re-raises it, and the command exits 0.
    assert server.stop(signal.SIGINT) == 0


@pytest.mark.server
@pytest.mark.realtime
def test_serve_shows_handler_logs_and_tracebacks_with_the_request_id(
    site: Path, serve: Callable[..., Server]
) -> None:
    """A handler's log lines carry its request id; a failed attempt's traceback is printed."""
    write(
        site,
        "netlify/functions/noisy-background.py",
        "import logging\n"
        "def handler(request, context):\n"
        "    context.log.info('attempt %d starts', context.attempt)\n"
        "    logging.getLogger('mine').warning('a warning from my own logger')\n"
        "    if context.attempt == 1:\n"
        "        raise KeyError('missing-key')\n",
    )
    server = serve("--retry-delays", "0.2", "--no-reload")
    response = httpx.post(f"{server.base}/.netlify/functions/noisy-background", timeout=10)
    assert response.status_code == 202
    prefix = f"[{response.headers['x-nf-request-id']}] noisy-background: "
    server.wait_for_line(lambda line: line == prefix + "succeeded after 2 attempt(s)")
    assert prefix + "attempt 1 starts" in server.lines
    assert prefix + "attempt 2 starts" in server.lines
    assert prefix + "a warning from my own logger" in server.lines
    ended = next(
        i for i, line in enumerate(server.lines) if line.startswith(prefix + "attempt 1 error")
    )
    assert server.lines[ended + 1 : ended + 3] == [
        prefix + "attempt 1 traceback:",
        "Traceback (most recent call last):",
    ]
    assert "KeyError: 'missing-key'" in server.lines[ended + 3 :]
    assert not any("of function" in line for line in server.lines)  # said once, by the event
    serving = next(i for i, line in enumerate(server.lines) if line.startswith("serving "))
    after = server.lines[serving + 1 :]  # uvicorn's own access and INFO logs stay quiet
    assert not any("uvicorn" in line or "INFO" in line for line in after)


@pytest.mark.server
@pytest.mark.realtime
def test_serve_with_the_process_executor(serve: Callable[..., Server]) -> None:
    """--executor process: the same 202 and event lines, attempts run in worker processes."""
    server = serve("--retry-delays", "0.2", "--no-reload", "--executor", "process")
    check_background_invocation(server)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: the process dies by it.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)


@pytest.mark.server
@pytest.mark.realtime
def test_serve_with_the_process_executor_runs_functions_with_relative_imports(
    serve: Callable[..., Server],
) -> None:
    """--executor process: hello.py's `from ._shared import greeting` works as with threads."""
    server = serve("--no-reload", "--executor", "process")
    hello = httpx.get(f"{server.base}/.netlify/functions/hello", timeout=10)
    assert (hello.status_code, hello.text) == (200, "Hello, world!")


@pytest.mark.server
@pytest.mark.realtime
def test_serve_reloads_when_a_function_file_changes(
    site: Path, serve: Callable[..., Server]
) -> None:
    """Without --no-reload, editing a sync function's file changes its response (within 15 s)."""
    write(site, "netlify/functions/version.py", "def handler(request, context):\n    return 'v1'\n")
    server = serve("--retry-delays", "0.2")
    url = f"{server.base}/.netlify/functions/version"
    assert httpx.get(url, timeout=10).text == "v1"
    write(site, "netlify/functions/version.py", "def handler(request, context):\n    return 'v2'\n")
    deadline = server.clock.monotonic() + 15.0
    text = "v1"
    while text != "v2" and server.clock.monotonic() < deadline:
        server.clock.sleep(0.1)
        text = httpx.get(url, timeout=10).text
    assert text == "v2", server.lines
    server.wait_for_line(lambda line: line.startswith("reloaded "))


# -- serve: facing the world --------------------------------------------------------------------

WHOAMI = "def handler(request, context):\n    return context.ip or 'none'\n"
DOOMED = "def handler(request, context):\n    raise RuntimeError('always')\n"


@pytest.mark.server
@pytest.mark.realtime
def test_serve_on_a_port_in_use_is_one_line_and_exit_2(site: Path) -> None:
    """A taken port: exit 2, one stderr line naming the port, and no "serving" line."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "bgfunctions", "serve", str(site), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"bgfunctions: error: port {port} on 127.0.0.1 is in use: stop what listens there, "
        "or pass --port"
    ]
    assert "serving" not in done.stdout
    assert "NAME" not in done.stdout  # nothing printed before the bind failed


@pytest.mark.server
@pytest.mark.realtime
def test_serve_refuses_a_foreign_host_and_creates_the_gitignore(
    site: Path, serve: Callable[..., Server]
) -> None:
    """Host: attacker.example gets 400 (not the invocations JSON); .bgfunctions/ is git-ignored."""
    server = serve("--no-reload")
    view = f"{server.base}/.bgfunctions/invocations"
    refused = httpx.get(view, headers={"host": "attacker.example:8888"}, timeout=10)
    assert refused.status_code == 400
    assert refused.headers["x-nf-request-id"] in refused.text
    assert "invocations" not in refused.text
    assert httpx.get(view, timeout=10).status_code == 200
    assert (site / ".bgfunctions" / ".gitignore").read_text(encoding="utf-8").endswith("*\n")
    allowing = serve("--no-reload", "--journal", "memory", "--allowed-hosts", ".example.com")
    url = f"{allowing.base}/.netlify/functions/hello"
    assert httpx.get(url, headers={"host": "app.example.com"}, timeout=10).status_code == 200


@pytest.mark.server
@pytest.mark.realtime
def test_serve_ignores_x_forwarded_for_unless_the_proxy_is_trusted(
    site: Path, serve: Callable[..., Server]
) -> None:
    """X-Forwarded-For does not set context.ip, unless --trust-proxy says a proxy is in front."""
    write(site, "netlify/functions/whoami.py", WHOAMI)
    forged = {"x-forwarded-for": "203.0.113.9"}
    plain = serve("--no-reload", "--journal", "memory")
    url = f"{plain.base}/.netlify/functions/whoami"
    assert httpx.get(url, headers=forged, timeout=10).text == "127.0.0.1"
    trusting = serve("--no-reload", "--journal", "memory", "--trust-proxy")
    url = f"{trusting.base}/.netlify/functions/whoami"
    assert httpx.get(url, headers=forged, timeout=10).text == "203.0.113.9"


@pytest.mark.server
@pytest.mark.realtime
def test_serve_max_pending_answers_503_with_retry_after(
    site: Path, serve: Callable[..., Server]
) -> None:
    """--max-pending 1: with one retry waiting, the next background request gets 503."""
    write(site, "netlify/functions/doomed-background.py", DOOMED)
    server = serve("--no-reload", "--max-pending", "1", "--retry-delays", "3600")
    url = f"{server.base}/.netlify/functions/doomed-background"
    first = httpx.post(url, timeout=10)
    assert first.status_code == 202
    prefix = f"[{first.headers['x-nf-request-id']}] doomed-background: "
    server.wait_for_line(lambda line: line.startswith(prefix + "retry scheduled"))
    refused = httpx.post(url, timeout=10)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1


@pytest.mark.server
@pytest.mark.realtime
def test_serve_announces_a_replay_from_the_cli(
    site: Path, serve: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    """`bgfunctions replay ID` while serving: the server prints "queued (replay of ID)"."""
    server = serve("--no-reload", "--retry-delays", "")
    response = httpx.post(f"{server.base}/.netlify/functions/flaky-background", timeout=10)
    old = response.headers["x-nf-request-id"]
    server.wait_for_line(
        lambda line: line == f"[{old}] flaky-background: failed after 1 attempt(s)"
    )
    status, out, _ = run(capsys, "replay", old, "--site", str(site))
    assert status == 0
    new = out.strip()
    server.wait_for_line(lambda line: line == f"[{new}] flaky-background: queued (replay of {old})")
    server.wait_for_line(lambda line: line.startswith(f"[{new}] flaky-background: failed after"))
    status, out, _ = run(capsys, "invocations", str(site))
    assert re.split(r"\s{2,}", out.splitlines()[0])[5] == "REPLAY OF"
    row = next(line for line in out.splitlines() if line.startswith(new))
    assert re.split(r"\s{2,}", row)[5] == old


STEPPED = (
    "def handler(request, context):\n"
    "    context.step.run('account', lambda: 'acct_1')\n"
    "    if context.attempt == 1:\n"
    "        raise RuntimeError('billing down')\n"
    "    context.step.run('billing', lambda: 'cus_1')\n"
)


def _shape(line: str) -> str:
    """A timeline line with its spacing squeezed and every time in seconds written ``Ns``."""
    return re.sub(r"\b\d+\.\d{3}s\b", "Ns", " ".join(line.split()).replace("t= ", "t="))


@pytest.mark.server
@pytest.mark.realtime
def test_invocations_and_replay_show_each_attempts_steps(
    site: Path, serve: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    """`invocations --request ID` prints the timeline with the steps each attempt ran or took
    back from the journal; `replay --wait` prints the replay's, where every step runs afresh."""
    write(site, "netlify/functions/signup-background.py", STEPPED)
    server = serve("--no-reload", "--retry-delays", "0.2")
    response = httpx.post(f"{server.base}/.netlify/functions/signup-background", timeout=10)
    old = response.headers["x-nf-request-id"]
    server.wait_for_line(
        lambda line: line == f"[{old}] signup-background: succeeded after 2 attempt(s)"
    )
    status, out, err = run(capsys, "invocations", str(site))
    assert (status, err) == (0, "")
    assert re.split(r"\s{2,}", out.splitlines()[0])[4] == "STEPS"
    row = next(line for line in out.splitlines() if line.startswith(old))
    assert re.split(r"\s{2,}", row)[2:5] == ["succeeded", "2", "2"]

    status, out, err = run(capsys, "invocations", str(site), "--request", old)
    assert (status, err) == (0, "")
    head, *lines = [_shape(line) for line in out.splitlines()]
    assert head.startswith(f"signup-background request {old} (accepted 20")
    assert lines == [
        "t=Ns attempt 1 error ran Ns RuntimeError: billing down",
        "t=Ns step account committed, ran Ns",
        "t=Ns attempt 2 succeeded ran Ns",
        "step account replayed: stored by attempt 1, not run again",
        "t=Ns step billing committed, ran Ns",
        "succeeded after 2 attempt(s)",
    ]

    status, out, err = run(capsys, "replay", old, "--site", str(site), "--wait", "30")
    assert (status, err) == (0, "")
    new, head, replayed, *lines = [_shape(line) for line in out.splitlines()]
    assert head.startswith(f"signup-background request {new} (accepted 20")
    assert replayed == f"a replay of {old}: a new invocation, its steps run afresh"
    # A replay is a new invocation: its attempt 1 runs every step again, and fails as before.
    assert lines == [
        "t=Ns attempt 1 error ran Ns RuntimeError: billing down",
        "t=Ns step account committed, ran Ns",
        "t=Ns attempt 2 succeeded ran Ns",
        "step account replayed: stored by attempt 1, not run again",
        "t=Ns step billing committed, ran Ns",
        "succeeded after 2 attempt(s)",
    ]

    status, out, err = run(capsys, "invocations", str(site), "--request", "nope")
    assert status == 2
    assert err == f"bgfunctions: error: no invocation 'nope' in the journal of {site}\n"


@pytest.mark.server
@pytest.mark.realtime
def test_serve_says_serving_only_once_bound_with_the_real_port(site: Path) -> None:
    """--port 0: the "serving" line names the port the OS gave, and it accepts at once."""
    argv = [sys.executable, "-m", "bgfunctions", "serve", str(site), "--port", "0", "--no-reload"]
    process = subprocess.Popen(
        [*argv, "--journal", "memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = next(line for line in process.stdout if line.startswith("serving "))
        found = re.fullmatch(r"serving .* on http://127\.0\.0\.1:(\d+)\n", line)
        assert found is not None, line
        port = int(found.group(1))
        assert port != 0
        # No retry loop: the socket listened before the line was printed.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        hello = httpx.get(f"http://127.0.0.1:{port}/.netlify/functions/hello", timeout=10)
        assert hello.text == "Hello, world!"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
        process.stdout.close()  # type: ignore[union-attr]
