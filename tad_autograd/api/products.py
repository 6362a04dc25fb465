"""Derivative products at a point: :func:`vjp`, :func:`jvp`, :func:`linearize`, :func:`hvp`.

Unlike the transforms, these evaluate at once, with :mod:`torch.func`'s
signatures and return structures; the backend is resolved for the call
(argument, settings, device type) and automatic mode falls back as for the
transforms.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ..backends._operators import HVP, JVP, LINEARIZE, VJP, Builds, Operator, Params
from ..compat._dual import forward_ad_ready
from ..compat._torch_info import is_compiling
from ..dispatch._checks import check_backend, check_has_aux, check_inference_mode
from ..dispatch._transformed import Transformed, run_on_named_backend
from ..eager._operand_checks import (
    check_primals,
    check_primals_tangents,
    with_checked_cotangents,
    with_checked_outputs,
)
from ..eager._tangent_dtypes import like_output, tangents_like_outputs

__all__ = ["vjp", "jvp", "linearize", "hvp"]


def _at_once(
    op: Operator,
    func: Callable[..., Any],
    backend: Optional[str],
    build: Callable[[Builds, Callable[..., Any]], Callable[..., Any]],
    *operands: Any,
) -> Any:
    check_inference_mode(op.name)
    if op.mode == "forward":
        forward_ad_ready()
    name = check_backend(backend)
    if name is not None and not is_compiling():  # dynamo traces a Transformed's call
        if not callable(func):
            raise TypeError(f"{op.name}: expected a callable `func`, got {type(func)}")
        return run_on_named_backend(name, lambda s: build(s, func)(*operands))
    return Transformed(op, func, build, name, False, False)(*operands)


def vjp(
    func: Callable[..., Any], *primals: Any, has_aux: bool = False, backend: Optional[str] = None
) -> Any:
    """The output of ``func`` at ``primals`` and a function for vector-Jacobian products.

    Behaves as :func:`torch.func.vjp` on every supported torch and backend.

    Parameters
    ----------
    func : callable
        Takes the primals; returns a tensor or a pytree of tensors (with
        ``has_aux=True``, ``(output, aux)``).
    *primals : tensor or pytree of tensors
        Where to differentiate.
    has_aux : bool, optional
        ``func`` returns ``(output, aux)``.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    tuple
        ``(output, vjp_fn)`` or ``(output, vjp_fn, aux)``; ``vjp_fn(cotangents)``
        takes cotangents shaped like ``output`` and returns a tuple with one
        entry per primal.  It may be called many times.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> out, vjp_fn = ta.vjp(lambda x: x ** 2, torch.tensor([1.0, 2.0]))
    >>> vjp_fn(torch.tensor([1.0, 10.0]))
    (tensor([ 2., 40.]),)
    """
    check_has_aux(has_aux, "vjp")
    check_primals(primals, "vjp")

    params = Params(has_aux=has_aux)

    def build(s: Builds, f: Callable[..., Any]) -> Callable[..., Any]:
        vjp_at = s.build(VJP, with_checked_outputs(f, has_aux, "vjp"), params)
        return lambda *p: with_checked_cotangents(vjp_at(*p))

    return _at_once(VJP, func, backend, build, *primals)


def jvp(
    func: Callable[..., Any],
    primals: Tuple[Any, ...],
    tangents: Tuple[Any, ...],
    *,
    has_aux: bool = False,
    backend: Optional[str] = None,
) -> Any:
    """The output of ``func`` at ``primals`` and its Jacobian-vector product with ``tangents``.

    Behaves as :func:`torch.func.jvp`; works for functions without
    forward-AD rules (custom ``autograd.Function``\\ s without ``jvp``) on the
    autograd backend and in automatic mode.

    Parameters
    ----------
    func : callable
        Called as ``func(*primals)``.
    primals : tuple
        Where to differentiate: a tuple of tensors (or pytrees).
    tangents : tuple
        The direction: the structure, shapes and dtypes of ``primals``.
    has_aux : bool, optional
        ``func`` returns ``(output, aux)``.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    tuple
        ``(output, jvp_out)`` or ``(output, jvp_out, aux)``; ``jvp_out`` is
        shaped like ``output``.

    Raises
    ------
    RuntimeError
        ``primals``/``tangents`` not tuples, or of different structure, shape or dtype.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.jvp(torch.sin, (torch.zeros(2),), (torch.tensor([1.0, 2.0]),))
    (tensor([0., 0.]), tensor([1., 2.]))
    """
    check_has_aux(has_aux, "jvp")
    check_primals_tangents(primals, tangents, "jvp")

    params = Params(has_aux=has_aux)

    def build(s: Builds, f: Callable[..., Any]) -> Callable[..., Any]:
        jvp_at = s.build(JVP, with_checked_outputs(f, has_aux, "jvp"), params)
        return lambda p, t: tangents_like_outputs(jvp_at(p, t))

    return _at_once(JVP, func, backend, build, primals, tangents)


def linearize(
    func: Callable[..., Any], *primals: Any, backend: Optional[str] = None
) -> Tuple[Any, Callable[..., Any]]:
    """The output of ``func`` at ``primals`` and a function for Jacobian-vector products there.

    Behaves as :func:`torch.func.linearize` (which needs torch >= 2.0; here
    every torch and backend has it).

    Returns
    -------
    tuple
        ``(output, jvp_fn)``; ``jvp_fn(*tangents)`` returns the product shaped
        like ``output``.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> out, jvp_fn = ta.linearize(torch.sin, torch.zeros(2))
    >>> jvp_fn(torch.tensor([1.0, 2.0]))
    tensor([1., 2.])
    """
    check_primals(primals, "linearize")

    def build(s: Builds, f: Callable[..., Any]) -> Callable[..., Any]:
        linearized = s.build(LINEARIZE, with_checked_outputs(f, False, "linearize"), Params())

        def linearize_at(*p: Any) -> Tuple[Any, Callable[..., Any]]:
            output, jvp_fn = linearized(*p)
            return output, lambda *t: like_output(output, jvp_fn(*t))

        return linearize_at

    result: Tuple[Any, Callable[..., Any]] = _at_once(LINEARIZE, func, backend, build, *primals)
    return result


def hvp(
    func: Callable[..., Any],
    primals: Tuple[Any, ...],
    tangents: Tuple[Any, ...],
    *,
    backend: Optional[str] = None,
) -> Tuple[Any, Any]:
    """The value of a scalar ``func`` and its Hessian-vector product, without the Hessian.

    Parameters
    ----------
    func : callable
        Returns a 0-dim real floating-point tensor.
    primals, tangents : tuple
        As for :func:`jvp`.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    tuple
        ``(func(*primals), H @ tangents)``, the product a tuple shaped like
        ``tangents``.  Transform backends compute it forward over reverse
        (``jvp`` of ``grad``); the autograd backend and automatic mode reverse
        over reverse, which gives ``tangents @ H`` -- the same for every twice
        continuously differentiable ``func``.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), (torch.ones(2),))
    (tensor(9.), (tensor([ 6., 12.]),))
    """
    check_primals_tangents(primals, tangents, "hvp")

    def build(s: Builds, f: Callable[..., Any]) -> Callable[..., Any]:
        hvp_at = s.build(HVP, with_checked_outputs(f, False, "hvp"), Params())

        def value_and_product(p: Any, t: Any) -> Any:
            value, product = hvp_at(p, t)
            return value, like_output(p, product)  # H t in the primals' dtypes

        return value_and_product

    result: Tuple[Any, Any] = _at_once(HVP, func, backend, build, primals, tangents)
    return result
