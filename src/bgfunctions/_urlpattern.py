"""Compile URLPattern *pathname* syntax to a Python regular expression.

This follows the WHATWG URL Pattern standard (https://urlpattern.spec.whatwg.org/): the
tokenizer, the "part" model (a part is fixed text, or a named/numbered group with an optional
prefix, suffix and modifier) and the regular-expression generator. Netlify's bundler adds one
rule on top: a path whose segments use none of ``* { [ (`` and do not start with ``:`` is a
*literal* and is compared as plain text (so ``/foo?`` is a valid literal path although it is not
a valid URLPattern).

Deliberate deviations, all documented in docs/routing.md:

- The standard percent-encodes the fixed text of a pattern (``/café`` becomes ``/caf%C3%A9``)
  and the URL it tests. We match the path *as given*: the adapters hand the router a decoded
  path, so fixed text is compared as written.
- The standard's custom groups ``(regex)`` are ECMAScript regexes (``v`` flag). We translate a
  well-defined subset to Python ``re`` syntax with the same meaning (``\\d`` is ASCII, ``$`` is
  the end of input, ``\\b`` uses ASCII word characters) and reject the rest with
  :class:`~bgfunctions.errors.PatternError`: backreferences, named groups, ``\\p{...}``, flag
  modifiers, nested classes and class set operations.
- ``.`` and the ``*`` wildcard match any character, newlines included: in the standard the
  tested URL is canonical and cannot contain a raw newline, while a decoded path can.

The expression is the standard's, but :meth:`CompiledPattern.match` does not hand it to Python's
backtracking ``re``: :mod:`bgfunctions._pathmatch` runs it in time linear in the path, with the
same match and groups. An optional group with nothing around it that matches nothing is left
out, as JavaScript leaves it undefined (Python would give ``""``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bgfunctions._pathmatch import Program, ProgramTooLarge, compile_program, nested_quantifier
from bgfunctions.errors import PatternError

__all__ = ["CompiledPattern", "compile_pathname", "is_literal_path"]

_SEGMENT_WILDCARD = "[^/]+?"  # "generate a segment wildcard regexp" with delimiter "/"
_FULL_WILDCARD = ".*"
_PREFIX = "/"  # the pathname options' prefix code point
_MAX_NESTING = 64  # custom-regex group depth; deeper input is rejected, not recursed into

# ECMAScript character-class escapes, spelled out so that Python's Unicode-aware \d \w \s
# do not widen them.
_JS_DIGIT = "0-9"
_JS_WORD = "a-zA-Z0-9_"
_JS_SPACE = (
    "\\t\\n\\x0b\\x0c\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
)
_CLASS_ESCAPES = {
    "d": f"[{_JS_DIGIT}]",
    "D": f"[^{_JS_DIGIT}]",
    "w": f"[{_JS_WORD}]",
    "W": f"[^{_JS_WORD}]",
    "s": f"[{_JS_SPACE}]",
    "S": f"[^{_JS_SPACE}]",
}
_W = f"[{_JS_WORD}]"
_WORD_BOUNDARY = f"(?:(?<={_W})(?!{_W})|(?<!{_W})(?={_W}))"
_NOT_WORD_BOUNDARY = f"(?:(?<={_W})(?={_W})|(?<!{_W})(?!{_W}))"
_CONTROL_ESCAPES = {"f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_SYNTAX_CHARS = frozenset("^$\\.*+?()[]{}|/")
# Characters that the ``v`` flag forbids unescaped in a class, and those it forbids doubled.
# "/" is allowed: the older ``u`` flag takes it, and ``([^/]+)`` is too common to refuse.
_CLASS_SYNTAX_CHARS = frozenset("()[]{}-\\|")
_CLASS_DOUBLE_PUNCTUATORS = frozenset("&!#$%*+,.:;<=>?@^`~")

# Unicode ID_Start / ID_Continue are not exposed by unicodedata; derive them from the general
# category plus the Other_ID_* and Pattern_Syntax lists of UAX #31.
_OTHER_ID_START = frozenset("\u1885\u1886\u2118\u212e\u309b\u309c")
_OTHER_ID_CONTINUE = frozenset(
    "\u00b7\u0387\u1369\u136a\u136b\u136c\u136d\u136e\u136f\u1370\u1371\u19da\u30fb\uff65"
)
_PATTERN_SYNTAX_LETTERS = frozenset("\u2e2f")


class _Invalid(Exception):
    """Internal: why a pattern is rejected (chained as the cause of the PatternError)."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # open, close, regexp, name, char, escaped, modifier, asterisk, end
    value: str
    index: int


