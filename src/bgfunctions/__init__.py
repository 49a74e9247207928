"""bgfunctions: Netlify's function model, and its background functions, for any Python platform.

Layers (a lower layer never imports a higher one; ``tests/test_layers.py`` checks it)::

    L0  errors, ids*, _slots              (* ids reads time only through a Clock)
    L1  clock, config, _cron, datastructures, requests, responses, context, retry, invocation,
        steps, logs, _pathmatch, _urlpattern, redaction, _enqueue, _parts, commits
    L2  routing, _loader, _netlify_toml, journals.*
    L3  registry, attempts, handles, reports, loop_attempts, lifecycle, executors.*
    L4  app
    L5  asgi, wsgi, hosts, staticfiles, devserver, serverlog, views, testing, pytest_plugin,
        cli, __main__, contrib.*, _timeline, _viewpage

This module only re-exports.
"""

from __future__ import annotations

from bgfunctions.app import App, Invocations, Resolution
from bgfunctions.clock import Clock, ClockEventLoop, SystemClock, VirtualClock, run_until_idle
from bgfunctions.config import Config, RateLimit
from bgfunctions.context import (
    Account,
    Context,
    Cookies,
    Country,
    Deploy,
    Geo,
    Server,
    Site,
    Subdivision,
)
from bgfunctions.datastructures import Headers, MutableHeaders, QueryParams
from bgfunctions.errors import (
    BgFunctionsError,
    BgFunctionsWarning,
    BlockingHandlerError,
    ConfigError,
    DeadlineExceeded,
    DiscoveryError,
    DuplicateFunctionError,
    ExecutorShutdownError,
    HandlerNotFoundError,
    InvalidJSONError,
    InvocationNotFoundError,
    JournalError,
    JournalUnavailableError,
    NotAcceptedError,
    PatternError,
    PayloadTooLargeError,
    QueueFullError,
    RequestError,
    StepError,
    Suspended,
    TomlError,
    UnknownFunctionError,
    UserCodeError,
)
from bgfunctions.executors.base import Binding, Executor, ExecutorStats, Invocation
from bgfunctions.executors.inline import InlineExecutor
from bgfunctions.executors.threads import ThreadExecutor
from bgfunctions.ids import new_request_id
from bgfunctions.invocation import (
    Attempt,
    Event,
    EventKind,
    InvocationRecord,
    OnEvent,
    OnFailure,
    Outcome,
    State,
    Step,
)
from bgfunctions.journals.base import Journal, MemoryJournal
from bgfunctions.journals.sqlite import SQLiteJournal
from bgfunctions.logs import InvocationFilter
from bgfunctions.redaction import Redaction
from bgfunctions.registry import Function, FunctionMatch, Registry, discover, resolve_background
from bgfunctions.requests import Request
from bgfunctions.responses import Response
from bgfunctions.retry import Limits, RetryPolicy

__version__ = "0.1.0"

__all__ = [
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
