"""What README.md says about the example site, the command line and the build holds.

The walkthrough's commands are read from the README itself and replayed through the public test
kit (``bgfunctions.testing``) on virtual time, so that a README edit and the code cannot drift
apart unnoticed. Only the live invocation view (``/.bgfunctions/``) is left to the walkthrough
by hand: it is the ASGI layer's, tested in tests/test_views.py.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bgfunctions.cli import main
from bgfunctions.clock import SystemClock, VirtualClock
from bgfunctions.devserver import JOURNAL_FILE, StaticFiles, format_event, open_sqlite_journal
from bgfunctions.invocation import Event, State
from bgfunctions.logs import InvocationFilter
from bgfunctions.registry import Registry
from bgfunctions.retry import RetryPolicy
from bgfunctions.testing import TestClient, drain, make_app

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "examples" / "site"
README = (ROOT / "README.md").read_text(encoding="utf-8")
REQUEST_ID = re.compile(r"\b01[0-9A-HJKMNP-TV-Z]{24}\b")  # a ULID, as the library makes them
DEMO_RETRY = RetryPolicy(delays=(5.0, 10.0))  # scripts/demo's --retry-delays 5,10
_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")


def blocks(language: str, text: str = README) -> list[str]:
    """The fenced blocks of ``text`` in ``language``, in order."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1) == language]


def section(title: str) -> str:
    """The README's ``## title`` section, up to the next ``## ``."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def masked(line: str) -> str:
    """``line`` without what changes from run to run: request ids and real durations."""
    line = REQUEST_ID.sub("ID", line)
    return re.sub(r"\bin \d+\.\d{3} s\b", "in N s", line)


@dataclass
class Command:
    """A shell command of a README block and the ``#`` comment lines right after it."""

    words: list[str]
    trailing: str  # the comment at the end of the command's own line
    output: list[str]  # the comment lines below it, without their leading "#" and 3 spaces


def commands(block: str) -> list[Command]:
    found: list[Command] = []
    lines = iter(block.splitlines())
    pending = ""
    for line in lines:
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1].rstrip()
            continue
        if line.startswith("#"):
            if found and line.startswith("#   "):
                found[-1].output.append(line[4:])
            continue
        if not line.strip():
            continue
        code, _, comment = line.partition("  #")
        found.append(Command(shlex.split(code, comments=False), comment.strip(), []))
    return found


class _Records(logging.Handler):
    """Keeps the records it is given, with the invocation's attributes on them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(InvocationFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def site_logs() -> Iterator[list[logging.LogRecord]]:
    """Records that handlers log while they run (what the dev server prints under their id)."""
    handler = _Records()
    logger = logging.getLogger("bgfunctions.functions")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- the example site ------------------------------------------------------------------------


def test_every_link_of_the_example_index_page_answers_200() -> None:
    """Each link of examples/site's index page reaches a function that answers 200."""
    page = (SITE / "public" / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'href="(/[^"]*)"', page)
    assert links, "expected links on examples/site/public/index.html"
    app = make_app(SITE)
    try:
        client = TestClient(app)
        answers = {link: client.get(link).status for link in links}
    finally:
        app.shutdown()
    assert answers == dict.fromkeys(links, 200)


def test_readme_snippet_is_the_example_process_function() -> None:
    """The README's opening process.py is examples/site's process.py, line for line."""
    snippet = blocks("python")[0].splitlines()
    assert snippet[0] == "# netlify/functions/process.py"
    wanted = [line for line in snippet[1:] if line.strip()]
    source = (SITE / "netlify" / "functions" / "process.py").read_text(encoding="utf-8")
    lines = [line for line in source.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line == wanted[0]]
    assert any(lines[i : i + len(wanted)] == wanted for i in starts), (wanted, lines)


def _walkthrough() -> list[Command]:
    return commands(blocks("sh", section("Try the example site"))[0])


def _request(command: Command) -> tuple[str, str, bytes | None]:
    """(method, path, body) of a README ``curl`` command (with ``head -c N /dev/zero |``)."""
    words = command.words
    method, body = "GET", None
    if words[0] == "head":
        size = int(words[words.index("-c") + 1])
        words = words[words.index("|") + 1 :]
        body = b"\0" * size
    assert words[0] == "curl", words
    url = next(w for w in words if w.startswith("localhost:8888"))
    for flag, value in itertools.pairwise(words):
        if flag == "-X":
            method = value
        elif flag == "-d":
            method, body = ("POST" if method == "GET" else method), value.encode()
    return method, url.removeprefix("localhost:8888"), body