@dataclass(frozen=True, slots=True)
class _Part:
    kind: str  # fixed, regexp, segment, full
    value: str
    modifier: str  # "", "?", "*", "+"
    name: str = ""
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledPattern:
    """A path pattern compiled once to an anchored regular expression."""

    pattern: str
    """The pattern as declared, e.g. ``"/travel-guide/:city/:country"``."""
    regex: re.Pattern[str]
    """The standard's expression in Python syntax. :meth:`match` runs it in linear time;
    ``regex.fullmatch`` gives the same answer but can backtrack for minutes."""
    group_names: tuple[str, ...]
    """The name of each capturing group in order; unnamed groups are ``"0"``, ``"1"``, ..."""
    is_literal: bool
    """True when Netlify treats the path as plain text (no ``* { [ (`` and no ``:`` segment)."""
    ignore_trailing_slash: bool = False
    """When True, :meth:`match` also accepts the path without one trailing ``/``."""
    omit_if_empty: tuple[bool, ...] = ()
    """Per group: True for an optional group with nothing around it (``(.*)?``, ``*?``), which
    JavaScript leaves undefined rather than ``""`` when it matches nothing."""
    program: Program | None = None
    """``regex`` compiled for the linear matcher (see :mod:`bgfunctions._pathmatch`)."""
    warnings: tuple[str, ...] = ()
    """Problems that are not errors, such as a custom group with nested quantifiers."""

    def match(self, path: str) -> dict[str, str] | None:
        """Return the params of ``path``, or None when it does not match.

        A group that did not take part in the match (an optional ``:name?``) is left out.
        With ``ignore_trailing_slash``, the path without its trailing ``/`` is tried first (so
        a ``*`` does not capture that slash), then the path as given (so ``/a/*`` still matches
        ``/a/``). The work is linear in the path's length (see :meth:`match_counting`).
        """
        return self.match_counting(path)[0]

    def match_counting(self, path: str) -> tuple[dict[str, str] | None, int]:
        """:meth:`match`, and the number of matcher steps it took: at most
        ``len(program.ops) * (len(path) + 1)`` per try, whatever the pattern and the path."""
        program = self.program
        if program is None:  # built by hand, not by compile_pathname
            program = compile_program(self.regex.pattern, self.regex.flags)
        steps = 0
        found = None
        if self.ignore_trailing_slash and len(path) > 1 and path.endswith("/"):
            found, steps = program.fullmatch(path[:-1])
            text = path[:-1]
        if found is None:
            found, more = program.fullmatch(path)
            steps += more
            text = path
        if found is None:
            return None, steps
        params = {}
        omit = self.omit_if_empty or (False,) * len(self.group_names)
        for index, name in enumerate(self.group_names):
            start, end = found[2 * index], found[2 * index + 1]
            # JavaScript refuses an optional iteration that matches nothing and skips the
            # group instead: same match, group undefined (URLPattern's answer).
            if start >= 0 and end >= 0 and not (omit[index] and start == end):
                params[name] = text[start:end]
        return params, steps


def is_literal_path(pattern: str) -> bool:
    """Netlify's rule: a path is literal unless a segment has ``* { [ (`` or starts with ``:``."""
    return not any(
        segment.startswith(":") or any(c in segment for c in "*{[(")
        for segment in pattern.split("/")
    )


