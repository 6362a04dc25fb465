"""Whether an automatic ``vmap`` of a small CPU batch loops or vectorises: by measured cost.

A loop over one or two samples pays no transform overhead, which for a cheap
function is most of the time.  For an expensive one (a numerical Hessian of
hundreds of energies per sample, kernels big enough to share between
threads) the transform's batched kernels can win even at two samples.  So the
first :data:`TRIES` small-batch calls of a function (per batch size and
argument shapes) loop, timed; if a sample took longer than
:data:`EXPENSIVE_SAMPLE_S`, the next :data:`TRIES` such calls run the
transform, timed; from then on the transform runs if its best sample took
less than :data:`MARGIN` times the loop's, else the loop.  A transform that
raises in that trial (an op it cannot batch, ``.item()``) is not tried again
and the call loops, silently, as small batches always have.  Functions that
cannot be weakly referenced, and batches off the CPU (where a timer does not
see the kernels), always loop.

Examples
--------
>>> import torch
>>> choice = SmallBatchChoice()
>>> choice.run(torch.sin, ("key",), lambda: "looped", lambda: "vectorised")
'looped'
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable, Dict, Hashable, Optional

__all__ = ["SmallBatchChoice", "EXPENSIVE_SAMPLE_S", "TRIES", "MARGIN", "MAX_KEYS"]

#: A looped sample slower than this (seconds) is worth timing the transform against.
EXPENSIVE_SAMPLE_S = 5e-4
#: Timed runs of each way before the choice (the first run of a function is often slow).
TRIES = 2
#: The transform is chosen when its sample takes less than this fraction of a looped one.
MARGIN = 0.8
#: The most batch sizes and shapes remembered per function.
MAX_KEYS = 64


class _Costs:
    """Seconds per sample of each way (the best of :data:`TRIES` runs) and the choice they made."""

    __slots__ = ("loop", "vectorised", "runs", "vectorise")

    def __init__(self) -> None:
        self.loop = float("inf")
        self.vectorised = float("inf")
        #: Timed runs so far: the loop's first, then the transform's.
        self.runs = 0
        #: ``None`` until decided.
        self.vectorise: Optional[bool] = None


class SmallBatchChoice:
    """Per function, keyed weakly: loop or vectorise a small batch (see the module docstring).

    ``clock``: the timer (seconds).

    Examples
    --------
    >>> ticks = iter(range(0, 100, 1))
    >>> choice = SmallBatchChoice(clock=lambda: next(ticks) * 1e-3)  # each run: 1 ms
    >>> def f():
    ...     pass
    >>> # two timed loops, two timed transforms; equal costs: the loop stays
    >>> [choice.run(f, (2,), lambda: "looped", lambda: "vectorised") for _ in range(5)]
    ['looped', 'looped', 'vectorised', 'vectorised', 'looped']
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._costs: weakref.WeakKeyDictionary[Any, Dict[Hashable, _Costs]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._clock = clock

    def run(
        self,
        func: Callable[..., Any],
        key: Hashable,
        loop: Callable[[], Any],
        vectorised: Callable[[], Any],
        size: int = 1,
    ) -> Any:
        """``loop()`` or ``vectorised()`` for a batch of ``size`` samples of ``func``.

        ``key`` tells calls apart whose costs differ (batch size, argument
        shapes).  ``vectorised`` may raise: that is not the caller's error
        (``loop`` runs instead), while what ``loop`` raises is.
        """
        costs = self._costs_of(func, key)
        if costs is None or costs.vectorise is False:
            return loop()
        if costs.vectorise:
            return vectorised()
        start = self._clock()
        if costs.runs < TRIES:
            result = loop()
            costs.loop = min(costs.loop, (self._clock() - start) / size)
            costs.runs += 1
            if costs.runs == TRIES and costs.loop < EXPENSIVE_SAMPLE_S:
                costs.vectorise = False
            return result
        try:
            result = vectorised()
        except Exception:  # the transform cannot run it: small batches loop, as they did
            costs.vectorise = False
            return loop()
        costs.vectorised = min(costs.vectorised, (self._clock() - start) / size)
        costs.runs += 1
        if costs.runs == 2 * TRIES:
            costs.vectorise = costs.vectorised < MARGIN * costs.loop
        return result

    def _costs_of(self, func: Callable[..., Any], key: Hashable) -> Optional[_Costs]:
        try:
            per_key = self._costs.get(func)
        except TypeError:  # not weakly referenceable (a builtin): loop, as small batches did
            return None
        if per_key is None:
            with self._lock:
                per_key = self._costs.setdefault(func, {})
        found = per_key.get(key)
        if found is None:
            if len(per_key) >= MAX_KEYS:  # shapes without end: loop, remembering no more
                return None
            found = per_key.setdefault(key, _Costs())
        return found
