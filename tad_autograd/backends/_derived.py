"""Operators derived from a transform library's primitives: ``jvp``, ``vjp`` and ``vmap``.

A backend with function transforms supplies its native operators where its
torch has them; what it lacks is built here, once for all backends, from the
primitives (the idea of DifferentiationInterface.jl: every operator from a
pushforward and a pullback):

* ``jacfwd`` with ``chunk_size`` (no :mod:`torch.func` release has it):
  ``vmap`` of ``jvp`` over chunks of the input basis;
* ``linearize``: the Jacobian by ``vmap`` of ``jvp`` from one run of the function
  (:func:`torch.func.linearize` runs it twice, drawing anew for the products);
* ``hvp`` (no release has it): forward over reverse, ``jvp`` of
  ``grad_and_value``, so the value comes for free;
* ``grad`` from ``grad_and_value``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from ..compat._dual import forward_ad_ready
from ..compat._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from ..compat._rng import snapshot
from ..eager._jacobian import ArgnumLeaves
from ..eager._linear_map import matvec
from ..eager._operand_checks import check_primals, check_primals_tangents, check_tensor_outputs
from ..eager._rows import basis
from ..eager._stand_ins import check_argnums, check_outputs

__all__ = ["jacfwd_from_jvp", "linearize_from_jvp", "hvp_from_jvp", "grad_from_grad_and_value"]

Jvp = Callable[..., Any]


def grad_from_grad_and_value(
    grad_and_value_fn: Callable[..., Any], has_aux: bool
) -> Callable[..., Any]:
    """``grad``'s callable from a ``grad_and_value`` callable: the value dropped.

    Examples
    --------
    >>> import torch
    >>> g = grad_from_grad_and_value(lambda x: (2 * x, x * x), False)
    >>> g(torch.ones(1))
    tensor([2.])
    """

    def grad_fn(*args: Any) -> Any:
        gradient, value = grad_and_value_fn(*args)
        return (gradient, value[1]) if has_aux else gradient

    return grad_fn


def jacfwd_from_jvp(
    jvp: Jvp,
    vmap: Callable[..., Any],
    func: Callable[..., Any],
    argnums: Any,
    has_aux: bool,
    randomness: str,
    chunk_size: Optional[int],
) -> Callable[..., Any]:
    """``jacfwd`` as ``vmap(jvp)`` over the input basis, ``chunk_size`` columns at a time.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> jvp, vmap = function_transforms().jvp, function_transforms().vmap
    >>> jacfwd_from_jvp(jvp, vmap, torch.sin, 0, False, "error", 1)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    forward_ad_ready()

    def jacobian_fn(*args: Any) -> Any:
        nums = check_argnums(argnums, len(args))
        argument_leaves = ArgnumLeaves(args, nums, argnums)
        leaves = argument_leaves.leaves
        of_leaves = argument_leaves.function_of(func)

        def push(*tangents: torch.Tensor) -> Any:
            result = jvp(of_leaves, tuple(leaves), tangents, has_aux=has_aux)
            return (result[1], result[2]) if has_aux else result[1]

        total = sum(x.numel() for x in leaves)
        step = total if chunk_size is None else chunk_size
        pieces: List[Any] = []
        aux = None
        batched = vmap(push, randomness=randomness)
        # "same": every chunk replays the draws of the first, as one vmap would
        states = snapshot(func, args) if randomness == "same" else None
        for start in range(0, max(total, 1), max(step, 1)):
            size = min(step, total - start)
            if size <= 0:  # no input elements: one pass for the output's shape
                size = 1
            if start and states is not None:
                states.restore()
            out = batched(*basis(leaves, [x.numel() for x in leaves], start, size))
            if has_aux:
                out, aux_chunk = out
                if aux is None:
                    aux_leaves, aux_spec = tree_flatten(aux_chunk)
                    aux = tree_unflatten([a[0] for a in aux_leaves], aux_spec)
            pieces.append(out)
        out_leaves_per_piece = [flatten(piece) for piece in pieces]
        out_spec = out_leaves_per_piece[0][1]
        columns = [
            torch.cat([lp[0][k] for lp in out_leaves_per_piece])[:total]
            for k in range(len(out_leaves_per_piece[0][0]))
        ]
        check_outputs(columns, "jacfwd")
        per_output = [
            argument_leaves.blocks(
                col.reshape(total, col.shape[1:].numel()).transpose(0, 1), col.shape[1:]
            )
            for col in columns
        ]
        jacobian = per_output[0] if out_spec is None else unflatten(per_output, out_spec)
        return (jacobian, aux) if has_aux else jacobian

    return jacobian_fn