def compile_pathname(
    pattern: str, *, ignore_case: bool = False, ignore_trailing_slash: bool = False
) -> CompiledPattern:
    """Compile a URLPattern pathname (or a Netlify literal path) once.

    ``ignore_case`` is URLPattern's ``ignoreCase`` option. With ``ignore_trailing_slash`` one
    ``/`` at the end is optional on both sides: a fixed trailing ``/`` is dropped from the
    pattern and :meth:`CompiledPattern.match` also tries the path without its trailing ``/``
    (so ``/a/`` and ``/a`` are the same route, and both match ``/a`` and ``/a/``).

    Raises :class:`~bgfunctions.errors.PatternError` (and nothing else) for an invalid pattern.
    """
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    literal = is_literal_path(pattern)
    try:
        if literal:
            parts = [_Part("fixed", pattern, "")] if pattern else []
        else:
            parts = _parse(_tokenize(pattern))
        source, names = _generate(parts, drop_trailing_slash=ignore_trailing_slash)
        regex = re.compile(source, flags)
    except (_Invalid, re.error, RecursionError, OverflowError) as exc:
        raise PatternError(
            f"'{pattern}' is not a valid path according to the URLPattern specification"
        ) from exc
    try:
        program = compile_program(source, flags)
    except ProgramTooLarge as exc:
        raise PatternError(f"'{pattern}' is too large to match in linear time: {exc}") from exc
    return CompiledPattern(
        pattern=pattern,
        regex=regex,
        group_names=tuple(names),
        is_literal=literal,
        ignore_trailing_slash=ignore_trailing_slash,
        omit_if_empty=tuple(
            p.modifier == "?" and not p.prefix and not p.suffix for p in parts if p.kind != "fixed"
        ),
        program=program,
        warnings=_ambiguity_warnings(pattern, parts, flags),
    )


def _ambiguity_warnings(pattern: str, parts: list[_Part], flags: int) -> tuple[str, ...]:
    """A warning per custom group whose quantifiers nest (``((?:a+)+)``, or ``(a+)+``)."""
    warnings = []
    for part in parts:
        if part.kind != "regexp":
            continue
        group = f"({part.value}){part.modifier}"
        if nested_quantifier(f"(?:{_translate_regexp(part.value)}){part.modifier}", flags):
            warnings.append(
                f"the path '{pattern}' has the custom group '{group}', whose quantifiers nest: "
                f"it can match a path in exponentially many ways. bgfunctions matches it in "
                f"linear time, but backtracking engines (JavaScript's, on Netlify) can take "
                f"minutes on one request; write it without a repeat inside a repeat"
            )
    return tuple(warnings)


# --- tokenizer ------------------------------------------------------------------------------


def _is_name_char(c: str, first: bool) -> bool:
    if c in "$_" or c in _OTHER_ID_START:
        return True
    if not first and (c in "\u200c\u200d" or c in _OTHER_ID_CONTINUE):
        return True
    if c in _PATTERN_SYNTAX_LETTERS:
        return False
    category = unicodedata.category(c)
    if category[0] == "L" or category == "Nl":
        return True
    return not first and category in ("Mn", "Mc", "Nd", "Pc")


