"""The `bgfunctions` command line: `bgfunctions list [SITE_DIR] [--json]`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bgfunctions
from bgfunctions.cli import main

EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "examples" / "site"
HANDLER = "def handler(request, context):\n    return 'ok'\n"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def table_rows(out: str) -> dict[str, str]:
    """The table's lines by the function name that starts them."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME "))
    rows: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows[line.split()[0]] = line
    return rows


# -- list ---------------------------------------------------------------------------------------


def test_list_shows_each_function_with_background_reason_routes_and_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The table has one row per function: name, background and why, routes, file."""
    status, out, err = run(capsys, "list", str(EXAMPLE_SITE))
    assert status == 0
    assert err == ""
    rows = table_rows(out)
    assert sorted(rows) == [
        "hello",
        "process",
        "products",
        "report-daily",
        "send-email-background",
    ]
    assert rows["hello"].split() == [
        "hello",
        "no",
        "/.netlify/functions/hello",
        "netlify/functions/hello.py",
    ]
    assert "yes (config)" in rows["process"]
    assert "/process " in rows["process"]
    assert "/products/:id [GET]" in rows["products"]
    assert "netlify/functions/products/products.py" in rows["products"]
    assert "(Daily report)" in rows["report-daily"]
    assert "yes (netlify.toml)" in rows["report-daily"]
    assert "yes (suffix)" in rows["send-email-background"]
    assert "warnings" not in out


def test_list_columns_line_up(capsys: pytest.CaptureFixture[str]) -> None:
    """Every column starts at the same offset on every row."""
    _, out, _ = run(capsys, "list", str(EXAMPLE_SITE))
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("NAME "))
    offsets = [header.index(column) for column in ("BACKGROUND", "ROUTES", "FILE")]
    for line in table_rows(out).values():
        for offset in offsets:
            assert line[offset - 2 : offset] == "  "
            assert line[offset] != " "


def test_list_json_describes_every_function(capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints a list with each function's name, background, routes, config, ..."""
    status, out, _ = run(capsys, "list", str(EXAMPLE_SITE), "--json")
    assert status == 0
    functions = {entry["name"]: entry for entry in json.loads(out)}
    assert functions["products"] == {
        "name": "products",
        "display_name": "products",
        "background": False,
        "background_reasons": [],
        "routes": ["/products/:id"],
        "methods": ["GET"],
        "file": "netlify/functions/products/products.py",
        "valid_name": True,
        "warnings": [],
        "config": {"path": ["/products/:id"], "method": ["GET"]},
    }
    assert functions["report-daily"]["display_name"] == "Daily report"
    assert functions["report-daily"]["background_reasons"] == ["netlify.toml"]
    assert functions["send-email-background"]["background_reasons"] == ["suffix"]
    assert functions["process"]["background_reasons"] == ["config"]
    assert functions["hello"]["methods"] is None


def test_list_defaults_to_the_current_directory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SITE_DIR, `list` reads the current directory."""
    monkeypatch.chdir(EXAMPLE_SITE)
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert "send-email-background" in table_rows(out)


def test_list_prints_warnings_below_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Discovery warnings (shadowed file, invalid name, suffix + False) follow the table."""
    functions = "netlify/functions"
    write(tmp_path, f"{functions}/hello.py", HANDLER)
    write(tmp_path, f"{functions}/hello/index.py", HANDLER)
    write(tmp_path, f"{functions}/bad name.py", HANDLER)
    write(tmp_path, f"{functions}/job-background.py", HANDLER + "config = {'background': False}\n")
    status, out, _ = run(capsys, "list", str(tmp_path))
    assert status == 0
    table, _, warnings = out.partition("\nwarnings (3):\n")
    assert "bad" in table
    assert "(invalid name: answers 400)" in table
    assert "the directory wins" in warnings
    assert "alphanumeric characters, hyphen & underscores" in warnings
    assert "background=False" in warnings
    assert all(line.startswith("  - ") for line in warnings.splitlines())


