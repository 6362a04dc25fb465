"""The one lock that serialises what torch keeps process-wide.

* Forward-mode AD: torch's dual levels (:mod:`torch.autograd.forward_ad`,
  and ``torch.func.jvp``/``jacfwd`` on top of them) are global to the process,
  not per thread: two threads pushing tangents at once raise "nested forward
  mode AD is not supported", return zeros, or corrupt the heap.  Every
  forward-mode region runs under :data:`TRANSFORM_LOCK`.
* functorch on torch 1.13 keeps its transform levels process-wide too; its
  backend serialises every call with the same lock.

One re-entrant lock for both, so nested calls in one thread proceed and two
threads can never wait on each other's lock.

Examples
--------
>>> with TRANSFORM_LOCK:
...     with TRANSFORM_LOCK:  # re-entrant
...         pass
>>> locked(lambda x: x + 1)(1)
2
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

__all__ = ["TRANSFORM_LOCK", "locked"]

TRANSFORM_LOCK = threading.RLock()

F = TypeVar("F", bound=Callable[..., Any])


def locked(fn: F) -> F:
    """``fn`` run under :data:`TRANSFORM_LOCK`."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with TRANSFORM_LOCK:
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