def _tokenize(text: str) -> list[_Token]:
    """The standard's tokenizer with the "strict" policy: every tokenizing error is fatal."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "*":
            tokens.append(_Token("asterisk", c, i))
            i += 1
        elif c in "+?":
            tokens.append(_Token("modifier", c, i))
            i += 1
        elif c == "\\":
            if i == n - 1:
                raise _Invalid(f"a '\\' at index {i} escapes nothing")
            tokens.append(_Token("escaped", text[i + 1], i))
            i += 2
        elif c == "{":
            tokens.append(_Token("open", c, i))
            i += 1
        elif c == "}":
            tokens.append(_Token("close", c, i))
            i += 1
        elif c == ":":
            j = i + 1
            while j < n and _is_name_char(text[j], first=j == i + 1):
                j += 1
            if j == i + 1:
                raise _Invalid(f"the ':' at index {i} is not followed by a name")
            tokens.append(_Token("name", text[i + 1 : j], i))
            i = j
        elif c == "(":
            j = _end_of_regexp(text, i)
            tokens.append(_Token("regexp", text[i + 1 : j - 1], i))
            i = j
        else:
            tokens.append(_Token("char", c, i))
            i += 1
    tokens.append(_Token("end", "", n))
    return tokens


def _end_of_regexp(text: str, start: int) -> int:
    """Return the index just past the ``)`` that closes the group opened at ``start``."""
    depth, j, n = 1, start + 1, len(text)
    while j < n:
        c = text[j]
        if not c.isascii() or (j == start + 1 and c == "?"):
            raise _Invalid(f"the group at index {start} starts with '?' or has non-ASCII text")
        if c == "\\":
            if j == n - 1 or not text[j + 1].isascii():
                raise _Invalid(f"bad escape in the group at index {start}")
            j += 2
            continue
        if c == ")":
            depth -= 1
            if depth == 0:
                if j == start + 1:
                    raise _Invalid(f"the group at index {start} is empty")
                return j + 1
        elif c == "(":
            depth += 1
            if j == n - 1 or text[j + 1] != "?":
                raise _Invalid(f"a group nested in the group at index {start} must be (?...)")
        j += 1
    raise _Invalid(f"the group opened at index {start} is not closed")


# --- parser ---------------------------------------------------------------------------------


class _Parser:
    """The standard's "parse a pattern string", with the pathname options."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.parts: list[_Part] = []
        self.pending = ""
        self.next_number = 0

    def take(self, kind: str) -> _Token | None:
        token = self.tokens[self.index]
        if token.kind != kind:
            return None
        self.index += 1
        return token

    def take_regexp_or_wildcard(self, name: _Token | None) -> _Token | None:
        token = self.take("regexp")
        if name is None and token is None:
            token = self.take("asterisk")
        return token

    def take_modifier(self) -> _Token | None:
        return self.take("modifier") or self.take("asterisk")

    def take_text(self) -> str:
        text = ""
        while (token := self.take("char") or self.take("escaped")) is not None:
            text += token.value
        return text

    def flush_pending(self) -> None:
        if self.pending:
            self.parts.append(_Part("fixed", self.pending, ""))
            self.pending = ""

    def add_part(
        self,
        prefix: str,
        name: _Token | None,
        regexp: _Token | None,
        suffix: str,
        modifier: _Token | None,
    ) -> None:
        mod = modifier.value if modifier else ""
        if name is None and regexp is None and not mod:
            self.pending += prefix
            return
        self.flush_pending()
        if name is None and regexp is None:
            if prefix:
                self.parts.append(_Part("fixed", prefix, mod))
            return
        if regexp is None:
            value = _SEGMENT_WILDCARD
        elif regexp.kind == "asterisk":
            value = _FULL_WILDCARD
        else:
            value = regexp.value
        kind = "regexp"
        if value == _SEGMENT_WILDCARD:
            kind, value = "segment", ""
        elif value == _FULL_WILDCARD:
            kind, value = "full", ""
        if name is not None:
            part_name = name.value
        else:
            part_name = str(self.next_number)
            self.next_number += 1
        if any(p.name == part_name for p in self.parts):
            raise _Invalid(f"the name {part_name!r} is used twice")
        self.parts.append(_Part(kind, value, mod, part_name, prefix, suffix))

    def parse(self) -> list[_Part]:
        while self.index < len(self.tokens):
            char = self.take("char")
            name = self.take("name")
            regexp = self.take_regexp_or_wildcard(name)
            if name is not None or regexp is not None:
                prefix = char.value if char else ""
                if prefix and prefix != _PREFIX:
                    self.pending += prefix
                    prefix = ""
                self.flush_pending()
                self.add_part(prefix, name, regexp, "", self.take_modifier())
                continue
            fixed = char or self.take("escaped")
            if fixed is not None:
                self.pending += fixed.value
                continue
            if self.take("open") is not None:
                prefix = self.take_text()
                name = self.take("name")
                regexp = self.take_regexp_or_wildcard(name)
                suffix = self.take_text()
                if self.take("close") is None:
                    token = self.tokens[self.index]
                    raise _Invalid(f"expected '}}' at index {token.index}, found {token.value!r}")
                self.add_part(prefix, name, regexp, suffix, self.take_modifier())
                continue
            self.flush_pending()
            if self.take("end") is None:
                token = self.tokens[self.index]
                raise _Invalid(f"unexpected {token.value!r} at index {token.index}")
        return self.parts


def _parse(tokens: list[_Token]) -> list[_Part]:
    return _Parser(tokens).parse()


# --- regex generation -----------------------------------------------------------------------


