"""The ``bgfunctions`` command line.

``bgfunctions list [SITE_DIR] [--json]`` shows a site's functions: whether each is background and
why, its routes, and its file, then every warning. Each subcommand is one ``_add_<name>`` function
that declares its arguments and one ``_cmd_<name>`` function that runs it, so new commands slot in
beside ``list``. An error the user can fix (a missing directory, a module that fails to import,
bad netlify.toml) is one line on stderr, ``bgfunctions: error: ...``, and exit status 2.

``bgfunctions invocations [SITE_DIR]`` lists the invocations recorded in the site's journal
(``SITE_DIR/.bgfunctions/journal.sqlite3``, written by ``bgfunctions serve``), and
``bgfunctions replay REQUEST_ID`` adds a new invocation there that replays a finished one; a
running server picks it up.

``bgfunctions worker SITE_DIR --broker URL --journal PATH|DSN`` runs a Celery worker for the
background attempts a web tier with a ``CeleryExecutor`` publishes (the ``[celery]`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from bgfunctions.errors import BgFunctionsError, ConfigError
from bgfunctions.invocation import InvocationRecord, State
from bgfunctions.journals.base import Journal
from bgfunctions.registry import Function, Registry

__all__ = ["EXIT_ERROR", "EXIT_OK", "build_parser", "main"]

EXIT_OK = 0
"""The command did what was asked."""
EXIT_ERROR = 2
"""A usage error, or a site that cannot be loaded."""

_PROG = "bgfunctions"
Command = Callable[[argparse.Namespace], int]


class _CommandError(Exception):
    """An error a command reports as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Netlify functions, and their background functions, for Python.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    _add_list(commands)
    _add_serve(commands)
    _add_invoke(commands)
    _add_invocations(commands)
    _add_replay(commands)
    _add_worker(commands)
    return parser


def _version() -> str:
    # The installed distribution's: the package itself is above every module (test_layers).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bgfunctions")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
        return "(not installed)"


_SITE_HELP = "the site's directory, holding netlify.toml (default: the current directory)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse has already printed usage or help; keep main() returning a status.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    command: Command = args.run
    try:
        return command(args)
    except BrokenPipeError:
        # The reader went away (``bgfunctions list | head``): not an error worth a message.
        _detach_stdout()
        return EXIT_ERROR
    except (BgFunctionsError, _CommandError, OSError) as exc:
        _error(str(exc))
        return EXIT_ERROR


def _detach_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again; point it at devnull.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured in tests)
        pass


def _error(message: str) -> None:
    # One line, even when a user's exception message spans several.
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"{_PROG}: error: {one_line}", file=sys.stderr)


# -- list ------------------------------------------------------------------------------------------


