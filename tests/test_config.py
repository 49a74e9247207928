"""Config: Netlify's function configuration keys, validated and normalised."""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgfunctions.config import (
    EVENT_TRIGGERED_FUNCTIONS,
    HTTP_METHODS,
    REGIONS,
    Config,
    RateLimit,
    check_function_config,
    is_event_triggered,
    validate_cron,
)
from bgfunctions.errors import BgFunctionsWarning, ConfigError, PatternError

WHERE = "netlify/functions/hello.py"
URLPATTERN_TEXT = "'/products(' is not a valid path according to the URLPattern specification"


def make(field: str, value: object) -> Config:
    """Config with one field given by name (the value deliberately untyped)."""
    kwargs: dict[str, Any] = {field: value}
    return Config(**kwargs)


def netlify_error(key: str, message: str) -> str:
    """The regex for Netlify's text for a hard error in function `hello`."""
    return "^" + re.escape(f"Function hello has a configuration error on '{key}': {message}")


# ---------------------------------------------------------------- the dataclass


def test_every_field_defaults_to_not_set() -> None:
    """A bare Config has every field None, and equals another bare Config."""
    config = Config()
    assert all(getattr(config, f.name) is None for f in dataclasses.fields(Config))
    assert config == Config()
    assert config.to_dict() == {}


