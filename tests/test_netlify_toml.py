"""netlify.toml: where the functions are, and the `[functions."GLOB"]` blocks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bgfunctions import (
    Config,
    ConfigError,
    DiscoveryError,
    Registry,
    TomlError,
    discover,
)
from bgfunctions._netlify_toml import MAX_BRACE_EXPANSION, NetlifyToml

HANDLER = "def handler(request, context):\n    return 'ok'\n"


def site(root: Path, toml: str | None, functions: dict[str, str]) -> Path:
    """Write a site: netlify.toml (when given) and function files relative to the site."""
    if toml is not None:
        (root / "netlify.toml").write_text(textwrap.dedent(toml), encoding="utf-8")
    for relative, text in functions.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# -- directories --------------------------------------------------------------------------------


def test_functions_directory_from_functions_table(tmp_path: Path) -> None:
    """`[functions] directory` says where the functions are."""
    site(tmp_path, '[functions]\ndirectory = "src/fns"\n', {"src/fns/hello.py": HANDLER})
    registry = Registry.from_site(tmp_path)
    assert registry.functions_dir == tmp_path / "src" / "fns"
    assert registry.names == ["hello"]


def test_functions_directory_from_legacy_build_functions(tmp_path: Path) -> None:
    """The legacy `[build] functions` works when `[functions] directory` is absent."""
    site(tmp_path, '[build]\nfunctions = "legacy"\n', {"legacy/hello.py": HANDLER})
    registry = Registry.from_site(tmp_path)
    assert registry.functions_dir == tmp_path / "legacy"
    assert registry.names == ["hello"]


def test_functions_table_beats_legacy_build_functions(tmp_path: Path) -> None:
    """With both keys, `[functions] directory` wins."""
    toml = '[build]\nfunctions = "legacy"\n[functions]\ndirectory = "new"\n'
    site(tmp_path, toml, {"legacy/old.py": HANDLER, "new/hello.py": HANDLER})
    assert Registry.from_site(tmp_path).names == ["hello"]


@pytest.mark.parametrize("toml", [None, "", '[build]\npublish = "public"\n'])
def test_default_functions_directory(tmp_path: Path, toml: str | None) -> None:
    """Without a directory setting (or without netlify.toml) it is `netlify/functions`."""
    site(tmp_path, toml, {"netlify/functions/hello.py": HANDLER})
    registry = Registry.from_site(tmp_path)
    assert registry.functions_dir == tmp_path / "netlify" / "functions"
    assert registry.names == ["hello"]


def test_publish_directory(tmp_path: Path) -> None:
    """`[build] publish` is resolved against the site; absent, it is None."""
    site(tmp_path, '[build]\npublish = "public"\n', {"netlify/functions/hello.py": HANDLER})
    assert Registry.from_site(tmp_path).publish_dir == tmp_path / "public"
    (tmp_path / "netlify.toml").unlink()
    assert Registry.from_site(tmp_path).publish_dir is None


def test_site_without_functions_directory_is_an_error(tmp_path: Path) -> None:
    """A configured functions directory that does not exist is named in the error."""
    site(tmp_path, '[functions]\ndirectory = "missing"\n', {})
    with pytest.raises(DiscoveryError, match="missing"):
        Registry.from_site(tmp_path)


@pytest.mark.parametrize(
    "toml",
    ["[functions]\ndirectory = 3\n", '[build]\nfunctions = ""\n', "[build]\npublish = []\n"],
)
def test_directory_settings_must_be_non_empty_strings(tmp_path: Path, toml: str) -> None:
    """A directory setting that is not a non-empty string is an error naming the key."""
    site(tmp_path, toml, {})
    with pytest.raises(ConfigError, match=r"expected a non-empty string"):
        Registry.from_site(tmp_path)


# -- syntax -------------------------------------------------------------------------------------


def test_syntax_error_gives_file_line_and_column(tmp_path: Path) -> None:
    """Invalid TOML is a TomlError naming the file, the line and the column."""
    site(tmp_path, '[build]\npublish = "public"\nthis is not toml\n', {})
    with pytest.raises(TomlError) as info:
        Registry.from_site(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "netlify.toml") in message
    assert "line 3, column" in message
    assert isinstance(info.value, ValueError)


def test_netlify_toml_that_is_not_utf8_is_a_toml_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is a TomlError naming the file."""
    (tmp_path / "netlify.toml").write_bytes(b"[build]\npublish = '\xff'\n")
    with pytest.raises(TomlError, match="UTF-8"):
        Registry.from_site(tmp_path)


