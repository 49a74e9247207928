"""Background resolution: the `-background` suffix, in-source config and netlify.toml, OR-ed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgfunctions import Config, Registry, discover, resolve_background

HANDLER = "def handler(request, context):\n    return None\n"
ON, OFF, UNSET = Config(background=True), Config(background=False), Config(name="other keys only")


@pytest.mark.parametrize(
    ("name", "in_source", "toml", "background", "reasons"),
    [
        # nothing says background
        ("plain", None, None, False, ()),
        ("plain", UNSET, UNSET, False, ()),
        # each signal alone
        ("job-background", None, None, True, ("suffix",)),
        ("plain", ON, None, True, ("config",)),
        ("plain", None, ON, True, ("netlify.toml",)),
        ("plain", UNSET, ON, True, ("netlify.toml",)),
        # explicit False values
        ("plain", OFF, None, False, ()),
        ("plain", None, OFF, False, ()),
        # in-source overrides netlify.toml, both ways
        ("plain", OFF, ON, False, ()),
        ("plain", ON, OFF, True, ("config",)),
        ("plain", ON, ON, True, ("config",)),
        # the suffix is OR-ed with everything
        ("job-background", ON, None, True, ("suffix", "config")),
        ("job-background", None, ON, True, ("suffix", "netlify.toml")),
        ("job-background", None, OFF, True, ("suffix",)),
        ("job-background", UNSET, ON, True, ("suffix", "netlify.toml")),
        ("job-background", ON, ON, True, ("suffix", "config")),
    ],
)
def test_resolution_rules(
    name: str,
    in_source: Config | None,
    toml: Config | None,
    background: bool,
    reasons: tuple[str, ...],
) -> None:
    """Each row of the rule: suffix OR (in-source value if set, else the netlify.toml value)."""
    assert resolve_background(name, in_source, toml) == (background, reasons, ())


@pytest.mark.parametrize("toml", [None, ON, OFF])
def test_suffix_with_background_false_stays_background_with_a_warning(toml: Config | None) -> None:
    """`background=False` never cancels the suffix; a warning says it was ignored."""
    background, reasons, warnings = resolve_background("job-background", OFF, toml)
    assert background is True
    assert reasons == ("suffix",)
    (warning,) = warnings
    assert "'job-background'" in warning
    assert "background=False" in warning


@pytest.mark.parametrize(
    "name", ["job-Background", "job-BACKGROUND", "jobbackground", "job_background", "background"]
)
def test_suffix_is_case_sensitive_and_needs_the_hyphen(name: str) -> None:
    """Only a name ending exactly in `-background` is background by name."""
    assert resolve_background(name, None, None) == (False, (), ())


def _restated(
    name: str, in_source: Config | None, toml: Config | None
) -> tuple[bool, set[str], bool]:
    suffix = name.endswith("-background")
    source_value = in_source.background if in_source is not None else None
    toml_value = bool(toml is not None and toml.background)
    decided = source_value if source_value is not None else toml_value
    reasons = set()
    if suffix:
        reasons.add("suffix")
    if source_value is True:
        reasons.add("config")
    if source_value is None and toml_value:
        reasons.add("netlify.toml")
    return suffix or decided, reasons, suffix and source_value is False


configs = st.one_of(
    st.none(),
    st.builds(Config, background=st.none() | st.booleans(), name=st.none() | st.just("x")),
)
names = st.text(alphabet="abgkcdnrou-_B", min_size=1, max_size=14) | st.sampled_from(
    ["a-background", "-background", "a-Background", "background"]
)


@given(name=names, in_source=configs, toml=configs)
def test_resolution_matches_a_restatement_of_the_rule(
    name: str, in_source: Config | None, toml: Config | None
) -> None:
    """For any name and configs, the result matches the rule stated directly."""
    background, reasons, warnings = resolve_background(name, in_source, toml)
    expected_background, expected_reasons, expect_warning = _restated(name, in_source, toml)
    assert background is expected_background
    assert set(reasons) == expected_reasons
    assert len(reasons) == len(set(reasons))
    assert background == bool(reasons)
    assert bool(warnings) is expect_warning


# -- through discovery --------------------------------------------------------------------------


def make_site(root: Path, toml: str, functions: dict[str, str]) -> Registry:
    (root / "netlify.toml").write_text(toml, encoding="utf-8")
    directory = root / "netlify" / "functions"
    directory.mkdir(parents=True)
    for name, config in functions.items():
        (directory / f"{name}.py").write_text(HANDLER + config, encoding="utf-8")
    return Registry.from_site(root)


def test_discovered_functions_record_why_they_are_background(tmp_path: Path) -> None:
    """Each discovered function carries its background flag and the reasons for it."""
    registry = make_site(
        tmp_path,
        '[functions."report-*"]\nbackground = true\n[functions.quiet]\nbackground = true\n',
        {
            "hello": "",
            "send-background": "",
            "Send-Background": "",
            "process": "config = {'background': True}\n",
            "report-daily": "",
            "quiet": "config = {'background': False}\n",
            "report-background": "config = {'background': True}\n",
        },
    )
    observed = {f.name: (f.background, f.background_reasons) for f in registry}
    assert observed == {
        "hello": (False, ()),
        "send-background": (True, ("suffix",)),
        "Send-Background": (False, ()),
        "process": (True, ("config",)),
        "report-daily": (True, ("netlify.toml",)),
        "quiet": (False, ()),
        "report-background": (True, ("suffix", "config")),
    }


def test_discovered_suffix_with_background_false_warns(tmp_path: Path) -> None:
    """A suffixed module saying `background: False` is background and its warning is listed."""
    registry = make_site(tmp_path, "", {"job-background": "config = {'background': False}\n"})
    function = registry["job-background"]
    assert function.background
    assert function.config.background is False
    (warning,) = function.warnings
    assert "background=False" in warning
    assert warning in registry.warnings


def test_directory_form_suffix_comes_from_the_directory_name(tmp_path: Path) -> None:
    """For `NAME/index.py` the suffix is read on the directory name."""
    directory = tmp_path / "job-background"
    directory.mkdir()
    (directory / "index.py").write_text(HANDLER, encoding="utf-8")
    assert discover(tmp_path)["job-background"].background_reasons == ("suffix",)