def test_config_is_frozen() -> None:
    """Assigning to a field raises FrozenInstanceError."""
    config = Config(path="/a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.path = ("/b",)  # type: ignore[misc]


def test_config_is_slotted() -> None:
    """Config has __slots__ and no per-instance __dict__."""
    assert "path" in Config.__slots__
    assert not hasattr(Config(), "__dict__")


def test_config_is_keyword_only() -> None:
    """Positional arguments are refused."""
    untyped: Any = Config  # the type checker would refuse the call itself
    with pytest.raises(TypeError):
        untyped("/a")


def test_config_is_hashable_and_picklable() -> None:
    """Equal configs hash alike and survive pickling (process executors send them)."""
    config = Config(path=["/a"], method="get", rate_limit={"windowLimit": 5, "windowSize": 60})
    assert hash(config) == hash(Config(path="/a", method=["GET"], rate_limit=config.rate_limit))
    assert pickle.loads(pickle.dumps(config)) == config


def test_every_field_has_a_docstring() -> None:
    """The class source documents every field right under its annotation."""
    import inspect

    source = inspect.getsource(Config)
    for field in dataclasses.fields(Config):
        assert re.search(rf"\n    {field.name}: [^\n]+\n    \"\"\"", source), field.name


# ---------------------------------------------------------------- path and excluded_path


@pytest.mark.parametrize("field", ["path", "excluded_path"])
def test_paths_are_stored_as_tuples_without_duplicates(field: str) -> None:
    """A str becomes a 1-tuple; a list loses duplicates and keeps its order."""
    assert getattr(make(field, "/a"), field) == ("/a",)
    assert getattr(make(field, ["/b", "/a", "/b"]), field) == ("/b", "/a")


@pytest.mark.parametrize("field", ["path", "excluded_path"])
def test_an_empty_path_list_means_not_set(field: str) -> None:
    """An empty list declares no path, as with Netlify."""
    assert getattr(make(field, []), field) is None


@pytest.mark.parametrize("field", ["path", "excluded_path"])
def test_a_path_must_start_with_a_slash(field: str) -> None:
    """The constructor names the field and the value."""
    message = f"Config.{field}: must start with a '/'; got 'foo'"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make(field, "foo")


@pytest.mark.parametrize("value", [3, 0.5, b"/a", {"/a"}, ["/a", 3], [None], {"a": 1}])
def test_a_path_must_be_a_string_or_a_sequence_of_strings(value: object) -> None:
    """Numbers, bytes, sets, mappings and non-string elements are refused."""
    with pytest.raises(ConfigError, match=r"^Config\.path: must be a string or array of strings"):
        Config(path=value)  # type: ignore[arg-type]


def test_an_invalid_pattern_is_a_pattern_error() -> None:
    """A path URLPattern cannot parse raises PatternError with Netlify's text."""
    with pytest.raises(PatternError, match=re.escape(URLPATTERN_TEXT)) as caught:
        Config(path="/products(")
    assert str(caught.value).startswith("Config.path: ")


def test_literal_paths_are_not_parsed_as_patterns() -> None:
    """A path without pattern syntax is a literal (ZISI's rule), so ')' alone is fine."""
    assert Config(path="/odd)").path == ("/odd)",)


def test_pattern_paths_are_accepted() -> None:
    """Named groups, wildcards and optional groups are valid paths."""
    paths = ["/travel/:city/:country", "/files/*", "/items{/:id}?"]
    assert Config(path=paths).path == tuple(paths)


# ---------------------------------------------------------------- method


def test_methods_are_upper_cased_tuples() -> None:
    """Methods match case-insensitively and are stored upper-case, duplicates removed."""
    assert Config(method="get").method == ("GET",)
    assert Config(method=["post", "Put", "POST"]).method == ("POST", "PUT")
    assert Config(method=[m.lower() for m in HTTP_METHODS]).method == HTTP_METHODS


@pytest.mark.parametrize("value", ["FETCH", ["GET", "CONNECT"], 7, ["GET", None]])
def test_unknown_methods_are_refused(value: object) -> None:
    """Anything but GET POST PUT PATCH OPTIONS DELETE HEAD is an error naming the value."""
    with pytest.raises(ConfigError, match=r"^Config\.method: must be a string or array") as info:
        Config(method=value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


# ---------------------------------------------------------------- booleans and text


@pytest.mark.parametrize("field", ["prefer_static", "background"])
def test_booleans_accept_only_bool(field: str) -> None:
    """True and False are kept (False is set, not None); 1 and 'yes' are refused."""
    assert getattr(make(field, False), field) is False
    assert getattr(make(field, True), field) is True
    for value in (1, "yes"):
        with pytest.raises(ConfigError, match=rf"^Config\.{field}: must be a boolean; got"):
            make(field, value)


@pytest.mark.parametrize("field", ["name", "generator"])
def test_text_fields_need_a_non_empty_string(field: str) -> None:
    """name and generator are kept as given; '' and non-strings are refused."""
    assert getattr(make(field, "My function"), field) == "My function"
    for value in ("", "  ", 3):
        with pytest.raises(ConfigError, match=rf"^Config\.{field}: must be a non-empty string"):
            make(field, value)


# ---------------------------------------------------------------- schedule

VALID_CRONS = [
    "* * * * *",
    "*/15 * * * *",
    "0 0 1 1 *",
    "5,10-20/5 0-23 1-31 1-12 0-7",
    "0 9 * jan-mar MON-fri",
    "0 0 ? * SUN",
    "30 2 */2 * 1/2",
    "@yearly",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "  0 0 * * *  ",
]
INVALID_CRONS = [
    ("", "found 0 field(s)"),
    ("* * * *", "found 4 field(s)"),
    ("* * * * * *", "found 6 field(s)"),
    ("60 * * * *", "60 is outside 0-59"),
    ("* 24 * * *", "24 is outside 0-23"),
    ("* * 0 * *", "0 is outside 1-31"),
    ("* * * 13 *", "13 is outside 1-12"),
    ("* * * * 8", "8 is outside 0-7"),
    ("*/0 * * * *", "a step must be at least 1"),
    ("5-1 * * * *", "a range must go from low to high"),
    ("? * * * *", "invalid minute field '?'"),
    ("* * * foo *", "invalid month field 'foo'"),
    ("1,,2 * * * *", "invalid minute field ''"),
    ("@reboot", "@reboot is not supported"),
    ("@annually", "@annually is not supported"),
    ("@every", "unknown cron macro"),
]


@pytest.mark.parametrize("expression", VALID_CRONS)
def test_valid_cron_expressions_are_accepted(expression: str) -> None:
    """Five-field cron, names, '?', steps, lists and the allowed macros pass."""
    validate_cron(expression)
    assert Config(schedule=expression).schedule == expression.strip()


@pytest.mark.parametrize(("expression", "reason"), INVALID_CRONS)
def test_invalid_cron_expressions_say_what_is_wrong(expression: str, reason: str) -> None:
    """validate_cron and Config name the bad part; @reboot and @annually are refused."""
    with pytest.raises(ConfigError, match=re.escape(reason)):
        validate_cron(expression)
    with pytest.raises(ConfigError, match=r"^Config\.schedule: "):
        Config(schedule=expression)


def test_a_scheduled_function_must_not_have_a_path() -> None:
    """schedule + path is Netlify's build error."""
    with pytest.raises(ConfigError, match=r"^Config\.path: Scheduled functions must not specify"):
        Config(schedule="@daily", path="/cron")


def test_a_scheduled_function_may_exclude_paths() -> None:
    """Only `path` conflicts with schedule."""
    assert Config(schedule="@daily", excluded_path="/x").excluded_path == ("/x",)


# ---------------------------------------------------------------- platform no-ops


def test_regions_are_lower_cased() -> None:
    """Every Netlify region is accepted in any case and stored lower-case."""
    for region in REGIONS:
        assert Config(region=region.upper()).region == region


def test_an_unknown_region_lists_the_valid_ones() -> None:
    """The error names the value and every region."""
    with pytest.raises(ConfigError, match=r"^Config\.region: must be one of cmh .* yul") as info:
        Config(region="mars")
    assert "'mars'" in str(info.value)


@pytest.mark.parametrize(
    ("value", "megabytes"),
    [(1024, 1024), (4096, 4096), (2048.0, 2048), ("2gb", 2048), ("2GB", 2048),
     ("1.5gb", 1536), ("1536mb", 1536), ("3000", 3000), (" 2 gb ", 2048)],
)  # fmt: skip
def test_memory_is_megabytes(value: Any, megabytes: int) -> None:
    """Memory takes MB as a number or a string with a unit, stored as int MB."""
    assert Config(memory=value).memory == megabytes


@pytest.mark.parametrize("value", [512, 4097, "5gb", "0.5gb", "lots", "2 tb", True, 1500.5, []])
def test_memory_outside_1024_to_4096_is_refused(value: Any) -> None:
    """Values outside the range, unknown units and wrong types are errors."""
    with pytest.raises(ConfigError, match=r"^Config\.memory: must be a whole number of megabytes"):
        Config(memory=value)


def test_vcpu_is_a_number_from_half_to_two() -> None:
    """vcpu accepts 0.5 to 2 and stores a float; outside or non-numbers are refused."""
    assert Config(vcpu=0.5).vcpu == 0.5
    assert Config(vcpu=2).vcpu == 2.0
    for value in (0.4, 2.5, True, "1"):
        with pytest.raises(ConfigError, match=r"^Config\.vcpu: must be a number from 0.5 to 2"):
            Config(vcpu=value)  # type: ignore[arg-type]


def test_memory_and_vcpu_cannot_both_be_set() -> None:
    """Netlify's text, reported on vcpu as ZISI does."""
    with pytest.raises(ConfigError, match=r"^Config\.vcpu: `memory` and `vcpu` cannot both be set"):
        Config(memory=2048, vcpu=1)


def test_timeout_is_a_positive_number() -> None:
    """timeout is stored as float seconds; zero, negatives, inf and bools are refused."""
    assert Config(timeout=30).timeout == 30.0
    for value in (0, -1, float("inf"), True):
        with pytest.raises(ConfigError, match=r"^Config\.timeout: must be a positive number"):
            Config(timeout=value)


# ---------------------------------------------------------------- rate_limit


def test_rate_limit_accepts_a_rate_limit_or_a_mapping() -> None:
    """A mapping with camelCase or snake_case keys becomes the same RateLimit."""
    expected = RateLimit(window_limit=100, window_size=60, aggregate_by=("ip", "domain"))
    camel = Config(
        rate_limit={"windowLimit": 100, "windowSize": 60, "aggregateBy": ["ip", "domain"]}
    )
    snake = Config(
        rate_limit={"window_limit": 100, "window_size": 60, "aggregate_by": ["ip", "domain"]}
    )
    assert (
        camel.rate_limit == snake.rate_limit == Config(rate_limit=expected).rate_limit == expected
    )


def test_rate_limit_normalises_aggregate_by() -> None:
    """aggregate_by accepts a str and stores a tuple."""
    assert RateLimit(window_limit=1, window_size=1, aggregate_by="ip").aggregate_by == ("ip",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_limit": 0, "window_size": 60}, "RateLimit.window_limit: must be a positive"),
        ({"window_limit": 1, "window_size": 1.5}, "RateLimit.window_size: must be a positive"),
        ({"window_limit": 1, "window_size": None}, "RateLimit.window_size: must be set"),
        ({"window_limit": 1, "window_size": 1, "aggregate_by": "user"}, "RateLimit.aggregate_by"),
        ({"window_limit": 1, "window_size": 1, "action": "block"}, "RateLimit.action: must be one"),
        ({"window_limit": 1, "window_size": 1, "action": "rewrite"}, "RateLimit.to: must be set"),
        ({"window_limit": 1, "window_size": 1, "algorithm": "fixed"}, "RateLimit.algorithm"),
    ],
)
def test_rate_limit_is_strict(kwargs: dict[str, Any], message: str) -> None:
    """Each RateLimit field is checked, with the field named."""
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        RateLimit(**kwargs)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"windowLimit": 5}, "rateLimit needs 'windowSize'"),
        ({"windowLimit": 5, "windowSize": 1, "burst": 3}, "unknown rateLimit key 'burst'"),
        ({"windowLimit": 5, "window_limit": 5, "windowSize": 1}, "given twice"),
        ({"windowLimit": -5, "windowSize": 1}, "rateLimit 'windowLimit' must be a positive"),
        ("fast", "must be a RateLimit or a mapping"),
    ],
)
def test_config_rate_limit_errors_name_the_key(value: Any, message: str) -> None:
    """A bad rate_limit mapping is a Config.rate_limit error saying which key."""
    with pytest.raises(ConfigError, match=r"^Config\.rate_limit: ") as info:
        Config(rate_limit=value)
    assert message in str(info.value)


