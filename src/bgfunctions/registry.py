"""The registry: every function of a site, with its config, its routes and why it is background.

``discover(functions_dir)`` (or ``Registry.from_site(site_dir)``) builds one from a directory of
handler modules; embedders add functions in code with ``registry.add`` or the ``@registry.function``
decorator. Either way the same validation and background resolution apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from bgfunctions._loader import find_handler, is_async_handler, load_module
from bgfunctions._netlify_toml import NetlifyToml
from bgfunctions.config import Config, check_function_config
from bgfunctions.errors import (
    ConfigError,
    DiscoveryError,
    DuplicateFunctionError,
    UnknownFunctionError,
)
from bgfunctions.retry import Limits, RetryPolicy, module_retry
from bgfunctions.routing import NoMatch, Router, RouteSpec

__all__ = [
    "BackgroundReason",
    "Function",
    "FunctionMatch",
    "Handler",
    "Registry",
    "discover",
    "resolve_background",
]

DEFAULT_PREFIX = "/.netlify/functions"
BACKGROUND_SUFFIX = "-background"
RESERVED_NAME = "___netlify-entry-point"
"""Netlify's bundler names its own entry point so; no function may take the name."""
_VALID_NAME = re.compile(r"[A-Za-z0-9_-]+")
_INVALID_NAME_WARNING = (
    "Function name should consist only of alphanumeric characters, hyphen & underscores."
)

BackgroundReason = Literal["suffix", "config", "netlify.toml"]
Handler = Callable[..., Any]
"""``handler(request, context)``, sync or async."""
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True, kw_only=True)
class Function:
    """One function: its handler, effective config, and how it runs."""

    name: str
    handler: Handler | None
    """None only for a function whose name is invalid (it answers 400 and is never loaded)."""
    config: Config
    """The effective config: netlify.toml blocks merged, the module's config on top."""
    background: bool
    background_reasons: tuple[BackgroundReason, ...] = ()
    """Why it is background: any of ``"suffix"``, ``"config"``, ``"netlify.toml"``."""
    file: Path | None = None
    """The module it was loaded from; None for functions added in code."""
    is_async: bool = False
    valid_name: bool = True
    warnings: tuple[str, ...] = ()
    limits: Limits | None = None
    """Per-function limits set by an embedder; None means the App's."""
    retry: RetryPolicy | None = None
    """The function's own retry policy (its module's ``retry = RetryPolicy(...)``, or
    ``Registry.add(retry=)``); None means the App's (Netlify's by default)."""

    @property
    def display_name(self) -> str:
        return self.config.name or self.name

    @property
    def routes(self) -> tuple[str, ...]:
        """The custom paths, or the default URL when there are none."""
        return tuple(self.config.path or ()) or (f"{DEFAULT_PREFIX}/{self.name}",)


@dataclass(frozen=True, slots=True)
class FunctionMatch:
    """A request matched ``function``; ``params`` are the route's parameters."""

    function: Function
    params: Mapping[str, str]
    route: str


def resolve_background(
    name: str, in_source: Config | None, toml: Config | None
) -> tuple[bool, tuple[BackgroundReason, ...], tuple[str, ...]]:
    """Decide whether a function runs in the background, and say why.

    The order, as Netlify's bundler computes it:

    1. the name ends with ``-background`` (case-sensitive): always background;
    2. the in-source ``config.background``, when it is set (True or False), decides otherwise;
    3. else the netlify.toml value merged from matching ``[functions."GLOB"]`` blocks decides;
    4. else the function is synchronous.

    The signals are OR-ed: ``background=False`` never cancels the suffix (a warning says so).
    Returns (background, reasons, warnings).
    """
    reasons: list[BackgroundReason] = []
    warnings: list[str] = []
    suffixed = name.endswith(BACKGROUND_SUFFIX)
    if suffixed:
        reasons.append("suffix")
    if in_source is not None and in_source.background is not None:
        if in_source.background:
            reasons.append("config")
        elif suffixed:
            warnings.append(
                f"function {name!r} sets background=False, but its name ends with "
                f"'{BACKGROUND_SUFFIX}', which makes it a background function anyway"
            )
    elif toml is not None and toml.background:
        reasons.append("netlify.toml")
    return bool(reasons), tuple(reasons), tuple(warnings)


