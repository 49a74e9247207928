"""The import graph keeps the layering of bgfunctions/__init__.py and the module rules of
DESIGN.md: only clock.py touches time, only the journal modules SQLite, only the loader and the
registry list the functions directory. Read with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import bgfunctions

PACKAGE = Path(bgfunctions.__file__).resolve().parent


@dataclass(frozen=True)
class Module:
    name: str
    """Dotted name inside the package: ``clock``, ``contrib.celery``; ``contrib`` for its
    ``__init__``."""
    path: Path
    tree: ast.Module


def _modules() -> list[Module]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts:
            continue  # the package's own __init__ re-exports everything: it is above all layers
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found.append(Module(".".join(parts), path, tree))
    return found


MODULES = _modules()
BY_NAME = {m.name: m for m in MODULES}


def _layers() -> dict[str, int]:
    """``{"clock": 1, "contrib.*": 5, ...}`` from the ``L<n>`` lines of the package docstring."""
    doc = bgfunctions.__doc__ or ""
    layers: dict[str, int] = {}
    level: int | None = None
    for line in doc.splitlines():
        head = re.match(r"\s*L(\d)\s+(.*)", line)
        if head:
            level, rest = int(head.group(1)), head.group(2)
        elif level is not None and line.startswith("        ") and line.strip():
            rest = line  # a continuation of the previous layer
        else:
            level = None
            continue
        rest = re.sub(r"\(.*?\)", "", rest)  # remarks like "(* ids reads time ...)"
        for raw in rest.split(","):
            entry = raw.strip()
            if not entry.endswith(".*"):
                entry = entry.rstrip("*")  # "ids*" points at a remark
            if entry:
                layers[entry] = level
    return layers


LAYERS = _layers()
# ids is drawn in L0 but makes ids from a Clock's time: the docstring's asterisk.
ALLOWED_UPWARD = {("ids", "clock")}


def _layer_of(name: str) -> int | None:
    if name in LAYERS:
        return LAYERS[name]
    for pattern, level in LAYERS.items():
        if pattern.endswith(".*") and (name == pattern[:-2] or name.startswith(pattern[:-1])):
            return level
    return None


def _imports(module: Module) -> set[str]:
    """The bgfunctions modules ``module`` imports (anywhere, lazily too), as dotted names."""
    package = (
        module.name.split(".")[:-1]
        if module.path.name != "__init__.py"
        else (module.name.split("."))
    )
    names: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bgfunctions."):
                    names.add(alias.name.removeprefix("bgfunctions."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            elif node.module == "bgfunctions":
                target = ""
            elif node.module is not None and node.module.startswith("bgfunctions."):
                target = node.module.removeprefix("bgfunctions.")
            else:
                continue
            if target:
                names.add(target)
            else:  # ``from bgfunctions import clock`` names modules
                names.update(a.name for a in node.names if a.name in BY_NAME)
                if any(a.name not in BY_NAME for a in node.names):
                    names.add("__init__")
    return names


def _top_names(module: Module) -> set[str]:
    """Every top-level module name ``module`` imports (``time``, ``sqlite3``, ``os``...)."""
    names: set[str] = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def _attribute_calls(module: Module) -> list[tuple[str, str, int]]:
    """(receiver source, attribute, line) of every ``x.attr(...)`` call."""
    calls = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            calls.append((ast.unparse(node.func.value), node.func.attr, node.lineno))
    return calls


def test_layers_are_drawn() -> None:
    """The docstring draws six layers, with the core modules where DESIGN.md puts them."""
    assert set(LAYERS.values()) == {0, 1, 2, 3, 4, 5}
    assert (LAYERS["errors"], LAYERS["clock"], LAYERS["journals.*"]) == (0, 1, 2)
    assert (LAYERS["executors.*"], LAYERS["app"], LAYERS["testing"]) == (3, 4, 5)


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_module_has_a_layer(module: Module) -> None:
    """Every module of the package is placed in a layer of the docstring."""
    assert _layer_of(module.name) is not None, (
        f"{module.path.name}: module {module.name!r} is in no layer of bgfunctions/__init__.py's "
        f"docstring; add it to one of {sorted(LAYERS)}"
    )


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_lower_never_imports_higher(module: Module) -> None:
    """A module imports only modules of its own layer or lower, never the package itself."""
    own = _layer_of(module.name)
    if own is None:
        pytest.skip(f"{module.name} has no layer (test_module_has_a_layer fails)")
    wrong = []
    for target in sorted(_imports(module)):
        if target == "__init__":
            wrong.append("bgfunctions (the re-exporting package; import the module instead)")
            continue
        level = _layer_of(target)
        if (module.name, target) in ALLOWED_UPWARD or level is None:
            continue
        if level > own:
            wrong.append(f"{target} (L{level})")
    assert not wrong, f"{module.path.name} (L{own}) imports higher layers: {', '.join(wrong)}"


def test_import_reader_sees_imports() -> None:
    """The import reader finds known edges (so the layering test can fail)."""
    assert "executors.base" in _imports(BY_NAME["app"])
    assert "clock" in _imports(BY_NAME["executors.inline"])
    assert {"time", "asyncio"} <= _top_names(BY_NAME["clock"])


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_only_clock_reads_time(module: Module) -> None:
    """Only clock.py imports ``time`` or calls ``datetime.now``/``utcnow``/``today``."""
    if module.name == "clock":
        return
    assert "time" not in _top_names(module), f"{module.path.name} imports time"
    reads = [
        f"line {line}: {receiver}.{attr}()"
        for receiver, attr, line in _attribute_calls(module)
        if attr in {"now", "utcnow", "today"} and receiver.split(".")[-1] in {"datetime", "date"}
    ]
    assert not reads, f"{module.path.name} reads the time itself: {reads}"


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_only_journal_uses_sqlite(module: Module) -> None:
    """Only the journals import sqlite3."""
    if not module.name.startswith("journals."):
        assert "sqlite3" not in _top_names(module), f"{module.path.name} imports sqlite3"


LISTING = {"iterdir", "listdir", "scandir", "glob", "rglob", "walk"}


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_only_loader_and_registry_list_directories(module: Module) -> None:
    """Only _loader.py and registry.py list directories (iterdir, listdir, scandir, glob...)."""
    if module.name in {"_loader", "registry"}:
        return
    listed = [
        f"line {line}: {receiver}.{attr}()"
        for receiver, attr, line in _attribute_calls(module)
        if attr in LISTING
    ]
    assert not listed, f"{module.path.name} lists a directory: {listed}"