def test_rate_limit_is_frozen_and_keyword_only() -> None:
    """RateLimit is immutable and takes keywords only."""
    limit = RateLimit(window_limit=1, window_size=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limit.window_limit = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        RateLimit(1, 1)  # type: ignore[call-arg]


# ---------------------------------------------------------------- from_mapping / parse


def test_camel_and_snake_case_keys_give_the_same_config() -> None:
    """Netlify's camelCase keys and our snake_case keys are interchangeable."""
    camel = {
        "excludedPath": "/x",
        "preferStatic": True,
        "rateLimit": {"windowLimit": 1, "windowSize": 1},
    }
    snake = {
        "excluded_path": "/x",
        "prefer_static": True,
        "rate_limit": {"window_limit": 1, "window_size": 1},
    }
    assert Config.from_mapping(camel) == Config.from_mapping(snake)
    assert Config.from_mapping(camel).prefer_static is True


def test_from_mapping_reads_every_field() -> None:
    """A full Netlify config maps onto every field."""
    config = Config.from_mapping(
        {"path": ["/a"], "excludedPath": "/a/b", "method": ["get"], "preferStatic": False,
         "background": True, "name": "A", "generator": "g@1", "region": "FRA",
         "memory": "2gb", "timeout": 26}
    )  # fmt: skip
    assert config == Config(
        path="/a", excluded_path="/a/b", method="GET", prefer_static=False, background=True,
        name="A", generator="g@1", region="fra", memory=2048, timeout=26.0,
    )  # fmt: skip


def test_none_values_count_as_absent() -> None:
    """A key whose value is None is not set (as with an absent key)."""
    assert Config.from_mapping({"path": None, "background": None}) == Config()


def test_unknown_keys_are_all_listed_with_the_known_keys() -> None:
    """Every unknown key is named, with the known keys and a close-match hint."""
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(
            {"exludedPath": "/x", "bogus": 1, "path": "/a"}, function="hello", where=WHERE
        )
    message = str(info.value)
    assert message.startswith(
        "Function hello has unknown configuration keys: 'exludedPath', 'bogus'"
    )
    assert f"in {WHERE}" in message
    assert "Known keys: background, excludedPath, generator, memory, method, name, path" in message
    assert "'exludedPath' -> 'excludedPath'" in message


def test_non_string_keys_are_unknown() -> None:
    """A non-string key is reported, not crashed on."""
    with pytest.raises(ConfigError, match="unknown configuration keys: 1"):
        Config.from_mapping({1: True})  # type: ignore[dict-item]


def test_the_same_key_in_both_spellings_is_an_error() -> None:
    """excludedPath and excluded_path together are refused."""
    with pytest.raises(ConfigError, match="'excludedPath' and 'excluded_path' are the same key"):
        Config.from_mapping({"excludedPath": "/a", "excluded_path": "/b"}, function="hello")


def test_a_non_mapping_is_an_error() -> None:
    """from_mapping needs a mapping."""
    with pytest.raises(ConfigError, match="must be a mapping"):
        Config.from_mapping(["path"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"path": "foo"}, "path", "Must start with a '/'"),
        ({"path": ["/a", "b"]}, "path.1", "Must start with a '/'"),
        ({"path": ["/a", "/a", "b"]}, "path.2", "Must start with a '/'"),
        ({"path": 3}, "path", "Must be a string or array of strings"),
        ({"path": [{"a": 1}]}, "path", "Must be a string or array of strings"),
        ({"path": [None]}, "path", "Must be a string or array of strings"),
        ({"excludedPath": "foo"}, "excludedPath", "Must start with a '/'"),
        ({"excluded_path": 1}, "excluded_path", "Must be a string or array of strings"),
        ({"method": "FETCH"}, "method", "Must be a string or array of strings"),
        ({"method": 1}, "method", "Must be a string or array of strings"),
        ({"region": "mars"}, "region", "Invalid enum value. Expected 'cmh' | 'dub'"),
        ({"memory": 100}, "memory", "Must be a whole number of megabytes"),
        ({"vcpu": 4}, "vcpu", "Must be a number from 0.5 to 2"),
        ({"memory": 2048, "vcpu": 1}, "vcpu", "`memory` and `vcpu` cannot both be set."),
        ({"schedule": "@reboot"}, "schedule", "@reboot is not supported"),
        ({"schedule": "@daily", "path": "/x"}, "path", "Scheduled functions must not specify"),
    ],
)
def test_hard_errors_use_netlify_texts(data: dict[str, object], key: str, message: str) -> None:
    """Keys Netlify fails the build on raise with its text, the function and the file."""
    with pytest.raises(ConfigError, match=netlify_error(key, message)) as info:
        Config.from_mapping(data, function="hello", where=WHERE)
    assert f"in {WHERE})" in str(info.value)


