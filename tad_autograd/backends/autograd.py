"""The ``"autograd"`` backend: plain :mod:`torch.autograd` and Python loops.

It uses nothing but :func:`torch.autograd.grad` and ordinary Python, so it
differentiates every function ordinary autograd can, including custom
``autograd.Function`` subclasses written the old way (``forward(ctx, ...)``),
``.item()`` calls, data-dependent control flow and in-place updates.  It is
slower than the transform backends for wide Jacobians (one backward pass per
output element) and as fast as any for gradients of scalars.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from .._eager_jacobian import eager_jacobian
from .._loop_vmap import loop_vmap
from .._rng import RngStates, visible_generators
from .._transform_failures import DefectWatch, mark_inside_transform
from .base import ArgnumsT, Backend, InDimsT, OutDimsT

__all__ = ["AutogradBackend", "VectorisedAutograd", "LOOP_MAX_BATCH", "LOOP_MAX_BATCH_ACCELERATOR"]


class AutogradBackend(Backend):
    """Jacobians by loops of :func:`torch.autograd.grad`; ``vmap`` by a loop.

    Examples
    --------
    >>> import torch
    >>> backend = AutogradBackend()
    >>> backend.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    >>> backend.vmap(torch.sum, 0, 0, "error", chunk_size=None)(torch.ones(3, 2))
    tensor([2., 2., 2.])
    """

    name = "autograd"
    is_transform = False

    def jacrev(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        def jacobian_fn(*args: Any) -> Any:
            return eager_jacobian(func, argnums, has_aux, args)

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
        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            return loop_vmap(func, in_dims, out_dims, randomness, args, kwargs)

        return batched_fn


class VectorisedAutograd(AutogradBackend):
    """How a transform backend computes Jacobians when chosen automatically.

    An eager forward pass under ordinary autograd, then the Jacobian's rows:
    one backward pass for a scalar (forces from an energy), a short loop for
    a few rows, otherwise one backward pass vectorised over the rows with the
    transform backend's ``vmap``.  This is faster than ``jacrev`` on every
    size measured, and the forward pass is never transformed, so custom
    ``autograd.Function``s (old style included), ``.item()`` and in-place
    updates need no fallback.  ``vmap`` loops over small batches and uses the
    transform backend's own otherwise.

    Whatever escapes a transform is marked as such
    (:mod:`tad_autograd._transform_failures`), after the random generators
    the call can see were restored, so the automatic fallback retries it on
    plain autograd; inside a transform, the transform's ``jacrev`` runs under
    a :class:`~tad_autograd._transform_failures.DefectWatch`, so an op whose
    batched derivative torch gets wrong is never vectorised.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> from tad_autograd.registry import REGISTRY
    >>> auto = REGISTRY.get(ta.available_backends()[0]).for_automatic()
    >>> isinstance(auto, VectorisedAutograd)
    True
    >>> auto.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    is_transform = True

    def __init__(self, transforms: Backend, vmap: Callable[..., Any]):
        self.transforms = transforms
        self.name = transforms.name
        self.aliases = transforms.aliases
        self._vmap = vmap

    def availability(self, *args: Any, **kwargs: Any) -> Any:
        return self.transforms.availability(*args, **kwargs)

    def supports_device(self, device_type: str) -> bool:
        return self.transforms.supports_device(device_type)

    def jacrev(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        vmap = self._vmap
        transforms = self.transforms
        inside: List[Callable[..., Any]] = []  # the transform's jacrev, built on first need

        def jacobian_fn(*args: Any) -> Any:
            if _transforms_active():
                # Called inside a function transform (a vmap around it, or the user's
                # own torch.func transform): autograd cannot run there, the transform can.
                if not inside:
                    inside.append(
                        transforms.jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)
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
        vectorised = self.transforms.vmap(
            func, in_dims, out_dims, randomness, chunk_size=chunk_size
        )
        context = (self.name, _eager_origin())
        loops = _loopable(out_dims)

        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            size = _batch_size_hint(in_dims, args) if loops else None
            if size is None or size > _loop_max_batch(args[0]) or _transforms_active():
                return _marked(vectorised, func, args, kwargs)
            from ..settings import CONTEXT

            token = CONTEXT.set(context)  # the loop runs func eagerly
            try:
                return loop_vmap(func, in_dims, out_dims, randomness, args, kwargs)
            finally:
                CONTEXT.reset(token)

        return batched_fn

    def __repr__(self) -> str:
        return f"<VectorisedAutograd over {self.transforms!r}>"


def _marked(
    transformed: Callable[..., Any], func: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """``transformed(*args, **kwargs)``; what escapes it is marked, with the RNG restored."""
    devices = {a.device for a in args if isinstance(a, torch.Tensor)}
    states = RngStates(devices, visible_generators(func, args, kwargs))
    try:
        return transformed(*args, **kwargs)
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


def _transforms_active() -> bool:
    """Whether a functorch transform (vmap, grad, ...) is running around this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


#: Up to this batch size, an automatic ``vmap`` on the CPU loops (no transform overhead).
LOOP_MAX_BATCH = 2
#: The same on an accelerator, where each looped sample launches its own kernels.
LOOP_MAX_BATCH_ACCELERATOR = 1


def _loop_max_batch(first: torch.Tensor) -> int:
    """The largest batch an automatic ``vmap`` loops over, for a batch on ``first``'s device."""
    return LOOP_MAX_BATCH if first.device.type == "cpu" else LOOP_MAX_BATCH_ACCELERATOR


def _eager_origin() -> str:
    from ..settings import ORIGIN_AUTOMATIC_EAGER

    return ORIGIN_AUTOMATIC_EAGER


def _batch_size_hint(in_dims: Any, args: Tuple[Any, ...]) -> Optional[int]:
    """The batch size read off the first argument when that is cheap, else ``None``."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    dim = in_dims[0] if isinstance(in_dims, tuple) and in_dims else in_dims
    if type(dim) is not int or not -args[0].dim() <= dim < args[0].dim():
        return None
    return int(args[0].shape[dim])
