"""The library's one memory of what failed for a function, and what to use instead.

Keyed per function (weakly: closures and bound methods are not kept alive,
a bound method is remembered under its instance), then per key naming the
choice; :data:`MEMORY` is the process-wide one.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["Memory", "MEMORY"]

_NOTHING = object()


def _owner_and_key(func: Callable[..., Any]) -> Tuple[Any, Any]:
    """What to reference weakly, and the key under it.

    Bound methods are created anew at each attribute access, so they are
    remembered under their instance, keyed by the underlying function.
    """
    if inspect.ismethod(func):
        return func.__self__, func.__func__
    return func, None


class Memory:
    """What failed for a function, and what to use instead: function -> {key: value}.

    One memory for every such choice, the keys saying which: automatic mode's
    fallbacks (:class:`~tad_autograd.dispatch._fallback.Fallback` keys),
    ``jacobian(mode="auto")``'s mode per input shapes, eager forward mode's
    dual numbers.  Functions are referenced weakly; functions that cannot be
    weakly referenced are not remembered (they fall back, with a warning, each
    call).

    Examples
    --------
    >>> memory = Memory()
    >>> def f(x):
    ...     return x
    >>> memory.remember(f, "tried", "autograd")
    True
    >>> memory.recall(f, "tried")
    'autograd'
    >>> memory.describe(f)
    ('f tried: autograd',)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: weakref.WeakKeyDictionary[Any, Dict[Any, Any]] = weakref.WeakKeyDictionary()
        #: Changes whenever something is remembered or forgotten, so callers may cache recalls.
        self.generation = 0

    def recall(self, func: Callable[..., Any], key: Any) -> Any:
        """The value remembered for ``func`` under ``key``, or ``None``."""
        owner, sub = _owner_and_key(func)
        try:
            entries = self._store.get(owner)
        except TypeError:
            return None
        return None if entries is None else entries.get((sub, key))

    def remember(self, func: Callable[..., Any], key: Any, value: Any) -> bool:
        """Remember ``value`` for ``func`` under ``key``; ``False`` if it was remembered already."""
        owner, sub = _owner_and_key(func)
        with self._lock:
            try:
                entries = self._store.setdefault(owner, {})
            except TypeError:
                return True
            old = entries.get((sub, key), _NOTHING)
            if old is not _NOTHING and old == value:
                return False
            entries[(sub, key)] = value
            self.generation += 1
            return old is _NOTHING

    def describe(
        self, func: Optional[Callable[..., Any]] = None, kind: type = object
    ) -> Tuple[str, ...]:
        """One line per entry whose key is a ``kind`` (only those of ``func``, if given)."""
        lines = []
        with self._lock:
            items = list(self._store.items())
        only = None if func is None else _owner_and_key(func)
        for owner, entries in items:
            if only is not None and owner is not only[0]:
                continue
            for (sub, key), value in entries.items():
                if not isinstance(key, kind) or (only is not None and sub is not only[1]):
                    continue
                label = getattr(sub or owner, "__qualname__", repr(sub or owner))
                lines.append(f"{label} {key}: {value}")
        return tuple(lines)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._store = weakref.WeakKeyDictionary()
            self.generation += 1


#: The process-wide memory of what failed.
MEMORY = Memory()