class Registry:
    """The functions of a site, by name, and the router over their paths."""

    def __init__(
        self,
        *,
        netlify_toml: NetlifyToml | None = None,
        functions_dir: Path | None = None,
        site_dir: Path | None = None,
        strict: bool = False,
        case_insensitive_paths: bool = False,
    ) -> None:
        self.netlify_toml = netlify_toml if netlify_toml is not None else NetlifyToml()
        self.functions_dir = functions_dir
        self.site_dir = site_dir
        self.strict = strict
        self.case_insensitive_paths = case_insensitive_paths
        self._functions: dict[str, Function] = {}
        self._router: Router | None = None

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def from_site(cls, site_dir: str | Path, *, strict: bool = False) -> Registry:
        """Discover a site's functions: reads ``netlify.toml`` when present.

        The functions directory is ``[functions] directory``, else the legacy ``[build]
        functions``, else ``netlify/functions``.
        """
        site = Path(site_dir)
        toml_path = site / "netlify.toml"
        toml = NetlifyToml.load(toml_path) if toml_path.is_file() else NetlifyToml()
        functions_dir = toml.functions_directory or site / "netlify" / "functions"
        return discover(functions_dir, netlify_toml=toml, strict=strict, site_dir=site)

    def add(
        self,
        name: str,
        handler: Handler | None,
        *,
        config: Config | Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        file: Path | None = None,
        warnings: tuple[str, ...] = (),
    ) -> Function:
        """Register ``handler`` as function ``name``, with the same rules as discovery."""
        if name in self._functions:
            raise DuplicateFunctionError(f"a function named {name!r} is already registered")
        where = str(file) if file is not None else f"function {name!r}"
        if name == RESERVED_NAME:
            raise ConfigError(
                f"{where}: {name!r} is reserved by Netlify for its own entry point; "
                f"expected any other function name"
            )
        notes = list(warnings)
        if not _VALID_NAME.fullmatch(name):
            if self.strict:
                raise ConfigError(f"{where}: {_INVALID_NAME_WARNING} Got {name!r}")
            notes.append(f"{where}: {_INVALID_NAME_WARNING} Got {name!r}; it answers 400")
            function = Function(
                name=name,
                handler=None,
                config=Config(),
                background=False,
                file=file,
                valid_name=False,
                warnings=tuple(notes),
            )
            return self._put(function)
        if handler is None or not callable(handler):
            raise ConfigError(f"{where}: handler must be callable; got {handler!r}")
        in_source = _config(config, name, where, notes)
        toml, toml_warnings = self.netlify_toml.config_for(name)
        notes.extend(toml_warnings)
        effective = toml.merged(in_source) if toml and in_source else (in_source or toml)
        effective = effective or Config()
        check_function_config(name, effective)
        background, reasons, bg_warnings = resolve_background(name, in_source, toml)
        notes.extend(bg_warnings)
        function = Function(
            name=name,
            handler=handler,
            config=effective,
            background=background,
            background_reasons=reasons,
            file=file,
            is_async=is_async_handler(handler),
            warnings=tuple(notes),
            limits=limits,
            retry=retry,
        )
        return self._put(function)

    def function(
        self,
        name: str | None = None,
        *,
        config: Config | Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of :meth:`add`; the name defaults to the handler's, ``_`` → ``-``."""

        def register(handler: H) -> H:
            fname = name if name is not None else handler.__name__.replace("_", "-")
            self.add(fname, handler, config=config, limits=limits, retry=retry)
            return handler

        return register

    def _put(self, function: Function) -> Function:
        self._functions[function.name] = function
        self._router = None
        return function

    # -- reading ----------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Function:
        try:
            return self._functions[name]
        except KeyError:
            known = ", ".join(sorted(self._functions)) or "none"
            raise UnknownFunctionError(
                f"no function named {name!r}; the registry has: {known}"
            ) from None

    def get(self, name: str) -> Function | None:
        return self._functions.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[Function]:
        return iter(sorted(self._functions.values(), key=lambda f: f.name))

    def __len__(self) -> int:
        return len(self._functions)

    @property
    def names(self) -> list[str]:
        return sorted(self._functions)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every warning: netlify.toml's, each function's, and the router's."""
        out = list(self.netlify_toml.warnings)
        for function in self:
            out.extend(function.warnings)
        out.extend(self.router.warnings)
        return tuple(out)

    @property
    def publish_dir(self) -> Path | None:
        return self.netlify_toml.publish_directory

    @property
    def router(self) -> Router:
        """Every route compiled once; rebuilt after a function is added."""
        if self._router is None:
            self._router = Router(
                (
                    RouteSpec(
                        function=f.name,
                        paths=tuple(f.config.path or ()),
                        excluded_paths=tuple(f.config.excluded_path or ()),
                        methods=tuple(f.config.method or ()),
                        prefer_static=bool(f.config.prefer_static),
                        valid_name=f.valid_name,
                    )
                    for f in self._functions.values()
                ),
                prefix=DEFAULT_PREFIX,
                case_insensitive_paths=self.case_insensitive_paths,
            )
        return self._router

    def match(
        self, method: str, path: str, *, static_exists: Callable[[str], bool] | None = None
    ) -> FunctionMatch | NoMatch:
        """The function serving ``method path`` with its params, or why nothing does."""
        found = self.router.match(method, path, static_exists=static_exists)
        if isinstance(found, NoMatch):
            return found
        return FunctionMatch(self._functions[found.function], found.params, found.route)


def _config(
    config: Config | Mapping[str, Any] | None, name: str, where: str, notes: list[str]
) -> Config | None:
    if config is None or isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        parsed, warnings = Config.parse(config, function=name, where=where)
        notes.extend(warnings)
        return parsed
    raise ConfigError(
        f"{where}: 'config' of function {name!r} must be a bgfunctions.Config or a dict; "
        f"got {type(config).__name__}"
    )


def _candidates(functions_dir: Path) -> dict[str, tuple[Path, bool, list[str]]]:
    """name -> (entry file, is directory form, warnings), with DESIGN.md's precedence."""
    found: dict[str, tuple[Path, bool, list[str]]] = {}
    entries = sorted(functions_dir.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if entry.name in (RESERVED_NAME, f"{RESERVED_NAME}.py"):
            raise DiscoveryError(
                f"{entry}: {RESERVED_NAME!r} is reserved by Netlify for its own entry point; "
                f"rename it (a name starting with '_' is a helper, never a function)"
            )
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            found.setdefault(entry.stem, (entry, False, []))
    for entry in entries:
        if entry.name.startswith((".", "_")) or not entry.is_dir():
            continue
        main = next(
            (p for p in (entry / f"{entry.name}.py", entry / "index.py") if p.is_file()), None
        )
        if main is None:
            continue
        notes: list[str] = []
        if entry.name in found:
            shadowed = found[entry.name][0]
            notes.append(
                f"{shadowed} and {main} both define function {entry.name!r}; "
                f"the directory wins: {shadowed} is ignored"
            )
        found[entry.name] = (main, True, notes)
    return found


def discover(
    functions_dir: str | Path,
    *,
    netlify_toml: NetlifyToml | Mapping[str, Any] | str | Path | None = None,
    strict: bool = False,
    site_dir: Path | None = None,
) -> Registry:
    """Load every function of ``functions_dir``.

    Functions are ``NAME.py``, ``NAME/NAME.py`` or ``NAME/index.py`` (``NAME.py`` beats
    ``index.py`` in a directory; a directory beats a same-named file). Entries whose name starts
    with ``.`` or ``_`` are helpers, never functions. ``netlify_toml`` is a parsed
    :class:`NetlifyToml`, a mapping, or the path of the file.
    """
    directory = Path(functions_dir)
    if isinstance(netlify_toml, (str, Path)):
        toml = NetlifyToml.load(Path(netlify_toml))
    elif isinstance(netlify_toml, Mapping):
        toml = NetlifyToml.from_mapping(netlify_toml)
    else:
        toml = netlify_toml if netlify_toml is not None else NetlifyToml()
    registry = Registry(
        netlify_toml=toml, functions_dir=directory, site_dir=site_dir, strict=strict
    )
    if not directory.is_dir():
        raise DiscoveryError(
            f"functions directory {directory} does not exist or is not a directory"
        )
    for name, (path, package, notes) in sorted(_candidates(directory).items()):
        if not _VALID_NAME.fullmatch(name):
            registry.add(name, None, file=path, warnings=tuple(notes))
            continue
        # Both forms are loaded as packages so that relative imports reach helpers: a directory
        # form's own siblings first, then the functions directory's (``_shared.py``).
        search = (path.parent, directory) if package else (directory,)
        module = load_module(path, function=name, search_path=search)
        handler = find_handler(module, path, function=name)
        config = getattr(module, "config", None)
        retry = module_retry(getattr(module, "retry", None), file=path, function=name)
        registry.add(
            name,
            handler,  # type: ignore[arg-type]  # find_handler checked it is callable
            config=config,
            file=path,
            warnings=tuple(notes),
            retry=retry,
        )
    return registry