def _add_list(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "list",
        help="show a site's functions, their routes and why each is background",
        description=(
            "Discover the functions of SITE_DIR (netlify.toml's [functions] directory, else "
            "netlify/functions) and show, for each, whether it is background and why, its "
            "routes and its file, then every warning."
        ),
    )
    parser.add_argument(
        "site_dir",
        nargs="?",
        default=".",
        metavar="SITE_DIR",
        help=_SITE_HELP,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    _add_strict(parser)
    parser.set_defaults(run=_cmd_list)


def _add_strict(parser: argparse.ArgumentParser) -> None:
    # Shared by every command that loads a site.
    parser.add_argument(
        "--strict",
        action="store_true",
        help="make an invalid function name an error instead of a warning",
    )


def _cmd_list(args: argparse.Namespace) -> int:
    site = Path(args.site_dir)
    registry = _load_site(site, strict=args.strict)
    if args.json:
        json.dump([_function_json(f, site) for f in registry], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(registry, site, sys.stdout)
    return EXIT_OK


def _load_site(site: Path, *, strict: bool = False) -> Registry:
    if not site.exists():
        raise _CommandError(f"site directory {site} does not exist")
    if not site.is_dir():
        raise _CommandError(f"site directory {site} is not a directory")
    return Registry.from_site(site, strict=strict)


def _relative(path: Path | None, site: Path) -> str:
    if path is None:
        return "(added in code)"
    try:
        return path.relative_to(site).as_posix()
    except ValueError:
        return str(path)


def _background_cell(function: Function) -> str:
    if not function.background:
        return "no"
    return f"yes ({', '.join(function.background_reasons)})"


def _routes_cell(function: Function) -> str:
    if not function.valid_name:
        return "(invalid name: answers 400)"
    text = ", ".join(function.routes)
    if function.config.excluded_path:
        text += f" except {', '.join(function.config.excluded_path)}"
    if function.config.method:
        text += f" [{' '.join(function.config.method)}]"
    return text


def _name_cell(function: Function) -> str:
    if function.display_name != function.name:
        return f"{function.name} ({function.display_name})"
    return function.name


def _print_table(registry: Registry, site: Path, out: TextIO) -> None:
    functions = list(registry)
    where = registry.functions_dir if registry.functions_dir is not None else site
    count = f"{len(functions)} function{'' if len(functions) == 1 else 's'}"
    out.write(f"{count} in {where}\n")
    if functions:
        rows = [("NAME", "BACKGROUND", "ROUTES", "FILE")]
        rows.extend(
            (_name_cell(f), _background_cell(f), _routes_cell(f), _relative(f.file, site))
            for f in functions
        )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        out.write("\n")
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            out.write("  ".join([*cells, row[3]]) + "\n")
    warnings = registry.warnings
    if warnings:
        out.write(f"\nwarnings ({len(warnings)}):\n")
        for warning in warnings:
            out.write(f"  - {warning}\n")


def _function_json(function: Function, site: Path) -> dict[str, object]:
    return {
        "name": function.name,
        "display_name": function.display_name,
        "background": function.background,
        "background_reasons": list(function.background_reasons),
        "routes": list(function.routes),
        "methods": list(function.config.method) if function.config.method else None,
        "file": None if function.file is None else _relative(function.file, site),
        "valid_name": function.valid_name,
        "warnings": list(function.warnings),
        "config": function.config.to_dict(),
    }


# -- serve -----------------------------------------------------------------------------------------


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a site's functions and static files, with retries, limits and reload",
        description=(
            "Serve SITE_DIR's functions on http://HOST:PORT with Netlify's semantics (202 for "
            "background functions, retries after 60 and 120 s, 900 s limit), its publish "
            "directory behind them, and reload when the functions or netlify.toml change."
        ),
    )
    parser.add_argument("site_dir", nargs="?", default=".", metavar="SITE_DIR", help=_SITE_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8888, help="port (default 8888)")
    parser.add_argument(
        "--executor",
        choices=("thread", "process"),
        default="thread",
        help="thread (default) or process: worker processes that are killed at the limit",
    )
    _add_schedule_options(parser)
    parser.add_argument(
        "--sync-timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="limit of a synchronous function (default 60)",
    )
    parser.add_argument("--no-reload", action="store_true", help="do not watch for changes")
    parser.add_argument(
        "--journal",
        default=None,
        metavar="PATH|memory",
        help="the SQLite file that records invocations, or 'memory' to keep none "
        "(default SITE_DIR/.bgfunctions/journal.sqlite3)",
    )
    parser.add_argument(
        "--invocations-view",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the invocation record at /.bgfunctions/ (default: on for a loopback "
        "--host only; on another address it shows every request's URL and headers)",
    )
    parser.add_argument(
        "--allowed-hosts",
        type=_host_patterns,
        action="extend",
        default=[],
        metavar="NAME,...",
        help="Host names answered besides localhost, 127.0.0.1, [::1] and --host: "
        "example.com, .example.com (and below), *.example.com (below only), * (any); "
        "others get 400, against DNS rebinding",
    )
    parser.add_argument(
        "--max-pending",
        type=_positive,
        default=None,
        metavar="N",
        help="background invocations that may wait before requests get 503 with Retry-After "
        "(default 1000)",
    )
    parser.add_argument(
        "--trust-proxy",
        action="store_true",
        help="believe X-Forwarded-For and x-nf-* headers from a proxy on this machine "
        "(default: they are ignored)",
    )
    parser.set_defaults(run=_cmd_serve)


def _host_patterns(text: str) -> list[str]:
    from bgfunctions.hosts import AllowedHosts

    patterns = [part.strip() for part in text.split(",") if part.strip()]
    try:
        AllowedHosts(patterns)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("allowed_hosts: ")) from None
    return patterns


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    # Shared by serve and worker: Netlify's schedule by default, shorter to watch it work.
    parser.add_argument(
        "--retry-delays",
        type=_delays,
        default=(60.0, 120.0),
        metavar="SECONDS,...",
        help="seconds between a failed attempt and the next (default 60,120; '' for none)",
    )
    parser.add_argument(
        "--background-timeout",
        type=_seconds,
        default=900.0,
        metavar="SECONDS",
        help="limit of one background attempt (default 900)",
    )


def _delays(text: str) -> tuple[float, ...]:
    try:
        return tuple(_seconds(part) for part in text.split(",") if part.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected seconds separated by commas, such as 60,120; got {text!r}"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0; got {text!r}")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    from bgfunctions.devserver import DEFAULT_MAX_PENDING, DevServer, ServeOptions

    site = Path(args.site_dir)
    _load_site(site)  # a broken site is one clear line before anything starts
    if args.background_timeout <= 0 or args.sync_timeout <= 0:
        raise ConfigError("--background-timeout and --sync-timeout must be above 0")
    server = DevServer(
        site,
        ServeOptions(
            host=args.host,
            port=args.port,
            executor=args.executor,
            retry_delays=args.retry_delays,
            background_timeout=args.background_timeout,
            sync_timeout=args.sync_timeout,
            reload=not args.no_reload,
            journal=_journal_path(args.journal, site),
            invocations_view=args.invocations_view,
            allowed_hosts=tuple(args.allowed_hosts),
            max_pending=DEFAULT_MAX_PENDING if args.max_pending is None else args.max_pending,
            trust_proxy=args.trust_proxy,
        ),
    )

    def table(registry: Registry) -> str:
        out = io.StringIO()
        _print_table(registry, site, out)
        return out.getvalue().rstrip("\n")

    with contextlib.suppress(KeyboardInterrupt):
        server.run(table=table)
    return EXIT_OK


# -- invoke ----------------------------------------------------------------------------------------


def _add_invoke(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "invoke",
        help="run one invocation on a virtual clock and print its timeline of attempts",
        description=(
            "Run function NAME of the site once, as the server would, on a virtual clock: "
            "retries and time limits play out in milliseconds. Prints each attempt."
        ),
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--site", default=".", metavar="SITE_DIR", help="default: .")
    parser.add_argument("--data", default=None, help="the request body (a string)")
    parser.add_argument("--method", default="POST", help="default POST")
    parser.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a request header (repeatable)",
    )
    parser.set_defaults(run=_cmd_invoke)


def _cmd_invoke(args: argparse.Namespace) -> int:
    from bgfunctions.requests import Request
    from bgfunctions.testing import make_app

    site = Path(args.site_dir if hasattr(args, "site_dir") else args.site)
    registry = _load_site(site)
    function = registry[args.name]
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise _CommandError(f"--header: expected NAME:VALUE; got {header!r}")
        headers.append((name.strip(), value.strip()))
    request = Request(
        args.method,
        f"/.netlify/functions/{function.name}",
        headers=headers,
        body=args.data,
    )
    app = make_app(registry)
    with _logs_after_the_output():
        try:
            if not function.background:
                response = app.handle(request)
                print(f"{response.status}  {function.name} (synchronous)")
                sys.stdout.write(response.body.decode("utf-8", "replace"))
                if response.body and not response.body.endswith(b"\n"):
                    sys.stdout.write("\n")
                return EXIT_OK if response.status < 500 else 1
            invocation = app.enqueue(function.name, request)
            record = invocation.wait()
        finally:
            app.shutdown()
        _print_timeline(record)
    return EXIT_OK if record.state.value == "succeeded" else 1


@contextlib.contextmanager
def _logs_after_the_output() -> Iterator[None]:
    """Hold what is logged while the invocation runs (a failed attempt's traceback, the
    handler's own lines), then print it on stderr in the library's format, with request ids,
    once the timeline is out."""
    import logging
    from logging.handlers import MemoryHandler

    from bgfunctions.logs import InvocationFilter, LineFormatter

    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(LineFormatter())
    held = MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1, target=out)
    held.addFilter(InvocationFilter())  # now, while the attempt's request id is known
    root = logging.getLogger()
    root.addHandler(held)
    try:
        yield
    finally:
        root.removeHandler(held)
        sys.stdout.flush()
        held.close()  # flushes to stderr