def test_hard_errors_without_a_function_name() -> None:
    """Without `function` the message still names the key and the value."""
    with pytest.raises(ConfigError, match=r"^Function config has a configuration error on 'path'"):
        Config.from_mapping({"path": "foo"})


def test_an_invalid_pattern_from_a_mapping_uses_netlify_text() -> None:
    """URLPattern failures keep Netlify's text and add the function, key and file after it."""
    with pytest.raises(PatternError) as info:
        Config.from_mapping({"path": "/products("}, function="hello", where=WHERE)
    assert str(info.value) == f"{URLPATTERN_TEXT} (function hello; key 'path'; in {WHERE})"


SOFT_CASES = [
    ("preferStatic", "yes"),
    ("prefer_static", 1),
    ("background", "true"),
    ("schedule", 5),
    ("name", 3),
    ("generator", ""),
    ("rateLimit", {"windowLimit": 5}),
    ("rate_limit", "fast"),
    ("timeout", "30s"),
]


@pytest.mark.parametrize(("key", "value"), SOFT_CASES)
def test_keys_netlify_drops_are_dropped_with_a_warning(key: str, value: object) -> None:
    """An invalid soft key is dropped, and a BgFunctionsWarning names it, the value and the file."""
    with pytest.warns(BgFunctionsWarning) as record:
        config = Config.from_mapping({key: value, "path": "/ok"}, function="hello", where=WHERE)
    assert config == Config(path="/ok")
    assert len(record) == 1
    text = str(record[0].message)
    assert text.startswith(f"Function hello: ignoring {key!r}")
    assert repr(value) in text
    assert WHERE in text
    assert record[0].filename == __file__  # stacklevel points at the caller


