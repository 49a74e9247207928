"""The URLPattern pathname compiler, checked against an independent implementation."""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from urlpattern import URLPattern

from bgfunctions._urlpattern import compile_pathname, is_literal_path
from bgfunctions.errors import PatternError
from bgfunctions.routing import MAX_PATH_LENGTH

SAFE = "abcXY019-_~"  # characters that URL canonicalisation leaves alone
_MISSING = object()


def reference(pattern: str, path: str) -> object:
    """The params the `urlpattern` package finds, None for no match, _MISSING if invalid."""
    try:
        compiled = URLPattern({"pathname": pattern})
    except (ValueError, TypeError):
        return _MISSING
    result = compiled.exec({"pathname": path})
    if result is None:
        return None
    groups = result["pathname"]["groups"]
    return {k: v for k, v in groups.items() if v is not None}


def ours(pattern: str, path: str, *, ignore_case: bool = False) -> object:
    """Our params for ``path``, None for no match, _MISSING if the pattern is invalid."""
    try:
        compiled = compile_pathname(pattern, ignore_case=ignore_case)
    except PatternError:
        return _MISSING
    return compiled.match(path)


# --- a grammar of patterns, each element with a sampler of strings that (mostly) match it -----


@dataclass(frozen=True)
class Element:
    text: str
    sample: st.SearchStrategy[str]


segment_text = st.text(alphabet=SAFE, min_size=1, max_size=4)
path_text = st.text(alphabet=SAFE + "/", min_size=0, max_size=8)
REGEX_GROUPS: list[tuple[str, st.SearchStrategy[str]]] = [
    (r"(\d+)", st.from_regex(r"[0-9]{1,3}", fullmatch=True)),
    ("([a-c]+)", st.from_regex(r"[a-c]{1,3}", fullmatch=True)),
    ("(a|b)", st.sampled_from(["a", "b"])),
    ("([^/]+)", segment_text),
    ("(X{1,2})", st.sampled_from(["X", "XX", "XXX"])),
    ("(.*)", path_text),
    ("((?:ab)+)", st.sampled_from(["ab", "abab", "a"])),
    ("([0-9][a-z]?)", st.sampled_from(["1", "1a", "a1"])),
]


def repeat(modifier: str, one: st.SearchStrategy[str], sep: str) -> st.SearchStrategy[str]:
    """Strings for an element with ``modifier``, joined by ``sep`` when repeated."""
    low, high = {"": (1, 1), "?": (0, 1), "*": (0, 3), "+": (1, 3)}[modifier]
    return st.lists(one, min_size=low, max_size=high).map(sep.join)


@st.composite
def element(draw: st.DrawFn, index: int) -> Element:
    """One pattern element: a literal, :name, *, (regex) or {...} group, maybe after a '/'."""
    slash = draw(st.sampled_from(["/", "/", ""]))
    kind = draw(st.sampled_from(["literal", "name", "wildcard", "regex", "group"]))
    modifier = draw(st.sampled_from(["", "", "?", "*", "+"]))
    if kind == "literal":
        text = draw(segment_text)
        return Element(slash + text, st.just(slash + text))
    if kind == "group":
        before = draw(st.sampled_from(["", "/", "x", "/x"]))
        after = draw(st.sampled_from(["", "", "y"]))
        inner = draw(st.sampled_from(["", "name", "regex", "wildcard"]))
        body, sample = "", st.just("")
        if inner == "name":
            body, sample = f":n{index}", segment_text
        elif inner == "regex":
            body, sample = draw(st.sampled_from(REGEX_GROUPS))
        elif inner == "wildcard":
            body, sample = "*", path_text
        one = sample.map(lambda s: before + s + after)
        text = f"{slash}{{{before}{body}{after}}}{modifier}"
        return Element(
            text, st.just(slash).flatmap(lambda s: repeat(modifier, one, "").map(s.__add__))
        )
    if kind == "name":
        body, sample = f":n{index}", segment_text
    elif kind == "wildcard":
        body, sample = "*", path_text
    else:
        body, sample = draw(st.sampled_from(REGEX_GROUPS))
    if slash:
        return Element(slash + body + modifier, repeat(modifier, sample.map("/".__add__), ""))
    return Element(body + modifier, repeat(modifier, sample, ""))


