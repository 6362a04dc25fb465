"""Strategies: how a call runs once its backend is resolved.

A backend says *what* computes derivatives (:mod:`torch.func`, ``functorch``,
plain :mod:`torch.autograd`); a strategy says *how* a call uses it.  Each is
a named object, and :func:`~tad_autograd.explain`, the fallback warning, the
log records and the report name the backend and the strategy that ran.

``"transform"``
    The backend's own transforms (``torch.func.jacrev``, ``vmap``): what an
    explicitly chosen transform backend runs, and ``fjacrev``/``fvmap``.
``"loop"``
    The ``"autograd"`` backend: an eager forward pass and a loop of backward
    passes for Jacobians, a Python loop over the batch for ``vmap``.
``"compiled"``
    What automatic mode runs on a transform backend while dynamo
    (``torch.compile``) traces the call: the backend's own transforms, which
    dynamo supports natively, with ``hvp`` reverse over reverse.
``"eager-vectorised"``
    What automatic mode runs on a transform backend: an eager forward pass
    under ordinary autograd, then the Jacobian's rows (one backward pass for a
    scalar, a short loop for a few rows, otherwise one backward pass
    vectorised with the backend's ``vmap``; never vectorised through an op
    whose batched derivative torch gets wrong).  ``vmap`` loops over small
    batches and uses the backend's ``vmap`` otherwise.  Whatever escapes a
    transform is marked as such, after the random generators the call can see
    were restored, so the automatic fallback retries it on plain autograd.

Examples
--------
>>> from tad_autograd.dispatch.registry import REGISTRY
>>> strategy_for(REGISTRY.get("autograd"), automatic=True).name
'loop'
"""

from __future__ import annotations

from typing import Dict, Tuple

from ..backends.base import Backend
from ._eager_vectorised import LOOP_MAX_BATCH, LOOP_MAX_BATCH_ACCELERATOR, EagerVectorisedStrategy
from ._strategy import CompiledStrategy, LoopStrategy, Strategy, TransformStrategy

__all__ = [
    "Strategy",
    "TransformStrategy",
    "CompiledStrategy",
    "LoopStrategy",
    "EagerVectorisedStrategy",
    "strategy_for",
    "compiled_strategy_for",
    "LOOP_MAX_BATCH",
    "LOOP_MAX_BATCH_ACCELERATOR",
]


_STRATEGIES: Dict[Tuple[Backend, bool], Strategy] = {}
_COMPILED: Dict[Backend, Strategy] = {}


def compiled_strategy_for(backend: Backend) -> Strategy:
    """The strategy automatic mode runs on ``backend`` while dynamo traces the call.

    Examples
    --------
    >>> from tad_autograd.dispatch.registry import REGISTRY
    >>> compiled_strategy_for(REGISTRY.get("autograd")).name
    'loop'
    """
    strategy = _COMPILED.get(backend)
    if strategy is None:
        if backend.is_transform:
            strategy = CompiledStrategy(backend)
        else:
            strategy = strategy_for(backend, automatic=False)
        _COMPILED[backend] = strategy
    return strategy


def strategy_for(backend: Backend, *, automatic: bool, transforms_only: bool = False) -> Strategy:
    """The strategy a call runs on ``backend`` (built once per backend and kind).

    Parameters
    ----------
    backend : Backend
        The resolved backend.
    automatic : bool
        The backend was chosen (or inherited) automatically, with the user's
        function run eagerly around this call.
    transforms_only : bool
        For ``fjacrev``/``fvmap``: the backend's own transforms only.

    Examples
    --------
    >>> from tad_autograd.dispatch.registry import REGISTRY
    >>> strategy_for(REGISTRY.get("autograd"), automatic=False).name
    'loop'
    """
    key = (backend, automatic and not transforms_only)
    strategy = _STRATEGIES.get(key)
    if strategy is None:  # decided once per backend and kind, off the per-call path
        if not backend.is_transform:
            strategy = LoopStrategy(backend)
        elif key[1] and backend.vmap_primitive() is not None:
            strategy = EagerVectorisedStrategy(backend)
        else:
            strategy = TransformStrategy(backend)
        _STRATEGIES[key] = strategy
    return strategy
