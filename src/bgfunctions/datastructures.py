"""Multi-valued mappings for HTTP: :class:`Headers`, :class:`MutableHeaders`, :class:`QueryParams`.

HTTP allows a header (``Set-Cookie``, ``Accept``) or a query parameter to appear more than once,
so these are mappings whose plain lookup gives *the first* value, and whose ``get_list`` gives
every value in the order received. The first value is what most servers and frameworks
(Starlette, Werkzeug) answer, and it is the one a client cannot hide by appending a duplicate.

Header names are case-insensitive: they are stored lower-cased (as HTTP/2 sends them) and looked
up lower-cased. Names must be HTTP tokens and values must be Latin-1 text without CR, LF or NUL,
so a header can never smuggle a second header or end the header block; anything else is a
``ValueError`` that names the header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Union
from urllib.parse import parse_qsl, urlencode

from typing_extensions import Self

__all__ = ["Headers", "HeadersInit", "MutableHeaders", "QueryParams", "QueryParamsInit"]

HeadersInit = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]]]
"""What a ``Headers`` can be built from: another Headers, a mapping, or (name, value) pairs."""

QueryParamsInit = Union[str, "QueryParams", Mapping[str, str], Iterable[tuple[str, str]]]
"""What a ``QueryParams`` can be built from: a query string (with or without ``?``) or pairs."""

# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible Latin-1 text, space and tab; CR, LF, NUL and other controls are refused.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
# Values of these headers are credentials: repr() shows that they exist, not what they hold.
_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise ValueError(f"a header name must be a str, found {type(name).__name__}: {name!r}")
    if not _TOKEN.fullmatch(name):
        raise ValueError(
            f"invalid header name {name!r}: expected an HTTP token "
            "(letters, digits and !#$%&'*+-.^_`|~, no spaces or colons)"
        )
    return name.lower()


def _check_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"the value of header {name!r} must be a str, found {type(value).__name__}: {value!r}"
        )
    bad = _BAD_VALUE.search(value)
    if bad is not None:
        raise ValueError(
            f"invalid value for header {name!r}: character {bad.group()!r} at index "
            f"{bad.start()} is not allowed (expected Latin-1 text without CR, LF or other "
            "control characters)"
        )
    return value


def _pairs(init: HeadersInit | None) -> list[tuple[str, str]]:
    if type(init) is list and init:  # before the Mapping check, which is an ABC's: slow
        fast = _checked_in_bulk(init)
        if fast is not None:
            return fast
    if init is None:
        return []
    if isinstance(init, Headers):
        return list(init._raw)
    items: Iterable[object] = init.items() if isinstance(init, Mapping) else init
    if isinstance(items, (str, bytes)):
        raise ValueError(f"headers must be a mapping or (name, value) pairs, found {items!r}")
    pairs = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"headers must be (name, value) pairs, found {item!r}")
        name = _check_name(item[0])
        pairs.append((name, _check_value(name, item[1])))
    return pairs


# Every name at once (":" is not a token character) and every value at once (a tab is allowed).
_TOKENS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?::[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")


def _checked_in_bulk(items: list[Any]) -> list[tuple[str, str]] | None:
    """The pairs of a list of (name, value) str pairs when they are all valid, checked with one
    regex over the names and one over the values (as servers hand them over: the common case);
    None for anything else, which the pair-by-pair check then explains."""
    for item in items:
        if type(item) is not tuple and type(item) is not list:
            return None
    try:
        names = ":".join([name for name, _ in items])
        values = "\t".join([value for _, value in items])
    except (TypeError, ValueError):
        return None
    if (
        names.count(":") != len(items) - 1  # no name may hold the separator itself
        or not _TOKENS.fullmatch(names)
        or _BAD_VALUE.search(values) is not None
    ):
        return None
    return [(name.lower(), value) for name, value in items]


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    # Equality keeps the order of one name's values but not the order between names.
    grouped: dict[str, list[str]] = {}
    for k, value in pairs:
        grouped.setdefault(k, []).append(value)
    return grouped


class Headers(Mapping[str, str]):
    """An immutable, case-insensitive, multi-valued view of HTTP headers.

    ``headers["Content-Type"]`` and ``headers.get(name)`` give the *first* value of a header;
    ``get_list(name)`` gives all of them; ``raw`` gives every (lower-cased name, value) pair in
    order. Iteration yields each distinct lower-cased name once. Two Headers are equal when
    they hold the same values for the same names (order between different names is ignored).
    """

    __slots__ = ("_raw",)

    _raw: list[tuple[str, str]]

    def __init__(self, headers: HeadersInit | None = None) -> None:
        """Build from another Headers, a ``Mapping[str, str]`` or ``(name, value)`` pairs."""
        self._raw = _pairs(headers)

    @classmethod
    def _trusted(cls, raw: list[tuple[str, str]]) -> Self:
        """Headers from (lower-cased name, value) pairs the library made itself: not checked
        again (for the hot path; user input always goes through ``__init__``)."""
        headers = cls.__new__(cls)
        headers._raw = raw
        return headers

    @property
    def raw(self) -> list[tuple[str, str]]:
        """Every header as a (lower-cased name, value) pair, in order (a copy)."""
        return list(self._raw)

    def get_list(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order; ``[]`` when absent."""
        key = name.lower()
        return [value for k, value in self._raw if k == key]

    def __getitem__(self, name: str) -> str:
        key = name.lower()
        for k, value in self._raw:
            if k == key:
                return value
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        for k, _ in self._raw:  # noqa: SIM110 - a loop costs a third of any(genexpr) here
            if k == key:
                return True
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._raw))

    def __len__(self) -> int:
        return len({k for k, _ in self._raw})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return _group(self._raw) == _group(other._raw)
        if isinstance(other, Mapping):
            try:
                return _group(self._raw) == _group(Headers(other)._raw)
            except ValueError:
                return False
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal Headers may be mutable ones

    def __repr__(self) -> str:
        shown = [(k, "[hidden]" if k in _SECRET else v) for k, v in self._raw]
        return f"{type(self).__name__}({shown!r})"