def test_readme_walkthrough_answers_the_statuses_it_states() -> None:
    """Every curl line of the walkthrough gets the status (and body) the README gives it."""
    checked: list[str] = []
    app = make_app(SITE)
    try:
        client = TestClient(app)
        for command in _walkthrough():
            if "/.bgfunctions/" in " ".join(command.words):
                continue  # the live view is the ASGI layer's (see the module docstring)
            method, path, body = _request(command)
            said = " ".join([command.trailing, *command.output[:1]])
            if said == "public/index.html":
                found = StaticFiles(app.registry.publish_dir).find(path)
                assert found == SITE / "public" / "index.html", path
                checked.append(f"{method} {path}")
                continue
            status = re.search(r"\b([1-5]\d\d)\b", said)
            assert status, f"expected a status in the README for {command.words}; got {said!r}"
            response = client.request(method, path, body=body)
            assert response.status == int(status.group(1)), (method, path, response.body)
            if response.status == 202:
                assert response.body == b""
                assert REQUEST_ID.fullmatch(response.headers["x-nf-request-id"])
            if "JSON" in said:
                assert json.loads(response.body)
            for claim in re.findall(r"\.\.\. (.+)$|\d{3} (Function not found)", said):
                text = next(part for part in claim if part)
                assert text.encode() in response.body, (path, response.body)
            checked.append(f"{method} {path}")
    finally:
        app.shutdown()
    assert len(checked) == 9, checked


def test_readme_walkthrough_shows_what_the_server_prints(
    site_logs: list[logging.LogRecord],
) -> None:
    """The event and log lines the README shows under each background curl are the server's,
    on scripts/demo's retry delays (ids and durations aside)."""
    shown = [c for c in _walkthrough() if any(line.startswith("[") for line in c.output)]
    assert [_request(c)[1] for c in shown] == [
        "/.netlify/functions/send-email-background",
        "/process",
    ]
    clock = VirtualClock()
    printed: list[str] = []

    def on_event(event: Event) -> None:
        line = format_event(event, clock)
        if line is not None:
            printed.append(line)

    app = make_app(SITE, clock=clock, retry=DEMO_RETRY, on_event=on_event)
    try:
        for command in shown:
            method, path, body = _request(command)
            printed.clear()
            site_logs.clear()
            response = TestClient(app).request(method, path, body=body)
            assert response.status == 202
            drain(app)
            request_id = response.headers["x-nf-request-id"]
            logged = [
                (r.created, f"[{r.bg_request_id}] {r.bg_function}: {r.getMessage()}")  # type: ignore[attr-defined]
                for r in site_logs
            ]
            # A handler's own lines come between its attempt's "started" and its outcome.
            lines = list(printed)
            for _, text in logged:
                started = max(i for i, line in enumerate(lines) if line.endswith(" started"))
                lines.insert(started + 1, text)
            assert all(request_id in line for line in lines)
            readme = [
                line
                for line in command.output
                if line.startswith("[") and not line.endswith(" traceback:")
            ]
            assert [masked(line) for line in lines] == [masked(line) for line in readme]
    finally:
        app.shutdown()


# -- the command line ------------------------------------------------------------------------


def _cli_commands() -> list[Command]:
    return [c for b in blocks("sh", section("The command line")) for c in commands(b)]


