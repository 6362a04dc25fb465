"""The ``"eager-vectorised"`` strategy: what automatic mode runs on a transform backend.

See :mod:`tad_autograd.dispatch.strategies`.  Reverse-mode operators (``jacrev``,
``grad``, ``grad_and_value``, ``vjp``, ``hvp``) and the forward-mode ones
(``jacfwd``, ``jvp``, ``linearize``) run the user's function once, eagerly,
under ordinary autograd (see :mod:`tad_autograd.eager._forward_mode`); only the
Jacobian's rows (``jacrev``) or columns (``jacfwd`` of more than a few inputs)
are vectorised with the backend's ``vmap``.  Inside a function transform, the
backend's own operators run.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from ..backends.base import ArgnumsT, Backend, InDimsT, OutDimsT
from ..compat._pytree import tree_flatten
from ..compat._rng import RngStates, visible_generators
from ..compat._torch_info import transforms_active
from ..compat._transform_failures import (
    FORWARD_STAGES,
    REVERSE_STAGES,
    DefectiveBatchingError,
    mark_inside_transform,
    stages_of,
    watch_calls,
)
from ..compat.batching_defects import Stages
from ..eager._forward_mode import eager_jacfwd, eager_jvp, eager_linearize
from ..eager._jacobian import eager_jacobian
from ..eager._loop_vmap import loop_vmap
from ..eager._products import eager_grad, eager_grad_and_value, eager_hvp, eager_vjp
from ..eager._rows import LOOP_MAX_ROWS
from ..eager._small_batches import SmallBatchChoice
from ._strategy import Strategy
from .settings import CONTEXT, ORIGIN_AUTOMATIC_EAGER

__all__ = ["EagerVectorisedStrategy", "LOOP_MAX_BATCH", "LOOP_MAX_BATCH_ACCELERATOR"]

#: Up to this batch size, an automatic ``vmap`` on the CPU loops (no transform overhead),
#: unless the function proved expensive enough for the transform to win (:data:`_SMALL`).
LOOP_MAX_BATCH = 2
#: The same on an accelerator, where each looped sample launches its own kernels.
LOOP_MAX_BATCH_ACCELERATOR = 1

#: Per function: whether a small CPU batch loops or vectorises, by measured cost.
_SMALL = SmallBatchChoice()


class EagerVectorisedStrategy(Strategy):
    """Automatic mode on a transform backend (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.dispatch.registry import REGISTRY
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
                    watched = watch_calls(func, REVERSE_STAGES)
                    inside.append(
                        backend.jacrev(watched, argnums, has_aux=has_aux, chunk_size=chunk_size)
                    )
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
        # never vmap an op this torch batches wrongly (today: random ops that ignore
        # randomness, on torch 1.13 and 2.0; a Python-level watch on every op of the
        # function, paid on those releases only, since a function that reseeds hides its
        # draws from _marked)
        watched = watch_calls(func, "forward") if randomness != "different" else func
        vectorised = self.backend.vmap(
            watched, in_dims, out_dims, randomness, chunk_size=chunk_size
        )
        context = (self.backend.name, ORIGIN_AUTOMATIC_EAGER)
        loops = _loopable(out_dims)

        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            size = _batch_size_hint(in_dims, args) if loops else None
            # an empty batch goes to the transform too: the loop must make up a sample
            if size is None or not 0 < size <= _loop_max_batch(args[0]) or transforms_active():
                return _marked(vectorised, func, args, kwargs, randomness == "error")

            def loop() -> Any:
                token = CONTEXT.set(context)  # the loop runs func eagerly
                try:
                    return loop_vmap(func, in_dims, out_dims, randomness, args, kwargs)
                finally:
                    CONTEXT.reset(token)

            if args[0].device.type != "cpu":
                return loop()
            key = (size, tuple(a.shape for a in args if isinstance(a, torch.Tensor)))
            return _SMALL.run(
                func,
                key,
                loop,
                lambda: _marked(vectorised, func, args, kwargs, randomness == "error"),
                size,
            )

        return batched_fn

    # -- the other operators: eager outside transforms, the backend's inside -------------

    def _inside(
        self,
        make: Callable[[Callable[..., Any]], Callable[..., Any]],
        func: Callable[..., Any],
        stage: Stages = REVERSE_STAGES,
    ) -> Callable[..., Any]:
        """``make(f)``'s operator of ``func`` under the defect watch, built on first need.

        ``stage``: the defects to watch for in ``func``'s calls (default: the
        batching defects).  A forward-mode Jacobian vmaps the function itself
        and pushes tangents, with no backward pass: :data:`FORWARD_STAGES`;
        products that push tangents (``jvp``, ``linearize``, ``hvp``) watch for
        every stage.
        """
        built: List[Callable[..., Any]] = []

        def run(*args: Any) -> Any:
            if not built:
                built.append(make(watch_calls(func, stage)))
            return built[0](*args)

        return run

    def grad(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool
    ) -> Callable[..., Any]:
        inside = self._inside(lambda f: self.backend.grad(f, argnums, has_aux=has_aux), func)

        def grad_fn(*args: Any) -> Any:
            if transforms_active():
                return inside(*args)
            return eager_grad(func, argnums, has_aux, args)

        return grad_fn

    def grad_and_value(self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool) -> Any:
        inside = self._inside(
            lambda f: self.backend.grad_and_value(f, argnums, has_aux=has_aux), func
        )

        def grad_and_value_fn(*args: Any) -> Any:
            if transforms_active():
                return inside(*args)
            return eager_grad_and_value(func, argnums, has_aux, args)

        return grad_and_value_fn

    def jacfwd(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        randomness: str,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        inside = self._inside(
            lambda f: self.backend.jacfwd(
                f, argnums, has_aux=has_aux, randomness=randomness, chunk_size=chunk_size
            ),
            func,
            FORWARD_STAGES,
        )

        def jacobian_fn(*args: Any) -> Any:
            if transforms_active():
                return inside(*args)
            # the columns of one eager pass (more than a few vectorised): nothing in the
            # function can refuse that, so it runs once and is never retried
            vmap = self._batch if _input_numel(args, argnums) > LOOP_MAX_ROWS else None
            return eager_jacfwd(func, argnums, has_aux, randomness, args, vmap, chunk_size)

        return jacobian_fn

    def vjp(self, func: Callable[..., Any], primals: Tuple[Any, ...], *, has_aux: bool) -> Any:
        if transforms_active():
            return self._inside(lambda f: lambda *p: self.backend.vjp(f, p, has_aux=has_aux), func)(
                *primals
            )
        return eager_vjp(func, primals, has_aux)

    def jvp(
        self,
        func: Callable[..., Any],
        primals: Tuple[Any, ...],
        tangents: Tuple[Any, ...],
        *,
        has_aux: bool,
    ) -> Any:
        if transforms_active():
            return self._inside(
                lambda f: lambda p, t: self.backend.jvp(f, p, t, has_aux=has_aux),
                func,
                stages_of("jvp"),
            )(primals, tangents)
        return eager_jvp(func, primals, tangents, has_aux)

    def linearize(self, func: Callable[..., Any], primals: Tuple[Any, ...]) -> Any:
        if transforms_active():
            return self._inside(
                lambda f: lambda *p: self.backend.linearize(f, p), func, stages_of("linearize")
            )(*primals)
        return eager_linearize(func, primals)

    def hvp(
        self, func: Callable[..., Any], primals: Tuple[Any, ...], tangents: Tuple[Any, ...]
    ) -> Any:
        if transforms_active():
            return self._inside(
                lambda f: lambda p, t: self.backend.hvp(f, p, t), func, stages_of("hvp")
            )(primals, tangents)
        return eager_hvp(func, primals, tangents)


def _input_numel(args: Tuple[Any, ...], argnums: ArgnumsT) -> int:
    """How many elements the differentiated arguments have (a bad ``argnums`` counts as many)."""
    total = 0
    for n in (argnums,) if isinstance(argnums, int) else argnums:
        if not -len(args) <= n < len(args):
            return LOOP_MAX_ROWS + 1  # the transform raises torch.func's error
        total += sum(x.numel() for x in tree_flatten(args[n])[0] if isinstance(x, torch.Tensor))
    return total


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
