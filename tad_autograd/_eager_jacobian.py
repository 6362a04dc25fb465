"""The Jacobian of an eager forward pass, with :mod:`torch.func`'s semantics.

:func:`eager_jacobian` runs the user's function once under ordinary autograd
on differentiable stand-ins of the inputs, then computes the rows
(:mod:`tad_autograd._rows`).  It is the autograd backend's ``jacrev`` and the
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
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ._dual import level_active, make_dual, unpack_dual
from ._grad_modes import inference_mode_derivatives
from ._graph import defective_ops_in, mark_stand_in_leaf, reaches_other_leaves, retire
from ._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from ._rows import LOOP_MAX_ROWS, joint_rows, rows, vectorised_rows

__all__ = [
    "eager_jacobian",
    "check_argnums",
    "check_outputs",
    "prepare_input",
    "stand_ins",
    "dual_tangent",
    "any_dual",
    "inference_mode_derivatives",
]

ArgnumsT = Any


def check_argnums(argnums: ArgnumsT, nargs: int) -> Tuple[int, ...]:
    """Normalise ``argnums`` against ``nargs`` positional arguments.

    Raises ``RuntimeError`` with :func:`torch.func.jacrev`'s wording, also for
    two entries naming the same argument (``(0, -2)`` of two arguments).

    Examples
    --------
    >>> check_argnums(-1, 2)
    (1,)
    >>> check_argnums((0, -2), 2)
    Traceback (most recent call last):
    ...
    RuntimeError: argnums elements must be unique, got (0, -2) (both name argument 0 ...
    """
    nums = (argnums,) if isinstance(argnums, int) else argnums
    out = []
    for n in nums:
        if not -nargs <= n < nargs:
            raise RuntimeError(f"Got argnum={n}, but only {nargs} positional inputs")
        p = n % nargs
        if p in out:
            raise RuntimeError(
                f"argnums elements must be unique, got {argnums!r} (both name argument {p} "
                f"of the {nargs} positional inputs)"
            )
        out.append(p)
    return tuple(out)


def prepare_input(x: Any, position: int) -> torch.Tensor:
    """A differentiable stand-in for input leaf ``x`` (call with grad mode on).

    A tensor that already requires grad is viewed, so the Jacobian stays
    differentiable with respect to it; any other floating-point tensor is
    detached and made to require grad.

    Examples
    --------
    >>> import torch
    >>> prepare_input(torch.zeros(2), 0).requires_grad
    True
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"argnums: the argument at position {position} must be a floating-point "
            f"tensor or a pytree of them, got {type(x)}"
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise RuntimeError(
            "only Tensors of floating point dtype can require gradients "
            f"(argument at position {position} has dtype {x.dtype})"
        )
    if x.requires_grad:
        return x.view_as(x)
    tangent = dual_tangent(x)
    if tangent is not None:  # a forward-mode dual number: keep its tangent
        leaf = unpack_dual(x)[0].detach().requires_grad_(True)
        stand_in = make_dual(leaf, tangent)
        mark_stand_in_leaf(stand_in, leaf)
        return stand_in
    return x.detach().requires_grad_(True)


def dual_tangent(x: torch.Tensor) -> Optional[torch.Tensor]:
    """The forward-mode tangent of ``x`` (a dual number of torch.autograd.forward_ad), or None.

    Free when no dual level is active.  A derivative of a dual input must be
    computed with ``create_graph=True``, so that the tangent flows through the
    backward pass (forward over reverse).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd._dual import dual_level, make_dual
    >>> dual_tangent(torch.zeros(1)) is None
    True
    >>> with dual_level():
    ...     dual_tangent(make_dual(torch.zeros(1), torch.ones(1)))
    tensor([1.])
    """
    if not level_active():
        return None
    return unpack_dual(x)[1]


def any_dual(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` carries a forward-mode tangent (free without a dual level)."""
    return level_active() and any(dual_tangent(x) is not None for x in tensors)


def stand_ins(leaves: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], bool]:
    """Differentiable stand-ins of ``leaves`` (grad mode on), and whether any requires grad.

    Examples
    --------
    >>> import torch
    >>> [x.requires_grad for x in stand_ins([torch.zeros(1)])[0]]
    [True]
    """
    return [prepare_input(x, i) for i, x in enumerate(leaves)], any(x.requires_grad for x in leaves)


def check_outputs(leaves: Sequence[Any], name: str = "jacrev") -> None:
    """Raise ``RuntimeError`` as :func:`torch.func.jacrev` does for outputs it cannot take.

    No tensors, a non-tensor, an integer or bool tensor, or a complex tensor.

    Examples
    --------
    >>> import torch
    >>> check_outputs([torch.zeros(1)])
    >>> check_outputs([torch.zeros(1, dtype=torch.long)])
    Traceback (most recent call last):
    ...
    RuntimeError: jacrev(f, ...): All outputs of f must be floating-point or complex Tensors, ...
    """
    if len(leaves) == 0:
        raise RuntimeError(
            f"{name}(f, ...)(*args): expected f(*args) to return a tensor or a non-empty "
            "pytree of tensors, got no tensors (e.g. None)"
        )
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise RuntimeError(
                f"{name}(f, ...)(*args): expected f(*args) to return only tensors, "
                f"got unsupported type {type(leaf)}"
            )
        if leaf.is_floating_point():
            continue
        if leaf.is_complex():
            raise RuntimeError(
                f"{name}: Expected all outputs to be real but received complex tensor at "
                f"flattened input idx: {i}"
            )
        raise RuntimeError(
            f"{name}(f, ...): All outputs of f must be floating-point or complex Tensors, "
            f"got Tensor with dtype {leaf.dtype} (output {i})"
        )


def eager_jacobian(
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]] = None,
    chunk_size: Optional[int] = None,
) -> Any:
    """``jacrev(func, argnums, has_aux=has_aux)(*args)`` from one eager forward pass.

    With ``vmap`` (a transform library's), more than :data:`LOOP_MAX_ROWS`
    rows are computed in one vectorised backward pass, ``chunk_size`` rows at
    a time, unless the graph holds an op whose batched derivative the
    installed torch gets wrong (:mod:`tad_autograd.batching_defects`).

    Examples
    --------
    >>> import torch
    >>> eager_jacobian(torch.sin, 0, False, (torch.zeros(2),))
    tensor([[1., 0.],
            [0., 1.]])
    """
    if torch.is_inference_mode_enabled():
        return _in_inference_mode(func, argnums, has_aux, args, vmap, chunk_size)
    outer_grad = torch.is_grad_enabled()
    if outer_grad:
        return _jacobian(func, argnums, has_aux, args, vmap, chunk_size, True)
    with torch.enable_grad():  # the stand-ins and the forward pass must be recorded
        return _jacobian(func, argnums, has_aux, args, vmap, chunk_size, False)


def _in_inference_mode(
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]],
    chunk_size: Optional[int],
) -> Any:
    """Inside ``inference_mode``: the derivative where torch.func computes it, else an error."""
    if not inference_mode_derivatives():
        raise RuntimeError(
            "jacrev: cannot differentiate inside torch.inference_mode() with this torch "
            "(its torch.func returns zeros there); use torch.no_grad() instead"
        )
    # the derivative as torch.func's there: computed, carrying no graph (grad mode is off)
    with torch.inference_mode(False), torch.no_grad():
        leaves, spec = tree_flatten(args)
        plain = [
            t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t for t in leaves
        ]
        return eager_jacobian(func, argnums, has_aux, tree_unflatten(plain, spec), vmap, chunk_size)


def _jacobian(
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]],
    chunk_size: Optional[int],
    outer_grad: bool,
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
            result, aux = _split_aux(result)
        if isinstance(result, torch.Tensor):
            out_leaves, out_spec = [result], None
            if not result.is_floating_point():
                check_outputs(out_leaves)
        else:
            out_leaves, out_spec = tree_flatten(result)
            check_outputs(out_leaves)

        ours = {id(x) for x in inputs}
        dual = any_dual(inputs)  # forward over reverse: the tangents flow through the rows
        create_graph = dual or (
            outer_grad
            and (external or reaches_other_leaves([o for o in out_leaves if o.requires_grad], ours))
        )
        per_output = _rows_of(out_leaves, inputs, create_graph, None if dual else vmap, chunk_size)
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
            return jacobian, _aux_like_torch_func(aux, ours, outer_grad, aliases)
        return jacobian
    finally:
        retire(inputs)


def _rows_of(
    out_leaves: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Optional[Callable[..., Any]],
    chunk_size: Optional[int],
) -> List[List[torch.Tensor]]:
    """Per output leaf, d output / d input for each input."""
    total = sum(o.numel() for o in out_leaves if o.requires_grad)
    if vmap is not None and total > LOOP_MAX_ROWS and not defective_ops_in(out_leaves):
        vectorised = vectorised_rows(out_leaves, inputs, create_graph, vmap, chunk_size)
        if vectorised is not None:
            return vectorised
    if create_graph and len(out_leaves) > 1:
        # several outputs: their rows from one joint backward pass, whose graphs are
        # torch.func's (a cheaper pass per output would leave constant blocks without one)
        with torch.enable_grad():
            return joint_rows(out_leaves, inputs, create_graph, None)
    last = len(out_leaves) - 1
    return [
        rows(o, inputs, create_graph, retain=create_graph or k < last)
        for k, o in enumerate(out_leaves)
    ]


def _aux_like_torch_func(
    aux: Any, ours: Set[int], outer_grad: bool, aliases: Dict[int, Any]
) -> Any:
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


_HAS_AUX_HINT = (
    "; with has_aux=True, func must return a tuple (output, aux) whose output is a "
    "tensor or a pytree of tensors (got {got})"
)


def _split_aux(result: Any) -> Tuple[Any, Any]:
    """``(output, aux)`` from a ``has_aux`` function's result, checked."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RuntimeError(
            "jacrev(f, ...)(*args): output of function f should be a tuple: "
            "(output, aux) if has_aux is True" + _HAS_AUX_HINT.format(got=type(result).__name__)
        )
    for leaf in tree_flatten(result[1])[0]:
        if not isinstance(leaf, torch.Tensor):
            raise RuntimeError(
                "jacrev(f, ..., has_aux=True): aux must be a tensor or a pytree of "
                f"tensors. Expected tensors, got unsupported type {type(leaf)}"
            )
    return result[0], result[1]
