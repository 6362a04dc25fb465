"""Where users choose a backend: per block, globally, or by environment variable.

* :func:`use_backend` sets the innermost choice for the current thread or
  asyncio task (a :class:`contextvars.ContextVar`), so blocks nest and never
  leak into other threads or tasks.
* :func:`set_backend` sets the process-wide default.
* ``TAD_AUTOGRAD_BACKEND`` is read each time a call is resolved, never only
  at import.

While a transform runs its function, the backend it runs is the innermost
setting, so nested transforms use the same backend.  While dynamo
(``torch.compile``) traces, the innermost settings made by transforms live in a
plain list (dynamo cannot trace a ``ContextVar``), and the ``use_backend``
block around the compiled call is read once, when the call is compiled.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..compat._torch_info import constant_while_compiling, is_compiling
from ..errors import BackendUnavailableError, UnknownBackendError
from ._registry import REGISTRY

__all__ = [
    "ENV_VAR",
    "get_backend",
    "set_backend",
    "use_backend",
    "ORIGIN_BLOCK",
    "ORIGIN_EXPLICIT",
    "ORIGIN_AUTOMATIC",
    "ORIGIN_AUTOMATIC_EAGER",
    "ORIGIN_AUTOMATIC_LOOP",
]

#: The environment variable naming a backend (or ``auto``).
ENV_VAR = "TAD_AUTOGRAD_BACKEND"

# os.environ keeps its contents in a dict; reading it directly avoids the
# KeyError that os.environ.get raises and catches when the variable is unset.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if hasattr(os.environ, "encodekey") else None
if not isinstance(_ENV_DATA, dict) or _ENV_KEY is None:
    _ENV_DATA = None


def read_env() -> Optional[str]:
    """The current value of ``TAD_AUTOGRAD_BACKEND``, read anew on every call.

    Examples
    --------
    >>> import os
    >>> os.environ[ENV_VAR] = "autograd"
    >>> read_env()
    'autograd'
    >>> del os.environ[ENV_VAR]
    >>> read_env() is None
    True
    """
    if _ENV_DATA is not None:
        value = _ENV_DATA.get(_ENV_KEY)
        return None if value is None else os.environ.decodevalue(value)
    return os.environ.get(ENV_VAR)


#: Origins of the innermost setting.
ORIGIN_BLOCK = "use_backend"
ORIGIN_EXPLICIT = "enclosing transform (explicit)"
ORIGIN_AUTOMATIC = "enclosing transform (automatic)"
ORIGIN_AUTOMATIC_EAGER = "enclosing transform (automatic, eager forward)"
#: With no backend name: the samples of an automatic ``vmap`` that loops after its
#: transform failed, each run as automatic mode would run it alone.
ORIGIN_AUTOMATIC_LOOP = "enclosing automatic vmap's loop"

#: ``(backend name or None for automatic, origin)`` of the innermost setting.
CONTEXT: ContextVar[Optional[Tuple[Optional[str], str]]] = ContextVar(
    "tad_autograd_backend", default=None
)


#: The innermost settings made by transforms while dynamo traces them, innermost last.
_TRACED: List[Tuple[Optional[str], str]] = []


@constant_while_compiling
def _context_when_compiled() -> Optional[Tuple[Optional[str], str]]:
    return CONTEXT.get()


def innermost() -> Optional[Tuple[Optional[str], str]]:
    """The innermost setting ``(backend name or None, origin)`` or ``None``; dynamo traces it."""
    if is_compiling():
        return _TRACED[-1] if _TRACED else _context_when_compiled()
    return CONTEXT.get()


def enter(setting: Tuple[Optional[str], str]) -> Any:
    """Make ``setting`` the innermost one until :func:`leave` is given the returned token."""
    if is_compiling():
        _TRACED.append(setting)
        return None
    return CONTEXT.set(setting)


def leave(token: Any) -> None:
    """Undo the :func:`enter` that returned ``token``."""
    if token is None:
        _TRACED.pop()
    else:
        CONTEXT.reset(token)


class _Global:
    name: Optional[str] = None


GLOBAL = _Global()


_AVAILABILITY: Dict[Tuple[int, str], Any] = {}


def validated(name: Optional[str], parameter: str) -> Optional[str]:
    """Canonical name for ``name`` (``None`` = automatic); raise if unknown or unavailable."""
    canonical = REGISTRY.canonical(name)
    if canonical is not None:
        key = (REGISTRY.version, canonical)
        availability = _AVAILABILITY.get(key)
        if availability is None:  # fixed for a process, until the registry changes
            availability = _AVAILABILITY[key] = REGISTRY.get(canonical).availability()
        if not availability.ok:
            raise BackendUnavailableError(
                f"{parameter}={name!r}: backend {canonical!r} is unavailable: "
                f"{availability.reason}; fix: {availability.fix}"
            )
    return canonical


def set_backend(name: Optional[str]) -> None:
    """Set the process-wide backend; ``"auto"`` or ``None`` restores automatic choice.

    A :func:`use_backend` block or a ``backend=`` argument still wins over it.

    Parameters
    ----------
    name : str or None
        A backend name from :func:`tad_autograd.available_backends`, ``"auto"``
        or ``None``.

    Raises
    ------
    UnknownBackendError
        For a name no backend carries.
    BackendUnavailableError
        For a backend that cannot run with the installed torch.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> ta.set_backend("autograd")
    >>> ta.get_backend()
    'autograd'
    >>> ta.set_backend("auto")
    >>> ta.get_backend()
    'auto'
    """
    GLOBAL.name = validated(name, "set_backend(name)")


def get_backend() -> str:
    """The backend setting in force here: ``"auto"`` or a backend name.

    Consults, in order, the innermost :func:`use_backend` block (or the
    backend of an enclosing transform), :func:`set_backend` and the
    ``TAD_AUTOGRAD_BACKEND`` environment variable.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> with ta.use_backend("autograd"):
    ...     print(ta.get_backend())
    autograd
    """
    context = innermost()
    if context is not None:
        return context[0] or "auto"
    if GLOBAL.name is not None:
        return GLOBAL.name
    env = read_env()
    if env and env != "auto":
        try:
            return REGISTRY.get(env).name
        except UnknownBackendError as error:
            raise UnknownBackendError(f"{ENV_VAR}={env!r}: {error}") from None
    return "auto"


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Use backend ``name`` for the calls inside the ``with`` block.

    Blocks nest (the innermost wins) and are private to the current thread or
    asyncio task.  ``"auto"`` (or ``None``) restores automatic choice inside
    the block.

    Parameters
    ----------
    name : str or None
        A backend name, ``"auto"`` or ``None``.

    Raises
    ------
    UnknownBackendError, BackendUnavailableError
        On entering the block, for a name that cannot be used.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> with ta.use_backend("autograd"):
    ...     ta.jacrev(torch.sin)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """
    token = CONTEXT.set((validated(name, "use_backend(name)"), ORIGIN_BLOCK))
    try:
        yield
    finally:
        CONTEXT.reset(token)
