"""Read ``netlify.toml``: where the functions are, and the ``[functions]`` configuration blocks.

``[functions]`` keys are glob patterns matched against function names (as Netlify's bundler does
with minimatch). A top-level key that is a known function property, such as ``[functions]
node_bundler = "esbuild"``, is the ``"*"`` block. Netlify's config validator rejects a top-level
``background`` key; we read it as ``"*"`` too, with a warning.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgfunctions.config import Config
from bgfunctions.errors import ConfigError, TomlError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["FunctionBlock", "NetlifyToml", "pattern_weight"]

# The function properties Netlify accepts directly under [functions] (for every function).
_TOP_LEVEL_PROPERTIES = frozenset(
    {
        "external_node_modules",
        "included_files",
        "ignored_node_modules",
        "node_bundler",
        "node_version",
        "schedule",
        "background",
    }
)
_DIRECTORY_KEYS = frozenset({"directory"})


def pattern_weight(pattern: str) -> int:
    """Netlify's specificity: length, minus one per ``*``, minus one more if there is any."""
    stars = pattern.count("*")
    return len(pattern) - stars - (1 if stars else 0)


MAX_BRACE_EXPANSION = 1024
"""The most globs that a key's ``{a,b}`` alternatives may expand to; more is a ConfigError."""


class _TooMany(Exception):
    pass


def _expand_braces(pattern: str) -> list[str]:
    """minimatch's ``{a,b}`` alternatives, which ``fnmatch`` lacks.

    Expansion multiplies (``{a,b}`` written n times is 2**n globs), so it stops, raising
    ``_TooMany``, past :data:`MAX_BRACE_EXPANSION`: the work is bounded by that limit times
    the key's length, not exponential in it.
    """
    out: list[str] = []
    pending = [pattern]
    while pending:
        current = pending.pop()
        match = re.search(r"\{([^{}]*)\}", current)
        if match is None:
            out.append(current)
            if len(out) > MAX_BRACE_EXPANSION:
                raise _TooMany
            continue
        head, tail = current[: match.start()], current[match.end() :]
        pending.extend(head + alt + tail for alt in reversed(match.group(1).split(",")))
        if len(out) + len(pending) > MAX_BRACE_EXPANSION:
            raise _TooMany  # every pending glob yields at least one
    return out


@dataclass(frozen=True, slots=True)
class FunctionBlock:
    """One ``[functions."PATTERN"]`` block."""

    pattern: str
    config: Config
    warnings: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    """``pattern`` with its braces expanded (once, when the block is read)."""

    def matches(self, name: str) -> bool:
        globs = self.globs or (self.pattern,)
        return any(fnmatch.fnmatchcase(name, p) for p in globs)


@dataclass(frozen=True, slots=True)
class NetlifyToml:
    """What bgfunctions reads from a site's ``netlify.toml``."""

    path: Path | None = None
    """The file, or None when the site has none."""
    functions_directory: Path | None = None
    """``[functions] directory`` (or legacy ``[build] functions``), resolved against the site."""
    publish_directory: Path | None = None
    """``[build] publish``, resolved against the site."""
    blocks: tuple[FunctionBlock, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def load(cls, path: Path) -> NetlifyToml:
        """Parse ``path``; a syntax error says file, line and column."""
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TomlError(f"{path}: not UTF-8 text ({exc})") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TomlError(f"{path}: invalid TOML: {exc}") from exc
        return cls.from_mapping(data, path=path, base=path.parent)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, path: Path | None = None, base: Path | None = None
    ) -> NetlifyToml:
        """Interpret an already-parsed netlify.toml (``base`` resolves relative directories)."""
        where = str(path) if path is not None else "netlify.toml"
        base = base if base is not None else Path()
        warnings: list[str] = []
        build = _table(data, "build", where)
        functions = _table(data, "functions", where)

        functions_dir: Path | None = None
        if "directory" in functions:
            functions_dir = base / _string(functions["directory"], f"{where} [functions] directory")
        elif "functions" in build:
            functions_dir = base / _string(build["functions"], f"{where} [build] functions")
        publish_dir = None
        if "publish" in build:
            publish_dir = base / _string(build["publish"], f"{where} [build] publish")

        star: dict[str, Any] = {}
        blocks: list[FunctionBlock] = []
        for key, value in functions.items():
            if key in _DIRECTORY_KEYS:
                continue
            if isinstance(value, Mapping):
                blocks.append(_block(key, value, where))
            elif key in _TOP_LEVEL_PROPERTIES:
                if key == "background":
                    warnings.append(
                        f"{where}: [functions] background applies to every function here, but "
                        f'Netlify rejects it; write [functions."*"] background = true instead'
                    )
                star[key] = value
            else:
                raise ConfigError(
                    f"{where}: [functions] {key} must be a table of function settings "
                    f"(a glob such as [functions.{key}]) or one of "
                    f"{', '.join(sorted(_TOP_LEVEL_PROPERTIES | _DIRECTORY_KEYS))}; "
                    f"got {value!r}"
                )
        if star:
            blocks.insert(0, _block("*", star, where))
        return cls(
            path=path,
            functions_directory=functions_dir,
            publish_directory=publish_dir,
            blocks=tuple(blocks),
            warnings=tuple(warnings),
        )

    def config_for(self, name: str) -> tuple[Config | None, tuple[str, ...]]:
        """The merged config of every block matching ``name``, least specific first."""
        matching = [b for b in self.blocks if b.matches(name)]
        if not matching:
            return None, ()
        # sorted() is stable: blocks of equal weight keep their order in the file.
        matching.sort(key=lambda b: pattern_weight(b.pattern))
        merged = matching[0].config
        for block in matching[1:]:
            merged = merged.merged(block.config)
        return merged, tuple(w for b in matching for w in b.warnings)


def _block(pattern: str, value: Mapping[str, Any], where: str) -> FunctionBlock:
    block_where = f'{where} [functions."{pattern}"]'
    config, warnings = Config.parse(value, where=block_where)
    try:
        globs = _expand_braces(pattern)
    except _TooMany:
        raise ConfigError(
            f"{block_where}: the {{a,b}} alternatives of this key expand to more than "
            f"{MAX_BRACE_EXPANSION} globs; expected at most {MAX_BRACE_EXPANSION} (use '*' "
            f"or fewer braces)"
        ) from None
    return FunctionBlock(pattern, config, warnings, tuple(globs))


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{key}] must be a table; got {value!r}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string; got {value!r}")
    return value
