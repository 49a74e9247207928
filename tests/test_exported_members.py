"""bgfunctions.__all__ is pinned: sorted, complete, and every name is importable."""

from __future__ import annotations

import bgfunctions

EXPORTED = [
    "Account",
    "App",
    "Attempt",
    "BgFunctionsError",
    "BgFunctionsWarning",
    "Binding",
    "BlockingHandlerError",
    "Clock",
    "ClockEventLoop",
    "Config",
    "ConfigError",
    "Context",
    "Cookies",
    "Country",
    "DeadlineExceeded",
    "Deploy",
    "DiscoveryError",
    "DuplicateFunctionError",
    "Event",
    "EventKind",
    "Executor",
    "ExecutorShutdownError",
    "ExecutorStats",
    "Function",
    "FunctionMatch",
    "Geo",
    "HandlerNotFoundError",
    "Headers",
    "InlineExecutor",
    "InvalidJSONError",
    "Invocation",
    "InvocationFilter",
    "InvocationNotFoundError",
    "InvocationRecord",
    "Invocations",
    "Journal",
    "JournalError",
    "JournalUnavailableError",
    "Limits",
    "MemoryJournal",
    "MutableHeaders",
    "NotAcceptedError",
    "OnEvent",
    "OnFailure",
    "Outcome",
    "PatternError",
    "PayloadTooLargeError",
    "QueryParams",
    "QueueFullError",
    "RateLimit",
    "Redaction",
    "Registry",
    "Request",
    "RequestError",
    "Resolution",
    "Response",
    "RetryPolicy",
    "SQLiteJournal",
    "Server",
    "Site",
    "State",
    "Step",
    "StepError",
    "Subdivision",
    "Suspended",
    "SystemClock",
    "ThreadExecutor",
    "TomlError",
    "UnknownFunctionError",
    "UserCodeError",
    "VirtualClock",
    "__version__",
    "discover",
    "new_request_id",
    "resolve_background",
    "run_until_idle",
]


def test_all_is_pinned() -> None:
    """__all__ is exactly the reviewed list; adding or removing a public name is a choice."""
    assert bgfunctions.__all__ == EXPORTED


def test_all_is_sorted() -> None:
    """__all__ is sorted (dunder first, then by code point), so diffs stay small."""
    assert bgfunctions.__all__ == sorted(bgfunctions.__all__)


def test_all_names_exist_and_are_public() -> None:
    """Every exported name exists, and every public class or function it holds is exported."""
    for name in bgfunctions.__all__:
        assert hasattr(bgfunctions, name), name
    public = {
        name
        for name, value in vars(bgfunctions).items()
        if not name.startswith("_")
        and (isinstance(value, type) or callable(value))
        and getattr(value, "__module__", "").startswith("bgfunctions")
    }
    assert public <= set(bgfunctions.__all__)


def test_exported_members_come_from_the_package() -> None:
    """Each exported class or function is defined in a bgfunctions module (e.g. bgfunctions.app)."""
    for name in bgfunctions.__all__:
        member = getattr(bgfunctions, name)
        module = getattr(member, "__module__", None)
        if isinstance(member, type) or callable(member):
            assert str(module).startswith("bgfunctions."), (name, module)
