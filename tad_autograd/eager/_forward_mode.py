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
* Later calls of a function whose graph showed nothing in the way (the very
  callable passed: a decorated variant has a verdict of its own) push
  :mod:`torch.autograd.forward_ad` dual numbers (cheaper); the others keep
  recording.  The dual numbers ride on the same stand-ins the recorded call
  gave the function (requiring grad, grad mode on), so the function takes
  the same branches and records its graph too; where that pass meets what
  dual numbers get wrong (grad mode off, a tensor hook, a backward pass
  without ``create_graph``: :class:`~tad_autograd.eager._grad_modes.ReverseOnlyWatch`;
  a defective op), the product comes from the graph instead.  So every call
  gives reverse mode's derivative, whatever the verdict.  Should a later call
  take a data-dependent branch into an op without a forward-AD formula
  (torch reports ``NotImplementedError``), that call is recorded instead,
  with every random generator restored, and the function records from then
  on.  Any other exception is the user's own and propagates after the one
  run.
* The function gets non-leaf copies of its inputs (and of the tangents), so
  it may update them in place; the caller's tensors stay as they are.
* ``jacfwd`` records one forward pass and takes its columns from the graph;
  with ``randomness="different"`` a function that drew random numbers gets a
  forward pass of its own for each further column (one draw per column, as
  ``vmap`` gives).
* ``linearize`` records one forward pass; each product is one backward pass
  through it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..compat._dual import dual_level, forward_ad_ready, level_active, make_dual, unpack_dual
from ..compat._locks import TRANSFORM_LOCK
from ..compat._memory import MEMORY
from ..compat._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from ..compat._rng import RngStates, attempt, snapshot
from ..compat._torch_info import inference_mode_enabled, is_compiling
from ..compat._transform_failures import DefectWatch
from ._grad_modes import GradModeOffWatch, ReverseOnlyWatch, outside_inference_mode
from ._graph import custom_functions_without_jvp, graphs_dropped, reaches_other_leaves, retire
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
    key = _verdict_key(func)

    def recorded() -> Any:
        output, (products,), aux, duals = _recorded(
            func, p_leaves, spec, has_aux, [t_leaves], "jvp"
        )
        _remember(key, duals)
        return output + (products,) + ((aux,) if has_aux else ())

    if level_active() or is_compiling() or not _duals_proven(key):
        return recorded()  # (dynamo traces no dual numbers)

    def dual_numbers(states: RngStates) -> Any:
        with TRANSFORM_LOCK:  # dual levels are process-wide
            output, (products,), aux, _ = _recorded(
                func, p_leaves, spec, has_aux, [t_leaves], "jvp", by_duals=True
            )
        return output + (products,) + ((aux,) if has_aux else ())

    # a path the recorded call did not take into an op without a forward-AD rule (the
    # type torch raises, whatever the words): recorded, from now on
    return attempt(
        dual_numbers,
        func,
        primals,
        catch=(NotImplementedError,),
        on_failure=lambda error: _remember(key, False),
        retry=recorded,
    )


#: The defects a dual-number pass watches for: wrong forward-mode formulas.
_TANGENT = "tangent"

#: The key, in the failure memory, of whether the graph of a user function's recorded
#: call (the function as the caller passed it) showed that dual numbers can push its
#: tangents.  Later calls push dual numbers only where it did, and take the product from
#: their own graph where their pass saw what dual numbers get wrong; so the verdict
#: decides the cost of a call, never its answer.
_DUALS = "dual numbers"

#: Where the library's own modules live: their wrappers (``__wrapped__``) are looked through.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _verdict_key(func: Callable[..., Any]) -> Any:
    """The function the caller passed, under the library's own wrappers only.

    A user's decorator (``functools.wraps``, ``torch.no_grad()``) makes another
    function with a verdict of its own; only wrappers whose code lives in this
    package are looked through.
    """
    while hasattr(func, "__wrapped__"):
        code = getattr(func, "__code__", None)
        if code is None or not code.co_filename.startswith(_PACKAGE):
            break
        func = func.__wrapped__
    return func


def _duals_proven(func: Any) -> bool:
    return MEMORY.recall(func, _DUALS) is True


def _remember(func: Any, duals: bool) -> None:
    if MEMORY.recall(func, _DUALS) is not False:  # a path without dual numbers stays so
        MEMORY.remember(func, _DUALS, duals)


