"""A function's configuration: Netlify's in-source ``config`` and ``[functions.NAME]`` keys.

:class:`Config` holds what a function module's ``config`` (or a netlify.toml block) says, with
Netlify's keys in snake_case. Every field defaults to ``None``, meaning "not set", because an
in-source value overrides a netlify.toml value only when it is set (:meth:`Config.merged`).

Two ways in, with different strictness:

- ``Config(...)`` is strict: any wrong type or value raises :class:`~bgfunctions.errors.ConfigError`
  naming the field and the value.
- :meth:`Config.from_mapping` / :meth:`Config.parse` read a dict with Netlify's camelCase keys (or
  snake_case) and follow Netlify's build: keys Netlify drops silently when invalid are dropped with
  a warning, the other keys raise with Netlify's error texts.

The spec this follows is ``spec/netlify-semantics.md`` section 3.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from typing_extensions import TypedDict, Unpack

from bgfunctions._cron import check_cron
from bgfunctions._urlpattern import compile_pathname
from bgfunctions.errors import BgFunctionsWarning, ConfigError, PatternError

__all__ = [
    "EVENT_TRIGGERED_FUNCTIONS",
    "HTTP_METHODS",
    "REGIONS",
    "Config",
    "RateLimit",
    "check_function_config",
    "is_event_triggered",
    "validate_cron",
]

HTTP_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "OPTIONS", "DELETE", "HEAD")
"""The methods ``Config.method`` accepts (ZISI's list, which includes HEAD)."""

REGIONS: tuple[str, ...] = (
    "cmh", "dub", "fra", "gru", "iad", "lhr", "nrt", "pdx", "sfo", "sin", "syd", "yul",
)  # fmt: skip
"""The region codes ``Config.region`` accepts (stored lower-case)."""

EVENT_TRIGGERED_FUNCTIONS: frozenset[str] = frozenset(
    {
        "deploy-building", "deploy-succeeded", "deploy-failed", "deploy-deleted",
        "deploy-locked", "deploy-unlocked", "split-test-activated", "split-test-deactivated",
        "split-test-modified", "submission-created", "identity-validate", "identity-signup",
        "identity-login",
    }
)  # fmt: skip
"""Names Netlify reserves for event-triggered functions (``netlify/build`` plugins_core)."""

_MEMORY_MIN_MB, _MEMORY_MAX_MB = 1024, 4096
_VCPU_MIN, _VCPU_MAX = 0.5, 2.0
_MEMORY_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*(mb|gb)?$")
_SCHEDULED_WITH_PATH = (
    'Scheduled functions must not specify a custom path. Please remove the "path" '
    "configuration. Learn more about scheduled functions at "
    "https://ntl.fyi/custom-path-scheduled-functions."
)
_EVENT_WITH_PATH = (
    'Event-triggered functions must not specify a custom path. Please remove the "path" '
    "configuration or pick a different name for the function. Learn more about "
    "event-triggered functions at https://ntl.fyi/custom-path-event-triggered-functions."
)
_MEMORY_AND_VCPU = "`memory` and `vcpu` cannot both be set."
_STRINGS = "Must be a string or array of strings"
_MISSING = "Must be set"


class _Problem(Exception):
    """A value failed validation; formatted by whoever knows the context (internal)."""

    def __init__(
        self,
        message: str,
        *,
        plain: str | None = None,
        key_suffix: str = "",
        pattern: bool = False,
        shows_value: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message  # Netlify's wording where there is one, capitalised
        self.plain = plain  # the constructor's wording, when Netlify's does not read well there
        self.key_suffix = key_suffix  # ".0" for the first element of a list, as zod reports it
        self.pattern = pattern  # a URLPattern failure: raised as PatternError
        self.shows_value = shows_value  # the message already quotes the offending value


def _show(value: object) -> str:
    """``repr`` cut to a readable length (a message must not carry a whole document)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain(problem: _Problem) -> str:
    """The constructor's wording: Netlify's sentence with a lower-case first letter."""
    if problem.plain is not None:
        return problem.plain
    message = problem.message
    if problem.pattern or message.startswith("`"):
        return message
    return message[:1].lower() + message[1:]


# ---------------------------------------------------------------- value normalisers
# Each takes the raw value (never None) and returns the stored value or raises _Problem.


def _is_number(value: object) -> bool:
    # bool is an int in Python, but `memory=True` is a mistake, not 1 MB.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_strings(value: object, *, upper: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
    else:
        raise _Problem(_STRINGS)
    if not all(isinstance(item, str) for item in items):
        raise _Problem(_STRINGS)
    return tuple(item.upper() if upper else item for item in items if isinstance(item, str))


def _is_expression(path: str) -> bool:
    """ZISI's test: only paths with pattern syntax go through URLPattern; others are literal."""
    return any(
        "*" in part or part.startswith(":") or "{" in part or "[" in part or "(" in part
        for part in path.split("/")
    )


def _norm_paths(value: object) -> tuple[str, ...] | None:
    paths = _as_strings(value)
    for index, path in enumerate(paths):
        if not path.startswith("/"):
            suffix = f".{index}" if not isinstance(value, str) else ""
            raise _Problem("Must start with a '/'", key_suffix=suffix)
    # Duplicates go only after the checks, so an error's index is the one the user wrote.
    paths = tuple(dict.fromkeys(paths))
    for path in paths:
        if _is_expression(path):
            try:
                compile_pathname(path)
            except PatternError as error:
                raise _Problem(str(error), pattern=True) from error
    # An empty list declares no path, which Netlify treats like no `path` key at all.
    return paths or None


def _norm_method(value: object) -> tuple[str, ...] | None:
    methods = _as_strings(value, upper=True)
    for method in methods:
        if method not in HTTP_METHODS:
            raise _Problem(f"{_STRINGS}, each one of {', '.join(HTTP_METHODS)}")
    return tuple(dict.fromkeys(methods)) or None


def _norm_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Problem("Must be a boolean")
    return value


def _norm_text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem("Must be a non-empty string")
    return value


def _norm_schedule(value: object) -> str:
    if not isinstance(value, str):
        raise _Problem("Must be a cron expression string")
    _check_cron(value)
    return value.strip()


def _norm_region(value: object) -> str:
    region = value.lower() if isinstance(value, str) else value
    if region not in REGIONS:
        expected = " | ".join(f"'{code}'" for code in REGIONS)
        raise _Problem(
            f"Invalid enum value. Expected {expected}",
            plain=f"must be one of {' '.join(REGIONS)} (any case)",
        )
    assert isinstance(region, str)
    return region


def _norm_memory(value: object) -> int:
    """Megabytes from an int (MB) or a string with an optional unit, like ZISI's parseMemoryMB."""
    megabytes: float | None = None
    if _is_number(value):
        assert isinstance(value, (int, float))
        megabytes = value if math.isfinite(value) and float(value).is_integer() else None
    elif isinstance(value, str):
        match = _MEMORY_PATTERN.match(value.strip().lower())
        if match:
            factor = 1024 if match.group(2) == "gb" else 1
            megabytes = math.floor(float(match.group(1)) * factor + 0.5)
    if megabytes is None or not _MEMORY_MIN_MB <= megabytes <= _MEMORY_MAX_MB:
        raise _Problem(
            f"Must be a whole number of megabytes from {_MEMORY_MIN_MB} to {_MEMORY_MAX_MB}, "
            "or a string with a unit such as '2gb' or '1536mb'"
        )
    return int(megabytes)


def _norm_vcpu(value: object) -> float:
    if not _is_number(value) or not _VCPU_MIN <= value <= _VCPU_MAX:  # type: ignore[operator]
        raise _Problem(f"Must be a number from {_VCPU_MIN} to {_VCPU_MAX:g}")
    assert isinstance(value, (int, float))
    return float(value)


def _norm_timeout(value: object) -> float:
    if not _is_number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        raise _Problem("Must be a positive number of seconds")
    assert isinstance(value, (int, float))
    return float(value)


def _norm_rate_limit(value: object) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, Mapping):
        return RateLimit._parse(value)
    raise _Problem("Must be a RateLimit or a mapping with windowLimit and windowSize")


# ---------------------------------------------------------------- cron


def validate_cron(expression: str) -> None:
    """Check a cron expression the way Netlify's scheduled functions accept it (see
    :mod:`bgfunctions._cron`). Raises ConfigError saying which part is wrong."""
    try:
        _check_cron(expression)
    except _Problem as problem:
        raise ConfigError(
            f"Invalid cron expression {_show(expression)}: {_plain(problem)}"
        ) from None


def _check_cron(expression: str) -> None:
    try:
        check_cron(expression)
    except ValueError as problem:
        raise _Problem(str(problem)) from None


# ---------------------------------------------------------------- RateLimit

_RATE_LIMIT_KEYS = {
    "window_limit": "windowLimit",
    "window_size": "windowSize",
    "aggregate_by": "aggregateBy",
    "action": "action",
    "to": "to",
    "algorithm": "algorithm",
}


def _positive_int(value: object) -> int:
    if (
        not _is_number(value)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or not float(value).is_integer()  # type: ignore[arg-type]
        or value < 1  # type: ignore[operator]
    ):
        raise _Problem("Must be a positive whole number")
    assert isinstance(value, (int, float))
    return int(value)


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise _Problem(f"Must be one of {', '.join(repr(c) for c in choices)}")
        assert isinstance(value, str)
        return value

    return check


def _aggregate_by(value: object) -> tuple[str, ...]:
    keys = tuple(dict.fromkeys(_as_strings(value)))
    for key in keys:
        _choice("domain", "ip")(key)
    if not keys:
        raise _Problem("Must name at least one of 'domain', 'ip'")
    return keys


_RATE_LIMIT_NORMALISERS: dict[str, Callable[[object], object]] = {
    "window_limit": _positive_int,
    "window_size": _positive_int,
    "aggregate_by": _aggregate_by,
    "action": _choice("rate_limit", "rewrite"),
    "to": _norm_text,
    "algorithm": _choice("sliding_window"),
}


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class RateLimit:
    """Netlify's ``rateLimit`` rule for a function. Stored and reported; a no-op here.

    ``RateLimit(window_limit=100, window_size=60)`` allows 100 requests per 60 s window.
    """

    window_limit: int
    """How many requests one window allows (``windowLimit``). Required."""
    window_size: int
    """The window length in seconds (``windowSize``). Required."""
    aggregate_by: tuple[str, ...] | None = None
    """What requests are counted by: ``"domain"`` and/or ``"ip"``. Default None (Netlify:
    domain)."""
    action: str | None = None
    """``"rate_limit"`` (answer 429) or ``"rewrite"`` (serve ``to``). Default None (rate_limit)."""
    to: str | None = None
    """The path served instead when ``action`` is ``"rewrite"``; required then. Default None."""
    algorithm: str | None = None
    """Only ``"sliding_window"`` exists. Default None (sliding_window)."""

    def __init__(
        self,
        *,
        window_limit: int,
        window_size: int,
        aggregate_by: str | Sequence[str] | None = None,
        action: str | None = None,
        to: str | None = None,
        algorithm: str | None = None,
    ) -> None:
        given = {
            "window_limit": window_limit,
            "window_size": window_size,
            "aggregate_by": aggregate_by,
            "action": action,
            "to": to,
            "algorithm": algorithm,
        }
        try:
            values = _normalise_rate_limit(given)
        except _Problem as problem:
            field = problem.key_suffix
            got = "" if given[field] is None else f"; got {_show(given[field])}"
            raise ConfigError(f"RateLimit.{field}: {_plain(problem)}{got}") from None
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def _parse(cls, data: Mapping[object, object]) -> RateLimit:
        """Read camelCase or snake_case keys; raises _Problem (internal)."""
        values: dict[str, object] = {}
        for key, value in data.items():
            snake = next((s for s, c in _RATE_LIMIT_KEYS.items() if key in (s, c)), None)
            if snake is None:
                raise _Problem(
                    f"Unknown rateLimit key {_show(key)}; known keys: "
                    + ", ".join(_RATE_LIMIT_KEYS.values())
                )
            if snake in values:
                raise _Problem(f"rateLimit key {_RATE_LIMIT_KEYS[snake]!r} is given twice")
            values[snake] = value
        try:
            normalised = _normalise_rate_limit(values)
        except _Problem as problem:
            field = _RATE_LIMIT_KEYS[problem.key_suffix]
            if problem.message == _MISSING:
                raise _Problem(f"rateLimit needs {field!r}") from None
            raise _Problem(
                f"rateLimit {field!r} {_plain(problem)}; got "
                f"{_show(values.get(problem.key_suffix))}",
                shows_value=True,
            ) from None
        instance = object.__new__(cls)
        for name, value in normalised.items():
            object.__setattr__(instance, name, value)
        return instance

    def to_dict(self) -> dict[str, object]:
        """Netlify's camelCase form, only the keys that are set."""
        result: dict[str, object] = {}
        for snake, camel in _RATE_LIMIT_KEYS.items():
            value = getattr(self, snake)
            if value is not None:
                result[camel] = list(value) if isinstance(value, tuple) else value
        return result


def _normalise_rate_limit(given: Mapping[str, object]) -> dict[str, object]:
    """Validate RateLimit values; a _Problem's ``key_suffix`` holds the field name here."""
    values: dict[str, object] = {}
    for name, normalise in _RATE_LIMIT_NORMALISERS.items():
        value = given.get(name)
        if value is None:
            if name in ("window_limit", "window_size"):
                raise _Problem(_MISSING, key_suffix=name)
            values[name] = None
            continue
        try:
            values[name] = normalise(value)
        except _Problem as problem:
            raise _Problem(problem.message, key_suffix=name) from None
    if values["action"] == "rewrite" and values["to"] is None:
        raise _Problem("Must be set when action is 'rewrite'", key_suffix="to")
    return values


# ---------------------------------------------------------------- Config

# Node.js build knobs: accepted so a netlify.toml shared with Node functions loads, then dropped.
_NODE_KEYS: dict[str, str] = {
    "node_bundler": "nodeBundler",
    "node_version": "nodeVersion",
    "external_node_modules": "externalNodeModules",
    "included_files": "includedFiles",
    "ignored_node_modules": "ignoredNodeModules",
}


@dataclass(frozen=True, slots=True)
class _Key:
    """What a Config field is in Netlify's terms: its camelCase key, how a value given for it
    is checked and normalised, and whether Netlify's build drops an invalid value silently
    (spec section 3) rather than failing; we drop it with a warning."""

    camel: str
    normalise: Callable[[object], object]
    soft: bool = False


def _key(camel: str, normalise: Callable[[object], object], *, soft: bool = False) -> Any:
    """A Config field, declared once: its default (None, "not set") and its :class:`_Key`."""
    return field(default=None, metadata={"netlify": _Key(camel, normalise, soft)})


def _combination_problem(values: Mapping[str, object]) -> tuple[str, str] | None:
    """The first rule across fields that ``values`` breaks, as (field, message), or None."""
    if values.get("memory") is not None and values.get("vcpu") is not None:
        return "vcpu", _MEMORY_AND_VCPU  # ZISI reports it on 'vcpu'
    if values.get("schedule") is not None and values.get("path") is not None:
        return "path", _SCHEDULED_WITH_PATH
    return None


def _context(where: str | None, got: str | None = None) -> str:
    parts = [f"got {got}"] if got is not None else []
    if where:
        parts.append(f"in {where}")
    return f" ({'; '.join(parts)})" if parts else ""


def _subject(function: str | None) -> str:
    return f"Function {function}" if function else "Function config"


class _ConfigArgs(TypedDict, total=False):
    """What ``Config(...)`` takes for each field: the forms its normaliser accepts (the field's
    declaration in :class:`Config` says what is stored)."""

    path: str | Sequence[str] | None
    excluded_path: str | Sequence[str] | None
    method: str | Sequence[str] | None
    prefer_static: bool | None
    background: bool | None
    schedule: str | None
    name: str | None
    generator: str | None
    rate_limit: RateLimit | Mapping[str, object] | None
    region: str | None
    memory: int | str | None
    vcpu: float | None
    timeout: float | None


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Config:
    """A function's configuration, as a module's ``config`` or a ``[functions.NAME]`` block.

    Every field defaults to ``None``, meaning "not set". The constructor is strict: a wrong
    type or value raises :class:`~bgfunctions.errors.ConfigError` naming the field and value.
    Fields marked *no-op* are validated and reported (``bgfunctions list``) but change nothing
    when functions run here; they exist so that a Netlify config loads unchanged.
    """

    path: tuple[str, ...] | None = _key("path", _norm_paths)
    """Custom URL paths (URLPattern pathname syntax, each starting with ``/``). Setting it
    removes the default URL ``/.netlify/functions/NAME``. Accepts a str or a sequence of str;
    stored as a tuple, duplicates removed, order kept. Default None (default URL only)."""
    excluded_path: tuple[str, ...] | None = _key("excludedPath", _norm_paths)
    """Paths that ``path`` must not match (``excludedPath``); same forms as ``path``.
    Default None."""
    method: tuple[str, ...] | None = _key("method", _norm_method)
    """HTTP methods the custom paths answer: GET POST PUT PATCH OPTIONS DELETE HEAD, any case,
    stored upper-case. Accepts a str or a sequence. Default None (every method)."""
    prefer_static: bool | None = _key("preferStatic", _norm_bool, soft=True)
    """``preferStatic``: when a static file exists at the URL, serve it instead of the function.
    Default None (False)."""
    background: bool | None = _key("background", _norm_bool, soft=True)
    """Run as a background function: answer 202 at once, run up to 15 min, retry on failure.
    OR-ed with the ``-background`` name suffix, so False never cancels the suffix. Default None
    (not set, so a netlify.toml value applies)."""
    schedule: str | None = _key("schedule", _norm_schedule, soft=True)
    """A cron expression (UTC): five fields or a macro such as ``@daily`` (not ``@reboot`` or
    ``@annually``). Validated; a scheduled function must not have a ``path``. Running on a
    schedule is not implemented yet. Default None."""
    name: str | None = _key("name", _norm_text, soft=True)
    """The display name shown by ``bgfunctions list`` (Netlify's ``displayName``); the
    function's real name still comes from its file. Default None (the function name)."""
    generator: str | None = _key("generator", _norm_text, soft=True)
    """Which tool generated the function (for frameworks, not users); reported only.
    Default None."""
    rate_limit: RateLimit | None = _key("rateLimit", _norm_rate_limit, soft=True)  # noqa: RUF009
    """Netlify's ``rateLimit`` rule; the constructor also accepts a mapping with camelCase or
    snake_case keys. No-op here: no rate limiting is applied. Default None."""
    region: str | None = _key("region", _norm_region)
    """Netlify region code (cmh dub fra gru iad lhr nrt pdx sfo sin syd yul), any case, stored
    lower-case. No-op here. Default None."""
    memory: int | None = _key("memory", _norm_memory)
    """Memory in MB, 1024-4096; the constructor also accepts a str with a unit, like ``"2gb"``
    (stored as 2048). Cannot be combined with ``vcpu``. No-op here. Default None."""
    vcpu: float | None = _key("vcpu", _norm_vcpu)
    """Virtual CPUs, 0.5-2. Cannot be combined with ``memory``. No-op here. Default None."""
    timeout: float | None = _key("timeout", _norm_timeout, soft=True)
    """Netlify's per-function ``timeout`` in seconds. No-op here: the limits come from the
    executor's ``Limits`` (60 s synchronous, 900 s background). Default None."""

    def __init__(self, **given: Unpack[_ConfigArgs]) -> None:
        unknown = sorted(set(given) - _SPEC.keys())
        if unknown:
            raise TypeError(f"Config() got an unexpected keyword argument {unknown[0]!r}")
        values: dict[str, object] = {}
        for name, value in given.items():
            if value is None:
                values[name] = None
                continue
            try:
                values[name] = _SPEC[name].normalise(value)
            except _Problem as problem:
                error = PatternError if problem.pattern else ConfigError
                got = "" if problem.pattern or problem.shows_value else f"; got {_show(value)}"
                raise error(f"Config.{name}: {_plain(problem)}{got}") from None
        combination = _combination_problem(values)
        if combination is not None:
            raise ConfigError(f"Config.{combination[0]}: {combination[1]}")
        self._assign(values)

    def _assign(self, values: Mapping[str, object]) -> None:
        for name in _SPEC:
            object.__setattr__(self, name, values.get(name))

    @classmethod
    def _from_values(cls, values: Mapping[str, object]) -> Config:
        """Build from values that are already normalised and checked (internal)."""
        instance = object.__new__(cls)
        instance._assign(values)
        return instance

    # ------------------------------------------------------------ reading dicts

    @classmethod
    def parse(
        cls,
        data: Mapping[str, object],
        *,
        function: str | None = None,
        where: str | None = None,
    ) -> tuple[Config, tuple[str, ...]]:
        """Read Netlify's keys (camelCase or snake_case) into a Config, plus warning texts.

        Follows Netlify's build: an invalid ``preferStatic``, ``background``, ``schedule`` (not
        a string), ``name``, ``generator``, ``rateLimit`` or ``timeout`` is dropped with a
        warning; Node.js build keys (``nodeBundler`` ...) are dropped with a warning; an invalid
        ``path``, ``excludedPath``, ``method``, ``region``, ``memory``, ``vcpu`` or schedule
        string raises ConfigError with Netlify's text, naming ``function`` and ``where`` when
        given. Unknown keys and a key given in both spellings raise ConfigError.
        """
        subject = _subject(function)
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{subject}: config must be a mapping (dict) or a Config"
                f"{_context(where, _show(data))}"
            )
        snake_of = {camel: snake for snake, camel in {**_KEYS, **_NODE_KEYS}.items()}
        snake_of.update({snake: snake for snake in {**_KEYS, **_NODE_KEYS}})
        unknown = [key for key in data if not isinstance(key, str) or key not in snake_of]
        if unknown:
            raise ConfigError(_unknown_keys_message(subject, unknown, where))
        spelled: dict[str, str] = {}
        for key in data:
            snake = snake_of[key]
            if snake in spelled:
                raise ConfigError(
                    f"{subject}: {spelled[snake]!r} and {key!r} are the same key in two "
                    f"spellings; keep one{_context(where)}"
                )
            spelled[snake] = key

        values: dict[str, object] = dict.fromkeys(_KEYS)
        notes: list[str] = []
        for key, value in data.items():
            snake = snake_of[key]
            if snake in _NODE_KEYS:
                notes.append(
                    f"{subject}: ignoring {key!r}{_context(where)}: it is a Node.js build "
                    "setting and means nothing for Python functions"
                )
                continue
            if value is None:
                continue  # None is "not set", as an absent key
            try:
                values[snake] = _SPEC[snake].normalise(value)
            except _Problem as problem:
                # A schedule string that is not valid cron fails Netlify's config check.
                soft = snake in _SOFT and not (snake == "schedule" and isinstance(value, str))
                if soft:
                    notes.append(
                        f"{subject}: ignoring {key!r}{_context(where, _show(value))}: "
                        f"{_plain(problem)}. Netlify drops an invalid {key!r} silently."
                    )
                    continue
                raise _hard_error(problem, key, value, function, where) from None
        combination = _combination_problem(values)
        if combination is not None:
            field, message = combination
            key = spelled.get(field, _KEYS[field])
            raise ConfigError(_netlify_message(function, key, message, where))
        return cls._from_values(values), tuple(notes)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, object],
        *,
        function: str | None = None,
        where: str | None = None,
    ) -> Config:
        """Like :meth:`parse`, but emits each warning as a ``BgFunctionsWarning``."""
        config, notes = cls.parse(data, function=function, where=where)
        for note in notes:
            warnings.warn(note, BgFunctionsWarning, stacklevel=2)
        return config

    # ------------------------------------------------------------ combining and showing

    def merged(
        self, other: Config, *, function: str | None = None, where: str | None = None
    ) -> Config:
        """A Config with ``other``'s set fields over this one's (used as toml.merged(source)).

        Raises ConfigError when the result combines ``schedule`` with ``path`` or ``memory``
        with ``vcpu``; ``function`` and ``where`` are named in that message.
        """
        values = {
            field: getattr(other, field)
            if getattr(other, field) is not None
            else getattr(self, field)
            for field in _KEYS
        }
        combination = _combination_problem(values)
        if combination is not None:
            field, message = combination
            raise ConfigError(_netlify_message(function, _KEYS[field], message, where))
        return Config._from_values(values)

    def to_dict(self) -> dict[str, object]:
        """Netlify's camelCase keys, only the set fields, JSON-ready (lists, not tuples)."""
        result: dict[str, object] = {}
        for name, camel in _KEYS.items():
            value = getattr(self, name)
            if isinstance(value, RateLimit):
                result[camel] = value.to_dict()
            elif isinstance(value, tuple):
                result[camel] = list(value)
            elif value is not None:
                result[camel] = value
        return result