def test_readme_invoke_output_is_what_invoke_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bgfunctions invoke` prints the README's timeline, line for line (ids aside)."""
    command = next(c for c in _cli_commands() if c.words[1] == "invoke")
    monkeypatch.chdir(ROOT)
    status = main(command.words[1:])
    out, err = capsys.readouterr()
    assert status == 1  # the function fails on every attempt: the command says so
    # The README shows the table (stdout), then the last attempt's traceback (stderr): the
    # traceback's first and last lines are checked, its frames depend on where it is installed.
    shown = [masked(line) for line in command.output]
    split = next(i for i, line in enumerate(shown) if line.startswith("["))
    assert [masked(line) for line in out.splitlines()] == shown[:split]
    traceback = [masked(line) for line in err.splitlines()]
    assert traceback[:2] == shown[split : split + 2]
    assert traceback[-1] == shown[-1]


def test_readme_replay_prints_a_new_request_id_that_a_server_then_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bgfunctions replay ID` prints one new request id, as the README shows; a server over
    the journal then runs that copy of the request."""
    command = next(c for c in _cli_commands() if c.words[1] == "replay")
    assert len(command.output) >= 1
    assert REQUEST_ID.fullmatch(command.output[0])
    site = tmp_path / "site"
    shutil.copytree(SITE, site, ignore=shutil.ignore_patterns(".bgfunctions", "__pycache__"))
    registry = Registry.from_site(site)
    journal = open_sqlite_journal(site / JOURNAL_FILE)
    served = make_app(registry, journal=journal, retry=DEMO_RETRY)
    try:
        client = TestClient(served)
        first = client.post(
            "/.netlify/functions/send-email-background",
            json={"to": "ada@example.com", "fail_attempts": 1},
        )
        drain(served)
    finally:
        served.shutdown()
        journal.close()
    original = first.headers["x-nf-request-id"]

    argv = [original if REQUEST_ID.fullmatch(w) else w for w in command.words[1:]]
    argv[argv.index("--site") + 1] = str(site)
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert REQUEST_ID.fullmatch(out[0])
    assert out[0] != original

    journal = open_sqlite_journal(site / JOURNAL_FILE)
    # replay stamps the copy with the real time; the server's clock starts there.
    clock = VirtualClock(start=SystemClock().now())
    restarted = make_app(registry, clock=clock, journal=journal, retry=DEMO_RETRY)
    try:
        restarted.start()
        drain(restarted)
        replayed = restarted.invocations.get(out[0])
    finally:
        restarted.shutdown()
        journal.close()
    assert replayed is not None
    assert masked(command.output[-1]) == masked(
        f"[{out[0]}] send-email-background: succeeded after {len(replayed.attempts)} attempt(s)"
    )
    assert (replayed.replay_of, replayed.state, len(replayed.attempts)) == (
        original,
        State.SUCCEEDED,
        2,
    )


def test_readme_names_the_journal_folder_to_ignore() -> None:
    """The folder the README tells users to put in .gitignore is where serve keeps its journal,
    and this repository ignores it."""
    folder = f"{JOURNAL_FILE.parts[0]}/"
    assert blocks("gitignore") == [f"{folder}\n"]
    assert folder in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_readme_says_what_scripts_test_installs() -> None:
    """The README's account of scripts/test matches the script: chromium with apt as root,
    and the variables that point the tests at one's own services."""
    script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    services = (ROOT / "scripts" / "services").read_text(encoding="utf-8")
    text = section("Run the tests")
    assert '"$(id -u)" = 0' in script
    assert re.search(r"apt-get install .*chromium", script)
    assert "as root" in text
    assert "`chromium` package itself with apt" in text
    for variable in re.findall(r"`(BGFUNCTIONS_TEST_\w+)`", text):
        assert variable in services
    assert len(re.findall(r"`(BGFUNCTIONS_TEST_\w+)`", text)) == 3


# -- the README as a package's long description ----------------------------------------------


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _relative_links(markdown: str) -> list[str]:
    prose = _FENCE.sub("", markdown)
    return [t for _, t in _LINK.findall(prose) if not re.match(r"[a-zA-Z][\w+.-]*:|/|#", t)]


def test_readme_relative_links_name_files_of_the_repository() -> None:
    """Each relative link of the README names a file or folder that exists."""
    links = _relative_links(README)
    assert links
    assert [t for t in links if not (ROOT / t.partition("#")[0]).exists()] == []


def test_the_long_description_is_built_by_the_link_resolving_hook() -> None:
    """pyproject.toml builds the readme with hatch_build.py instead of shipping README.md as is."""
    pyproject = _pyproject()
    assert "readme" not in pyproject["project"]
    assert "readme" in pyproject["project"]["dynamic"]
    assert "custom" in pyproject["tool"]["hatch"]["metadata"]["hooks"]
    assert hasattr(_hook(), "LongDescriptionHook")


def test_the_long_description_has_no_relative_links() -> None:
    """With the project's own [project.urls], the long description has no relative link left,
    and still names every path the README links to."""
    hook = _hook()
    urls = _pyproject()["project"].get("urls")
    text = hook.resolve_links(README, hook.repository_url(urls), ROOT)
    assert _relative_links(text) == []
    for target in _relative_links(README):
        assert target in text


def test_the_long_description_links_resolve_against_the_repository_url() -> None:
    """Given a Repository URL, a file link goes to blob/HEAD, a folder to tree/HEAD, and code
    blocks and absolute links stay as they are."""
    hook = _hook()
    base = hook.repository_url(
        {"Homepage": "https://a.example", "Repository": "https://r.example/x/"}
    )
    assert base == "https://r.example/x"
    text = hook.resolve_links(README, base, ROOT)
    assert "[docs/serving.md](https://r.example/x/blob/HEAD/docs/serving.md)" in text
    assert "[`examples/site`](https://r.example/x/tree/HEAD/examples/site)" in text
    assert _relative_links(text) == []
    assert blocks("sh", text) == blocks("sh")
    assert blocks("python", text) == blocks("python")
    kept = "[a](https://b.example/c) [top](#install)\n```\n[x](y)\n```\n"
    assert hook.resolve_links(kept, base, ROOT) == kept
    assert hook.resolve_links("[Routing](docs/routing.md#trailing-slash)", None, ROOT) == (
        "Routing (`docs/routing.md`)"
    )


# -- the README's own python blocks ----------------------------------------------------------


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_block_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each python block of the README runs as written, in a copy of the example site."""
    site = tmp_path / "site"
    shutil.copytree(SITE, site, ignore=shutil.ignore_patterns(".bgfunctions", "__pycache__"))
    monkeypatch.chdir(site)
    namespace: dict[str, object] = {"__name__": f"readme_example_{os.getpid()}"}
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), namespace)