def _recorded(
    func: Callable[..., Any],
    p_leaves: List[torch.Tensor],
    spec: Optional[Any],
    has_aux: bool,
    tangent_sets: Sequence[Sequence[torch.Tensor]],
    kind: str,
    by_duals: bool = False,
) -> Tuple[Tuple[Any], List[Any], Any, bool]:
    """One recorded call of ``func``, and ``J t`` from its graph for each of ``tangent_sets``.

    ``spec``: the primals' structure (``None``: ``func`` takes the leaves).
    Returns ``((output,), products per tangent set, aux, duals)``: ``duals``
    tells whether dual numbers could have pushed the tangents through this
    call (no custom ``autograd.Function`` without ``jvp``, no op whose
    forward-mode formula torch gets wrong, nothing run with grad mode off).

    The function gets non-leaf copies of the stand-ins, so that it may update
    them in place (the caller's tensors stay as they are).  ``by_duals`` (one
    tangent set): the copies are also dual numbers carrying the tangents, and
    the product is their tangent unless the pass met what dual numbers get
    wrong (:class:`~tad_autograd.eager._grad_modes.ReverseOnlyWatch`, a
    defective forward-mode formula); then it comes from the graph, which the
    same pass recorded, as on the first call.
    """
    outer_grad = torch.is_grad_enabled()
    look = DefectWatch(_TANGENT, look_only=True) if DefectWatch.needed(_TANGENT) else None
    # the function's own no_grad block: dual numbers pass through it, backward passes do
    # not, so such a function keeps the recorded graph's derivative on every call
    watch = ReverseOnlyWatch() if by_duals else GradModeOffWatch()
    with torch.enable_grad():
        inputs, external = stand_ins(p_leaves)
        try:
            with contextlib.ExitStack() as stack:
                fed = [x.clone() for x in inputs]  # the function may update these in place
                if by_duals:
                    stack.enter_context(dual_level())
                    # torch keeps the tangent as given: an in-place update would change it
                    fed = [make_dual(x, t.clone()) for x, t in zip(fed, tangent_sets[0])]
                versions = [x._version for x in fed]
                with look if look is not None else contextlib.nullcontext(), watch:
                    result = func(*(fed if spec is None else tree_unflatten(list(fed), spec)))
                if has_aux:
                    result, aux = split_aux(result, kind)
                out_leaves, out_spec = tree_flatten(result)
                check_tensor_outputs(out_leaves, kind)
                # the caller's own input where the function returned it untouched
                unchanged = {
                    id(x): p for x, v, p in zip(fed, versions, p_leaves) if x._version == v
                }
                originals = [unchanged.get(id(o)) for o in out_leaves]
                if has_aux:
                    aux_leaves, aux_spec = tree_flatten(aux)
                    aux_originals = [
                        unchanged.get(id(a)) if isinstance(a, torch.Tensor) else None
                        for a in aux_leaves
                    ]
                if by_duals:
                    unpacked = [unpack_dual(o) for o in out_leaves]
                    out_leaves = [primal for primal, _ in unpacked]
                    tangents = [tangent for _, tangent in unpacked]
                    if has_aux:
                        aux_leaves = [
                            unpack_dual(a)[0] if isinstance(a, torch.Tensor) else a
                            for a in aux_leaves
                        ]
            ours = {id(x) for x in inputs}
            live = [o for o in out_leaves if o.requires_grad]
            keep = outer_grad and (external or reaches_other_leaves(live, ours))
            wants_graph = any(t.requires_grad for ts in tangent_sets for t in ts)
            create = keep or any_dual(inputs) or (outer_grad and wants_graph)
            clear = (look is None or not look.seen) and not watch.seen
            if by_duals and clear:
                per_set = [
                    [
                        torch.zeros_like(o.detach()) if t is None else t if create else t.detach()
                        for o, t in zip(out_leaves, tangents)
                    ]
                ]
            else:
                apply = linear_map(out_leaves, inputs, create)
                per_set = [apply(list(ts), create) for ts in tangent_sets]
            products = [
                tree_unflatten(graphs_dropped(leaves, ours) if create else leaves, out_spec)
                for leaves in per_set
            ]
            primal = [
                original if original is not None else as_returned([o], keep, [], [])[0]
                for o, original in zip(out_leaves, originals)
            ]
            # (a dual-number pass got through: its verdict is not asked for)
            duals = clear and (by_duals or not custom_functions_without_jvp(live))
            if has_aux:  # with a graph where torch.func's keeps one: to leaves outside
                aux_leaves = [
                    original if original is not None else a
                    for a, original in zip(aux_leaves, aux_originals)
                ]
                aux = aux_like_torch_func(
                    tree_unflatten(aux_leaves, aux_spec), ours, outer_grad, {}
                )
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
        jacobian = eager_jacobian(
            _on_copies(func, nums), argnums, has_aux, args, vmap, chunk_size, columns=True
        )
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


def _on_copies(func: Callable[..., Any], nums: Sequence[int]) -> Callable[..., Any]:
    """``func`` called with copies of the tensors at positions ``nums`` (differentiable
    clones, which it may update in place where the stand-ins are leaves)."""

    def on_copies(*args: Any) -> Any:
        copied = list(args)
        for i in nums:
            leaves, spec = tree_flatten(args[i])
            copied[i] = tree_unflatten(
                [a.clone() if isinstance(a, torch.Tensor) else a for a in leaves], spec
            )
        return func(*copied)

    on_copies.__wrapped__ = func  # type: ignore[attr-defined]
    return on_copies


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
        fed = [x.clone() for x in inputs]  # the function may update these in place
        versions = [x._version for x in fed]
        result = func(*tree_unflatten(list(fed), spec))
        out_leaves, out_spec = tree_flatten(result)
        check_tensor_outputs(out_leaves, "linearize")
        live = [o for o in out_leaves if o.requires_grad]
        ours = {id(x) for x in inputs}
        keep = any_dual(inputs) or (outer_grad and (external or reaches_other_leaves(live, ours)))
        apply = linear_map(out_leaves, inputs, keep)
        # the caller's own input where the function returned it untouched
        unchanged = {id(x): p for x, v, p in zip(fed, versions, p_leaves) if x._version == v}

    def jvp_fn(*tangents: Any) -> Any:
        t_leaves = check_primals_tangents(primals, tangents, "linearize")[1]
        create = keep or (torch.is_grad_enabled() and any(t.requires_grad for t in t_leaves))
        products = apply(t_leaves, create)
        return tree_unflatten(graphs_dropped(products, ours) if create else products, out_spec)

    primal = [unchanged.get(id(o)) for o in out_leaves]
    primal = [
        as_returned([o], keep, [], [])[0] if p is None else p for o, p in zip(out_leaves, primal)
    ]
    return tree_unflatten(primal, out_spec), jvp_fn
