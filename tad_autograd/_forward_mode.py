"""Forward-mode derivatives without function transforms: ``jvp``, ``jacfwd``, ``linearize``.

The autograd backend's forward mode.  It pushes tangents through the
function with :mod:`torch.autograd.forward_ad` dual numbers.  Where an op or
a custom ``autograd.Function`` has no forward-AD rule (old-style Functions
without ``jvp`` included), the dual-number pass raises; then, with every
random generator the call can see restored, the same product comes from
reverse mode instead:

* the double-vjp trick: ``J^T v`` is built with a graph for a dummy ``v``, and
  differentiating it with respect to ``v`` along ``t`` gives ``J t``.  Exact
  for built-in ops, whose backward formulas are differentiable or raise;
* rows of backward passes (``J`` itself, then ``J t``) when the graph holds a
  custom ``autograd.Function``, whose Python backward may compute outside
  autograd, so that differentiating *through* it could silently miss terms.

The same happens where torch's forward-mode formula for an op is known to be
wrong (stage ``"tangent"`` of :mod:`tad_autograd.batching_defects`): the
dual-number pass runs under a :class:`~tad_autograd._transform_failures.DefectWatch`
for that stage, which raises when the function calls such an op.

The decision is structural: whatever the dual-number pass raises, reverse
mode is tried; if that fails too, its exception propagates with the first
one as its context.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ._dual import dual_level, forward_ad_ready, make_dual, unpack_dual
from ._eager_jacobian import eager_jacobian, unflatten_jacobian
from ._grad_modes import outside_inference_mode
from ._graph import reaches_other_leaves, retire
from ._linear_map import linear_map
from ._locks import TRANSFORM_LOCK
from ._operand_checks import (
    check_primals,
    check_primals_tangents,
    check_tensor_outputs,
    split_aux,
)
from ._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from ._rng import RngStates, visible_generators
from ._stand_ins import any_dual, as_returned, check_argnums, check_outputs, stand_ins
from ._torch_info import inference_mode_enabled
from ._transform_failures import DefectWatch

__all__ = ["eager_jvp", "eager_jacfwd", "eager_linearize"]


def _devices(leaves: Sequence[Any]) -> set:  # type: ignore[type-arg]
    return {x.device for x in leaves if isinstance(x, torch.Tensor)}


def eager_jvp(
    func: Callable[..., Any], primals: Tuple[Any, ...], tangents: Tuple[Any, ...], has_aux: bool
) -> Any:
    """``torch.func.jvp(func, primals, tangents, has_aux=has_aux)`` without transforms.

    Examples
    --------
    >>> import torch
    >>> eager_jvp(torch.sin, (torch.zeros(2),), (torch.ones(2),), False)
    (tensor([0., 0.]), tensor([1., 1.]))
    """
    p_leaves, t_leaves, spec = check_primals_tangents(primals, tangents, "jvp")
    forward_ad_ready()
    if inference_mode_enabled():
        return outside_inference_mode(
            "jvp", lambda p, t: eager_jvp(func, p, t, has_aux), primals, tangents
        )
    user = _user_function(func)
    if _FORWARD_AD_FAILED.get(user, False):
        return _reverse_jvp(func, p_leaves, t_leaves, spec, has_aux)
    states = RngStates(_devices(p_leaves), visible_generators(func, primals))
    try:
        with TRANSFORM_LOCK:  # dual levels are process-wide
            if not DefectWatch.needed(_TANGENT):
                return _dual_jvp(func, p_leaves, t_leaves, spec, has_aux)
            with DefectWatch(_TANGENT):  # no tangent through an op torch gets wrong
                return _dual_jvp(func, p_leaves, t_leaves, spec, has_aux)
    except Exception:  # no forward-AD rule somewhere, a wrong one (or the user's error)
        states.restore()
        result = _reverse_jvp(func, p_leaves, t_leaves, spec, has_aux)
        _remember_failure(user)
        return result


#: The defects a dual-number pass watches for: wrong forward-mode formulas.
_TANGENT = "tangent"

#: Functions whose dual-number pass raised once: reverse mode from then on, without the
#: failed first attempt (whose side effects, other than random draws, cannot be undone).
_FORWARD_AD_FAILED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _user_function(func: Callable[..., Any]) -> Any:
    """The user's own function under the library's wrappers (``__wrapped__``)."""
    while hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return func


def _remember_failure(func: Any) -> None:
    try:
        _FORWARD_AD_FAILED[func] = True
    except TypeError:  # not weakly referenceable (a builtin): nothing to remember it by
        pass


def _dual_jvp(
    func: Callable[..., Any],
    p_leaves: List[torch.Tensor],
    t_leaves: List[torch.Tensor],
    spec: Any,
    has_aux: bool,
) -> Any:
    with dual_level():
        duals = [make_dual(p, t) for p, t in zip(p_leaves, t_leaves)]
        result = func(*tree_unflatten(duals, spec))
        if has_aux:
            result, aux = split_aux(result, "jvp")
        out_leaves, out_spec = tree_flatten(result)
        check_tensor_outputs(out_leaves, "jvp")
        primal_out, tangent_out = [], []
        for o in out_leaves:
            primal, tangent = unpack_dual(o)
            primal_out.append(_own_graph_dropped(primal))
            tangent_out.append(
                _own_graph_dropped(tangent) if tangent is not None else torch.zeros_like(primal)
            )
        if has_aux:
            aux_leaves, aux_spec = tree_flatten(aux)
            aux = tree_unflatten([unpack_dual(a)[0] for a in aux_leaves], aux_spec)
    output = tree_unflatten(primal_out, out_spec), tree_unflatten(tangent_out, out_spec)
    return output + (aux,) if has_aux else output


def _own_graph_dropped(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its graph when that reaches only finished stand-ins (nested derivatives)."""
    if t.grad_fn is not None and not reaches_other_leaves([t], set()):
        return t.detach()
    return t