def _generate(parts: list[_Part], *, drop_trailing_slash: bool) -> tuple[str, list[str]]:
    """The standard's "generate a regular expression and name list", in Python syntax."""
    if drop_trailing_slash and parts:
        last = parts[-1]
        # A fixed trailing "/" is the optional one, so "/a/" also matches "/a" (but "/" stays).
        droppable = last.kind == "fixed" and not last.modifier and last.value.endswith("/")
        if droppable and (len(parts) > 1 or len(last.value) > 1):
            parts = [*parts[:-1], _Part("fixed", last.value[:-1], "")]
    out: list[str] = []
    names: list[str] = []
    for part in parts:
        if part.kind == "fixed":
            if not part.modifier:
                out.append(re.escape(part.value))
            else:
                out.append(f"(?:{re.escape(part.value)}){part.modifier}")
            continue
        names.append(part.name)
        if part.kind == "segment":
            value = _SEGMENT_WILDCARD
        elif part.kind == "full":
            value = _FULL_WILDCARD
        else:
            value = _translate_regexp(part.value)
        prefix, suffix = re.escape(part.prefix), re.escape(part.suffix)
        mod = part.modifier
        if part.kind == "full" and mod in ("*", "+"):
            # ".*" already matches any run of repetitions; the nested quantifier the standard
            # writes here would match the same strings but backtrack exponentially.
            mod = "?" if mod == "*" and (prefix or suffix) else ""
        if not prefix and not suffix:
            if mod in ("", "?"):
                out.append(f"({value}){mod}")
            else:
                out.append(f"((?:{value}){mod})")
        elif mod in ("", "?"):
            out.append(f"(?:{prefix}({value}){suffix}){mod}")
        else:
            repeated = f"(?:{value})(?:{suffix}{prefix}(?:{value}))*"
            out.append(f"(?:{prefix}({repeated}){suffix})" + ("?" if mod == "*" else ""))
    return "".join(out), names


# --- ECMAScript custom groups ---------------------------------------------------------------