@st.composite
def pattern_and_path(draw: st.DrawFn) -> tuple[str, str]:
    """A generated pattern and a path that is built to match it, or a random path."""
    elements = [draw(element(i)) for i in range(draw(st.integers(1, 4)))]
    pattern = "".join(e.text for e in elements)
    matching = "".join(draw(e.sample) for e in elements)
    path = draw(st.one_of(st.just(matching), path_text.map("/".__add__)))
    return pattern, path


def expected(pattern: str, path: str) -> object:
    """The reference answer, except for paths that Netlify reads as literals."""
    if is_literal_path(pattern) and any(c in pattern for c in ":\\?+"):
        # Netlify compares these as plain text; URLPattern would parse them.
        return {} if path == pattern else None
    return reference(pattern, path)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_and_path())
@example(("/a/:n0*", "/a/x/y"))
@example(("/a{/:n0}?", "/a"))
@example(("/x/*", "/x/"))
def test_agrees_with_urlpattern_on_generated_patterns(case: tuple[str, str]) -> None:
    """For grammar-generated patterns and paths, validity, match and params equal urlpattern's."""
    pattern, path = case
    assert_agrees(ours(pattern, path), expected(pattern, path))


def assert_agrees(found: object, reference_answer: object) -> None:
    """Equal, except that we may leave out a group the reference gives as "".

    The `urlpattern` package runs Rust's regex engine, which keeps an optional group that
    matched nothing as ""; JavaScript (and so URLPattern and WPT) leaves it undefined, and so
    do we (test_empty_optional_groups_are_left_out_as_in_javascript pins which groups).
    """
    if isinstance(found, dict) and isinstance(reference_answer, dict):
        left_out = set(reference_answer) - set(found)
        assert all(reference_answer[k] == "" for k in left_out), (found, reference_answer)
        reference_answer = {k: v for k, v in reference_answer.items() if k not in left_out}
    assert found == reference_answer


def lowered(params: object) -> object:
    return {k.lower(): v.lower() for k, v in params.items()} if isinstance(params, dict) else params


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_and_path())
@example(("/AB/:n0", "/ab/Q"))
def test_ignore_case_agrees_with_urlpattern_on_lower_cased_text(case: tuple[str, str]) -> None:
    """ignore_case matches as urlpattern matches the lower-cased pattern and path."""
    # The `urlpattern` package ignores ignoreCase once a pattern has groups, so the
    # reference is case-sensitive matching of lower-cased text (all our text is ASCII).
    pattern, path = case
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(path))
    assert_agrees(
        lowered(ours(pattern, mixed, ignore_case=True)), expected(pattern.lower(), path.lower())
    )


# Pattern syntax characters (no parentheses: regex groups are covered by the grammar above),
# plus letters on both sides of Unicode's identifier rules.
PATTERN_ALPHABET = (
    "/:*?+{}\\ab_$-0.~ \u00e9\u4e2d\u00b7\u2118\u2e2f\u0300\u0663\u200d\u00aa\u216b\u203f\U0001f600"
)


@settings(max_examples=2000)
@given(st.text(alphabet=PATTERN_ALPHABET, max_size=12))
@example("/products{")
@example("/:")
@example("/:a/:a")
@example("/\\")
def test_accepts_exactly_what_urlpattern_accepts(pattern: str) -> None:
    """For text built from pattern syntax, we reject a pattern exactly when urlpattern does."""
    if is_literal_path(pattern):
        return  # Netlify never hands a literal path to URLPattern
    accepted = ours(pattern, "/") is not _MISSING
    assert accepted == (reference(pattern, "/") is not _MISSING)


@settings(max_examples=1000)
@given(st.text(), st.text())
def test_compiler_raises_only_pattern_error_and_match_never_raises(pattern: str, path: str) -> None:
    """Any text either compiles or raises PatternError; a compiled pattern matches any text."""
    try:
        compiled = compile_pathname(pattern, ignore_trailing_slash=True)
    except PatternError:
        return
    result = compiled.match(path)
    assert result is None or isinstance(result, dict)


