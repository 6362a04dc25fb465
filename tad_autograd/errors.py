"""Exceptions and warnings raised by :mod:`tad_autograd`."""

from __future__ import annotations

__all__ = [
    "BackendFallbackWarning",
    "BackendUnavailableError",
    "UnknownBackendError",
]


class UnknownBackendError(ValueError):
    """A backend name that no registered backend carries.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> try:
    ...     ta.set_backend("jax")
    ... except ta.UnknownBackendError as err:
    ...     print("known:" in str(err))
    True
    """


class BackendUnavailableError(RuntimeError):
    """A known backend was chosen explicitly but cannot run here.

    The message says why (for example, the installed torch is too old) and
    what would fix it.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> issubclass(ta.BackendUnavailableError, RuntimeError)
    True
    """


class BackendFallbackWarning(UserWarning):
    """Automatic mode retried a call with the next backend.

    Issued once per function, naming the reason the first backend could not
    transform the function and the backend used instead.  Silence it with
    ``warnings.filterwarnings("ignore", category=ta.BackendFallbackWarning)``
    or avoid it by choosing the backend explicitly.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> issubclass(ta.BackendFallbackWarning, UserWarning)
    True
    """
