"""The ``"autograd"`` backend: plain :mod:`torch.autograd` and Python loops.

It uses nothing but :func:`torch.autograd.grad` and ordinary Python, so it
differentiates every function ordinary autograd can, including custom
``autograd.Function`` subclasses written the old way (``forward(ctx, ...)``),
``.item()`` calls, data-dependent control flow and in-place updates.  It is
slower than the transform backends for wide Jacobians (one backward pass per
output element) and as fast as any for gradients of scalars.  Forward mode
uses :mod:`torch.autograd.forward_ad` dual numbers, and reverse mode where an
op has no forward-AD rule (:mod:`tad_autograd.eager._forward_mode`); ``hvp`` is
reverse over reverse.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from ..eager._forward_mode import eager_jacfwd, eager_jvp, eager_linearize
from ..eager._jacobian import eager_jacobian
from ..eager._loop_vmap import loop_vmap
from ..eager._products import eager_grad_and_value, eager_hvp, eager_vjp
from .base import ArgnumsT, Backend, Fn, InDimsT, OutDimsT

__all__ = ["AutogradBackend"]


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
        self, func: Fn, argnums: ArgnumsT, *, has_aux: bool, chunk_size: Optional[int]
    ) -> Fn:
        def jacobian_fn(*args: Any) -> Any:
            return eager_jacobian(func, argnums, has_aux, args)

        return jacobian_fn

    def vmap(
        self,
        func: Fn,
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Fn:
        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            return loop_vmap(func, in_dims, out_dims, randomness, args, kwargs)

        return batched_fn

    def vjp(self, func: Fn, primals: Tuple[Any, ...], *, has_aux: bool) -> Any:
        return eager_vjp(func, primals, has_aux)

    def jvp(
        self, func: Fn, primals: Tuple[Any, ...], tangents: Tuple[Any, ...], *, has_aux: bool
    ) -> Any:
        return eager_jvp(func, primals, tangents, has_aux)

    def grad_and_value(self, func: Fn, argnums: ArgnumsT, *, has_aux: bool) -> Fn:
        def grad_and_value_fn(*args: Any) -> Any:
            return eager_grad_and_value(func, argnums, has_aux, args)

        return grad_and_value_fn

    def jacfwd(
        self,
        func: Fn,
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        randomness: str,
        chunk_size: Optional[int],
    ) -> Fn:
        def jacobian_fn(*args: Any) -> Any:
            return eager_jacfwd(func, argnums, has_aux, randomness, args)

        return jacobian_fn

    def linearize(self, func: Fn, primals: Tuple[Any, ...]) -> Tuple[Any, Fn]:
        return eager_linearize(func, primals)

    def hvp(self, func: Fn, primals: Tuple[Any, ...], tangents: Tuple[Any, ...]) -> Tuple[Any, Any]:
        return eager_hvp(func, primals, tangents)
