"""Discovery: which entries of a functions directory become functions, and how they load."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from bgfunctions import (
    Config,
    ConfigError,
    Context,
    DiscoveryError,
    DuplicateFunctionError,
    FunctionMatch,
    HandlerNotFoundError,
    Registry,
    Request,
    Response,
    UnknownFunctionError,
    UserCodeError,
    discover,
)

INVALID_NAME = "Function name should consist only of alphanumeric characters, hyphen & underscores."
EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "examples" / "site"


def handler_source(marker: str = "ok") -> str:
    return f"def handler(request, context):\n    return {marker!r}\n"


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def call(registry: Registry, name: str) -> object:
    handler = registry[name].handler
    assert handler is not None
    return handler(None, None)


# -- file forms --------------------------------------------------------------------------------


def test_file_form_name_is_the_stem(tmp_path: Path) -> None:
    """`NAME.py` is function NAME, loaded from that file."""
    path = write(tmp_path, "hello.py", handler_source("from file"))
    registry = discover(tmp_path)
    assert registry.names == ["hello"]
    assert registry["hello"].file == path
    assert call(registry, "hello") == "from file"


def test_directory_form_with_name_py(tmp_path: Path) -> None:
    """`NAME/NAME.py` is function NAME."""
    path = write(tmp_path, "hello/hello.py", handler_source("name.py"))
    registry = discover(tmp_path)
    assert registry.names == ["hello"]
    assert registry["hello"].file == path
    assert call(registry, "hello") == "name.py"


def test_directory_form_with_index_py(tmp_path: Path) -> None:
    """`NAME/index.py` is function NAME."""
    path = write(tmp_path, "hello/index.py", handler_source("index.py"))
    registry = discover(tmp_path)
    assert registry.names == ["hello"]
    assert registry["hello"].file == path


def test_name_py_beats_index_py(tmp_path: Path) -> None:
    """In a directory with both, `NAME/NAME.py` is the entry, not `index.py`."""
    write(tmp_path, "hello/index.py", "raise RuntimeError('index.py must not be loaded')\n")
    write(tmp_path, "hello/hello.py", handler_source("name.py"))
    registry = discover(tmp_path)
    assert call(registry, "hello") == "name.py"
    assert registry["hello"].warnings == ()


def test_directory_beats_same_named_file_with_a_warning(tmp_path: Path) -> None:
    """`NAME/` wins over `NAME.py`; the shadowed file is named in a warning and never loaded."""
    shadowed = write(tmp_path, "hello.py", "raise RuntimeError('hello.py must not be loaded')\n")
    entry = write(tmp_path, "hello/index.py", handler_source("directory"))
    registry = discover(tmp_path)
    function = registry["hello"]
    assert function.file == entry
    assert call(registry, "hello") == "directory"
    (warning,) = function.warnings
    assert str(shadowed) in warning
    assert "the directory wins" in warning
    assert warning in registry.warnings


def test_directory_without_an_entry_file_is_not_a_function(tmp_path: Path) -> None:
    """A directory with neither `NAME.py` nor `index.py` is skipped."""
    write(tmp_path, "lib/helpers.py", handler_source())
    write(tmp_path, "hello.py", handler_source())
    assert discover(tmp_path).names == ["hello"]


@pytest.mark.parametrize(
    "entry",
    [
        "__init__.py",
        "__pycache__/__pycache__.py",
        "__pycache__/index.py",
        "_shared.py",
        "_private/_private.py",
        ".hidden.py",
        ".hidden/index.py",
        # ___netlify-entry-point is no longer skipped but refused (issue 11, item 3): see
        # test_netlify_reserved_name_is_refused_by_discovery.
    ],
)
def test_entries_starting_with_dot_or_underscore_are_ignored(tmp_path: Path, entry: str) -> None:
    """Entries whose name starts with `.` or `_` are never functions, and never loaded."""
    write(tmp_path, entry, "raise RuntimeError('helpers must not be loaded by discovery')\n")
    write(tmp_path, "hello.py", handler_source())
    registry = discover(tmp_path)
    assert registry.names == ["hello"]
    assert registry.warnings == ()


@pytest.mark.parametrize(
    "entry", ["README.md", "hello.js", "data.json", "cache.pyc", "stub.pyi", "noext"]
)
def test_files_that_are_not_py_are_ignored(tmp_path: Path, entry: str) -> None:
    """Only `.py` files are candidates."""
    write(tmp_path, entry, "not python")
    assert discover(tmp_path).names == []


def test_missing_functions_directory_is_a_discovery_error(tmp_path: Path) -> None:
    """A functions directory that does not exist is an error naming it."""
    with pytest.raises(DiscoveryError, match="does not exist") as info:
        discover(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        ("bad name.py", "bad name"),
        ("a.b.py", "a.b"),
        ("a.b/a.b.py", "a.b"),
        ("a.b/index.py", "a.b"),
        ("caf\u00e9.py", "caf\u00e9"),
    ],
)
def test_invalid_names_are_recorded_with_netlify_warning(
    tmp_path: Path, entry: str, name: str
) -> None:
    """An invalid name is kept (valid_name False, no handler, never loaded) with the warning."""
    write(tmp_path, entry, "raise RuntimeError('an invalid function must not be loaded')\n")
    registry = discover(tmp_path)
    assert registry.names == [name]
    function = registry[name]
    assert function.valid_name is False
    assert function.handler is None
    assert function.background is False
    (warning,) = function.warnings
    assert INVALID_NAME in warning
    assert repr(name) in warning


@pytest.mark.parametrize("entry", ["bad name.py", "a.b/index.py"])
def test_strict_discovery_raises_on_invalid_names(tmp_path: Path, entry: str) -> None:
    """`strict=True` turns an invalid name into an error that quotes Netlify's rule."""
    write(tmp_path, entry, handler_source())
    with pytest.raises(ConfigError, match=INVALID_NAME.replace(".", r"\.")):
        discover(tmp_path, strict=True)


