"""Forward-mode derivatives without function transforms: ``jvp``, ``jacfwd``, ``linearize``.

The autograd backend's forward mode, and automatic mode's outside function
transforms.  The user's function runs *once* per call, whatever it contains:
a path is chosen before the function runs, never by trying one and running
the function again when it fails (its side effects could not be undone).

* The first ``jvp`` of a function records an ordinary forward pass and takes
  the product from the recorded graph (:func:`~tad_autograd.eager._linear_map.linear_map`:
  the double-vjp trick over built-in ops, rows of backward passes through a
  custom ``autograd.Function``).  The graph shows whether dual numbers could
  have pushed the tangents: not through a custom ``autograd.Function``
  without ``jvp`` (old-style Functions included), nor through an op whose
  forward-mode formula torch gets wrong (stage ``"tangent"`` of
  :mod:`tad_autograd.compat.batching_defects`, noted by a
  :class:`~tad_autograd.compat._transform_failures.DefectWatch` that only looks).
  Nor where the function ran ops under its own ``torch.no_grad()``: dual
  numbers pass through such a block where backward passes stop, so such a
  function keeps the recorded graph's derivative on every call (the same as
  reverse mode's; :mod:`torch.func`'s forward mode differs there).
* Later calls of a function whose graph showed nothing in the way push
  :mod:`torch.autograd.forward_ad` dual numbers (cheaper); the others keep
  recording.  Should a later call take a path the first did not (a
  data-dependent branch into an op without a forward-AD formula, which torch
  reports as ``NotImplementedError``, or into a defective one), that call is
  recorded instead, with every random generator restored, and the function
  records from then on.  Any other exception is the user's own and
  propagates after the one run.
* ``jacfwd`` records one forward pass and takes its columns from the graph;
  with ``randomness="different"`` a function that drew random numbers gets a
  forward pass of its own for each further column (one draw per column, as
  ``vmap`` gives).
* ``linearize`` records one forward pass; each product is one backward pass
  through it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..compat._dual import dual_level, forward_ad_ready, make_dual, unpack_dual
from ..compat._locks import TRANSFORM_LOCK
from ..compat._memory import MEMORY
from ..compat._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from ..compat._rng import RngStates, attempt, snapshot
from ..compat._torch_info import inference_mode_enabled
from ..compat._transform_failures import DefectiveBatchingError, DefectWatch
from ._grad_modes import GradModeOffWatch, outside_inference_mode
from ._graph import custom_functions_without_jvp, reaches_other_leaves, retire
from ._jacobian import ArgnumLeaves, aux_like_torch_func, eager_jacobian
from ._linear_map import linear_map
from ._operand_checks import (
    check_primals,
    check_primals_tangents,
    check_tensor_outputs,
    split_aux,
)
from ._rows import basis
from ._stand_ins import any_dual, as_returned, check_argnums, check_outputs, stand_ins

__all__ = ["eager_jvp", "eager_jacfwd", "eager_linearize"]


def eager_jvp(
    func: Callable[..., Any], primals: Tuple[Any, ...], tangents: Tuple[Any, ...], has_aux: bool
) -> Any:
    """``torch.func.jvp(func, primals, tangents, has_aux=has_aux)`` without transforms.

    ``func`` runs once (see the module docstring for which way).

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

    def recorded() -> Any:
        output, (products,), aux, duals = _recorded(
            func, p_leaves, spec, has_aux, [t_leaves], "jvp"
        )
        _remember(user, duals)
        return output + (products,) + ((aux,) if has_aux else ())

    if not _duals_proven(user):
        return recorded()

    def dual_numbers(states: RngStates) -> Any:
        with TRANSFORM_LOCK:  # dual levels are process-wide
            if not DefectWatch.needed(_TANGENT):
                return _dual_jvp(func, p_leaves, t_leaves, spec, has_aux)
            with DefectWatch(_TANGENT):  # no tangent through an op torch gets wrong
                return _dual_jvp(func, p_leaves, t_leaves, spec, has_aux)

    # a path the recorded call did not take: no forward-AD rule there, or a wrong one
    # (the types torch and the watch raise, whatever the words): recorded, from now on
    return attempt(
        dual_numbers,
        func,
        primals,
        catch=(NotImplementedError, DefectiveBatchingError),
        on_failure=lambda error: _remember(user, False),
        retry=recorded,
    )


#: The defects a dual-number pass watches for: wrong forward-mode formulas.
_TANGENT = "tangent"

#: The key, in the failure memory, of whether the graph of a user function's recorded call
#: showed that dual numbers can push its tangents.  Later calls push dual numbers only
#: where it did.
_DUALS = "dual numbers"


def _user_function(func: Callable[..., Any]) -> Any:
    """The user's own function under the library's wrappers (``__wrapped__``)."""
    while hasattr(func, "__wrapped__"):
        func = func.__wrapped__
    return func


def _duals_proven(func: Any) -> bool:
    return MEMORY.recall(func, _DUALS) is True


def _remember(func: Any, duals: bool) -> None:
    if MEMORY.recall(func, _DUALS) is not False:  # a path without dual numbers stays so
        MEMORY.remember(func, _DUALS, duals)


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