def _reverse_jvp(
    func: Callable[..., Any],
    p_leaves: List[torch.Tensor],
    t_leaves: List[torch.Tensor],
    spec: Any,
    has_aux: bool,
) -> Any:
    """``J t`` from reverse mode: double-vjp over built-in ops, rows through custom ones."""
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs, external = stand_ins(p_leaves)
        try:
            result = func(*tree_unflatten(list(inputs), spec))
            if has_aux:
                result, aux = split_aux(result, "jvp")
            out_leaves, out_spec = tree_flatten(result)
            check_tensor_outputs(out_leaves, "jvp")
            ours = {id(x) for x in inputs}
            live = [o for o in out_leaves if o.requires_grad]
            keep = outer_grad and (external or reaches_other_leaves(live, ours))
            create = (
                keep or any_dual(inputs) or (outer_grad and any(t.requires_grad for t in t_leaves))
            )
            products = linear_map(out_leaves, inputs, create)(t_leaves, create)
            primal = as_returned(out_leaves, keep, inputs, p_leaves)
            output = tree_unflatten(primal, out_spec), tree_unflatten(products, out_spec)
            if not has_aux:
                return output
            aux_leaves, aux_spec = tree_flatten(aux)
            kept = [
                a if keep or not isinstance(a, torch.Tensor) else a.detach() for a in aux_leaves
            ]
            return output + (tree_unflatten(kept, aux_spec),)
        finally:
            retire(inputs)


def eager_jacfwd(
    func: Callable[..., Any],
    argnums: Any,
    has_aux: bool,
    randomness: str,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]] = None,
    chunk_size: Optional[int] = None,
) -> Any:
    """``torch.func.jacfwd(func, argnums, has_aux, randomness=...)(*args)`` without transforms.

    The function runs once, under ordinary autograd, and the Jacobian comes
    column by column from its graph (the double-vjp trick: one backward pass
    per input element), or from its rows where that could not be exact (a
    custom ``autograd.Function`` in the graph); ``vmap`` vectorises them,
    ``chunk_size`` at a time.
    ``randomness="error"`` raises if the function drew random numbers,
    ``"same"`` gives every column the one draw.  ``"different"`` (a new draw
    per column) pushes one dual number per column instead, running the
    function once per input element.

    Examples
    --------
    >>> import torch
    >>> eager_jacfwd(torch.sin, 0, False, "error", (torch.zeros(2),))
    tensor([[1., 0.],
            [0., 1.]])
    """
    nums = check_argnums(argnums, len(args))
    if randomness != "different":
        leaves = [x for p in nums for x in flatten(args[p])[0] if isinstance(x, torch.Tensor)]
        states = RngStates(_devices(leaves), visible_generators(func, args))
        jacobian = eager_jacobian(func, argnums, has_aux, args, vmap, chunk_size, columns=True)
        if randomness == "error" and states.changed():
            states.restore()
            raise _random_in_error_mode()
        return jacobian
    forward_ad_ready()
    if inference_mode_enabled():
        return outside_inference_mode(
            "jacfwd", lambda a: eager_jacfwd(func, argnums, has_aux, randomness, a), args
        )
    in_specs, sizes, leaves = [], [], []
    for p in nums:
        arg_leaves, arg_spec = flatten(args[p])
        in_specs.append(arg_spec)
        sizes.append(len(arg_leaves))
        leaves.extend(arg_leaves)
    states = RngStates(_devices(leaves), visible_generators(func, args))
    watch = DefectWatch(_TANGENT) if DefectWatch.needed(_TANGENT) else contextlib.nullcontext()
    try:
        with TRANSFORM_LOCK, watch:  # dual levels are process-wide
            columns, out_leaves, out_spec, aux = _columns(
                func, args, nums, in_specs, sizes, leaves, has_aux, randomness, states
            )
    except Exception:  # no forward-AD rule somewhere, a wrong one (or the user's error)
        states.restore()
        return eager_jacobian(func, argnums, has_aux, args, vmap)
    check_outputs(out_leaves, "jacfwd")
    per_output = []
    for k, o in enumerate(out_leaves):
        if columns:
            stacked = torch.stack([c[k].reshape(-1) for c in columns], dim=-1)
        else:
            stacked = o.new_zeros((o.numel(), 0))
        blocks, start = [], 0
        for x in leaves:
            blocks.append(stacked[:, start : start + x.numel()].reshape(o.shape + x.shape))
            start += x.numel()
        per_output.append(unflatten_jacobian(blocks, argnums, in_specs, sizes))
    jacobian = per_output[0] if out_spec is None else unflatten(per_output, out_spec)
    return (jacobian, aux) if has_aux else jacobian


