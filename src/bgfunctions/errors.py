"""The exceptions bgfunctions raises.

Every error the library raises on purpose derives from :class:`BgFunctionsError`.
Errors about a value a user gave us also derive from :class:`ValueError`, so code
that already catches ``ValueError`` keeps working::

    BgFunctionsError
    ├── ConfigError (ValueError)            a Config field or netlify.toml key is wrong
    │   └── PatternError                    a path is not a valid URLPattern pathname
    ├── DiscoveryError                      a functions directory cannot be loaded
    │   ├── HandlerNotFoundError            a module defines no ``handler``
    │   ├── UserCodeError                   importing the user's module raised
    │   ├── TomlError (ValueError)          netlify.toml is not valid TOML
    │   └── DuplicateFunctionError (ValueError)
    ├── RequestError (ValueError)           a request body cannot be read as asked
    │   └── InvalidJSONError                ``Request.json()`` on a body that is not JSON
    ├── PayloadTooLargeError (ValueError)   a body over the function's limit
    ├── UnknownFunctionError (LookupError)  a function name the registry does not know
    ├── NotAcceptedError                    an executor could not take an invocation
    │   ├── ExecutorShutdownError           ... because it is shut down
    │   ├── QueueFullError                  ... because ``max_pending`` is reached
    │   └── JournalUnavailableError         ... because the journal cannot commit (disk full,
    │                                           read-only, locked past the busy timeout)
    ├── JournalError                        a journal file is refused (foreign, damaged, newer)
    ├── InvocationNotFoundError (LookupError)
    ├── BlockingHandlerError (RuntimeError) an async handler blocked the event loop
    └── DeadlineExceeded (TimeoutError)     an attempt ran out of time

    BgFunctionsWarning (UserWarning)        something accepted but probably not meant

    Suspended (BaseException)               a durable sleep ends the attempt (not an error)
"""

from __future__ import annotations

__all__ = [
    "BgFunctionsError",
    "BlockingHandlerError",
    "BgFunctionsWarning",
    "ConfigError",
    "DeadlineExceeded",
    "DiscoveryError",
    "DuplicateFunctionError",
    "ExecutorShutdownError",
    "HandlerNotFoundError",
    "InvalidJSONError",
    "InvocationNotFoundError",
    "JournalError",
    "JournalUnavailableError",
    "NotAcceptedError",
    "PatternError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RequestError",
    "StepError",
    "Suspended",
    "TomlError",
    "UnknownFunctionError",
    "UserCodeError",
]


class BgFunctionsError(Exception):
    """The root of every error bgfunctions raises on purpose."""


class ConfigError(BgFunctionsError, ValueError):
    """A configuration value is invalid. The message names the function, the key and the value."""


class PatternError(ConfigError):
    """A path is not a valid URLPattern pathname."""


class DiscoveryError(BgFunctionsError):
    """A functions directory, one of its modules, or netlify.toml cannot be loaded."""


class HandlerNotFoundError(DiscoveryError):
    """A function module defines no ``handler``."""


class UserCodeError(DiscoveryError):
    """Importing a user's function module raised; the cause is chained."""


class TomlError(DiscoveryError, ValueError):
    """netlify.toml is not valid TOML; the message gives file, line and column."""


class DuplicateFunctionError(DiscoveryError, ValueError):
    """Two functions were registered under the same name."""


class RequestError(BgFunctionsError, ValueError):
    """A request's body cannot be decoded the way the handler asked."""


class InvalidJSONError(RequestError):
    """``Request.json()`` was called on a body that is not valid JSON."""


class PayloadTooLargeError(BgFunctionsError, ValueError):
    """A request body is larger than the function accepts (HTTP 413)."""


class UnknownFunctionError(BgFunctionsError, LookupError):
    """A function name that the registry does not know."""


class NotAcceptedError(BgFunctionsError):
    """An executor could not accept an invocation; the App answers 503 with Retry-After."""

    retry_after: float = 1.0


class ExecutorShutdownError(NotAcceptedError):
    """The executor is shut down (or not started) and accepts nothing."""


class QueueFullError(NotAcceptedError):
    """The executor already holds ``max_pending`` invocations."""


class JournalUnavailableError(NotAcceptedError):
    """The journal cannot commit now (disk full, read-only, locked past its busy timeout).

    Nothing was written; the journal works again once the fault clears.
    """


class JournalError(BgFunctionsError):
    """A journal file is refused: not a database, another application's, damaged, or written
    by a newer bgfunctions. The file is left as it was; the message names it and says why."""


class InvocationNotFoundError(BgFunctionsError, LookupError):
    """No invocation with that request id is known."""


class BlockingHandlerError(BgFunctionsError, RuntimeError):
    """An async handler blocked the event loop instead of awaiting."""


class DeadlineExceeded(BgFunctionsError, TimeoutError):
    """An attempt reached its deadline (raised by ``Context.sleep`` past the deadline)."""


class StepError(BgFunctionsError):
    """A durable step (``context.step.run``, ``sleep``) was misused: an id that is not a
    non-empty str or was used twice in one attempt, a result that cannot be stored as JSON, a
    bad duration, or an engine that cannot store steps. It fails the attempt, as any exception
    of the handler does."""


class Suspended(BaseException):
    """Raised by ``context.step.sleep`` to end the attempt until ``wake_at`` (epoch seconds).

    A ``BaseException``, so that a handler's ``except Exception`` does not catch it: let it
    pass. The attempt ends as ``suspended`` (not a failure, not a used retry), and the
    invocation resumes at ``wake_at`` with every committed step remembered. A handler that
    catches it anyway is still suspended: the sleep was committed before it was raised."""

    def __init__(self, step_id: str, wake_at: float) -> None:
        super().__init__(f"step {step_id}: sleeping until {wake_at:.3f} (epoch seconds)")
        self.step_id = step_id
        self.wake_at = wake_at


class BgFunctionsWarning(UserWarning):
    """Something was accepted but is probably not what the user meant (a dropped key, ...)."""