@pytest.mark.parametrize("name", ["send-email", "a_b", "X9", "-", "hello-background"])
def test_names_with_hyphens_underscores_and_digits_load(tmp_path: Path, name: str) -> None:
    """Hyphenated and other valid names load although they are not Python identifiers."""
    write(tmp_path, f"{name}.py", handler_source(name))
    registry = discover(tmp_path)
    assert registry[name].valid_name
    assert call(registry, name) == name


# -- loading user code --------------------------------------------------------------------------


def test_missing_handler_names_the_file_and_the_public_names(tmp_path: Path) -> None:
    """A module without `handler` is an error naming the file and listing what it defines."""
    path = write(
        tmp_path,
        "hello.py",
        """\
        import json
        VALUE = 1
        _private = 2
        def handle(request, context):
            return "typo"
        """,
    )
    with pytest.raises(HandlerNotFoundError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "'hello'" in message
    assert "VALUE, handle" in message
    assert "_private" not in message
    assert "json" not in message


def test_handler_that_is_not_callable_is_an_error(tmp_path: Path) -> None:
    """`handler = 42` is reported with the file and the type found."""
    path = write(tmp_path, "hello.py", "handler = 42\n")
    with pytest.raises(HandlerNotFoundError, match="must be callable; got int") as info:
        discover(tmp_path)
    assert str(path) in str(info.value)


def test_exception_on_import_names_file_and_line_and_chains_the_cause(tmp_path: Path) -> None:
    """A module that raises on import gives UserCodeError with file, line and the cause."""
    path = write(tmp_path, "boom.py", "x = 1\n\nvalue = 1 / 0\n")
    with pytest.raises(UserCodeError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert f"{path}, line 3" in message
    assert "ZeroDivisionError" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_exception_raised_in_a_helper_still_names_the_function_file(tmp_path: Path) -> None:
    """An import error deep in a helper reports the line of the function's own file."""
    write(tmp_path, "_helper.py", "def explode():\n    raise KeyError('missing')\n")
    path = write(tmp_path, "hello.py", "from ._helper import explode\n\nexplode()\n")
    with pytest.raises(UserCodeError) as info:
        discover(tmp_path)
    assert f"{path}, line 3" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A SyntaxError gives UserCodeError with the file and the offending line."""
    path = write(tmp_path, "hello.py", "def handler(request, context):\n    return (\n\nx = \n")
    with pytest.raises(UserCodeError) as info:
        discover(tmp_path)
    assert str(path) in str(info.value)
    assert ", line " in str(info.value)
    assert isinstance(info.value.__cause__, SyntaxError)


def test_system_exit_on_import_is_reported_not_propagated(tmp_path: Path) -> None:
    """A module calling sys.exit() on import does not end the host process."""
    write(tmp_path, "hello.py", "import sys\nsys.exit(3)\n")
    with pytest.raises(UserCodeError, match="SystemExit"):
        discover(tmp_path)


def test_same_file_in_two_registries_loads_two_modules(tmp_path: Path) -> None:
    """Each registry executes the module afresh: module state is not shared."""
    write(
        tmp_path,
        "counter.py",
        """\
        calls = []
        def handler(request, context):
            calls.append(1)
            return len(calls)
        """,
    )
    first, second = discover(tmp_path), discover(tmp_path)
    assert first["counter"].handler is not second["counter"].handler
    assert call(first, "counter") == 1
    assert call(first, "counter") == 2
    assert call(second, "counter") == 1


def test_helpers_are_not_shared_between_registries(tmp_path: Path) -> None:
    """A `_shared.py` helper imported by a function is also loaded afresh per registry."""
    write(tmp_path, "_state.py", "seen = []\n")
    write(
        tmp_path,
        "hello.py",
        """\
        from ._state import seen
        def handler(request, context):
            seen.append(1)
            return len(seen)
        """,
    )
    first, second = discover(tmp_path), discover(tmp_path)
    assert call(first, "hello") == 1
    assert call(first, "hello") == 2
    assert call(second, "hello") == 1


def test_file_form_imports_a_helper_of_the_functions_directory(tmp_path: Path) -> None:
    """`from ._shared import x` in `NAME.py` finds `_shared.py` beside it."""
    write(tmp_path, "_shared.py", "def greet(name):\n    return f'hi {name}'\n")
    write(
        tmp_path,
        "hello.py",
        "from ._shared import greet\ndef handler(request, context):\n    return greet('ada')\n",
    )
    assert call(discover(tmp_path), "hello") == "hi ada"


def test_directory_form_imports_its_sibling_module(tmp_path: Path) -> None:
    """`NAME/NAME.py` can do `from .sibling import x` for a module in its own directory."""
    write(tmp_path, "hello/sibling.py", "WORD = 'sibling'\n")
    write(
        tmp_path,
        "hello/hello.py",
        "from .sibling import WORD\ndef handler(request, context):\n    return WORD\n",
    )
    assert call(discover(tmp_path), "hello") == "sibling"


def test_directory_form_prefers_its_own_sibling_over_the_shared_helper(tmp_path: Path) -> None:
    """A directory's own module shadows a same-named helper of the functions directory."""
    write(tmp_path, "_words.py", "WORD = 'top level'\n")
    write(tmp_path, "hello/_words.py", "WORD = 'own'\n")
    write(
        tmp_path,
        "hello/index.py",
        "from ._words import WORD\ndef handler(request, context):\n    return WORD\n",
    )
    write(
        tmp_path,
        "bye/index.py",
        "from ._words import WORD\ndef handler(request, context):\n    return WORD\n",
    )
    registry = discover(tmp_path)
    assert call(registry, "hello") == "own"
    assert call(registry, "bye") == "top level"


def test_async_handlers_are_recognised(tmp_path: Path) -> None:
    """`async def handler` is recorded as async, `def handler` is not."""
    write(tmp_path, "sync.py", handler_source())
    write(tmp_path, "asynchronous.py", "async def handler(request, context):\n    return 'a'\n")
    registry = discover(tmp_path)
    assert registry["asynchronous"].is_async
    assert not registry["sync"].is_async


# -- the module's config ------------------------------------------------------------------------


def test_module_config_as_camel_case_dict(tmp_path: Path) -> None:
    """A dict `config` is read with Netlify's camelCase keys."""
    write(
        tmp_path,
        "hello.py",
        handler_source()
        + "config = {'path': ['/hi', '/hello'], 'excludedPath': '/hi/no', 'preferStatic': True,"
        " 'method': 'get', 'name': 'Hello!'}\n",
    )
    function = discover(tmp_path)["hello"]
    assert function.config.path == ("/hi", "/hello")
    assert function.config.excluded_path == ("/hi/no",)
    assert function.config.prefer_static is True
    assert function.config.method == ("GET",)
    assert function.routes == ("/hi", "/hello")
    assert function.display_name == "Hello!"


def test_module_config_as_snake_case_dict(tmp_path: Path) -> None:
    """A dict `config` may also use snake_case keys."""
    write(tmp_path, "hello.py", handler_source() + "config = {'prefer_static': True}\n")
    assert discover(tmp_path)["hello"].config.prefer_static is True


def test_module_config_as_config_object(tmp_path: Path) -> None:
    """A `Config` object is used as it is."""
    write(
        tmp_path,
        "hello.py",
        "from bgfunctions import Config\n"
        + handler_source()
        + "config = Config(path='/hi', background=True)\n",
    )
    function = discover(tmp_path)["hello"]
    assert function.config == Config(path="/hi", background=True)
    assert function.background


def test_no_config_means_the_default_url(tmp_path: Path) -> None:
    """Without a config a function is served at `/.netlify/functions/NAME`, named NAME."""
    write(tmp_path, "hello.py", handler_source())
    function = discover(tmp_path)["hello"]
    assert function.config == Config()
    assert function.routes == ("/.netlify/functions/hello",)
    assert function.display_name == "hello"


@pytest.mark.parametrize("value", ["42", "'/path'", "['/path']", "None.__class__"])
def test_module_config_of_another_type_is_an_error(tmp_path: Path, value: str) -> None:
    """A `config` that is neither a dict nor a Config is an error naming the file and type."""
    path = write(tmp_path, "hello.py", handler_source() + f"config = {value}\n")
    with pytest.raises(ConfigError, match=r"must be a bgfunctions\.Config or a dict") as info:
        discover(tmp_path)
    assert str(path) in str(info.value)


def test_module_config_with_unknown_keys_is_an_error(tmp_path: Path) -> None:
    """Unknown config keys are an error that lists them."""
    write(tmp_path, "hello.py", handler_source() + "config = {'pathz': '/x', 'backgrond': True}\n")
    with pytest.raises(ConfigError, match="unknown configuration keys") as info:
        discover(tmp_path)
    assert "pathz" in str(info.value)
    assert "backgrond" in str(info.value)


def test_soft_config_problems_become_function_warnings(tmp_path: Path) -> None:
    """An invalid key that Netlify drops silently is dropped with a warning on the function."""
    write(tmp_path, "hello.py", handler_source() + "config = {'preferStatic': 'yes'}\n")
    function = discover(tmp_path)["hello"]
    assert function.config.prefer_static is None
    assert any("preferStatic" in w for w in function.warnings)


def test_event_triggered_function_with_a_path_is_an_error(tmp_path: Path) -> None:
    """Name-dependent rules apply: an event-triggered function must not declare a path."""
    write(tmp_path, "deploy-succeeded.py", handler_source() + "config = {'path': '/x'}\n")
    with pytest.raises(ConfigError, match="Event-triggered functions must not specify"):
        discover(tmp_path)


# -- programmatic registration ------------------------------------------------------------------


def test_registry_add_registers_a_handler() -> None:
    """`Registry.add` builds a Function with its config, routes and background mode."""
    registry = Registry()

    def handler(request: Request, context: Context) -> str:
        return "added"

    function = registry.add("hello", handler, config={"path": "/hi"})
    assert registry["hello"] is function
    assert function.handler is handler
    assert function.file is None
    assert function.routes == ("/hi",)
    assert not function.background


def test_registry_add_applies_background_rules() -> None:
    """Functions added in code are background by suffix or config like discovered ones."""
    registry = Registry()
    assert registry.add("a-background", lambda r, c: None).background_reasons == ("suffix",)
    added = registry.add("b", lambda r, c: None, config=Config(background=True))
    assert added.background_reasons == ("config",)


def test_registry_add_rejects_a_duplicate_name() -> None:
    """Adding a name twice is a DuplicateFunctionError naming it."""
    registry = Registry()
    registry.add("hello", lambda r, c: None)
    with pytest.raises(DuplicateFunctionError, match="'hello'"):
        registry.add("hello", lambda r, c: None)


def test_registry_add_records_an_invalid_name_or_raises_when_strict() -> None:
    """An invalid name is recorded with the warning, or rejected by a strict registry."""
    function = Registry().add("bad name", lambda r, c: None)
    assert function.valid_name is False
    assert INVALID_NAME in function.warnings[0]
    with pytest.raises(ConfigError, match="alphanumeric"):
        Registry(strict=True).add("bad name", lambda r, c: None)


def test_registry_add_rejects_a_handler_that_is_not_callable() -> None:
    """A handler must be callable."""
    with pytest.raises(ConfigError, match="handler must be callable"):
        Registry().add("hello", "not a function")  # type: ignore[arg-type]


def test_decorator_registers_under_the_handler_name_with_hyphens() -> None:
    """`@registry.function()` names the function after the handler, `_` becoming `-`."""
    registry = Registry()

    @registry.function(config={"background": True})
    async def send_email(request: Request, context: Context) -> None:
        return None

    function = registry["send-email"]
    assert function.handler is send_email
    assert function.is_async
    assert function.background_reasons == ("config",)


def test_decorator_with_an_explicit_name_and_the_same_validation() -> None:
    """`@registry.function("name")` uses that name; duplicates and bad names are checked."""
    registry = Registry()

    @registry.function("hello-background")
    def anything(request: Request, context: Context) -> None:
        return None

    assert registry["hello-background"].background
    with pytest.raises(DuplicateFunctionError):
        registry.function("hello-background")(anything)
    with pytest.raises(ConfigError):
        Registry(strict=True).function("a.b")(anything)


def test_add_after_discovery_uses_the_sites_netlify_toml(tmp_path: Path) -> None:
    """A function added to a discovered registry gets the site's netlify.toml config."""
    registry = discover(tmp_path, netlify_toml={"functions": {"extra*": {"background": True}}})
    function = registry.add("extra-work", lambda r, c: None)
    assert function.background_reasons == ("netlify.toml",)


# -- reading the registry -----------------------------------------------------------------------


def test_registry_lookup_iteration_and_unknown_names(tmp_path: Path) -> None:
    """Functions iterate by name; an unknown name is an error listing the known ones."""
    for name in ("b", "c", "a"):
        write(tmp_path, f"{name}.py", handler_source())
    registry = discover(tmp_path)
    assert [f.name for f in registry] == ["a", "b", "c"]
    assert len(registry) == 3
    assert "a" in registry
    assert "z" not in registry
    assert registry.get("z") is None
    with pytest.raises(UnknownFunctionError, match=r"'z'.*a, b, c"):
        registry["z"]


def test_match_returns_the_function_and_route_params(tmp_path: Path) -> None:
    """`Registry.match` finds a function by default URL or by custom path, with its params."""
    write(tmp_path, "hello.py", handler_source())
    write(tmp_path, "products.py", handler_source() + "config = {'path': '/products/:id'}\n")
    registry = discover(tmp_path)
    by_default = registry.match("GET", "/.netlify/functions/hello")
    assert isinstance(by_default, FunctionMatch)
    assert by_default.function is registry["hello"]
    by_path = registry.match("POST", "/products/42")
    assert isinstance(by_path, FunctionMatch)
    assert by_path.function is registry["products"]
    assert dict(by_path.params) == {"id": "42"}


def test_match_misses_a_path_that_no_function_serves(tmp_path: Path) -> None:
    """A path no function serves, or a custom path's default URL, is not a match."""
    write(tmp_path, "products.py", handler_source() + "config = {'path': '/products/:id'}\n")
    registry = discover(tmp_path)
    assert not isinstance(registry.match("GET", "/nothing"), FunctionMatch)
    assert not isinstance(registry.match("GET", "/.netlify/functions/products"), FunctionMatch)


def test_match_sees_functions_added_after_the_first_match() -> None:
    """The router is rebuilt when a function is added."""
    registry = Registry()
    registry.add("one", lambda r, c: None)
    assert isinstance(registry.match("GET", "/.netlify/functions/one"), FunctionMatch)
    assert not isinstance(registry.match("GET", "/.netlify/functions/two"), FunctionMatch)
    registry.add("two", lambda r, c: None)
    assert isinstance(registry.match("GET", "/.netlify/functions/two"), FunctionMatch)


# -- the example site ---------------------------------------------------------------------------


def test_example_site_has_one_function_of_each_kind() -> None:
    """examples/site discovers its five functions, and `_shared.py` is not one of them."""
    registry = Registry.from_site(EXAMPLE_SITE)
    assert registry.names == [
        "hello",
        "process",
        "products",
        "report-daily",
        "send-email-background",
    ]
    assert registry.publish_dir == EXAMPLE_SITE / "public"
    assert (EXAMPLE_SITE / "public" / "index.html").is_file()
    assert registry.warnings == ()


def test_example_site_handlers_answer() -> None:
    """The example handlers run: hello greets, products looks up its id, send-email retries."""
    registry = Registry.from_site(EXAMPLE_SITE)

    hello = registry["hello"].handler
    assert hello is not None
    response = hello(
        Request("GET", "/.netlify/functions/hello?name=Ada"),
        Context(request_id="r1", function="hello"),
    )
    assert isinstance(response, Response)
    assert response.body == b"Hello, Ada!"

    found = registry.match("GET", "/products/2")
    assert isinstance(found, FunctionMatch)
    assert found.function.handler is not None
    context = Context(request_id="r2", function="products", params=found.params)
    product = found.function.handler(Request("GET", "/products/2"), context)
    assert isinstance(product, Response)
    assert product.body == b'{"id":"2","name":"Teapot","price":"$19.99"}'

    send = registry["send-email-background"].handler
    assert send is not None
    request = Request("POST", "/", json={"to": "ada@example.com", "fail_attempts": 1})
    with pytest.raises(RuntimeError, match="attempt 1"):
        asyncio.run(
            send(request, Context(request_id="r3", function="send-email-background", attempt=1))
        )
    asyncio.run(
        send(request, Context(request_id="r3", function="send-email-background", attempt=2))
    )


def test_netlify_reserved_name_is_refused_by_add() -> None:
    """Registry.add refuses Netlify's reserved ___netlify-entry-point with a clear error."""
    with pytest.raises(ConfigError, match="'___netlify-entry-point' is reserved by Netlify"):
        Registry().add("___netlify-entry-point", lambda request, context: "ok")


@pytest.mark.parametrize("entry", ["___netlify-entry-point.py", "___netlify-entry-point/index.py"])
def test_netlify_reserved_name_is_refused_by_discovery(tmp_path: Path, entry: str) -> None:
    """A file or directory named ___netlify-entry-point is an error naming it, not skipped."""
    path = tmp_path / entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("def handler(request, context):\n    return 'ok'\n", encoding="utf-8")
    with pytest.raises(DiscoveryError, match="reserved by Netlify") as info:
        discover(tmp_path)
    assert str(tmp_path / entry.split("/")[0]) in str(info.value)
