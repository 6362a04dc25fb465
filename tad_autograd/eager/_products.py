"""Reverse-mode products from one eager forward pass: ``vjp``, ``grad_and_value``, ``hvp``.

The autograd backend's implementations, and what automatic mode runs on a
transform backend outside any function transform.  The function runs once
under ordinary autograd on differentiable stand-ins of the inputs, as in
:mod:`tad_autograd.eager._jacobian`, and the results carry a graph exactly
where :mod:`torch.func`'s do: to inputs that require grad, captured
parameters and cotangents or tangents that require grad.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional, Sequence, Tuple

import torch

from ..compat._pytree import tree_flatten, tree_unflatten
from ..compat._torch_info import inference_mode_enabled, transforms_active
from ..compat._transform_failures import REVERSE_STAGES, DefectiveBatchingError, DefectWatch
from ._batched_backward_watch import backwards_watched_or_refused, hooks_watched
from ._engine import pair_products
from ._grad_modes import outside_inference_mode
from ._graph import batching_hazards, graph_facts, graphs_dropped, reaches_other_leaves, retire
from ._jacobian import eager_jacobian
from ._opaque_backward import custom_backwards_guarded
from ._operand_checks import (
    check_cotangents,
    check_primals,
    check_primals_tangents,
    check_scalar_output,
    check_tensor_outputs,
    split_aux,
)
from ._stand_ins import any_dual, as_returned, stand_ins

__all__ = ["eager_vjp", "eager_grad", "eager_grad_and_value", "eager_hvp"]


def _batched_pass_watched(outputs: Sequence[torch.Tensor]) -> ContextManager[Any]:
    """Around a backward pass from ``outputs`` that a function transform may batch (a
    ``vmap`` of a vjp function): an op of the graph whose batched derivative the installed
    torch gets wrong raises :class:`DefectiveBatchingError` (automatic ``vmap`` then loops),
    and the custom Functions' backward passes and the hooks run watched.  Nothing outside
    transforms."""
    if not transforms_active() or not DefectWatch.needed(REVERSE_STAGES):
        return contextlib.nullcontext()
    hazards = batching_hazards(outputs)
    if hazards.defective:
        raise DefectiveBatchingError(
            min(hazards.defective),
            "a batched backward pass through it (a vmap of a vjp function) gives wrong values",
            "derivative",
        )
    return backwards_watched_or_refused(hazards.custom)


def eager_vjp(func: Callable[..., Any], primals: Tuple[Any, ...], has_aux: bool) -> Any:
    """``torch.func.vjp(func, *primals, has_aux=has_aux)`` from one eager forward pass.

    Examples
    --------
    >>> import torch
    >>> out, vjp_fn = eager_vjp(torch.sin, (torch.zeros(2),), False)
    >>> vjp_fn(torch.ones(2))
    (tensor([1., 1.]),)
    """
    leaves, spec = check_primals(primals, "vjp")
    if inference_mode_enabled():
        return outside_inference_mode("vjp", lambda p: eager_vjp(func, p, has_aux), primals)
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs, external = stand_ins(leaves)
        result = func(*tree_unflatten(list(inputs), spec))
        if has_aux:
            result, aux = split_aux(result, "vjp")
        out_leaves, out_spec = tree_flatten(result)
        check_tensor_outputs(out_leaves, "vjp")
    ours = {id(x) for x in inputs}
    live = [o.requires_grad for o in out_leaves]
    dual = any_dual(inputs)
    keep = outer_grad and (
        external or reaches_other_leaves([o for o in out_leaves if o.requires_grad], ours)
    )

    def vjp_fn(
        cotangents: Any, retain_graph: bool = True, create_graph: Optional[bool] = None
    ) -> Any:
        ct_leaves = check_cotangents(out_leaves, out_spec, cotangents)
        if create_graph is None:
            create_graph = dual or (
                torch.is_grad_enabled() and (keep or any(c.requires_grad for c in ct_leaves))
            )
        pairs = [(o, c) for o, c, k in zip(out_leaves, ct_leaves, live) if k]
        grads: Sequence[Optional[torch.Tensor]] = [None] * len(inputs)
        if pairs:
            with (
                torch.enable_grad(),
                custom_backwards_guarded(out_leaves, create_graph),
                _batched_pass_watched(out_leaves),
            ):
                with hooks_watched():
                    grads = pair_products(pairs, inputs, retain_graph, create_graph)
        filled = [
            g if g is not None else torch.zeros_like(x.detach()) for g, x in zip(grads, inputs)
        ]
        return tree_unflatten(graphs_dropped(filled, ours) if create_graph else filled, spec)

    output = tree_unflatten(as_returned(out_leaves, keep, inputs, leaves), out_spec)
    if not has_aux:
        return output, vjp_fn
    aux_leaves, aux_spec = tree_flatten(aux)
    kept = [
        a.detach()
        if isinstance(a, torch.Tensor)
        and not (outer_grad and a.requires_grad and reaches_other_leaves([a], ours))
        and all(a is not s for s in inputs)
        else a
        for a in aux_leaves
    ]
    return output, vjp_fn, tree_unflatten(as_returned(kept, True, inputs, leaves), aux_spec)


def eager_grad(func: Callable[..., Any], argnums: Any, has_aux: bool, args: Tuple[Any, ...]) -> Any:
    """``torch.func.grad(func, argnums, has_aux)(*args)`` by one backward pass.

    Examples
    --------
    >>> import torch
    >>> eager_grad(lambda x: (x * x).sum(), 0, False, (torch.ones(2),))
    tensor([2., 2.])
    """

    def checked(*a: Any) -> Any:
        result = func(*a)
        check_scalar_output(split_aux(result, "grad")[0] if has_aux else result, "grad")
        return result

    return eager_jacobian(checked, argnums, has_aux, args)


def eager_grad_and_value(
    func: Callable[..., Any], argnums: Any, has_aux: bool, args: Tuple[Any, ...]
) -> Any:
    """``torch.func.grad_and_value(func, argnums, has_aux)(*args)`` by one backward pass.

    Examples
    --------
    >>> import torch
    >>> eager_grad_and_value(lambda x: (x * x).sum(), 0, False, (torch.ones(2),))
    (tensor([2., 2.]), tensor(2.))
    """

    def with_value(*a: Any) -> Any:
        result = func(*a)
        if has_aux:
            output, aux = split_aux(result, "grad_and_value")
            output = check_scalar_output(output, "grad_and_value")
            return output, (output, aux)
        output = check_scalar_output(result, "grad_and_value")
        return output, output

    return eager_jacobian(with_value, argnums, True, args)


def eager_hvp(
    func: Callable[..., Any], primals: Tuple[Any, ...], tangents: Tuple[Any, ...]
) -> Tuple[Any, Any]:
    """``(func(*primals), H @ tangents)`` by reverse-over-reverse differentiation.

    One forward pass, one backward pass that builds a graph and one backward
    pass through it.  It computes ``tangents @ H``, which is ``H @ tangents``
    for every twice continuously differentiable ``func`` (a symmetric Hessian).

    Examples
    --------
    >>> import torch
    >>> eager_hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), (torch.ones(2),))
    (tensor(9.), (tensor([ 6., 12.]),))
    """
    p_leaves, t_leaves, spec = check_primals_tangents(primals, tangents, "hvp")
    if inference_mode_enabled():
        return outside_inference_mode("hvp", lambda p, t: eager_hvp(func, p, t), primals, tangents)
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs, external = stand_ins(p_leaves)
        try:
            value = check_scalar_output(func(*tree_unflatten(list(inputs), spec)), "hvp")
            ours = {id(x) for x in inputs}
            # one walk: captured leaves reached, and the custom Functions to guard
            reaches_other, custom_nodes = graph_facts([value], ours)
            keep_value = any_dual(inputs) or (
                outer_grad and (external or (value.requires_grad and reaches_other))
            )
            # the products depend on the tangents too; the value does not
            keep = keep_value or (outer_grad and any(t.requires_grad for t in t_leaves))
            products: Sequence[Optional[torch.Tensor]] = [None] * len(inputs)
            if value.requires_grad:
                with custom_backwards_guarded([value], True, custom_nodes):
                    grads = torch.autograd.grad(value, inputs, create_graph=True, allow_unused=True)
                pairs = [
                    (g, t) for g, t in zip(grads, t_leaves) if g is not None and g.requires_grad
                ]
                products = pair_products(pairs, inputs, keep, keep)
            filled = [
                (h if keep else h.detach()) if h is not None else torch.zeros_like(x.detach())
                for h, x in zip(products, inputs)
            ]
            if keep:
                filled = graphs_dropped(filled, ours)
            returned = value if keep_value and value.requires_grad else value.detach()
            return returned, tree_unflatten(filled, spec)
        finally:
            retire(inputs)