def linearize_from_jvp(
    jvp: Jvp, vmap: Callable[..., Any], func: Callable[..., Any], primals: Tuple[Any, ...]
) -> Tuple[Any, Callable[..., Any]]:
    """``linearize``: the output and the Jacobian from one run of ``func``, then products.

    ``func`` runs once, under ``vmap`` of ``jvp`` over the input basis (draws
    made once, shared by every column): the output and every column of the
    Jacobian come from that run, so each ``jvp_fn(*tangents)`` is a
    matrix-vector product at the original point, whatever later happens to the
    primals or the random generators.  Complex inputs push their real and
    imaginary parts as separate columns (``jvp`` is only real-linear).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> jvp, vmap = function_transforms().jvp, function_transforms().vmap
    >>> out, jvp_fn = linearize_from_jvp(jvp, vmap, torch.sin, (torch.zeros(2),))
    >>> jvp_fn(torch.ones(2))
    tensor([1., 1.])
    """
    forward_ad_ready()
    p_leaves, spec = check_primals(primals, "linearize")
    real = [torch.view_as_real(p.resolve_conj()) if p.is_complex() else p for p in p_leaves]

    def of_real(*xs: torch.Tensor) -> Any:
        leaves = [torch.view_as_complex(x) if p.is_complex() else x for x, p in zip(xs, p_leaves)]
        return func(*tree_unflatten(leaves, spec))

    def push(*tangents: torch.Tensor) -> Any:
        return jvp(of_real, tuple(real), tangents)

    total = sum(x.numel() for x in real)
    size = max(total, 1)  # no input elements: one zero column for the output's shape
    output, columns = vmap(push, randomness="same")(
        *basis(real, [x.numel() for x in real], 0, size)
    )
    out_leaves, out_spec = tree_flatten(output)
    check_tensor_outputs(out_leaves, "linearize")
    col_leaves = tree_flatten(columns)[0]
    # the output as a plain call gives it: without a graph under no_grad
    grad = torch.is_grad_enabled()
    out_leaves = [o[0] if grad else o[0].detach() for o in out_leaves]
    matrices = [
        (c if grad else c.detach()).reshape(size, o.numel())[:total].transpose(0, 1)
        for c, o in zip(col_leaves, out_leaves)
    ]

    def jvp_fn(*tangents: Any) -> Any:
        t_leaves = check_primals_tangents(primals, tangents, "linearize")[1]
        flat = [
            (torch.view_as_real(t.resolve_conj()) if t.is_complex() else t).reshape(-1)
            for t in t_leaves
        ]
        vector = torch.cat(flat) if flat else p_leaves[0].new_zeros(0)
        products = [matvec(m, vector).reshape(o.shape) for m, o in zip(matrices, out_leaves)]
        return tree_unflatten(products, out_spec)

    return tree_unflatten(out_leaves, out_spec), jvp_fn


def hvp_from_jvp(
    jvp: Jvp,
    grad_and_value: Callable[..., Any],
    func: Callable[..., Any],
    primals: Tuple[Any, ...],
    tangents: Tuple[Any, ...],
) -> Tuple[Any, Any]:
    """``(func(*primals), H @ tangents)`` by forward over reverse: ``jvp`` of ``grad_and_value``.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> grad_and_value, jvp = function_transforms().grad_and_value, function_transforms().jvp
    >>> hvp_from_jvp(jvp, grad_and_value, lambda x: (x ** 3).sum(),
    ...              (torch.tensor([1.0, 2.0]),), (torch.ones(2),))
    (tensor(9.), (tensor([ 6., 12.]),))
    """
    forward_ad_ready()
    gradient = grad_and_value(func, tuple(range(len(primals))))
    _, product, value = jvp(gradient, primals, tangents, has_aux=True)
    return value, product