@pytest.mark.parametrize(
    "key",
    ["nodeBundler", "node_bundler", "nodeVersion", "externalNodeModules", "included_files",
     "ignoredNodeModules"],
)  # fmt: skip
def test_node_build_keys_are_dropped_with_a_note(key: str) -> None:
    """Node.js bundler keys load but are dropped, with a warning saying they are Node-only."""
    with pytest.warns(BgFunctionsWarning, match=rf"ignoring '{key}'.*Node\.js build setting"):
        config = Config.from_mapping({key: "esbuild"}, function="hello")
    assert config == Config()


def test_parse_returns_warnings_instead_of_emitting_them() -> None:
    """parse() reports the notes as texts and emits nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config, notes = Config.parse(
            {"preferStatic": "yes", "nodeBundler": "esbuild", "background": True}, function="x"
        )
    assert config == Config(background=True)
    assert len(notes) == 2
    assert "'preferStatic'" in notes[0]
    assert "'nodeBundler'" in notes[1]


def test_parse_of_a_valid_mapping_has_no_warnings() -> None:
    """A clean config yields an empty warning tuple."""
    assert Config.parse({"path": "/a", "background": True}) == (
        Config(path="/a", background=True),
        (),
    )


# ---------------------------------------------------------------- merged / to_dict


def test_merged_takes_the_other_configs_set_fields() -> None:
    """Set fields of the argument win; its unset fields keep this config's values."""
    toml = Config(background=True, region="fra", name="TOML")
    source = Config(background=False, name="Source", path="/p")
    assert toml.merged(source) == Config(background=False, region="fra", name="Source", path="/p")
    assert source.merged(Config()) == source


