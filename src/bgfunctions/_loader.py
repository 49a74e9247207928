"""Load a user's function module from its file.

Function names may contain hyphens (``hello-background``), so modules are loaded from their file
path, never imported by name. Each load makes a new module object under a private, unique name,
so two registries that load the same file never share (or mix up) module state. A directory-form
function (``NAME/NAME.py`` or ``NAME/index.py``) is loaded as a package, so the handler can import
its siblings with relative imports (``from .helpers import parse``).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from bgfunctions.errors import HandlerNotFoundError, UserCodeError

__all__ = ["find_handler", "is_async_handler", "load_module"]

_counter = itertools.count(1)
_UNSAFE = re.compile(r"[^0-9A-Za-z_]")


def load_module(
    path: Path,
    *,
    function: str,
    package: bool = False,
    search_path: Sequence[Path] | None = None,
) -> ModuleType:
    """Execute ``path`` as a fresh module and return it.

    ``package=True`` loads it as a package whose submodules are found beside it, so relative
    imports (``from .helpers import x``) work; ``search_path`` names those directories instead
    (discovery adds the functions directory, so ``from ._shared import x`` finds a helper there).
    Submodules are loaded under the fresh module's name, so they are not shared either.

    Raises :class:`UserCodeError`, chained to the original exception, when the user's code fails
    to import, so the message says whose file it was.
    """
    locations: list[str] | None = None
    if search_path is not None:
        locations = [str(p) for p in search_path]
    elif package:
        locations = [str(path.parent)]
    module_name = f"bgfunctions._user.{_UNSAFE.sub('_', function)}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(
        module_name,
        path,
        submodule_search_locations=locations,
    )
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise UserCodeError(f"{path}: cannot be loaded as a Python module (function {function!r})")
    module = importlib.util.module_from_spec(spec)
    # Registered while it executes: dataclasses, typing and pickle look modules up by name.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        where = _user_frame(exc, path)
        raise UserCodeError(
            f"{path}{where}: importing function {function!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _user_frame(exc: BaseException, path: Path) -> str:
    """``, line N`` for the deepest frame of the traceback that is in the user's file."""
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f", line {exc.lineno}"
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f", line {line}"


def find_handler(module: ModuleType, path: Path, *, function: str) -> object:
    """The module's ``handler``, or an error that lists what the module does define."""
    handler = getattr(module, "handler", None)
    if handler is None:
        public = sorted(
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not inspect.ismodule(value)
        )
        defined = ", ".join(public) if public else "nothing public"
        raise HandlerNotFoundError(
            f"{path}: function {function!r} has no 'handler'; expected "
            f"`def handler(request, context)` or `async def handler(request, context)`; "
            f"the module defines: {defined}"
        )
    if not callable(handler):
        raise HandlerNotFoundError(
            f"{path}: 'handler' of function {function!r} must be callable; "
            f"got {type(handler).__name__}"
        )
    return handler


def is_async_handler(handler: object) -> bool:
    """True for ``async def`` handlers, including objects with an ``async def __call__``."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)