# Derived from the fields' declarations: snake_case field -> its Netlify terms, camelCase key,
# and the fields whose invalid value Netlify drops silently.
_SPEC: dict[str, _Key] = {f.name: f.metadata["netlify"] for f in fields(Config)}
_KEYS: dict[str, str] = {name: key.camel for name, key in _SPEC.items()}
_SOFT = frozenset(name for name, key in _SPEC.items() if key.soft)


def _netlify_message(function: str | None, key: str, message: str, where: str | None) -> str:
    head = f"Function {function} has" if function else "Function config has"
    return f"{head} a configuration error on '{key}': {message}{_context(where)}"


def _hard_error(
    problem: _Problem, key: str, value: object, function: str | None, where: str | None
) -> ConfigError:
    if problem.pattern:
        # Netlify's URLPattern text carries no function name; we add ours after it.
        details = [f"function {function}"] if function else []
        details.append(f"key {key!r}")
        if where:
            details.append(f"in {where}")
        return PatternError(f"{problem.message} ({'; '.join(details)})")
    head = f"Function {function} has" if function else "Function config has"
    return ConfigError(
        f"{head} a configuration error on '{key}{problem.key_suffix}': {problem.message}"
        f"{_context(where, _show(value))}"
    )


def _unknown_keys_message(subject: str, unknown: Iterable[object], where: str | None) -> str:
    known = sorted(_KEYS.values())
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), [*_KEYS.values(), *_KEYS], n=1)
        if close:
            hints.append(f"{key!r} -> {_KEYS.get(close[0], close[0])!r}")
    listed = ", ".join(_show(key) for key in unknown)
    message = (
        f"{subject} has unknown configuration keys: {listed}{_context(where)}. "
        f"Known keys: {', '.join(known)} (camelCase or snake_case)"
    )
    if hints:
        message += f". Did you mean: {', '.join(hints)}?"
    return message


def is_event_triggered(name: str) -> bool:
    """Whether ``name`` is an event-triggered function name, as Netlify's build compares it:
    lower-cased, with the first ``-background`` removed (``Submission-Created-Background``)."""
    return name.lower().replace("-background", "", 1) in EVENT_TRIGGERED_FUNCTIONS


def check_function_config(name: str, config: Config, *, where: str | None = None) -> None:
    """Apply the rules that depend on the function's name; raise ConfigError if one fails.

    Rules (netlify/build plugins_core/functions): an event-triggered function
    (:data:`EVENT_TRIGGERED_FUNCTIONS`, also with ``-background``) must not have a ``path``.
    (That a scheduled function must not have a ``path`` needs no name: Config enforces it.)
    """
    # The scheduled-function rule needs no name, so Config itself enforces it.
    if config.path is not None and is_event_triggered(name):
        raise ConfigError(_netlify_message(name, "path", _EVENT_WITH_PATH, where))
