"""The package's long description: README.md with its relative links resolved.

README.md links to ``docs/...`` and ``examples/site`` by their paths in the repository. Those
links work on a forge and in a clone, but break on a package index page, which has no files
beside it. Hatchling runs this metadata hook (``[tool.hatch.metadata.hooks.custom]`` in
pyproject.toml) when it builds a wheel or an sdist, and rewrites each relative link:

- against the repository that ``[project.urls]`` names (the first of ``Repository``,
  ``Source``, ``Source Code``, ``Code``): ``docs/serving.md`` becomes
  ``REPOSITORY/blob/HEAD/docs/serving.md``, a folder ``REPOSITORY/tree/HEAD/examples/site``;
- when no such URL is declared, to plain text that names the path (the sdist holds the files),
  rather than to a URL this file would have to invent.

Links inside fenced code blocks, absolute URLs and ``#anchors`` are left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    from hatchling.metadata.plugin.interface import (  # type: ignore[import-not-found,unused-ignore]
        MetadataHookInterface,
    )
except ImportError:  # the test suite imports resolve_links() without hatchling installed
    MetadataHookInterface = object  # type: ignore[assignment,misc,unused-ignore]

REPOSITORY_KEYS = ("repository", "source", "source code", "code")
"""``[project.urls]`` labels that name the repository, in order of preference (any case)."""

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)")
_ABSOLUTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|/|#)")


def repository_url(urls: Mapping[str, str] | None) -> str | None:
    """The repository's address from ``[project.urls]``, or None when it names none."""
    by_label = {label.strip().lower(): url for label, url in (urls or {}).items()}
    for key in REPOSITORY_KEYS:
        if by_label.get(key):
            return by_label[key].rstrip("/")
    return None


def resolve_links(markdown: str, repository: str | None, root: Path) -> str:
    """``markdown`` with every relative link made absolute against ``repository`` (or, when
    it is None, turned into text naming the path). ``root`` tells folders from files."""

    def resolve(match: re.Match[str]) -> str:
        text, target = match.group("text"), match.group("target")
        if _ABSOLUTE.match(target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if repository is None:
            if text.strip("`") == path:
                return f"`{path}`"
            return f"{text} (`{path}`)"
        kind = "tree" if (root / path).is_dir() else "blob"
        fragment = f"#{anchor}" if anchor else ""
        return f"[{text}]({repository}/{kind}/HEAD/{path.removeprefix('./')}{fragment})"

    pieces: list[str] = []
    end = 0
    for fence in _FENCE.finditer(markdown):
        pieces.append(_LINK.sub(resolve, markdown[end : fence.start()]))
        pieces.append(fence.group(0))
        end = fence.end()
    pieces.append(_LINK.sub(resolve, markdown[end:]))
    return "".join(pieces)


class LongDescriptionHook(MetadataHookInterface):  # type: ignore[misc,unused-ignore]
    """Sets ``readme`` to README.md with its relative links resolved (see the module)."""

    PLUGIN_NAME = "custom"

    def update(self, metadata: dict[str, Any]) -> None:
        root = Path(self.root)
        readme = (root / "README.md").read_text(encoding="utf-8")
        metadata["readme"] = {
            "content-type": "text/markdown",
            "text": resolve_links(readme, repository_url(metadata.get("urls")), root),
        }