def _class_char(code: int) -> str:
    """One code point spelled as an escape, safe anywhere inside a Python character class."""
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class _RegexpTranslator:
    """Translate the supported subset of an ECMAScript (``v`` flag) regex to Python ``re``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.text[j] if j < len(self.text) else ""

    def fail(self, what: str) -> _Invalid:
        return _Invalid(f"{what} at index {self.i} of the regex {self.text!r}")

    def translate(self) -> str:
        result = self.disjunction(0)
        if self.i != len(self.text):
            raise self.fail(f"unexpected {self.peek()!r}")
        return result

    def disjunction(self, depth: int) -> str:
        if depth > _MAX_NESTING:
            raise self.fail("groups nested too deeply")
        alternatives = [self.alternative(depth)]
        while self.peek() == "|":
            self.i += 1
            alternatives.append(self.alternative(depth))
        return "|".join(alternatives)

    def alternative(self, depth: int) -> str:
        out: list[str] = []
        while self.i < len(self.text) and self.peek() not in "|)":
            atom, quantifiable = self.term(depth)
            quantifier = self.quantifier()
            if quantifier and not quantifiable:
                raise self.fail("nothing to repeat")
            out.append(atom + quantifier)
        return "".join(out)

    def term(self, depth: int) -> tuple[str, bool]:
        c = self.peek()
        if c == "^":
            self.i += 1
            return r"\A", False
        if c == "$":
            self.i += 1
            return r"\Z", False  # Python's "$" would also match before a final newline
        if c == ".":
            self.i += 1
            return ".", True
        if c == "[":
            return self.char_class(), True
        if c == "(":
            return self.group(depth)
        if c == "\\":
            if self.peek(1) in ("b", "B"):
                self.i += 2
                return (_WORD_BOUNDARY if self.peek(-1) == "b" else _NOT_WORD_BOUNDARY), False
            return self.escape(), True
        if c in _SYNTAX_CHARS - {"/"}:
            raise self.fail(f"unescaped {c!r}")
        self.i += 1
        return re.escape(c), True

    def group(self, depth: int) -> tuple[str, bool]:
        # The tokenizer guarantees every inner group starts with "(?".
        for opener, quantifiable in (
            ("(?:", True),
            ("(?=", False),
            ("(?!", False),
            ("(?<=", False),
            ("(?<!", False),
        ):
            if self.text.startswith(opener, self.i):
                self.i += len(opener)
                body = self.disjunction(depth + 1)
                if self.peek() != ")":
                    raise self.fail("unclosed group")
                self.i += 1
                return f"{opener}{body})", quantifiable
        raise self.fail("unsupported group (named groups and flag modifiers are not supported)")

    def quantifier(self) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            q = c
        elif c == "{":
            m = re.compile(r"\{([0-9]+)(,([0-9]*))?\}").match(self.text, self.i)
            if m is None:
                raise self.fail("unescaped '{'")
            if len(m.group(1)) > 9 or len(m.group(3) or "") > 9:
                raise self.fail("repetition count too large")
            low, high = int(m.group(1)), m.group(3)
            if high and int(high) < low:
                raise self.fail("numbers out of order in {} quantifier")
            self.i = m.end()
            q = m.group(0)
        else:
            return ""
        if self.peek() == "?":
            self.i += 1
            q += "?"
        if self.peek() in ("*", "+", "?", "{"):
            raise self.fail("nothing to repeat")
        return q

    def escape(self) -> str:
        """Translate the escape at ``self.i`` (outside a class) to Python."""
        self.i += 1
        c = self.peek()
        if not c:
            raise self.fail("'\\' at the end")
        self.i += 1
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        code = self.escaped_code_point(c, in_class=False)
        return _class_char(code)

    def escaped_code_point(self, c: str, *, in_class: bool) -> int:
        if c in _CONTROL_ESCAPES:
            return ord(_CONTROL_ESCAPES[c])
        if c in _SYNTAX_CHARS or (c == "-" and in_class):
            return ord(c)
        if c == "b" and in_class:
            return 0x08
        if c == "0" and not self.peek().isdigit():
            return 0
        if c == "c" and self.peek().isascii() and self.peek().isalpha():
            self.i += 1
            return ord(self.peek(-1)) % 32
        if c == "x":
            return self.hex_digits(2)
        if c == "u":
            if self.peek() == "{":
                m = re.compile(r"\{([0-9a-fA-F]+)\}").match(self.text, self.i)
                if m is None or int(m.group(1), 16) > 0x10FFFF:
                    raise self.fail("bad \\u{...} escape")
                self.i = m.end()
                return int(m.group(1), 16)
            code = self.hex_digits(4)
            # A surrogate pair written as two \u escapes is one code point under the u/v flag.
            if 0xD800 <= code <= 0xDBFF and self.text.startswith("\\u", self.i):
                m = re.compile(r"\\u([dD][c-fC-F][0-9a-fA-F]{2})").match(self.text, self.i)
                if m is not None:
                    self.i = m.end()
                    return 0x10000 + ((code - 0xD800) << 10) + (int(m.group(1), 16) - 0xDC00)
            return code
        raise self.fail(f"unsupported escape '\\{c}'")

    def hex_digits(self, count: int) -> int:
        digits = self.text[self.i : self.i + count]
        if len(digits) != count or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.fail("bad hexadecimal escape")
        self.i += count
        return int(digits, 16)

    def char_class(self) -> str:
        self.i += 1  # "["
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        items: list[str] = []
        while self.peek() != "]":
            if not self.peek():
                raise self.fail("unclosed character class")
            low = self.class_atom()
            if self.peek() == "-" and self.peek(1) != "]":
                self.i += 1
                high = self.class_atom()
                if isinstance(low, str) or isinstance(high, str):
                    raise self.fail("a class escape cannot bound a range")
                if high < low:
                    raise self.fail("range out of order in character class")
                items.append(f"{_class_char(low)}-{_class_char(high)}")
            elif isinstance(low, str):
                items.append(low)
            else:
                items.append(_class_char(low))
        self.i += 1  # "]"
        if not items:
            return "(?s:.)" if negated else "(?!)"
        return "[" + ("^" if negated else "") + "".join(items) + "]"

    def class_atom(self) -> int | str:
        """One class member: a code point, or the inside of a set for ``\\d``, ``\\w``, ``\\s``."""
        c = self.peek()
        if not c:
            raise self.fail("unclosed character class")
        if c == "\\":
            if self.peek(1) in ("d", "w", "s"):
                self.i += 2
                return _CLASS_ESCAPES[self.peek(-1)][1:-1]
            if self.peek(1) in ("D", "W", "S"):
                raise self.fail("a negated class escape inside a class is not supported")
            self.i += 1
            c = self.peek()
            if not c:
                raise self.fail("'\\' at the end")
            self.i += 1
            return self.escaped_code_point(c, in_class=True)
        if c in _CLASS_SYNTAX_CHARS:
            raise self.fail(f"{c!r} must be escaped inside a character class")
        if c in _CLASS_DOUBLE_PUNCTUATORS and self.peek(1) == c:
            raise self.fail(f"{c + c!r} is reserved inside a character class")
        self.i += 1
        return ord(c)


def _translate_regexp(text: str) -> str:
    return _RegexpTranslator(text).translate()
