"""Every ```python block in docs/*.md runs as written (and its test_* functions pass)."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _block(doc: str, containing: str) -> str:
    """The one python block of docs/DOC whose source contains ``containing``."""
    found = [s for n, s in BLOCKS if n.startswith(f"{doc}:") and containing in s]
    assert len(found) == 1, f"expected one block of docs/{doc} with {containing!r}; got {found}"
    return found[0]


def test_fastapi_example_greets_by_the_query_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/serving.md's FastAPI example answers `?name=ada` with ada, and world without it."""
    import asyncio

    import httpx

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"docs_fastapi_{os.getpid()}"}
    exec(compile(_block("serving.md", "FastAPI("), "serving.md", "exec"), namespace)
    api = namespace["api"]
    url = "/fn/.netlify/functions/hello"

    async def get_both() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=api)
        async with (
            api.router.lifespan_context(api),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            return await client.get(url, params={"name": "ada"}), await client.get(url)

    named, anonymous = asyncio.run(get_both())
    assert (named.status_code, named.json()) == (200, {"hello": "ada"})
    assert (anonymous.status_code, anonymous.json()) == (200, {"hello": "world"})
