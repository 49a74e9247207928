"""Every ```python block in docs/*.md runs as written (and its test_* functions pass)."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _blocks() -> Iterator[tuple[str, str]]:
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield f"{path.name}:{line}", match.group(1)


BLOCKS = list(_blocks())


def test_docs_have_examples() -> None:
    """The docs directory holds python examples (so the parametrized test is not empty)."""
    assert any(name.startswith("testing.md:") for name, _ in BLOCKS)


@pytest.mark.parametrize("source", [s for _, s in BLOCKS], ids=[n for n, _ in BLOCKS])
def test_doc_example_runs(
    source: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example runs in a fresh namespace in an empty directory; test_* functions it defines
    run too, with the pytest fixtures their parameters name."""
    monkeypatch.chdir(tmp_path)
    name = request.node.callspec.id
    namespace: dict[str, object] = {"__name__": f"docs_example_{os.getpid()}"}
    exec(compile(source, name, "exec"), namespace)
    for key, value in list(namespace.items()):
        if key.startswith("test_") and inspect.isfunction(value):
            fixtures = inspect.signature(value).parameters
            value(**{p: request.getfixturevalue(p) for p in fixtures})