REGEX_ALPHABET = "()[]{}\\^$.*+?|-:dDwWsSbBuxc0123aAz,=!<>/"


@settings(max_examples=2000)
@given(st.text(alphabet=REGEX_ALPHABET, max_size=16), st.text(alphabet="aAz019/-\n", max_size=8))
@example("?<=a+", "/a")
@example("[\\u{10FFFF}]", "/")
@example("a{99999999999}", "/a")
@example("a{" + "9" * 5000 + "}", "/a")
@example("(?:" * 100 + "a" + ")" * 100, "/a")
def test_custom_groups_raise_only_pattern_error(body: str, path: str) -> None:
    """Any (regex) group either compiles or raises PatternError, and matching never raises."""
    try:
        compiled = compile_pathname("/(" + body + ")", ignore_case=True)
    except PatternError:
        return
    compiled.match(path)


# --- specific behaviour ---------------------------------------------------------------------


def test_invalid_pattern_message_is_netlifys() -> None:
    """An invalid pattern raises PatternError with Netlify's exact message."""
    with pytest.raises(PatternError) as info:
        compile_pathname("/products(")
    assert str(info.value) == (
        "'/products(' is not a valid path according to the URLPattern specification"
    )
    assert info.value.__cause__ is not None  # the reason is chained for the curious


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        ("/", True),
        ("/products", True),
        ("/foo?", True),
        ("/a:b", True),
        ("/a/:b", False),
        ("/a/*", False),
        ("/a/{b}?", False),
        ("/a/[b]", False),
        ("/a/(b)", False),
    ],
)
def test_literal_rule_is_netlifys(pattern: str, literal: bool) -> None:
    """A path is literal unless a segment has * { [ ( or starts with ':'."""
    assert compile_pathname(pattern).is_literal is literal


def test_literal_paths_compare_as_plain_text() -> None:
    """A literal path matches only itself, even when it contains URLPattern syntax characters."""
    compiled = compile_pathname("/foo+bar?")
    assert compiled.match("/foo+bar?") == {}
    assert compiled.match("/foobar") is None


def test_unnamed_groups_are_numbered_from_zero() -> None:
    """Unnamed groups are named '0', '1', ... in order, skipping named ones."""
    compiled = compile_pathname("/:a/*/(\\d+)")
    assert compiled.group_names == ("a", "0", "1")
    assert compiled.match("/x/y/z/42") == {"a": "x", "0": "y/z", "1": "42"}


def test_optional_group_that_did_not_match_is_left_out() -> None:
    """A :name? that is absent does not appear in the params."""
    assert compile_pathname("/a/:b?").match("/a") == {}


def test_repeated_name_captures_segments_joined_by_slash() -> None:
    """:name+ takes one or more whole segments; the param holds them with their slashes."""
    compiled = compile_pathname("/files/:path+")
    assert compiled.match("/files/a/b/c") == {"path": "a/b/c"}
    assert compiled.match("/files") is None


def test_escapes_make_syntax_characters_literal() -> None:
    """An escaped syntax character is matched as itself."""
    assert compile_pathname("/a/\\:b\\*").match("/a/:b*") == {}


def test_digit_escape_is_ascii_as_in_javascript() -> None:
    """\\d means [0-9], not any Unicode digit as in Python."""
    compiled = compile_pathname("/(\\d+)")
    assert compiled.match("/42") == {"0": "42"}
    assert compiled.match("/\u0664\u0662") is None


def test_dollar_is_end_of_input_not_before_a_newline() -> None:
    """$ inside a group matches only at the very end, as in JavaScript."""
    compiled = compile_pathname("/(a$)")
    assert compiled.match("/a") == {"0": "a"}
    assert compiled.match("/a\n") is None


def test_wildcard_matches_newlines_in_decoded_paths() -> None:
    """* matches any character of a decoded path, a newline included."""
    assert compile_pathname("/x/*").match("/x/a\nb") == {"0": "a\nb"}


def test_surrogate_pair_escape_is_one_code_point() -> None:
    """\\uD83D\\uDE00 in a group is the single code point U+1F600, as under the v flag."""
    assert compile_pathname("/(\\uD83D\\uDE00)").match("/\U0001f600") == {"0": "\U0001f600"}