def test_merged_refuses_a_schedule_with_a_path() -> None:
    """Merging a netlify.toml schedule with an in-source path is Netlify's build error."""
    with pytest.raises(ConfigError, match=netlify_error("path", "Scheduled functions")) as info:
        Config(schedule="@hourly").merged(Config(path="/x"), function="hello", where=WHERE)
    assert WHERE in str(info.value)


def test_merged_refuses_memory_with_vcpu() -> None:
    """memory from one side and vcpu from the other cannot be combined."""
    with pytest.raises(ConfigError, match="`memory` and `vcpu` cannot both be set"):
        Config(memory=2048).merged(Config(vcpu=1))


def test_to_dict_uses_camel_case_and_only_set_fields() -> None:
    """to_dict is JSON-ready: camelCase keys, lists, nested rateLimit, no unset keys."""
    config = Config(
        path=["/a", "/b"], excluded_path="/a/x", prefer_static=True, memory="2gb",
        rate_limit={"windowLimit": 10, "windowSize": 60, "action": "rewrite", "to": "/slow"},
    )  # fmt: skip
    assert config.to_dict() == {
        "path": ["/a", "/b"],
        "excludedPath": ["/a/x"],
        "preferStatic": True,
        "memory": 2048,
        "rateLimit": {"windowLimit": 10, "windowSize": 60, "action": "rewrite", "to": "/slow"},
    }


valid_configs = st.builds(
    Config,
    path=st.none() | st.lists(st.sampled_from(["/a", "/b/:id", "/c/*", "/d"]), max_size=3),
    excluded_path=st.none() | st.sampled_from(["/a/x", "/b/*"]),
    method=st.none() | st.lists(st.sampled_from([*HTTP_METHODS, "get", "Post"]), max_size=3),
    prefer_static=st.none() | st.booleans(),
    background=st.none() | st.booleans(),
    name=st.none() | st.text(min_size=1).filter(str.strip),
    generator=st.none() | st.just("framework@1.0"),
    rate_limit=st.none()
    | st.builds(
        RateLimit,
        window_limit=st.integers(1, 1000),
        window_size=st.integers(1, 3600),
        aggregate_by=st.none() | st.sampled_from(["ip", ("domain", "ip")]),
        algorithm=st.none() | st.just("sliding_window"),
    ),
    region=st.none() | st.sampled_from(REGIONS),
    memory=st.none() | st.integers(1024, 4096),
    timeout=st.none() | st.floats(0.001, 900),
)


@given(valid_configs)
def test_to_dict_round_trips_through_from_mapping(config: Config) -> None:
    """from_mapping(to_dict()) gives back an equal Config, with no warnings."""
    assert Config.parse(config.to_dict()) == (config, ())