def _random_in_error_mode() -> RuntimeError:
    return RuntimeError(
        "jacfwd: called a random operation with randomness='error'; use "
        "randomness='same' or 'different', or draw outside jacfwd"
    )


def _columns(
    func: Callable[..., Any],
    args: Tuple[Any, ...],
    nums: Tuple[int, ...],
    in_specs: List[Any],
    sizes: List[int],
    leaves: List[torch.Tensor],
    has_aux: bool,
    randomness: str,
    states: RngStates,
) -> Tuple[List[List[torch.Tensor]], List[torch.Tensor], Any, Any]:
    """The Jacobian's columns, one dual-number pass each (at least one pass)."""
    total = sum(x.numel() for x in leaves)
    columns: List[List[torch.Tensor]] = []
    out_leaves: List[torch.Tensor] = []
    out_spec: Any = None
    aux: Any = None
    for j in range(max(total, 1)):
        if j and randomness == "same":
            states.restore()
        tangents = [torch.zeros_like(x) for x in leaves]
        if total:
            offset = 0
            for t in tangents:
                if offset <= j < offset + t.numel():
                    t.view(-1)[j - offset] = 1
                offset += t.numel()
        with dual_level():
            duals = [make_dual(x, t) for x, t in zip(leaves, tangents)]
            new_args, start = list(args), 0
            for p, spec, count in zip(nums, in_specs, sizes):
                new_args[p] = unflatten(duals[start : start + count], spec)
                start += count
            result = func(*new_args)
            if has_aux:
                result, aux_j = split_aux(result, "jacfwd")
            flat, spec_j = flatten(result)
            check_tensor_outputs(flat, "jacfwd")
            unpacked = [unpack_dual(o) for o in flat]
            if j == 0:
                out_leaves = [_own_graph_dropped(u[0]) for u in unpacked]
                out_spec = spec_j
                if has_aux:
                    aux_leaves, aux_spec = tree_flatten(aux_j)
                    aux = tree_unflatten([unpack_dual(a)[0] for a in aux_leaves], aux_spec)
            if total:
                columns.append(
                    [
                        _own_graph_dropped(u[1]) if u[1] is not None else torch.zeros_like(u[0])
                        for u in unpacked
                    ]
                )
    return columns, out_leaves, out_spec, aux


def eager_linearize(func: Callable[..., Any], primals: Tuple[Any, ...]) -> Tuple[Any, Any]:
    """``torch.func.linearize(func, *primals)``: the output and a ``jvp_fn(*tangents)``.

    The function runs once; each ``jvp_fn`` call is a backward pass through
    the recorded graph (:func:`~tad_autograd._linear_map.linear_map`), exact whatever ``func``
    contains, with no forward-AD rule needed.

    Examples
    --------
    >>> import torch
    >>> out, jvp_fn = eager_linearize(torch.sin, (torch.zeros(2),))
    >>> jvp_fn(torch.ones(2))
    tensor([1., 1.])
    """
    p_leaves, spec = check_primals(primals, "linearize")
    if inference_mode_enabled():
        return outside_inference_mode("linearize", lambda p: eager_linearize(func, p), primals)
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs, external = stand_ins(p_leaves)
        result = func(*tree_unflatten(list(inputs), spec))
        out_leaves, out_spec = tree_flatten(result)
        check_tensor_outputs(out_leaves, "linearize")
        live = [o for o in out_leaves if o.requires_grad]
        ours = {id(x) for x in inputs}
        keep = any_dual(inputs) or (outer_grad and (external or reaches_other_leaves(live, ours)))
        apply = linear_map(out_leaves, inputs, keep)

    def jvp_fn(*tangents: Any) -> Any:
        t_leaves = check_primals_tangents(primals, tangents, "linearize")[1]
        create = keep or (torch.is_grad_enabled() and any(t.requires_grad for t in t_leaves))
        return tree_unflatten(apply(t_leaves, create), out_spec)

    return tree_unflatten(as_returned(out_leaves, keep, inputs, p_leaves), out_spec), jvp_fn