def test_list_json_of_an_invalid_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An invalid name is listed with valid_name false and its warning."""
    write(tmp_path, "netlify/functions/bad name.py", HANDLER)
    _, out, _ = run(capsys, "list", str(tmp_path), "--json")
    (entry,) = json.loads(out)
    assert entry["name"] == "bad name"
    assert entry["valid_name"] is False
    assert entry["file"] == "netlify/functions/bad name.py"
    assert "alphanumeric" in entry["warnings"][0]


def test_list_strict_makes_an_invalid_name_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`--strict` turns the invalid-name warning into an error: exit 2, one line."""
    write(tmp_path, "netlify/functions/bad name.py", HANDLER)
    status, _, err = run(capsys, "list", str(tmp_path), "--strict")
    assert status == 2
    assert_one_error_line(err, "alphanumeric characters, hyphen & underscores", "'bad name'")


def test_list_of_a_site_without_functions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An empty functions directory lists zero functions, no table."""
    (tmp_path / "netlify" / "functions").mkdir(parents=True)
    status, out, _ = run(capsys, "list", str(tmp_path))
    assert status == 0
    assert out.startswith("0 functions in ")
    assert "NAME" not in out
    assert run(capsys, "list", str(tmp_path), "--json")[1] == "[]\n"


# -- errors -------------------------------------------------------------------------------------


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bgfunctions: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_site_directory_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A site directory that does not exist: exit 2, one line naming it."""
    missing = tmp_path / "nowhere"
    status, out, err = run(capsys, "list", str(missing))
    assert status == 2
    assert out == ""
    assert_one_error_line(err, str(missing), "does not exist")


def test_site_that_is_a_file_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A SITE_DIR that is a file: exit 2, one line."""
    path = write(tmp_path, "file.txt", "")
    status, _, err = run(capsys, "list", str(path))
    assert status == 2
    assert_one_error_line(err, "is not a directory")


def test_site_without_functions_directory_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A site whose functions directory is missing: exit 2, one line naming it."""
    status, _, err = run(capsys, "list", str(tmp_path))
    assert status == 2
    assert_one_error_line(err, str(tmp_path / "netlify" / "functions"))


def test_broken_module_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A module that raises on import: exit 2, one line naming its file and line."""
    path = write(tmp_path, "netlify/functions/boom.py", "x = 1\nraise ValueError('bad\\nthing')\n")
    status, _, err = run(capsys, "list", str(tmp_path))
    assert status == 2
    assert_one_error_line(err, f"{path}, line 2", "ValueError", "bad thing")


def test_module_without_handler_is_one_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A module without a handler: exit 2, one line listing what it defines."""
    write(tmp_path, "netlify/functions/hello.py", "def handle(request, context):\n    pass\n")
    status, _, err = run(capsys, "list", str(tmp_path))
    assert status == 2
    assert_one_error_line(err, "has no 'handler'", "handle")


def test_bad_toml_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Invalid netlify.toml: exit 2, one line with file, line and column."""
    write(tmp_path, "netlify.toml", "[build]\npublish = \n")
    status, _, err = run(capsys, "list", str(tmp_path))
    assert status == 2
    assert_one_error_line(err, "netlify.toml", "line 2, column")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, argparse's usage error and exit 2."""
    status, _, err = run(capsys)
    assert status == 2
    assert "usage: bgfunctions" in err
    assert "required" in err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option exits 2 with usage."""
    status, _, err = run(capsys, "list", "--nope")
    assert status == 2
    assert "unrecognized arguments: --nope" in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """`list --help` prints the command's help and returns 0."""
    status, out, _ = run(capsys, "list", "--help")
    assert status == 0
    assert "SITE_DIR" in out
    assert "--json" in out


# -- python -m bgfunctions ----------------------------------------------------------------------


def test_python_dash_m_lists_the_example_site() -> None:
    """`python -m bgfunctions list examples/site` works as a program."""
    result = subprocess.run(
        [sys.executable, "-m", "bgfunctions", "list", "examples/site"],
        cwd=EXAMPLE_SITE.parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert sorted(table_rows(result.stdout)) == [
        "hello",
        "process",
        "products",
        "report-daily",
        "send-email-background",
    ]


def test_python_dash_m_reports_errors_with_status_2(tmp_path: Path) -> None:
    """As a program, an error is one stderr line and exit status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "bgfunctions", "list", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "does not exist")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`bgfunctions --version` prints "bgfunctions X.Y.Z" and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"bgfunctions {bgfunctions.__version__}\n"


@pytest.mark.parametrize("command", ["list", "serve", "invocations"])
def test_help_describes_site_dir_and_its_default(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """serve, invocations (and list) --help say what SITE_DIR is and its default."""
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "SITE_DIR the site's directory, holding netlify.toml (default: the current directory)"
        in (text)
    )