# ---------------------------------------------------------------- never crash

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
known_keys = st.sampled_from(
    ["path", "excludedPath", "excluded_path", "method", "preferStatic", "background",
     "schedule", "name", "generator", "rateLimit", "region", "memory", "vcpu", "timeout",
     "nodeBundler", "windowLimit"]
)  # fmt: skip
path_like = st.text(alphabet="/:*?+(){}[]\\abc-.", max_size=12).map(lambda t: "/" + t)


@settings(max_examples=300)
@given(
    st.dictionaries(
        known_keys | st.text(max_size=6),
        json_values | path_like | st.lists(path_like, max_size=3),
        max_size=5,
    )
)
def test_from_mapping_raises_only_config_errors(data: dict[str, Any]) -> None:
    """On any JSON-like mapping, from_mapping returns a Config or raises ConfigError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BgFunctionsWarning)
        try:
            config = Config.from_mapping(data, function="f", where="w")
        except ConfigError:
            return
    assert isinstance(config, Config)


# ---------------------------------------------------------------- name-dependent rules


@pytest.mark.parametrize("event", sorted(EVENT_TRIGGERED_FUNCTIONS))
def test_event_triggered_functions_must_not_have_a_path(event: str) -> None:
    """Every event name, also upper-cased and with -background, refuses a path."""
    for name in (event, f"{event}-background", event.upper()):
        assert is_event_triggered(name)
        with pytest.raises(ConfigError, match=r"Event-triggered functions must not specify") as e:
            check_function_config(name, Config(path="/hook"), where=WHERE)
        assert str(e.value).startswith(f"Function {name} has a configuration error on 'path'")
        check_function_config(name, Config(background=True))  # no path: fine


def test_other_functions_may_have_a_path() -> None:
    """Names that are not events (or only resemble one) pass."""
    for name in ("hello", "deploy-succeeded2", "my-submission-created"):
        assert not is_event_triggered(name)
        check_function_config(name, Config(path="/x"))


def test_event_names_match_netlify_build() -> None:
    """The list is netlify/build's thirteen event names."""
    assert len(EVENT_TRIGGERED_FUNCTIONS) == 13
    assert {
        "submission-created",
        "identity-login",
        "split-test-modified",
    } <= EVENT_TRIGGERED_FUNCTIONS


def test_an_unknown_keyword_is_a_type_error_naming_it() -> None:
    """Config(pathh=...) fails as a mistyped keyword of a signature would, naming it."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'pathh'"):
        Config(pathh="/x")  # type: ignore[call-arg]


def test_every_field_is_read_from_its_netlify_key() -> None:
    """Each field's one declaration gives its camelCase key: parse() reads every one of them."""
    data = {
        "path": "/x",
        "excludedPath": "/x/y",
        "method": "get",
        "preferStatic": True,
        "background": True,
        "name": "X",
        "generator": "g",
        "rateLimit": {"windowLimit": 5, "windowSize": 60},
        "region": "FRA",
        "memory": "2gb",
        "timeout": 30,
    }
    config, notes = Config.parse(data)
    assert notes == ()
    assert config == Config(
        path="/x",
        excluded_path="/x/y",
        method="get",
        prefer_static=True,
        background=True,
        name="X",
        generator="g",
        rate_limit={"windowLimit": 5, "windowSize": 60},
        region="FRA",
        memory="2gb",
        timeout=30,
    )
    assert Config.parse({"schedule": "@daily"})[0].schedule == "@daily"
    assert Config.parse({"vcpu": 1})[0].vcpu == 1


def test_the_places_that_name_config_fields_agree_with_its_declaration() -> None:
    """Each field is declared once in Config; the two other places that name fields (the
    typed constructor arguments and docs/configuration.md's table) must name exactly those."""
    from pathlib import Path

    from bgfunctions.config import _ConfigArgs

    names = {f.name for f in dataclasses.fields(Config)}
    assert set(_ConfigArgs.__annotations__) == names
    table = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([A-Za-z]+)` \| `([a-z_]+)` \|", table, re.MULTILINE)
    assert {snake for _, snake in rows} == names
    for camel, snake in rows:
        key = next(f for f in dataclasses.fields(Config) if f.name == snake).metadata["netlify"]
        assert key.camel == camel, (snake, camel)