@pytest.mark.parametrize(
    "pattern",
    ["/(a\\1)", "/(\\p{L})", "/((?<x>a))", "/((?i:a))", "/([[a]])", "/([a--b])", "/(a]b)"],
)
def test_unsupported_regex_features_are_rejected(pattern: str) -> None:
    """Backreferences, \\p, named groups, modifiers, nested classes and stray ] are rejected."""
    with pytest.raises(PatternError):
        compile_pathname(pattern)


def test_ignore_case_keeps_the_case_of_params() -> None:
    """With ignore_case the match is case-insensitive and params keep the path's case."""
    compiled = compile_pathname("/Users/:id", ignore_case=True)
    assert compiled.match("/USERS/AbC") == {"id": "AbC"}
    assert compile_pathname("/Users/:id").match("/users/x") is None


@pytest.mark.parametrize(
    ("pattern", "path", "params"),
    [
        ("/a", "/a/", {}),
        ("/a/", "/a", {}),
        ("/a/", "/a/", {}),
        ("/a/:b", "/a/x/", {"b": "x"}),
        ("/a/*", "/a/", {"0": ""}),
        ("/a/*", "/a/x/", {"0": "x"}),
        ("/", "/", {}),
        ("/a", "/a//", None),
        ("/", "", None),
    ],
)
def test_ignore_trailing_slash(pattern: str, path: str, params: dict[str, str] | None) -> None:
    """With ignore_trailing_slash one '/' at the end is optional on either side, not two."""
    assert compile_pathname(pattern, ignore_trailing_slash=True).match(path) == params


# --- linear matching ------------------------------------------------------------------------

# The issue's cases (each on a path that does not match, the slowest input for backtracking).
ADVERSARIAL = [
    ("/*/*/*.json", "/a" * 2000),
    ("/:a+/:b+/:c+/x", "/a" * 1024),
    ("/*" * 9 + ".json", "/a" * 60),
    ("/((?:a+)+)b", "/" + "a" * 2047),
    ("/:a:b:c/x", "/" + "a" * 2047),
]


def steps_bound(pattern: str, path: str) -> int:
    """Each (instruction, position) pair is tried once per try; a trailing slash adds a try."""
    compiled = compile_pathname(pattern, ignore_trailing_slash=True)
    assert compiled.program is not None
    return 2 * len(compiled.program.ops) * (len(path) + 1)


@pytest.mark.parametrize(("pattern", "path"), ADVERSARIAL)
def test_issue_cases_match_in_steps_linear_in_the_path(pattern: str, path: str) -> None:
    """The issue's freezing cases take at most len(program) * (len(path) + 1) steps, and
    doubling the path at most doubles the steps (Python's re takes seconds to hours)."""
    compiled = compile_pathname(pattern, ignore_trailing_slash=True)
    result, steps = compiled.match_counting(path)
    assert result is None
    assert steps <= steps_bound(pattern, path)
    _, doubled = compiled.match_counting(path + path[1:] if path.count("/") == 1 else path * 2)
    assert doubled <= 2.2 * steps


adversarial_unit = st.sampled_from(["/a", "a", "/", "a/", "//", "/a.", ".json", "aab", "/x/"])


