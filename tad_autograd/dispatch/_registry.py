"""The explicit registry of backends, by name and priority.

An explicit registry (no class discovery) guarded by a lock: registration
from several threads is safe, and lookups read an immutable snapshot.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

from ..backends.autograd import AutogradBackend
from ..backends.base import Backend
from ..backends.func import FuncBackend
from ..backends.functorch import FunctorchBackend
from ..errors import UnknownBackendError

__all__ = [
    "Registry",
    "REGISTRY",
    "register_backend",
    "unregister_backend",
    "available_backends",
]


class Registry:
    """Backends by name, ordered by priority (highest first).

    Attributes
    ----------
    version : int
        Increases with every change, so caches keyed on it stay valid.

    Examples
    --------
    >>> from tad_autograd.backends.autograd import AutogradBackend
    >>> reg = Registry()
    >>> reg.register(AutogradBackend(), priority=0)
    >>> reg.names()
    ('autograd',)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Tuple[Tuple[int, Backend], ...] = ()
        self._names: Dict[str, Backend] = {}
        self.version = 0

    def register(self, backend: Backend, *, priority: int) -> None:
        """Add ``backend`` (replacing one of the same name) with ``priority``."""
        if not isinstance(backend.name, str) or not backend.name or backend.name == "auto":
            raise ValueError(
                f"backend.name must be a non-empty string other than 'auto', got {backend.name!r}"
            )
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, got {priority!r}")
        with self._lock:
            kept = tuple(e for e in self._entries if e[1].name != backend.name)
            entries = sorted(kept + ((priority, backend),), key=lambda e: -e[0])
            names: Dict[str, Backend] = {}
            for _, b in entries:
                for alias in (b.name, *b.aliases):
                    names[alias] = b
            self._entries, self._names = tuple(entries), names
            self.version += 1

    def unregister(self, name: str) -> None:
        """Remove the backend called ``name`` (or one of its aliases)."""
        backend = self.get(name)
        with self._lock:
            entries = tuple(e for e in self._entries if e[1] is not backend)
            self._names = {k: b for k, b in self._names.items() if b is not backend}
            self._entries = entries
            self.version += 1

    def get(self, name: str) -> Backend:
        """The backend called ``name``; :class:`UnknownBackendError` if none."""
        try:
            return self._names[name]
        except (KeyError, TypeError):
            raise UnknownBackendError(
                f"unknown backend {name!r}; known: "
                f"{', '.join(repr(n) for n in self.known_names())} "
                "(or 'auto')"
            ) from None

    def canonical(self, name: Optional[str]) -> Optional[str]:
        """``None`` for ``None``/``"auto"``, else the backend's own name (aliases resolved)."""
        if name is None or name == "auto":
            return None
        return self.get(name).name

    def backends(self) -> Tuple[Backend, ...]:
        """All backends, highest priority first."""
        return tuple(b for _, b in self._entries)

    def priorities(self) -> Tuple[Tuple[int, Backend], ...]:
        """``(priority, backend)`` pairs, highest first."""
        return self._entries

    def names(self) -> Tuple[str, ...]:
        """The backends' names, highest priority first."""
        return tuple(b.name for _, b in self._entries)

    def known_names(self) -> Tuple[str, ...]:
        """Every accepted name, aliases included."""
        return tuple(self._names)


def _default_registry() -> Registry:
    registry = Registry()
    registry.register(FuncBackend(), priority=300)
    registry.register(FunctorchBackend(), priority=200)
    registry.register(AutogradBackend(), priority=100)
    return registry


#: The registry the public API uses.
REGISTRY = _default_registry()


def register_backend(backend: Backend, *, priority: int) -> None:
    """Register a third-party backend.

    Parameters
    ----------
    backend : Backend
        An object following :class:`tad_autograd.backends.Backend`.
    priority : int
        Higher wins in automatic mode.  The built-in backends have ``func``
        300, ``functorch`` 200 and ``autograd`` 100.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> from tad_autograd.backends.autograd import AutogradBackend
    >>> class Loop(AutogradBackend):
    ...     name = "my-loop"
    >>> ta.register_backend(Loop(), priority=50)
    >>> "my-loop" in ta.available_backends()
    True
    >>> unregister_backend("my-loop")
    """
    REGISTRY.register(backend, priority=priority)


def unregister_backend(name: str) -> None:
    """Remove a registered backend by name.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> from tad_autograd.backends.autograd import AutogradBackend
    >>> class Loop(AutogradBackend):
    ...     name = "tmp-loop"
    >>> ta.register_backend(Loop(), priority=1)
    >>> unregister_backend("tmp-loop")
    >>> "tmp-loop" in ta.available_backends()
    False
    """
    REGISTRY.unregister(name)


def available_backends() -> Tuple[str, ...]:
    """Names of the backends that can run with the installed torch, best first.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> "autograd" in ta.available_backends()
    True
    """
    return tuple(b.name for b in REGISTRY.backends() if b.availability().ok)