def _print_timeline(record: InvocationRecord, clock: str = "virtual time") -> None:
    from bgfunctions._timeline import timeline_lines

    for line in timeline_lines(record, clock):
        print(line)


# -- journal: invocations, replay ------------------------------------------------------------------


def _journal_path(value: str | None, site: Path) -> Path | None:
    """The journal file ``--journal`` names: None for ``memory``; the site's file by default."""
    from bgfunctions.devserver import JOURNAL_FILE

    if value is None:
        return site / JOURNAL_FILE
    if value == "memory":
        return None
    return Path(value)


def _add_journal_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal",
        default=None,
        metavar="PATH",
        help="the journal file (default SITE_DIR/.bgfunctions/journal.sqlite3)",
    )


@contextlib.contextmanager
def _existing_journal(
    value: str | None, site: Path, *, read_only: bool = False
) -> Iterator[Journal]:
    from bgfunctions.devserver import open_sqlite_journal
    from bgfunctions.journals.sqlite import SQLiteJournal

    path = _journal_path(value, site)
    if path is None:
        raise _CommandError("--journal memory: an in-memory journal has nothing to read")
    if not path.is_file():
        raise _CommandError(
            f"no journal at {path}: `bgfunctions serve {site}` records invocations there"
        )
    # Read-only: listing works on a file this user cannot write, and writes nothing to it.
    journal = SQLiteJournal(path, read_only=True) if read_only else open_sqlite_journal(path)
    try:
        yield journal
    finally:
        journal.close()