def _recorded(
    func: Callable[..., Any],
    p_leaves: List[torch.Tensor],
    spec: Optional[Any],
    has_aux: bool,
    tangent_sets: Sequence[Sequence[torch.Tensor]],
    kind: str,
) -> Tuple[Tuple[Any], List[Any], Any, bool]:
    """One recorded call of ``func``, and ``J t`` from its graph for each of ``tangent_sets``.

    ``spec``: the primals' structure (``None``: ``func`` takes the leaves).
    Returns ``((output,), products per tangent set, aux, duals)``: ``duals``
    tells whether dual numbers could have pushed the tangents through this
    call (no custom ``autograd.Function`` without ``jvp``, no op whose
    forward-mode formula torch gets wrong).
    """
    outer_grad = torch.is_grad_enabled()
    look = DefectWatch(_TANGENT, look_only=True) if DefectWatch.needed(_TANGENT) else None
    # the function's own no_grad block: dual numbers pass through it, backward passes do
    # not, so such a function keeps the recorded graph's derivative on every call
    grad_off = GradModeOffWatch()
    with torch.enable_grad():
        inputs, external = stand_ins(p_leaves)
        try:
            with look if look is not None else contextlib.nullcontext(), grad_off:
                result = func(*(inputs if spec is None else tree_unflatten(list(inputs), spec)))
            if has_aux:
                result, aux = split_aux(result, kind)
            out_leaves, out_spec = tree_flatten(result)
            check_tensor_outputs(out_leaves, kind)
            ours = {id(x) for x in inputs}
            live = [o for o in out_leaves if o.requires_grad]
            keep = outer_grad and (external or reaches_other_leaves(live, ours))
            wants_graph = any(t.requires_grad for ts in tangent_sets for t in ts)
            create = keep or any_dual(inputs) or (outer_grad and wants_graph)
            apply = linear_map(out_leaves, inputs, create)
            products = [tree_unflatten(apply(list(ts), create), out_spec) for ts in tangent_sets]
            primal = as_returned(out_leaves, keep, inputs, p_leaves)
            duals = (
                (look is None or not look.seen)
                and not grad_off.seen
                and not custom_functions_without_jvp(live)
            )
            if has_aux:  # with a graph where torch.func's keeps one: to leaves outside
                aliases = {id(x): p for x, p in zip(inputs, p_leaves)}
                aux = aux_like_torch_func(aux, ours, outer_grad, aliases)
            else:
                aux = None
            return (tree_unflatten(primal, out_spec),), products, aux, duals
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
    nums = check_argnums(argnums, len(args), "jacfwd")
    if randomness != "different":
        states = snapshot(func, args)
        jacobian = eager_jacobian(func, argnums, has_aux, args, vmap, chunk_size, columns=True)
        if randomness == "error" and states.changed():
            states.restore()
            raise _random_in_error_mode()
        return jacobian
    if inference_mode_enabled():
        return outside_inference_mode(
            "jacfwd", lambda a: eager_jacfwd(func, argnums, has_aux, randomness, a), args
        )
    argument_leaves = ArgnumLeaves(args, nums, argnums)
    leaves = argument_leaves.leaves
    of_leaves = argument_leaves.function_of(func)
    total = sum(x.numel() for x in leaves)
    units = basis(leaves, [x.numel() for x in leaves], 0, total)
    tangent_sets = [[u[j] for u in units] for j in range(total)]
    states = snapshot(func, args)
    (output,), columns, aux, _ = _recorded(of_leaves, leaves, None, has_aux, tangent_sets, "jacfwd")
    if total > 1 and states.changed():
        # it drew random numbers: a forward pass, with draws of its own, for each further column
        for j in range(1, total):
            columns[j] = _recorded(of_leaves, leaves, None, has_aux, [tangent_sets[j]], "jacfwd")[
                1
            ][0]
    out_leaves, out_spec = flatten(output)
    check_outputs(out_leaves, "jacfwd")
    per_output = []
    for k, o in enumerate(out_leaves):
        if columns:
            stacked = torch.stack([flatten(c)[0][k].reshape(-1) for c in columns], dim=-1)
        else:
            stacked = o.new_zeros((o.numel(), 0))
        per_output.append(argument_leaves.blocks(stacked, o.shape))
    jacobian = per_output[0] if out_spec is None else unflatten(per_output, out_spec)
    return (jacobian, aux) if has_aux else jacobian


def _random_in_error_mode() -> RuntimeError:
    return RuntimeError(
        "jacfwd: called a random operation with randomness='error'; use "
        "randomness='same' or 'different', or draw outside jacfwd"
    )


def eager_linearize(func: Callable[..., Any], primals: Tuple[Any, ...]) -> Tuple[Any, Any]:
    """``torch.func.linearize(func, *primals)``: the output and a ``jvp_fn(*tangents)``.

    The function runs once, on copies of the primals (so the products stay at
    this point when the caller later updates a primal in place); each
    ``jvp_fn`` call is a backward pass through the recorded graph
    (:func:`~tad_autograd.eager._linear_map.linear_map`), exact whatever ``func``
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
        # snapshots: the graph saves what ``func`` saw, so the products stay at this point
        # when the caller later updates a primal in place
        inputs, external = stand_ins([p.clone() for p in p_leaves])
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
