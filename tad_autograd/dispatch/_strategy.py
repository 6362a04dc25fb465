"""The strategy interface and the two plain strategies: ``"transform"`` and ``"loop"``.

See :mod:`tad_autograd.dispatch.strategies` for what a strategy is.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ..backends.base import ArgnumsT, Backend, InDimsT, OutDimsT

__all__ = ["Strategy", "TransformStrategy", "CompiledStrategy", "LoopStrategy"]


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

    # -- the other operators: the backend's (see tad_autograd.backends.base) ---------------

    def grad(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool
    ) -> Callable[..., Any]:
        """``func``'s gradient function, with :func:`torch.func.grad`'s semantics."""
        return self.backend.grad(func, argnums, has_aux=has_aux)

    def grad_and_value(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool
    ) -> Callable[..., Any]:
        """With :func:`torch.func.grad_and_value`'s semantics."""
        return self.backend.grad_and_value(func, argnums, has_aux=has_aux)

    def jacfwd(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        randomness: str,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        """The forward-mode Jacobian function, with :func:`torch.func.jacfwd`'s semantics."""
        return self.backend.jacfwd(
            func, argnums, has_aux=has_aux, randomness=randomness, chunk_size=chunk_size
        )

    def vjp(self, func: Callable[..., Any], primals: Tuple[Any, ...], *, has_aux: bool) -> Any:
        """``(output, vjp_fn[, aux])`` as :func:`torch.func.vjp`."""
        return self.backend.vjp(func, primals, has_aux=has_aux)

    def jvp(
        self,
        func: Callable[..., Any],
        primals: Tuple[Any, ...],
        tangents: Tuple[Any, ...],
        *,
        has_aux: bool,
    ) -> Any:
        """``(output, jvp_out[, aux])`` as :func:`torch.func.jvp`."""
        return self.backend.jvp(func, primals, tangents, has_aux=has_aux)

    def linearize(self, func: Callable[..., Any], primals: Tuple[Any, ...]) -> Any:
        """``(output, jvp_fn)`` as :func:`torch.func.linearize`."""
        return self.backend.linearize(func, primals)

    def hvp(
        self, func: Callable[..., Any], primals: Tuple[Any, ...], tangents: Tuple[Any, ...]
    ) -> Any:
        """``(func(*primals), H @ tangents)``."""
        return self.backend.hvp(func, primals, tangents)

    def __repr__(self) -> str:
        return f"<strategy {self.name!r} on backend {self.backend.name!r}>"


class TransformStrategy(Strategy):
    """The backend's own transforms.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.dispatch.registry import REGISTRY
    >>> from tad_autograd import available_backends
    >>> s = TransformStrategy(REGISTRY.get(available_backends()[0]))
    >>> s.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    name = "transform"


class CompiledStrategy(TransformStrategy):
    """What automatic mode runs on a transform backend while dynamo traces the call.

    The backend's own transforms, which ``torch.compile`` supports natively;
    ``hvp`` reverse over reverse (``vjp`` of ``grad_and_value``), so a custom
    ``autograd.Function`` without forward-mode rules compiles too.  Reverse
    over reverse gives ``tangents @ H``, the same as ``H @ tangents`` for every
    twice continuously differentiable function.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.dispatch.registry import REGISTRY
    >>> from tad_autograd import available_backends
    >>> s = CompiledStrategy(REGISTRY.get(available_backends()[0]))
    >>> s.hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), (torch.ones(2),))
    (tensor(9.), (tensor([ 6., 12.]),))
    """

    name = "compiled"

    def hvp(
        self, func: Callable[..., Any], primals: Tuple[Any, ...], tangents: Tuple[Any, ...]
    ) -> Any:
        argnums = tuple(range(len(primals)))
        gradient = self.backend.grad_and_value(func, argnums, has_aux=False)
        _, vjp_fn, value = self.backend.vjp(gradient, primals, has_aux=True)
        return value, vjp_fn(tangents)


class LoopStrategy(Strategy):
    """The ``"autograd"`` backend: eager forward, loops of backward passes, a loop for vmap.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.dispatch.registry import REGISTRY
    >>> LoopStrategy(REGISTRY.get("autograd")).vmap(torch.sum, 0, 0, "error", chunk_size=None)(
    ...     torch.ones(3, 2))
    tensor([2., 2., 2.])
    """

    name = "loop"
    eager = True