def test_functions_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    """`functions = 3` is an error saying a table was expected."""
    site(tmp_path, "functions = 3\n", {})
    with pytest.raises(ConfigError, match=r"\[functions\] must be a table"):
        Registry.from_site(tmp_path)


def test_unknown_top_level_functions_key_is_an_error(tmp_path: Path) -> None:
    """A scalar under `[functions]` that is no known property is an error listing them."""
    site(tmp_path, "[functions]\ntimeout = 30\n", {})
    with pytest.raises(ConfigError, match="timeout must be a table") as info:
        Registry.from_site(tmp_path)
    assert "node_bundler" in str(info.value)


def test_block_with_an_invalid_value_names_the_block(tmp_path: Path) -> None:
    """A hard config error in a block names the file and the block."""
    toml = '[functions.hello]\nmethod = "FETCH"\n'
    site(tmp_path, toml, {"netlify/functions/hello.py": HANDLER})
    with pytest.raises(ConfigError, match=r'\[functions\."hello"\]'):
        Registry.from_site(tmp_path)


# -- glob blocks --------------------------------------------------------------------------------


GLOBS = """\
[functions.netlify]
name = "exact"

[functions."netlify*"]
name = "netlify star"
background = true

[functions."net*"]
name = "net star"
"""


@pytest.mark.parametrize(
    ("function", "display_name"),
    [("netlify", "exact"), ("netlify-x", "netlify star"), ("network", "net star"), ("web", "web")],
)
def test_blocks_merge_most_specific_last(tmp_path: Path, function: str, display_name: str) -> None:
    """Matching blocks merge by weight, so `netlify` > `netlify*` > `net*`, whatever their order."""
    site(tmp_path, GLOBS, {f"netlify/functions/{function}.py": HANDLER})
    assert Registry.from_site(tmp_path)[function].display_name == display_name


def test_less_specific_blocks_fill_keys_the_specific_one_leaves_unset(tmp_path: Path) -> None:
    """Merging is per key: `netlify` takes `background` from `netlify*`, `name` from itself."""
    site(tmp_path, GLOBS, {"netlify/functions/netlify.py": HANDLER})
    function = Registry.from_site(tmp_path)["netlify"]
    assert function.config == Config(name="exact", background=True)
    assert function.background_reasons == ("netlify.toml",)


def test_glob_supports_question_mark_and_braces(tmp_path: Path) -> None:
    """`?` matches one character and `{a,b}` either alternative, as minimatch does."""
    toml = '[functions."job-?"]\nbackground = true\n[functions."{hello,bye}"]\nbackground = true\n'
    files = {
        f"netlify/functions/{n}.py": HANDLER for n in ("job-1", "job-10", "hello", "bye", "hi")
    }
    site(tmp_path, toml, files)
    registry = Registry.from_site(tmp_path)
    assert [f.name for f in registry if f.background] == ["bye", "hello", "job-1"]


def test_glob_matching_is_case_sensitive(tmp_path: Path) -> None:
    """`[functions."report-*"]` does not match `Report-daily`."""
    toml = '[functions."report-*"]\nbackground = true\n'
    site(tmp_path, toml, {"netlify/functions/Report-daily.py": HANDLER})
    assert not Registry.from_site(tmp_path)["Report-daily"].background


def test_toml_config_and_module_config_merge_with_the_module_on_top(tmp_path: Path) -> None:
    """The effective config is the toml blocks with the module's set keys over them."""
    toml = '[functions.hello]\nname = "from toml"\nbackground = true\n'
    module = HANDLER + "config = {'path': '/hi', 'name': 'from source'}\n"
    site(tmp_path, toml, {"netlify/functions/hello.py": module})
    function = Registry.from_site(tmp_path)["hello"]
    assert function.config == Config(path="/hi", name="from source", background=True)
    assert function.background_reasons == ("netlify.toml",)


