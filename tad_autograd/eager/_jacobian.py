"""The Jacobian of an eager forward pass, with :mod:`torch.func`'s semantics.

:func:`eager_jacobian` runs the user's function once under ordinary autograd
on differentiable stand-ins of the inputs, then computes the rows
(:mod:`tad_autograd.eager._rows`).  It is the autograd backend's ``jacrev`` and the
automatic strategies' (with a ``vmap`` to vectorise the rows).  What it
returns matches :func:`torch.func.jacrev` in every calling context:

* under :func:`torch.no_grad` the derivative is still computed (the stand-ins
  and the forward pass run with grad enabled) and carries no graph;
* the result is differentiable exactly when its graph reaches a live leaf
  other than the stand-ins (captured parameters, inputs that require grad,
  an enclosing Jacobian's inputs), and so is each ``aux`` leaf;
* under :func:`torch.inference_mode` it computes the derivative where the
  installed :mod:`torch.func` does (:func:`inference_mode_derivatives`);
* outputs that are not real floating-point tensors raise ``RuntimeError``,
  as :func:`torch.func.jacrev` does.

:func:`graph_jacobian` is the same computation for outputs the caller has
already recorded: the rows of their graph, with ``create_graph`` and
``retain_graph`` as :func:`torch.autograd.grad` takes them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch

from ..compat._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from ..compat._torch_info import inference_mode_enabled
from ._batched_backward_watch import custom_backwards_watched
from ._grad_modes import inference_mode_derivatives
from ._graph import (
    batching_hazards,
    graphs_dropped,
    reaches_inputs,
    reaches_other_leaves,
    retire,
)
from ._opaque_backward import custom_backwards_guarded
from ._operand_checks import split_aux
from ._rows import (
    GRADS_BATCHED,
    LOOP_MAX_ROWS,
    columns_by_double_vjp,
    joint_rows,
    note_rows,
    rows,
    vectorised_rows,
)
from ._stand_ins import any_dual, check_argnums, check_graph_inputs, check_outputs, prepare_input

__all__ = [
    "eager_jacobian",
    "graph_jacobian",
    "unflatten_jacobian",
    "aux_like_torch_func",
    "ArgnumLeaves",
]

ArgnumsT = Any


def eager_jacobian(
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]] = None,
    chunk_size: Optional[int] = None,
    columns: bool = False,
) -> Any:
    """``jacrev(func, argnums, has_aux=has_aux)(*args)`` from one eager forward pass.

    With ``columns``, the Jacobian comes column by column
    (:func:`~tad_autograd.eager._rows.columns_by_double_vjp`: one backward pass per
    *input* element, for tall Jacobians), and from the rows where that cannot
    be exact.

    With ``vmap`` (a transform library's), more than :data:`LOOP_MAX_ROWS`
    rows are computed in one vectorised backward pass, ``chunk_size`` rows at
    a time, unless the graph holds an op whose batched derivative the
    installed torch gets wrong (:mod:`tad_autograd.compat.batching_defects`).

    Examples
    --------
    >>> import torch
    >>> eager_jacobian(torch.sin, 0, False, (torch.zeros(2),))
    tensor([[1., 0.],
            [0., 1.]])
    """
    if inference_mode_enabled():  # the derivative where torch.func computes it, else an error
        if not inference_mode_derivatives():
            raise RuntimeError(
                "jacrev: cannot differentiate inside torch.inference_mode() with this torch "
                "(its torch.func returns zeros there); use torch.no_grad() instead"
            )
        # the derivative as torch.func's there: computed, carrying no graph (grad mode is off)
        with torch.inference_mode(False), torch.no_grad():
            plain = _cloned_inference_tensors(args)
            return eager_jacobian(func, argnums, has_aux, plain, vmap, chunk_size, columns)
    outer_grad = torch.is_grad_enabled()
    if outer_grad:
        return _jacobian(func, argnums, has_aux, args, vmap, chunk_size, True, columns)
    with torch.enable_grad():  # the stand-ins and the forward pass must be recorded
        return _jacobian(func, argnums, has_aux, args, vmap, chunk_size, False, columns)


def _cloned_inference_tensors(args: Tuple[Any, ...]) -> Any:
    """``args`` with every inference tensor cloned (outside inference mode: a normal tensor)."""
    leaves, spec = tree_flatten(args)
    plain = [t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t for t in leaves]
    return tree_unflatten(plain, spec)


def _jacobian(
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]],
    chunk_size: Optional[int],
    outer_grad: bool,
    columns: bool = False,
) -> Any:
    nargs = len(args)
    new_args = list(args)
    in_specs: Optional[List[Any]] = None  # None: argnums is an int and its argument a tensor
    sizes = [1]
    if (
        isinstance(argnums, int)
        and -nargs <= argnums < nargs
        and isinstance(args[argnums], torch.Tensor)
    ):
        # the common case (forces, Jacobians of one tensor): no pytree bookkeeping
        p = argnums % nargs
        x = prepare_input(args[p], p)
        new_args[p] = x
        inputs = [x]
        originals = [args[p]]
        external = originals[0].requires_grad
    else:
        in_specs, sizes, inputs, originals, external = _prepare_inputs(argnums, args, new_args)
    try:
        result = func(*new_args)
        if has_aux:
            result, aux = split_aux(result, "jacfwd" if columns else "jacrev")
        if isinstance(result, torch.Tensor):
            out_leaves, out_spec = [result], None
            if not result.is_floating_point():
                check_outputs(out_leaves, "jacfwd" if columns else "jacrev")
        else:
            out_leaves, out_spec = tree_flatten(result)
            check_outputs(out_leaves, "jacfwd" if columns else "jacrev")

        ours = {id(x) for x in inputs}
        dual = any_dual(inputs)  # forward over reverse: the tangents flow through the rows
        create_graph = dual or (
            outer_grad
            and (external or reaches_other_leaves([o for o in out_leaves if o.requires_grad], ours))
        )
        if create_graph:  # a graph others may differentiate: no opaque custom backwards
            with custom_backwards_guarded(out_leaves, True):
                per_output = _derivatives(
                    out_leaves, inputs, create_graph, None if dual else vmap, chunk_size, columns
                )
            per_output = [graphs_dropped(blocks, ours) for blocks in per_output]
        else:
            per_output = _derivatives(out_leaves, inputs, False, vmap, chunk_size, columns)
        jacobian: Any
        if in_specs is None and out_spec is None:
            jacobian = per_output[0][0]
        elif in_specs is None:
            jacobian = unflatten([jac[0] for jac in per_output], out_spec)
        else:
            nested = [unflatten_jacobian(jac, argnums, in_specs, sizes) for jac in per_output]
            jacobian = nested[0] if out_spec is None else unflatten(nested, out_spec)
        if has_aux:
            aliases = {id(s): o for s, o in zip(inputs, originals)}
            return jacobian, aux_like_torch_func(aux, ours, outer_grad, aliases)
        return jacobian
    finally:
        retire(inputs)


def _derivatives(
    out_leaves: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Optional[Callable[..., Any]],
    chunk_size: Optional[int],
    columns: bool,
) -> List[List[torch.Tensor]]:
    """Per output leaf, d output / d input for each input: by columns if asked, else rows."""
    if not columns:
        return _rows_of(out_leaves, inputs, create_graph, vmap, chunk_size)
    per_output = columns_by_double_vjp(out_leaves, inputs, create_graph, vmap, chunk_size)
    if per_output is None:
        per_output = _rows_of(out_leaves, inputs, create_graph, vmap, chunk_size)
    # as torch.func's forward mode: an output that reaches no input has no tangent, so its
    # blocks are zeros without a graph (its graph may reach other leaves that require grad)
    return [
        blocks
        if not create_graph or (o.requires_grad and reaches_inputs(o, inputs))
        else [b.detach() for b in blocks]
        for o, blocks in zip(out_leaves, per_output)
    ]


def _rows_of(
    out_leaves: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Optional[Callable[..., Any]],
    chunk_size: Optional[int],
    retain: Optional[bool] = None,
) -> List[List[torch.Tensor]]:
    """Per output leaf, d output / d input for each input.

    ``retain``: whether the graph must outlive the rows (``False``: the last
    backward pass frees it); ``None`` for a graph of our own, kept only for a
    result with a graph.
    """
    total = sum(o.numel() for o in out_leaves if o.requires_grad)
    keep = True if retain is None else retain
    if vmap is not None and total > LOOP_MAX_ROWS:
        hazards = batching_hazards(out_leaves)
        if hazards.defective:
            note_rows("looped: torch batches " + ", ".join(sorted(hazards.defective)) + " wrongly")
        else:
            # custom Functions' backward passes and hooks watched as they run (their ops
            # are out of sight of any mode entered here): a defective op there raises, and
            # they loop
            with custom_backwards_watched(hazards.custom) as seen:
                vectorised = (
                    None
                    if seen.blind
                    else vectorised_rows(out_leaves, inputs, create_graph, vmap, chunk_size, keep)
                )
            if vectorised is not None:
                note_rows("vectorised")
                return vectorised
            if seen.blind:
                note_rows("looped: the backward hooks cannot be watched (a profiler runs)")
            elif seen.op is not None:
                note_rows(f"looped: {seen}")
    if create_graph and len(out_leaves) > 1:
        # several outputs: their rows from one joint backward pass, whose graphs are
        # torch.func's (a cheaper pass per output would leave constant blocks without one)
        with torch.enable_grad():
            return joint_rows(out_leaves, inputs, create_graph, None, None, keep)
    keep = create_graph if retain is None else retain
    last = max((k for k, o in enumerate(out_leaves) if o.requires_grad and o.numel()), default=-1)
    return [
        rows(o, inputs, create_graph, retain=keep or k < last) for k, o in enumerate(out_leaves)
    ]


def graph_jacobian(
    outputs: Any,
    inputs: Any,
    create_graph: bool,
    retain_graph: bool,
    chunk_size: Optional[int],
    name: str = "graph_jacobian",
) -> Any:
    """The Jacobian of ``outputs`` (tensors that carry a graph) with respect to ``inputs``.

    Leaf ``[i][j]`` (nested as ``outputs``, then as ``inputs``) is
    d ``outputs[i]`` / d ``inputs[j]``, shaped ``out.shape + in.shape``.  With
    ``create_graph`` the rows come from a loop of backward passes (torch's
    batched backward passes that build a graph get ``group_norm`` wrong);
    without, more than :data:`LOOP_MAX_ROWS` rows come from backward passes
    batched by the autograd engine (:data:`~tad_autograd.eager._rows.GRADS_BATCHED`,
    ``chunk_size`` rows at a time), unless the graph holds an op whose
    batched derivative the installed torch gets wrong
    (:func:`~tad_autograd.eager._graph.batching_hazards`), a custom
    Function's backward calls one, or the batched pass fails: then a loop of
    backward passes.
    Arguments are checked by the caller except the leaves, checked here.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> graph_jacobian(x ** 2, x, False, True, None)
    tensor([[2., 0.],
            [0., 4.]])
    """
    out_leaves, out_spec = flatten(outputs)
    in_leaves, in_spec = flatten(inputs)
    check_outputs(out_leaves, name, "outputs")
    check_graph_inputs(in_leaves, name)
    for i, o in enumerate(out_leaves):
        if o.is_inference() and not o.requires_grad:
            raise RuntimeError(
                f"{name}: output {i} was computed inside torch.inference_mode(), which records "
                "no graph, so its derivative cannot be taken (it would silently be zero); "
                "compute the outputs outside inference mode (torch.no_grad() around other code)"
            )
    if inference_mode_enabled():  # a graph recorded outside: differentiable as usual
        with torch.inference_mode(False):
            per_output = _graph_rows(out_leaves, in_leaves, create_graph, retain_graph, chunk_size)
    else:
        per_output = _graph_rows(out_leaves, in_leaves, create_graph, retain_graph, chunk_size)
    nested = [unflatten(jac, in_spec) for jac in per_output]
    return unflatten(nested, out_spec)


def _graph_rows(
    out_leaves: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    retain: bool,
    chunk_size: Optional[int],
) -> List[List[torch.Tensor]]:
    """:func:`graph_jacobian`'s blocks, grad mode on (under ``no_grad`` too)."""
    with torch.enable_grad():
        if not create_graph:
            return _rows_of(out_leaves, inputs, False, GRADS_BATCHED, chunk_size, retain)
        # rows by a loop: the engine's batched backward passes that build a graph are wrong
        # for some ops (group_norm's double backward on every torch of the matrix)
        live = [o for o in out_leaves if o.requires_grad]
        with custom_backwards_guarded(live, True):  # no silent second derivatives
            return _rows_of(out_leaves, inputs, True, None, chunk_size, retain)


def aux_like_torch_func(aux: Any, ours: Set[int], outer_grad: bool, aliases: Dict[int, Any]) -> Any:
    """``aux`` with a graph only where torch.func's keeps one: to leaves outside the call.

    A stand-in returned as it is comes back as the caller's own input, as from
    torch.func (``aliases`` maps the stand-ins' ids to the inputs).
    """
    leaves, spec = tree_flatten(aux)
    kept = []
    for a in leaves:
        if not isinstance(a, torch.Tensor):
            kept.append(a)
        elif id(a) in aliases:
            kept.append(aliases[id(a)])
        elif outer_grad and a.requires_grad and reaches_other_leaves([a], ours):
            kept.append(a)
        else:
            kept.append(a.detach())
    return tree_unflatten(kept, spec)


def _prepare_inputs(
    argnums: ArgnumsT, args: Tuple[Any, ...], new_args: List[Any]
) -> Tuple[List[Any], List[int], List[torch.Tensor], List[torch.Tensor], bool]:
    """Differentiable stand-ins for the (pytree) arguments at ``argnums``, put into ``new_args``.

    Returns the input specs, the number of leaves per argument, all stand-in
    leaves, the original leaves they stand in for, and whether any original
    leaf requires grad.
    """
    in_specs = []
    sizes = []
    inputs: List[torch.Tensor] = []
    originals: List[torch.Tensor] = []
    external = False
    for p in check_argnums(argnums, len(args)):
        leaves, spec = flatten(args[p])
        prepared = [prepare_input(leaf, p) for leaf in leaves]
        external = external or any(leaf.requires_grad for leaf in leaves)
        new_args[p] = unflatten(prepared, spec)
        in_specs.append(spec)
        sizes.append(len(prepared))
        inputs.extend(prepared)
        originals.extend(leaves)
    return in_specs, sizes, inputs, originals, external


class ArgnumLeaves:
    """The tensor leaves of the differentiated arguments ``args[p]`` for ``p`` in ``nums``,
    the function of those leaves, and the way back from columns to Jacobian blocks.

    Examples
    --------
    >>> import torch
    >>> leaves = ArgnumLeaves((torch.zeros(2), (torch.ones(1),)), (0, 1), (0, 1))
    >>> [tuple(x.shape) for x in leaves.leaves]
    [(2,), (1,)]
    >>> leaves.blocks(torch.eye(3), torch.Size([3]))[1][0].shape
    torch.Size([3, 1])
    """

    def __init__(self, args: Tuple[Any, ...], nums: Tuple[int, ...], argnums: ArgnumsT) -> None:
        self.args, self.nums, self.argnums = args, nums, argnums
        self.in_specs: List[Any] = []
        self.sizes: List[int] = []
        self.leaves: List[Any] = []
        for p in nums:
            arg_leaves, arg_spec = flatten(args[p])
            self.in_specs.append(arg_spec)
            self.sizes.append(len(arg_leaves))
            self.leaves.extend(arg_leaves)

    def function_of(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` as a function of the leaves, the other arguments fixed."""

        def of_leaves(*xs: torch.Tensor) -> Any:
            new_args, start = list(self.args), 0
            for p, spec, count in zip(self.nums, self.in_specs, self.sizes):
                new_args[p] = unflatten(list(xs[start : start + count]), spec)
                start += count
            return func(*new_args)

        return of_leaves

    def blocks(self, matrix: torch.Tensor, out_shape: torch.Size) -> Any:
        """One output's Jacobian from its ``(out.numel(), total leaf elements)`` matrix."""
        blocks, start = [], 0
        for x in self.leaves:
            blocks.append(matrix[:, start : start + x.numel()].reshape(out_shape + x.shape))
            start += x.numel()
        return unflatten_jacobian(blocks, self.argnums, self.in_specs, self.sizes)


def unflatten_jacobian(
    jac: List[torch.Tensor], argnums: ArgnumsT, in_specs: List[Any], sizes: List[int]
) -> Any:
    """One output's Jacobian leaves (one per input leaf) as the argnums tuple of input pytrees."""
    per_arg = []
    start = 0
    for spec, count in zip(in_specs, sizes):
        per_arg.append(unflatten(jac[start : start + count], spec))
        start += count
    return per_arg[0] if isinstance(argnums, int) else tuple(per_arg)
