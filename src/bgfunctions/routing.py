"""The router: which function serves ``METHOD /path``, with which params, or why none does.

Every pattern is compiled once, when the :class:`Router` is built; literal paths go in a dict.
Patterns are matched in time linear in the path's length (see ``_pathmatch``), and paths longer
than :data:`MAX_PATH_LENGTH` are refused before any pattern is tried.
The rules, and the order they are applied in, are those of :meth:`Router.match`; the user's view
is docs/routing.md.

Paths are matched *as given*: the adapters hand the router a percent-decoded path, and the
patterns' fixed text is compared with it as written (URLPattern would percent-encode both).
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from bgfunctions._urlpattern import CompiledPattern, compile_pathname, is_literal_path
from bgfunctions.errors import DuplicateFunctionError, PatternError

__all__ = [
    "DEFAULT_PREFIX",
    "FUNCTION_NOT_FOUND",
    "INVALID_NAME",
    "LEGACY_PREFIX",
    "MAX_PATH_LENGTH",
    "Match",
    "NoMatch",
    "RouteSpec",
    "Router",
    "resolve_dot_segments",
]

DEFAULT_PREFIX = "/.netlify/functions"
"""Every function without custom paths is served at ``DEFAULT_PREFIX/NAME``."""
LEGACY_PREFIX = "/.netlify/builders"
"""The legacy default prefix (Netlify's on-demand builders); served like ``DEFAULT_PREFIX``."""
FUNCTION_NOT_FOUND = "Function not found..."
"""Netlify CLI's 404 body for an unknown name under the default prefix."""
INVALID_NAME = "Function name should consist only of alphanumeric characters, hyphen & underscores."
"""Netlify's 400 body for a function whose name breaks the naming rule."""

MAX_PATH_LENGTH = 8192
"""The longest path (in characters, after percent-decoding) that routing considers; a longer
one is ``path_too_long`` (414) without any pattern being tried."""

Reason = Literal[
    "no_route", "method_not_allowed", "invalid_name", "function_not_found", "path_too_long"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """One function's routing facts (the registry builds these from each function's Config)."""

    function: str
    """The function's name, as in its default URL ``/.netlify/functions/NAME``."""
    paths: tuple[str, ...] = ()
    """Custom paths (URLPattern pathname syntax). Empty: served at the default URL instead."""
    excluded_paths: tuple[str, ...] = ()
    """Paths (same syntax) that a custom path matches but the function must not serve."""
    methods: tuple[str, ...] = ()
    """HTTP methods the custom paths accept (any case). Empty: any method."""
    prefer_static: bool = False
    """When True, a static file at the request path wins over the function's custom paths."""
    valid_name: bool = True
    """False when the name breaks Netlify's rule; requests reaching it are answered 400."""


@dataclass(frozen=True, slots=True)
class Match:
    """The function that serves a request."""

    function: str
    """The function's name."""
    params: Mapping[str, str]
    """The matched pattern's groups (read-only); unnamed groups under ``"0"``, ``"1"``, ..."""
    route: str
    """The matched pattern as declared, or the default URL ``/.netlify/functions/NAME``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoMatch:
    """Why no function serves a request.

    - ``no_route`` (404): nothing matches, or the only candidates yield to a static file.
    - ``method_not_allowed`` (404 like Netlify, or 405 with ``Allow`` if the host opts in).
    - ``invalid_name`` (400): the function's name breaks Netlify's naming rule.
    - ``function_not_found`` (404, body ``Function not found...``): unknown name under the
      default prefix, whatever characters it holds.
    - ``path_too_long`` (414): the path is longer than :data:`MAX_PATH_LENGTH`.
    """

    reason: Reason
    """One of the five reasons above."""
    message: str
    """A sentence for the response body (400 and ``function_not_found``) or the log."""
    allowed: tuple[str, ...] = ()
    """For ``method_not_allowed``: the sorted methods the matching routes accept."""
    function: str | None = None
    """The function concerned, when there is one."""
    has_custom_paths: bool = False
    """True when ``function`` was requested at its default URL but has custom paths (the App
    logs ``message`` once per function and process)."""


@dataclass(frozen=True, slots=True)
class _Route:
    spec: RouteSpec
    compiled: CompiledPattern
    excluded: tuple[CompiledPattern, ...]
    methods: frozenset[str]


_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def resolve_dot_segments(path: str) -> str:
    """``path`` with its ``.`` and ``..`` segments resolved, as a browser and URLPattern do
    (RFC 3986, "remove dot segments"): ``/a/./b/../c`` is ``/a/c``; ``..`` never climbs
    above ``/``; a final ``.`` or ``..`` leaves a trailing ``/``."""
    if "/." not in path:
        return path
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    resolved = "/" + "/".join(kept)
    if segments[-1] in (".", "..") and not resolved.endswith("/"):
        resolved += "/"
    return resolved


def _unreachable(function: str, path: str) -> list[str]:
    """Warnings for a pattern that no (decoded, resolved) request path can match."""
    found = []
    if not is_literal_path(path) and _DOT_SEGMENT.search(path):
        found.append(
            f"function {function!r}: the path {path!r} has a '.' or '..' segment, which "
            f"request paths never have (they are resolved first); it never matches"
        )
    if _PERCENT_ESCAPE.search(path):
        found.append(
            f"function {function!r}: the path {path!r} has a %XX escape, but requests are "
            f"matched decoded; write the character itself (it matches only a literal '%')"
        )
    return found


def _strip_slash(path: str) -> str:
    """Remove one trailing ``/`` except from ``/`` itself."""
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


class Router:
    """Routes requests to functions by Netlify's rules; every pattern is compiled once here."""

    warnings: tuple[str, ...]
    """Problems that are not errors: identical paths, paths hidden by the default prefix."""

    def __init__(
        self,
        specs: Iterable[RouteSpec],
        *,
        prefix: str = DEFAULT_PREFIX,
        case_insensitive_paths: bool = False,
    ) -> None:
        """Compile every function's paths.

        Raises :class:`~bgfunctions.errors.PatternError` for an invalid path (naming the
        function) and :class:`~bgfunctions.errors.DuplicateFunctionError` when two specs share
        a name.
        """
        if not prefix.startswith("/") or prefix == "/":
            raise ValueError(
                f"prefix: expected a path such as '/.netlify/functions', got {prefix!r}"
            )
        self._prefixes = tuple(dict.fromkeys([prefix.rstrip("/"), LEGACY_PREFIX]))
        self._case_insensitive = case_insensitive_paths
        self._specs: dict[str, RouteSpec] = {}
        self._literals: dict[str, list[_Route]] = {}
        patterns: list[_Route] = []
        declared: dict[str, list[str]] = {}
        warnings: list[str] = []
        for spec in specs:
            if spec.function in self._specs:
                raise DuplicateFunctionError(
                    f"two functions are named {spec.function!r}; names must be unique"
                )
            self._specs[spec.function] = spec
            excluded = tuple(self._compile(spec, p, "excluded_paths") for p in spec.excluded_paths)
            methods = frozenset(m.upper() for m in spec.methods)
            for pattern in excluded:
                warnings.extend(f"function {spec.function!r}: {w}" for w in pattern.warnings)
            for path in (*spec.paths, *spec.excluded_paths):
                warnings.extend(_unreachable(spec.function, path))
            for path in dict.fromkeys(spec.paths):
                route = _Route(spec, self._compile(spec, path, "paths"), excluded, methods)
                warnings.extend(f"function {spec.function!r}: {w}" for w in route.compiled.warnings)
                if route.compiled.is_literal:
                    key = self._literal_key(path)
                    self._literals.setdefault(key, []).append(route)
                else:
                    key = path
                    patterns.append(route)
                declared.setdefault(key, []).append(spec.function)
                if any(path == p or path.startswith(p + "/") for p in self._prefixes):
                    warnings.append(
                        f"function {spec.function!r}: the path {path!r} is under the default "
                        f"prefix {self._prefixes[0]!r}, which is routed first; it never matches"
                    )
        for routes in self._literals.values():
            routes.sort(key=lambda r: r.spec.function)
        self._patterns = tuple(sorted(patterns, key=self._precedence))
        for key, names in declared.items():
            if len(set(names)) > 1:
                ordered = sorted(set(names))
                warnings.append(
                    f"functions {', '.join(map(repr, ordered))} all declare the path {key!r}; "
                    f"{ordered[0]!r} serves it (name order)"
                )
        self.warnings = tuple(warnings)

    @staticmethod
    def _precedence(route: _Route) -> tuple[int, str]:
        """Pattern order: longer pattern string first, then function name alphabetical.

        (Literal routes come before all patterns; they are looked up in a dict first.)
        """
        return (-len(route.compiled.pattern), route.spec.function)

    def _compile(self, spec: RouteSpec, path: str, key: str) -> CompiledPattern:
        if not path.startswith("/"):
            raise PatternError(
                f"function {spec.function!r}: each of {key} must start with '/', got {path!r}"
            )
        try:
            return compile_pathname(
                path, ignore_case=self._case_insensitive, ignore_trailing_slash=True
            )
        except PatternError as exc:
            raise PatternError(f"function {spec.function!r}: {exc}") from exc

    def _literal_key(self, path: str) -> str:
        path = _strip_slash(resolve_dot_segments(path))
        return path.casefold() if self._case_insensitive else path

    def match(
        self, method: str, path: str, *, static_exists: Callable[[str], bool] | None = None
    ) -> Match | NoMatch:
        """Find the function serving ``method path``; ``path`` is the decoded URL path.

        Order:
        0. A path longer than :data:`MAX_PATH_LENGTH` is ``path_too_long``. Dot segments
           are resolved (:func:`resolve_dot_segments`); the rest sees the resolved path.
        1. Under the default prefix (``/.netlify/functions/NAME[/...]``, or the legacy
           ``/.netlify/builders/...``): the function NAME, for any method, unless it has custom
           paths. An unknown name is ``function_not_found``, whatever its characters; an
           existing function whose name breaks the naming rule is ``invalid_name``. Custom
           paths are never consulted for these URLs.
        2. Custom paths: literal routes, then patterns by decreasing length, then by function
           name. A candidate is skipped when one of its excluded paths matches, when its
           methods do not include ``method`` (collected for ``method_not_allowed``), or when it
           prefers static files and ``static_exists(path)`` is true.
        """
        if len(path) > MAX_PATH_LENGTH:
            # Matching is linear in the path's length; the bound keeps that line short.
            return NoMatch(
                reason="path_too_long",
                message=f"the path has {len(path)} characters; routing considers at most "
                f"{MAX_PATH_LENGTH}",
            )
        path = resolve_dot_segments(path)
        method = method.upper()
        for prefix in self._prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return self._default_url(prefix, path)
        allowed: set[str] = set()
        yielded: str | None = None
        for route, params in self._candidates(path):
            spec = route.spec
            if any(e.match(path) is not None for e in route.excluded):
                continue
            if route.methods and method not in route.methods:
                allowed |= route.methods
                continue
            if spec.prefer_static and static_exists is not None and static_exists(path):
                yielded = yielded or spec.function
                continue
            if not spec.valid_name:
                return NoMatch(reason="invalid_name", message=INVALID_NAME, function=spec.function)
            return Match(spec.function, types.MappingProxyType(params), route.compiled.pattern)
        if yielded is not None:
            return NoMatch(
                reason="no_route",
                message=f"a static file exists at {path!r}; function {yielded!r} prefers it",
                function=yielded,
            )
        if allowed:
            accepted = tuple(sorted(allowed))
            return NoMatch(
                reason="method_not_allowed",
                message=f"{path!r} does not accept {method}; it accepts {', '.join(accepted)}",
                allowed=accepted,
            )
        return NoMatch(reason="no_route", message=f"no function serves {path!r}")

    def _candidates(self, path: str) -> Iterable[tuple[_Route, dict[str, str]]]:
        """Every route matching the path, in precedence order, with its params."""
        for route in self._literals.get(self._literal_key(path), ()):
            yield route, {}
        for route in self._patterns:
            params = route.compiled.match(path)  # it ignores one trailing slash itself
            if params is not None:
                yield route, params

    def _default_url(self, prefix: str, path: str) -> Match | NoMatch:
        name = path[len(prefix) + 1 :].split("/", 1)[0]
        spec = self._specs.get(name)
        if spec is None:
            # Netlify's CLI looks the name up first: only an existing function with a bad name
            # gets the 400; an unknown name is 404 whatever characters it holds.
            return NoMatch(
                reason="function_not_found", message=FUNCTION_NOT_FOUND, function=name or None
            )
        if not spec.valid_name:
            return NoMatch(reason="invalid_name", message=INVALID_NAME, function=name)
        if spec.paths:
            return NoMatch(
                reason="no_route",
                message=(
                    f"function {name!r} cannot be invoked on {path!r} because it has custom "
                    f"paths defined: {', '.join(map(repr, spec.paths))}"
                ),
                function=name,
                has_custom_paths=True,
            )
        return Match(name, types.MappingProxyType({}), f"{prefix}/{name}")
