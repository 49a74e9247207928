"""What the invocations view hides of a request, and how a host changes it.

The view (``/.bgfunctions/``, its JSON, and ``bgfunctions invocations --json``) shows each
invocation's method, URL and headers. As Sentry's default scrubber does, it hides values by the
*name* they come under, since a value cannot be told apart from an ordinary one:

- the value of a header or query parameter whose name contains, in any case, one of
  :data:`DEFAULT_WORDS` (``x-api-key``, ``cf-access-jwt-assertion``, ``?access_token=``);
- the value of the headers :data:`DEFAULT_HEADER_NAMES` (``Cookie``, ``Set-Cookie``);
- every query value (``?code=…`` of an OAuth redirect has an innocent name);
- the user info of an absolute URL (``https://user:password@host/``).

A hidden value is shown as :data:`REDACTED`; names stay visible. :class:`Redaction` holds the
rule; the default is the rule above, and a host passes its own to ``ASGIApp``, ``WSGIApp`` or
``ServeOptions`` to widen or narrow it. Only what the view shows is redacted: the handler gets
the request as it was sent, and the journal keeps it so, so a replay runs the real request.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from bgfunctions.errors import ConfigError

__all__ = ["DEFAULT_HEADER_NAMES", "DEFAULT_WORDS", "REDACTED", "Redaction"]

REDACTED = "[redacted]"
"""What a hidden value is shown as."""

DEFAULT_WORDS: frozenset[str] = frozenset(
    {
        "auth",  # authorization, proxy-authorization, x-auth-token, oauth_verifier
        "credential",
        "hmac",  # x-shopify-hmac-sha256
        "jwt",  # cf-access-jwt-assertion, x-goog-iap-jwt-assertion
        "key",  # x-api-key, api_key
        "oidc",  # x-amzn-oidc-data: an AWS load balancer's signed claims about the user
        "passwd",
        "password",
        "secret",
        "session",
        "signature",  # stripe-signature, x-hub-signature-256
        "token",  # access_token, x-csrf-token
    }
)
"""Words (lower case) that hide the value of any header or query parameter whose name holds one."""

DEFAULT_HEADER_NAMES: frozenset[str] = frozenset({"cookie", "set-cookie"})
"""Header names (lower case) whose values are hidden whatever the words say."""


def _names(owner: str, value: object) -> frozenset[str]:
    """``value`` as a frozenset of lower-case, non-empty strings, or a ConfigError naming it."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(
            f"Redaction.{owner}: expected a collection of names, such as {{'x-api-key'}}; "
            f"got {value!r}"
        )
    names = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(
                f"Redaction.{owner}: expected non-empty strings; got {item!r} in {value!r}"
            )
        names.append(item.strip().lower())
    return frozenset(names)


@dataclass(frozen=True, slots=True, kw_only=True)
class Redaction:
    """The rule by which the invocations view hides values (see the module doc).

    ``Redaction()`` is the default rule. Widen it with more words or names
    (``Redaction(words=DEFAULT_WORDS | {"otp"})``), narrow it by showing some names
    (``Redaction(shown={"x-request-key"})``) or query values (``Redaction(query_values=False)``).
    Names are matched case-insensitively; query names after percent-decoding.
    """

    words: Collection[str] = DEFAULT_WORDS
    """A header or query name that contains one of these words has its value hidden.
    Default :data:`DEFAULT_WORDS`."""

    header_names: Collection[str] = DEFAULT_HEADER_NAMES
    """Header names whose values are hidden, matched whole. Default
    :data:`DEFAULT_HEADER_NAMES` (``cookie``, ``set-cookie``)."""

    query_values: bool = True
    """Hide every query value (default True). False hides only those whose names match
    ``words``. A query item without ``=`` may be a bare token: it counts as a value."""

    shown: Collection[str] = frozenset()
    """Header and query names whose values are always shown, matched whole: an exception to
    every other field. Default: none."""

    def __post_init__(self) -> None:
        for field in ("words", "header_names", "shown"):
            object.__setattr__(self, field, _names(field, getattr(self, field)))
        if not isinstance(self.query_values, bool):
            raise ConfigError(
                f"Redaction.query_values: expected True or False; got {self.query_values!r}"
            )

    def hides_header(self, name: str) -> bool:
        """Whether the value of header ``name`` is hidden. In order: a name in ``shown`` is
        shown; a name in ``header_names``, or one containing one of ``words``, is hidden."""
        lower = name.lower()
        if lower in self.shown:
            return False
        return lower in self.header_names or any(word in lower for word in self.words)

    def hides_query(self, name: str) -> bool:
        """Whether the value of query parameter ``name`` (percent-decoded) is hidden. In order:
        a name in ``shown`` is shown; with ``query_values`` every value is hidden; otherwise a
        name containing one of ``words`` is. A bare item (no ``=``) is hidden whole by the same
        rule, its text taken as the name."""
        lower = name.lower()
        if lower in self.shown:
            return False
        return self.query_values or any(word in lower for word in self.words)

    def headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` in order, with the hidden values replaced by :data:`REDACTED`."""
        return [(name, REDACTED if self.hides_header(name) else value) for name, value in headers]

    def url(self, url: str) -> str:
        """``url`` with its user info, and the hidden values of its query (and of a
        ``#fragment``, where OAuth's implicit flow puts tokens), replaced by :data:`REDACTED`."""
        rest, hash_, fragment = url.partition("#")
        head, question, query = rest.partition("?")
        head = _without_userinfo(head)
        if question:
            head += "?" + self._query(query)
        if hash_:
            head += "#" + self._query(fragment)
        return head

    def _query(self, query: str) -> str:
        items: list[str] = []
        for item in query.split("&"):
            name, equals, value = item.partition("=")
            if not item:
                items.append(item)
            elif not equals:
                # "?eyJhbGciOi..." may be a token with no name: hide the whole item.
                items.append(REDACTED if self.hides_query(unquote_plus(name)) else item)
            elif value and self.hides_query(unquote_plus(name)):
                items.append(f"{name}={REDACTED}")
            else:
                items.append(item)
        return "&".join(items)


def _without_userinfo(head: str) -> str:
    """``scheme://user:password@host/path`` as ``scheme://[redacted]@host/path``."""
    scheme, sep, rest = head.partition("://")
    if not sep or "/" in scheme:
        return head
    authority, slash, path = rest.partition("/")
    _, at, host = authority.rpartition("@")
    if not at:
        return head
    return f"{scheme}://{REDACTED}@{host}{slash}{path}"
