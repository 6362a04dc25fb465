"""The :func:`programs` strategy: random differentiable programs.

:class:`~tad_autograd.testing._programs.builder.ProgramBuilder` holds the state
of one program being drawn (its steps, constants and flags); the steps
themselves come from
:mod:`~tad_autograd.testing._programs.ops` and
:mod:`~tad_autograd.testing._programs.view_ops`.

Examples
--------
>>> from hypothesis import find
>>> find(programs(), lambda p: True).num_args
1
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from hypothesis import strategies as st

from ...compat._pytree import tree_flatten
from . import ops as program_ops
from . import view_ops as program_view_ops
from .builder import ProgramBuilder, shapes
from .program import Program, _Step

__all__ = ["float_dtypes", "argnums_for", "programs", "add_random_step"]


def float_dtypes(
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
) -> st.SearchStrategy:
    """Floating dtypes to build programs in (default float32 and float64).

    Examples
    --------
    >>> import torch
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(float_dtypes())
    ... def check(dtype):
    ...     assert dtype.is_floating_point
    >>> check()
    """
    return st.sampled_from(list(dtypes))


@st.composite
def argnums_for(
    draw: st.DrawFn,
    num_args: int,
    tensor_positions: Sequence[int],
    *,
    allow_tuple: bool = True,
    allow_negative: bool = True,
) -> Union[int, Tuple[int, ...]]:
    """``argnums`` values: an int or a tuple of distinct positions, maybe negative.

    Parameters
    ----------
    num_args : int
        Number of positional arguments of the function.
    tensor_positions : sequence of int
        Positions that may be differentiated.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(argnums_for(3, [0, 1]))
    ... def check(argnums):
    ...     pos = argnums if isinstance(argnums, tuple) else (argnums,)
    ...     assert all(p % 3 in (0, 1) for p in pos)
    >>> check()
    """

    def maybe_neg(p: int) -> int:
        if allow_negative and draw(st.booleans()):
            return p - num_args
        return p

    if allow_tuple and draw(st.booleans()):
        chosen = draw(
            st.lists(
                st.sampled_from(list(tensor_positions)),
                min_size=1,
                max_size=len(tensor_positions),
                unique=True,
            )
        )
        return tuple(maybe_neg(p) for p in chosen)
    return maybe_neg(draw(st.sampled_from(list(tensor_positions))))


#: Operation kinds, drawn uniformly; ``None``: a unary step.
_OPS: Dict[str, Optional[Callable[[ProgramBuilder], Optional[_Step]]]] = {
    "unary": None,
    "binary": program_ops.op_binary,
    "matmul": program_ops.op_matmul_weight,
    "matmul_pair": program_ops.op_matmul_pair,
    "linear": program_ops.op_linear,
    "reduce": program_ops.op_reduce,
    "index": program_view_ops.op_index,
    "where": program_view_ops.op_where,
    "norm": program_ops.op_norm,
    "permute": program_view_ops.op_permute,
    "expand": program_view_ops.op_expand,
    "stack": program_view_ops.op_stack,
    "custom": program_view_ops.op_custom,
}


def add_random_step(pb: ProgramBuilder) -> None:
    """Draw an operation kind and add its step to ``pb`` (a unary step where it cannot be built)."""
    kind = pb.draw(st.sampled_from(list(_OPS)))
    make = _OPS[kind]
    step = make(pb) if make is not None else None
    if step is None:
        step = program_ops.unary(pb, pb.pick_always())
    pb.steps.append(step)


@st.composite
def programs(
    draw: st.DrawFn,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    device: Union[str, torch.device, None] = None,
    max_args: int = 3,
    max_ops: int = 6,
    max_ndim: int = 3,
    max_side: int = 3,
    pytree_inputs: bool = True,
    pytree_outputs: bool = True,
    passthrough_args: bool = True,
    new_style_functions: bool = True,
    old_style_functions: bool = False,
    argnums: bool = True,
) -> Program:
    """Random differentiable programs (:class:`Program` objects).

    Parameters
    ----------
    dtypes : sequence of torch.dtype
        Floating dtypes to choose from (one per program).
    device : str or torch.device, optional
        Device of the example arguments and constants; by default torch's
        default device (the CPU unless ``torch.set_default_device`` moved it).
        The values are drawn on the CPU and moved, so a program is the same on
        every device.
    max_args, max_ops : int
        Largest number of tensor arguments and of operations.
    max_ndim, max_side : int
        Limits on argument shapes (0-d and size-1 dims are included).
    pytree_inputs, pytree_outputs : bool
        Allow tuple/dict arguments and tuple/list/dict/nested outputs.
    passthrough_args : bool
        Allow a trailing non-tensor ``int`` argument (never differentiated).
    new_style_functions : bool
        Allow ``autograd.Function`` nodes with ``setup_context`` and
        ``generate_vmap_rule`` (never generated on torch < 2.0).
    old_style_functions : bool
        Allow old-style ``autograd.Function`` nodes (``forward(ctx, x)``),
        which only the ``"autograd"`` backend can transform; programs holding
        one have ``has_old_style_function = True``.
    argnums : bool
        Draw random ``argnums`` (int or tuple, maybe negative); otherwise 0.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import given, settings
    >>> from tad_autograd.testing import programs
    >>> @settings(max_examples=10, deadline=None, database=None)
    ... @given(programs(old_style_functions=True))
    ... def check(program):
    ...     out = program(*program.args)              # evaluate on the example args
    ...     assert program.dtype in (torch.float32, torch.float64)
    >>> check()
    >>> from hypothesis import find
    >>> p = find(programs(pytree_inputs=False, passthrough_args=False),
    ...          lambda p: p.num_args >= 1,
    ...          settings=settings(database=None, derandomize=True))
    >>> print(p)  # doctest: +ELLIPSIS
    Program(seed=..., dtype=torch.float..., device=..., argnums=...):
        def f(x0: ...
        ...
            return ...    # (each leaf times scale if given)
    """
    dtype = draw(float_dtypes(dtypes))
    seed = draw(st.integers(0, 2**31 - 2))
    dev = torch.device(device) if device is not None else torch.empty(()).device
    pb = ProgramBuilder(
        draw,
        dtype=dtype,
        device=dev,
        seed=seed,
        max_ndim=max_ndim,
        max_side=max_side,
        new_style_functions=new_style_functions,
        old_style_functions=old_style_functions,
    )
    arg_kinds, arg_shapes = _draw_arguments(pb, max_args, pytree_inputs)
    for _ in range(draw(st.integers(1, max_ops))):
        add_random_step(pb)
    output_ids, out_kind, out_spec = _draw_outputs(draw, len(pb.steps) - 1, pytree_outputs)
    passthrough = draw(st.integers(1, 3)) if passthrough_args and draw(st.booleans()) else None
    num_args = len(arg_kinds) + (1 if passthrough is not None else 0)
    an = draw(argnums_for(num_args, list(range(len(arg_kinds))))) if argnums else 0
    return Program(
        seed=seed,
        dtype=dtype,
        device=dev,
        arg_kinds=arg_kinds,
        arg_shapes=arg_shapes,
        steps=pb.steps,
        output_ids=output_ids,
        out_spec=out_spec,
        out_kind=out_kind,
        passthrough=passthrough,
        argnums=an,
        constants=pb.constants,
        flags=pb.flags,
        make_arg_leaf=partial(_arg_leaf, dtype, dev),
    )


def _arg_leaf(
    dtype: torch.dtype, device: torch.device, shape: Sequence[int], g: torch.Generator
) -> torch.Tensor:
    """An argument leaf: uniform in [-1, 1], drawn on the CPU from ``g``, then moved."""
    t = torch.rand(shape, generator=g, dtype=torch.float64, device="cpu") * 2 - 1
    return t.to(dtype=dtype, device=device)


def _draw_arguments(
    pb: ProgramBuilder, max_args: int, pytree_inputs: bool
) -> Tuple[List[str], List[List[Tuple[int, ...]]]]:
    """Draw the tensor arguments (kinds and leaf shapes); a step reads each leaf."""
    draw = pb.draw
    n_args = draw(st.integers(1, max_args))
    arg_kinds: List[str] = []
    arg_shapes: List[List[Tuple[int, ...]]] = []
    shape_st = shapes(max_ndim=pb.max_ndim, max_side=pb.max_side)
    for i in range(n_args):
        kind = (
            draw(st.sampled_from(["tensor", "tensor", "tuple", "dict"]))
            if pytree_inputs
            else "tensor"
        )
        n_leaves = 1 if kind == "tensor" else draw(st.integers(1, 2))
        leaf_shapes = [draw(shape_st) for _ in range(n_leaves)]
        arg_kinds.append(kind)
        arg_shapes.append(leaf_shapes)
        for j, s in enumerate(leaf_shapes):
            getter: Callable[..., Any]
            if kind == "tensor":
                text, getter = f"x{i}", (lambda args, i=i: args[i])
            elif kind == "tuple":
                text, getter = f"x{i}[{j}]", (lambda args, i=i, j=j: args[i][j])
            else:
                key = "ab"[j]
                text, getter = f"x{i}[{key!r}]", (lambda args, i=i, key=key: args[i][key])
            pb.steps.append(_Step(s, 1.0, text, lambda vals, args, getter=getter: getter(args)))
    return arg_kinds, arg_shapes


def _draw_outputs(draw: st.DrawFn, last: int, pytree_outputs: bool) -> Tuple[List[int], str, Any]:
    """Draw which steps are returned and in which pytree: ``(output_ids, out_kind, spec)``."""
    extra = draw(st.lists(st.integers(0, last), max_size=2)) if pytree_outputs else []
    output_ids = extra + [last]
    if len(output_ids) == 1:
        out_kind = (
            draw(st.sampled_from(["tensor", "tensor", "tuple", "list", "dict"]))
            if pytree_outputs
            else "tensor"
        )
    else:
        out_kind = draw(st.sampled_from(["tuple", "list", "dict", "nested"]))
    n = len(output_ids)
    if out_kind == "tensor":
        skeleton: Any = 0
    elif out_kind == "tuple":
        skeleton = tuple(range(n))
    elif out_kind == "list":
        skeleton = list(range(n))
    elif out_kind == "dict":
        skeleton = {f"y{i}": i for i in range(n)}
    else:
        skeleton = (0, {f"y{i}": i for i in range(1, n)})
    return output_ids, out_kind, tree_flatten(skeleton)[1]