def _add_invocations(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "invocations",
        help="list the invocations recorded in a site's journal, newest first",
        description=(
            "Read SITE_DIR/.bgfunctions/journal.sqlite3 (what `bgfunctions serve` records) and "
            "show each invocation: request id, function, state, attempts, when it was accepted "
            "(UTC), when it runs next (a delay, a sleep, a retry) and its priority when any has "
            "one, and its last error. Secret headers are redacted in --json; bodies are omitted."
        ),
    )
    parser.add_argument("site_dir", nargs="?", default=".", metavar="SITE_DIR", help=_SITE_HELP)
    parser.add_argument("--function", default=None, metavar="NAME", help="only this function")
    parser.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in State],
        default=None,
        help="only invocations in this state (repeatable)",
    )
    parser.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N (default 50)"
    )
    parser.add_argument(
        "--request",
        default=None,
        metavar="REQUEST_ID",
        help="show this one invocation's timeline: its attempts, and the steps each ran or "
        "took back from the journal",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    _add_journal_option(parser)
    parser.set_defaults(run=_cmd_invocations)


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a whole number above 0; got {text!r}")
    return int(text)


def _cmd_invocations(args: argparse.Namespace) -> int:
    from bgfunctions.views import iso_utc, record_to_view

    site = Path(args.site_dir)
    states = None if args.state is None else [State(s) for s in args.state]
    if args.request is not None:
        with _existing_journal(args.journal, site, read_only=True) as journal:
            record = journal.get(args.request)
        if record is None:
            raise _CommandError(f"no invocation {args.request!r} in the journal of {site}")
        if args.json:
            json.dump(record_to_view(record), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _print_timeline(record, f"accepted {iso_utc(record.accepted_at)}")
        return EXIT_OK
    with _existing_journal(args.journal, site, read_only=True) as journal:
        records = journal.select(function=args.function, state=states, limit=args.limit)
    if args.json:
        json.dump([record_to_view(r) for r in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    if not records:
        print("no invocations")
        return EXIT_OK
    # Columns for steps, waits (a delay, a sleep, a retry), priorities and replays only when a
    # listed invocation has one: the usual table stays narrow.
    replays = any(record.replay_of for record in records)
    # A STEPS column (durable steps committed) only when a listed invocation has steps.
    steps = any(record.steps for record in records)
    waits = any(r.state.waiting and r.next_run_at != r.accepted_at for r in records)
    priorities = any(record.priority for record in records)
    head = ["REQUEST ID", "FUNCTION", "STATE", "ATTEMPTS"]
    head += ["STEPS", "ACCEPTED AT (UTC)"] if steps else ["ACCEPTED AT (UTC)"]
    head += ["NEXT RUN (UTC)"] * waits + ["PRIORITY"] * priorities + ["REPLAY OF"] * replays
    rows = [[*head, "LAST ERROR"]]
    for record in records:
        row = [
            record.request_id,
            record.function,
            record.state.value,
            str(record.attempt_count),
            *([str(len(record.steps))] if steps else []),
            iso_utc(record.accepted_at) or "",
        ]
        if waits:
            due = record.next_run_at if record.state.waiting else None
            row.append(iso_utc(due) or "-")
        if priorities:
            row.append(f"{record.priority:+d}" if record.priority else "0")
        if replays:
            row.append(record.replay_of or "-")
        rows.append([*row, _last_error(record)])
    columns = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return EXIT_OK


def _last_error(record: InvocationRecord, width: int = 80) -> str:
    for attempt in reversed(record.attempts):
        if attempt.error_type:
            text = f"{attempt.error_type}: {attempt.error_message or ''}"
            # One line per invocation, however long or multi-line the message.
            text = " ".join(text.split())
            return text if len(text) <= width else text[: width - 3] + "..."
    return ""


def _add_replay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay",
        help="run a finished invocation again, as a new invocation in the site's journal",
        description=(
            "Add to the site's journal a new invocation with the request of the finished "
            "invocation REQUEST_ID (same function, method, URL, headers and body), a new "
            "request id, and replay_of set. A running `bgfunctions serve` runs it. Prints the "
            "new request id."
        ),
    )
    parser.add_argument("request_id", metavar="REQUEST_ID")
    parser.add_argument("--site", default=".", metavar="SITE_DIR", help="default: .")
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="then wait up to SECONDS for a running server to finish the replay, and print its "
        "timeline (exit status 0 if it succeeded, 1 otherwise)",
    )
    _add_journal_option(parser)
    parser.set_defaults(run=_cmd_replay)


def _cmd_replay(args: argparse.Namespace) -> int:
    from bgfunctions.clock import SystemClock
    from bgfunctions.ids import new_request_id
    from bgfunctions.views import iso_utc

    site = Path(args.site)
    with _existing_journal(args.journal, site) as journal:
        old = journal.get(args.request_id)
        if old is None:
            raise _CommandError(f"no invocation {args.request_id!r} in the journal of {site}")
        if not old.state.finished:
            raise _CommandError(
                f"invocation {old.request_id} ({old.function}) is {old.state.value}: expected a "
                "finished one (succeeded, failed, cancelled or rejected)"
            )
        clock = SystemClock()
        now = clock.now()
        new = InvocationRecord(
            request_id=new_request_id(clock),
            function=old.function,
            method=old.method,
            url=old.url,
            headers=old.headers,
            body=old.body,
            client=old.client,
            params=old.params,
            accepted_at=now,
            next_run_at=now,
            replay_of=old.request_id,
        )
        journal.accepted(new)
        print(new.request_id, flush=True)
        if args.wait is None:
            return EXIT_OK
        done = _wait_until_finished(journal, new.request_id, args.wait)
    if not done.state.finished:
        raise _CommandError(
            f"replay {done.request_id} is still {done.state.value} after {args.wait:g} s: is "
            f"`bgfunctions serve {site}` running? `bgfunctions invocations {site} --request "
            f"{done.request_id}` shows it later"
        )
    _print_timeline(done, f"accepted {iso_utc(done.accepted_at)}")
    return EXIT_OK if done.state is State.SUCCEEDED else 1


def _wait_until_finished(journal: Journal, request_id: str, seconds: float) -> InvocationRecord:
    """The journal's record of ``request_id`` once it is finished, or after ``seconds``."""
    from bgfunctions.clock import SystemClock

    clock = SystemClock()
    deadline = clock.monotonic() + seconds
    while True:
        record = journal.get(request_id)
        assert record is not None  # this command wrote it, and nothing deletes a live one
        if record.state.finished or clock.monotonic() >= deadline:
            return record
        clock.sleep(min(0.1, max(0.0, deadline - clock.monotonic())))


# -- worker ----------------------------------------------------------------------------------------


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "worker",
        help="run background attempts from a Celery broker (needs bgfunctions[celery])",
        description=(
            "Run a Celery prefork worker that runs the background attempts a web tier with a "
            "CeleryExecutor publishes: it loads SITE_DIR's functions, reads and writes the "
            "shared journal, and publishes retries after the retry delays."
        ),
    )
    parser.add_argument("site_dir", metavar="SITE_DIR")
    parser.add_argument(
        "--broker", required=True, metavar="URL", help="amqp://... (RabbitMQ) or redis://..."
    )
    parser.add_argument(
        "--journal",
        required=True,
        metavar="PATH|DSN",
        help="the shared journal: a postgresql:// DSN, or a SQLite file on this machine",
    )
    parser.add_argument("--queue", default="bgfunctions", help="default bgfunctions")
    parser.add_argument(
        "--concurrency", type=int, default=None, metavar="N", help="child processes (default: CPUs)"
    )
    _add_schedule_options(parser)
    parser.add_argument(
        "--lease",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long a dead worker's attempt stays claimed before it is retried "
        "(default: the journal's, 10)",
    )
    parser.add_argument(
        "-n",
        "--name",
        default=None,
        metavar="NAME@HOST",
        help="the Celery node name; %%h, %%n, %%d expand as in Celery's -n "
        "(default: bgfunctions-<pid>@<host>, unique per worker on a host)",
    )
    parser.add_argument("--loglevel", default="INFO", help="Celery's log level (default INFO)")
    parser.set_defaults(run=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    try:
        from bgfunctions.executors import celery as bgcelery
    except ImportError as exc:
        raise _CommandError(str(exc)) from None
    from bgfunctions.retry import Limits, RetryPolicy

    site = Path(args.site_dir)
    _load_site(site)  # a broken site is one clear line before the worker starts
    if args.background_timeout <= 0:
        raise ConfigError(f"--background-timeout must be above 0; got {args.background_timeout}")
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency must be 1 or more; got {args.concurrency}")
    if args.lease is not None and args.lease <= 0:
        raise ConfigError(f"--lease must be above 0; got {args.lease}")
    try:
        bgcelery.worker_name(args.name)
    except ValueError as exc:
        raise ConfigError(f"--name: {exc}") from None
    app = bgcelery.make_celery(
        broker=args.broker,
        journal=bgcelery.journal_factory(args.journal, lease=args.lease),
        site=site,
        limits=Limits(background_timeout=args.background_timeout),
        retry=RetryPolicy(delays=args.retry_delays),
        queue=args.queue,
    )
    bgcelery.run_worker(app, concurrency=args.concurrency, loglevel=args.loglevel, name=args.name)
    return EXIT_OK