def test_top_level_background_counts_as_star_with_a_warning(tmp_path: Path) -> None:
    """`[functions] background = true` applies to every function, with a warning."""
    toml = "[functions]\nbackground = true\n"
    site(tmp_path, toml, {"netlify/functions/a.py": HANDLER, "netlify/functions/b.py": HANDLER})
    registry = Registry.from_site(tmp_path)
    assert all(f.background_reasons == ("netlify.toml",) for f in registry)
    assert any('[functions."*"]' in w and "Netlify rejects" in w for w in registry.warnings)


def test_top_level_properties_lose_to_any_glob_block(tmp_path: Path) -> None:
    """Top-level properties are the `"*"` block, so a named block overrides them."""
    toml = "[functions]\nbackground = true\n[functions.b]\nbackground = false\n"
    site(tmp_path, toml, {"netlify/functions/a.py": HANDLER, "netlify/functions/b.py": HANDLER})
    registry = Registry.from_site(tmp_path)
    assert registry["a"].background
    assert not registry["b"].background


def test_node_keys_in_a_block_are_dropped_with_a_warning(tmp_path: Path) -> None:
    """Node.js build settings load but are ignored, with a warning on the function."""
    toml = '[functions."*"]\nnode_bundler = "esbuild"\n'
    site(tmp_path, toml, {"netlify/functions/hello.py": HANDLER})
    function = Registry.from_site(tmp_path)["hello"]
    assert any("node_bundler" in w for w in function.warnings)


def test_discover_takes_netlify_toml_as_path_or_mapping(tmp_path: Path) -> None:
    """`discover(dir, netlify_toml=...)` accepts the file's path or a parsed mapping."""
    site(tmp_path, '[functions."*"]\nbackground = true\n', {"fns/hello.py": HANDLER})
    by_path = discover(tmp_path / "fns", netlify_toml=tmp_path / "netlify.toml")
    by_str = discover(tmp_path / "fns", netlify_toml=str(tmp_path / "netlify.toml"))
    by_mapping = discover(tmp_path / "fns", netlify_toml={"functions": {"*": {"background": True}}})
    assert by_path["hello"].background
    assert by_str["hello"].background
    assert by_mapping["hello"].background


@pytest.mark.parametrize(("first", "second"), [("*o", "h*"), ("h*", "*o"), ("hell?", "hello")])
def test_blocks_of_equal_weight_merge_in_file_order(
    tmp_path: Path, first: str, second: str
) -> None:
    """Two matching blocks of the same weight: the later one in the file wins."""
    toml = f'[functions."{first}"]\nname = "first"\n[functions."{second}"]\nname = "second"\n'
    site(tmp_path, toml, {"netlify/functions/hello.py": HANDLER})
    assert Registry.from_site(tmp_path)["hello"].display_name == "second"


# -- brace globs ----------------------------------------------------------------------------------


def test_brace_alternatives_match_each_name(tmp_path: Path) -> None:
    """`[functions."{a,b}-{x,y}"]` applies to each of the four names it spells."""
    toml = '[functions."{a,b}-{x,y}"]\nbackground = true\n'
    names = ("a-x", "a-y", "b-x", "b-y", "c-x")
    site(tmp_path, toml, {f"netlify/functions/{n}.py": HANDLER for n in names})
    registry = Registry.from_site(tmp_path)
    assert [f.name for f in registry if f.background] == ["a-x", "a-y", "b-x", "b-y"]


def test_brace_expansion_past_the_cap_is_an_error_naming_file_key_and_limit(
    tmp_path: Path,
) -> None:
    """`{a,b}` written 18 times (2**18 globs) is refused at once, naming file, key and limit."""
    key = "{a,b}" * 18
    site(tmp_path, f'[functions."{key}"]\nbackground = true\n', {})
    with pytest.raises(ConfigError) as info:
        Registry.from_site(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "netlify.toml") in message
    assert f'[functions."{key}"]' in message
    assert str(MAX_BRACE_EXPANSION) in message


def test_brace_expansion_at_the_cap_is_accepted(tmp_path: Path) -> None:
    """Exactly MAX_BRACE_EXPANSION globs (`{a,b}` ten times) still load and match."""
    assert MAX_BRACE_EXPANSION == 2**10
    site(tmp_path, '[functions."{a,b}' * 1 + "{a,b}" * 9 + '"]\nbackground = true\n', {})
    toml = NetlifyToml.load(tmp_path / "netlify.toml")
    assert toml.config_for("ab" * 5)[0] == Config(background=True)
    assert toml.config_for("abc")[0] is None
