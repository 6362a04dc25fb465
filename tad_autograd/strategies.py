"""Strategies: how a call runs once its backend is resolved (CONTRACT §3).

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
>>> from tad_autograd.registry import REGISTRY
>>> strategy_for(REGISTRY.get("autograd"), automatic=True).name
'loop'
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ._eager_jacobian import eager_jacobian
from ._loop_vmap import loop_vmap
from ._pytree import tree_flatten
from ._rng import RngStates, visible_generators
from ._torch_info import transforms_active
from ._transform_failures import DefectiveBatchingError, DefectWatch, mark_inside_transform
from .backends.base import ArgnumsT, Backend, InDimsT, OutDimsT
from .settings import CONTEXT, ORIGIN_AUTOMATIC_EAGER

__all__ = [
    "Strategy",
    "TransformStrategy",
    "LoopStrategy",
    "EagerVectorisedStrategy",
    "strategy_for",
    "LOOP_MAX_BATCH",
    "LOOP_MAX_BATCH_ACCELERATOR",
]

#: Up to this batch size, an automatic ``vmap`` on the CPU loops (no transform overhead).
LOOP_MAX_BATCH = 2
#: The same on an accelerator, where each looped sample launches its own kernels.
LOOP_MAX_BATCH_ACCELERATOR = 1


class Strategy:
    """How a call runs on :attr:`backend`; ``jacrev`` and ``vmap`` as a backend's.

    Attributes
    ----------
    name : str
        ``"transform"``, ``"loop"`` or ``"eager-vectorised"``.
    backend : Backend
        The backend it runs on.
    eager : bool
        The user's function runs eagerly (not under a function transform) in
        ``jacrev``, so derivatives nested in it may use this strategy again.
    """

    name = ""
    eager = False

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def jacrev(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool, chunk_size: Any
    ) -> Callable[..., Any]:
        """The Jacobian function of ``func``, with :func:`torch.func.jacrev`'s semantics."""
        return self.backend.jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)

    def vmap(
        self,
        func: Callable[..., Any],
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        """``func`` vectorised, with :func:`torch.func.vmap`'s semantics."""
        return self.backend.vmap(func, in_dims, out_dims, randomness, chunk_size=chunk_size)

    def __repr__(self) -> str:
        return f"<strategy {self.name!r} on backend {self.backend.name!r}>"


class TransformStrategy(Strategy):
    """The backend's own transforms.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.registry import REGISTRY
    >>> from tad_autograd import available_backends
    >>> s = TransformStrategy(REGISTRY.get(available_backends()[0]))
    >>> s.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    name = "transform"


class LoopStrategy(Strategy):
    """The ``"autograd"`` backend: eager forward, loops of backward passes, a loop for vmap.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.registry import REGISTRY
    >>> LoopStrategy(REGISTRY.get("autograd")).vmap(torch.sum, 0, 0, "error", chunk_size=None)(
    ...     torch.ones(3, 2))
    tensor([2., 2., 2.])
    """

    name = "loop"
    eager = True


class EagerVectorisedStrategy(Strategy):
    """Automatic mode on a transform backend (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.registry import REGISTRY
    >>> from tad_autograd import available_backends
    >>> s = EagerVectorisedStrategy(REGISTRY.get(available_backends()[0]))
    >>> s.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(6)).shape
    torch.Size([6, 6])
    """

    name = "eager-vectorised"
    eager = True

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self._batch = backend.vmap_primitive()

    def jacrev(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool, chunk_size: Any
    ) -> Callable[..., Any]:
        vmap, backend = self._batch, self.backend
        inside: List[Callable[..., Any]] = []  # the transform's jacrev, built on first need

        def jacobian_fn(*args: Any) -> Any:
            if transforms_active():
                # Called inside a function transform (a vmap around it, or the user's
                # own torch.func transform): autograd cannot run there, the transform can.
                if not inside:
                    inside.append(
                        backend.jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)
                    )
                if not DefectWatch.needed():
                    return inside[0](*args)
                with DefectWatch():
                    return inside[0](*args)
            return eager_jacobian(func, argnums, has_aux, args, vmap, chunk_size)

        return jacobian_fn

    def vmap(
        self,
        func: Callable[..., Any],
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        vectorised = self.backend.vmap(func, in_dims, out_dims, randomness, chunk_size=chunk_size)
        if randomness != "different" and DefectWatch.needed("forward"):
            # never vmap an op this torch batches wrongly (today: random ops that ignore
            # randomness, on torch 1.13 and 2.0; a Python-level watch on every op, paid on
            # those releases only, since a function that reseeds hides its draws from _marked)
            vectorised = _watched(vectorised, "forward")
        context = (self.backend.name, ORIGIN_AUTOMATIC_EAGER)
        loops = _loopable(out_dims)

        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            size = _batch_size_hint(in_dims, args) if loops else None
            # an empty batch goes to the transform too: the loop must make up a sample
            if size is None or not 0 < size <= _loop_max_batch(args[0]) or transforms_active():
                return _marked(vectorised, func, args, kwargs, randomness == "error")
            token = CONTEXT.set(context)  # the loop runs func eagerly
            try:
                return loop_vmap(func, in_dims, out_dims, randomness, args, kwargs)
            finally:
                CONTEXT.reset(token)

        return batched_fn


_STRATEGIES: Dict[Tuple[Backend, bool], Strategy] = {}


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
    >>> from tad_autograd.registry import REGISTRY
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


def _watched(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
    """``fn`` run under a :class:`DefectWatch` for the defects of ``stage``."""

    def watched(*args: Any, **kwargs: Any) -> Any:
        with DefectWatch(stage):
            return fn(*args, **kwargs)

    return watched


def _marked(
    transformed: Callable[..., Any],
    func: Callable[..., Any],
    args: Any,
    kwargs: Any,
    no_draws: bool = False,
) -> Any:
    """``transformed(*args, **kwargs)``; what escapes it is marked, with the RNG restored.

    With ``no_draws`` (``randomness="error"``) a transform that drew random numbers
    without raising has batched a random op wrongly (e.g. scaled_dot_product_attention
    with dropout on torch 1.13 and 2.0): that is a failure inside the transform too.
    """
    leaves = args if all(isinstance(a, torch.Tensor) for a in args) else tree_flatten(args)[0]
    devices = {a.device for a in leaves if isinstance(a, torch.Tensor)}
    states = RngStates(devices, visible_generators(func, args, kwargs))
    try:
        result = transformed(*args, **kwargs)
        if no_draws and states.changed():
            raise DefectiveBatchingError(
                "a random operation", "it drew random numbers under randomness='error'"
            )
        return result
    except Exception as error:
        states.restore()
        mark_inside_transform(error)
        raise


def _loopable(out_dims: OutDimsT) -> bool:
    """Whether a small batch may loop: not when an output is unbatched (``out_dims`` None).

    Only the transform can tell a batched output from an unbatched one
    whatever the batch size, and raise as :func:`torch.func.vmap` does.
    """
    if out_dims is None:
        return False
    if isinstance(out_dims, (tuple, list)):
        return all(_loopable(d) for d in out_dims)
    if isinstance(out_dims, dict):
        return all(_loopable(d) for d in out_dims.values())
    return True


def _loop_max_batch(first: torch.Tensor) -> int:
    """The largest batch an automatic ``vmap`` loops over, for a batch on ``first``'s device."""
    return LOOP_MAX_BATCH if first.device.type == "cpu" else LOOP_MAX_BATCH_ACCELERATOR


def _batch_size_hint(in_dims: Any, args: Tuple[Any, ...]) -> Optional[int]:
    """The batch size read off the first argument when that is cheap, else ``None``."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    dim = in_dims[0] if isinstance(in_dims, tuple) and in_dims else in_dims
    if type(dim) is not int or not -args[0].dim() <= dim < args[0].dim():
        return None
    return int(args[0].shape[dim])