@st.composite
def adversarial_path(draw: st.DrawFn) -> str:
    """A unit repeated up to 64 KB, maybe with a short tail: the inputs that make
    backtracking engines try every way to split the path."""
    unit = draw(adversarial_unit)
    size = draw(st.sampled_from([16, 500, 4096, 65536]))
    tail = draw(st.sampled_from(["", "/x", ".json", "b", "/"]))
    return "/" + (unit * (size // len(unit) + 1))[: size - 1 - len(tail)] + tail


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_and_path(), adversarial_path())
@example(("/*/*/*.json", ""), "/a" * 32767)
@example(("/:a+/:b+/:c+/x", ""), "/a" * 32767)
def test_random_patterns_match_adversarial_paths_within_the_step_bound(
    case: tuple[str, str], path: str
) -> None:
    """For grammar-generated patterns and paths up to 64 KB, matching never takes more than
    len(program) * (len(path) + 1) steps per try: the work is linear in the path."""
    pattern = case[0]
    try:
        compiled = compile_pathname(pattern, ignore_trailing_slash=True)
    except PatternError:
        return
    _, steps = compiled.match_counting(path)
    assert steps <= steps_bound(pattern, path)


def test_linear_matcher_gives_the_same_params_as_re() -> None:
    """On ordinary paths the linear matcher and re.fullmatch find the same groups."""
    cases = [
        ("/users/:id", "/users/42"),
        ("/files/*/(\\d+)", "/files/a/b/42"),
        ("/:a+/:b", "/x/y/z"),
        ("/book{s}?/:id?", "/books/7"),
        ("/(a|ab)(c|bcd)(d*)", "/abcd"),
        ("/:x(\\w+?)(\\w*)", "/abc"),
    ]
    for pattern, path in cases:
        compiled = compile_pathname(pattern)
        found = compiled.regex.fullmatch(path)
        assert found is not None, pattern
        expected = dict(zip(compiled.group_names, found.groups(), strict=True))
        assert compiled.match(path) == {k: v for k, v in expected.items() if v is not None}


def test_a_counted_repeat_too_large_to_spell_out_is_refused() -> None:
    """A custom group needing more than MAX_PROGRAM instructions is a PatternError at load."""
    with pytest.raises(PatternError, match="too large to match in linear time"):
        compile_pathname("/([ab]{20000})")
    assert compile_pathname("/(a{20000})").match("/" + "a" * 20000) == {"0": "a" * 20000}


@pytest.mark.parametrize(
    ("pattern", "path", "params"),
    [
        # WPT's urlpatterntestdata.json: URLPattern leaves these groups undefined.
        ("/files*?", "/files", {}),
        ("/foo:bar(.*)?", "/foo", {}),
        ("/x{(.*)}?", "/x", {}),
        # Something around the group (a prefix "/") makes the iteration non-empty: kept.
        ("/foo/*?", "/foo/", {"0": ""}),
        ("/x{/(.*)}?", "/x/", {"0": ""}),
        ("/files*?", "/files/a", {"0": "/a"}),
        # A capture outside the repeat is defined even when empty, as in JavaScript.
        ("/x(.*)", "/x", {"0": ""}),
    ],
)
def test_empty_optional_groups_are_left_out_as_in_javascript(
    pattern: str, path: str, params: dict[str, str]
) -> None:
    """An optional group with nothing around it that matches nothing is left out (undefined)."""
    assert compile_pathname(pattern).match(path) == params


@settings(max_examples=3000)
@given(
    st.text(alphabet=REGEX_ALPHABET, max_size=16),
    st.text(alphabet="aAz019/-\n_ ", max_size=8),
    st.booleans(),
)
@example("(?<=a)b|\\bz", "/z", False)
@example("(?!a)\\w+$", "/Az", True)
@example("(?:a*)*b", "/aab", False)
def test_linear_matcher_agrees_with_re_on_custom_groups(
    body: str, path: str, ignore_case: bool
) -> None:
    """For any custom group (lookarounds, \\b, classes, lazy and counted repeats), the linear
    matcher matches exactly the paths re.fullmatch matches, with the same params."""
    try:
        compiled = compile_pathname("/:g(" + body + ")", ignore_case=ignore_case)
    except PatternError:
        return
    found = compiled.regex.fullmatch(path)
    assert compiled.match(path) == (None if found is None else {"g": found.group(1)})


def test_the_matchers_memory_is_a_byte_per_instruction_and_position() -> None:
    """A many-wildcard pattern on a long path holds at most one byte per (instruction,
    position) pair while it matches, not a set entry per pair visited."""
    compiled = compile_pathname("/" + "/".join(["*"] * 60) + ".json")
    assert compiled.program is not None
    path = "/" + "a/" * (MAX_PATH_LENGTH // 16) + "b"
    table = len(compiled.program.ops) * (len(path) + 1)
    tracemalloc.start()
    try:
        found, steps = compiled.match_counting(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    assert steps > table // 2  # most pairs are visited: the worst case
    assert peak < 2 * table