class MutableHeaders(Headers, MutableMapping[str, str]):
    """Headers that a handler can change, as a :class:`~bgfunctions.responses.Response` has.

    ``headers[name] = value`` replaces every value of ``name`` with one (kept at the position of
    the first); ``append(name, value)`` adds one more; ``del headers[name]`` removes them all.
    """

    __slots__ = ()

    def __setitem__(self, name: str, value: str) -> None:
        key = _check_name(name)
        value = _check_value(key, value)
        at = next((i for i, (k, _) in enumerate(self._raw) if k == key), None)
        if at is None:
            self._raw.append((key, value))
            return
        self._raw[at] = (key, value)
        self._raw[at + 1 :] = [(k, v) for k, v in self._raw[at + 1 :] if k != key]

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        kept = [(k, v) for k, v in self._raw if k != key]
        if len(kept) == len(self._raw):
            raise KeyError(name)
        self._raw[:] = kept

    def append(self, name: str, value: str) -> None:
        """Add one more value for ``name``, after any it already has."""
        key = _check_name(name)
        self._raw.append((key, _check_value(key, value)))


class QueryParams(Mapping[str, str]):
    """An immutable, multi-valued view of a URL's query parameters.

    Built from a query string (``"a=1&a=2&b="``; a leading ``?`` is ignored, ``+`` is a space,
    blank values are kept) or from pairs. ``params["a"]`` is the first value, ``get_list("a")``
    all of them. Names are case-sensitive. ``str(params)`` encodes them back to a query string.
    """

    __slots__ = ("_items",)

    _items: tuple[tuple[str, str], ...]

    def __init__(self, query: QueryParamsInit | None = None) -> None:
        """Parse a query string, or copy another QueryParams, a mapping or (name, value) pairs."""
        if query is None:
            self._items = ()
        elif isinstance(query, str):
            self._items = tuple(parse_qsl(query.removeprefix("?"), keep_blank_values=True))
        elif isinstance(query, QueryParams):
            self._items = query._items
        else:
            items: Iterable[tuple[str, str]] = (
                query.items() if isinstance(query, Mapping) else query
            )
            self._items = tuple((str(k), str(v)) for k, v in items)

    def multi_items(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, in order."""
        return list(self._items)

    def get_list(self, name: str) -> list[str]:
        """Every value of ``name``, in order; ``[]`` when absent."""
        return [v for k, v in self._items if k == name]

    def __getitem__(self, name: str) -> str:
        for k, v in self._items:
            if k == name:
                return v
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len({k for k, _ in self._items})

    def __eq__(self, other: object) -> bool:
        if isinstance(other, QueryParams):
            return _group(self._items) == _group(other._items)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return urlencode(self._items)

    def __repr__(self) -> str:
        return f"QueryParams({str(self)!r})"
