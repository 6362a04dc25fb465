"""The :func:`vmap_calls` strategy: random ``vmap`` calls over random programs.

A :class:`VmapCall` holds batched arguments, ``in_dims``/``out_dims``, keyword
arguments and a ``chunk_size``; :meth:`VmapCall.reference` is the Python-loop
answer (:func:`~tad_autograd.testing.reference.reference_vmap`).

Examples
--------
>>> from hypothesis import find
>>> find(vmap_calls(), lambda c: c.batch_size == 2).reference().shape
torch.Size([2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from hypothesis import strategies as st

from ..compat._pytree import broadcast_prefix, tree_flatten, tree_unflatten
from ._programs.program import Program, _fmt_shape, _Raw, _render_tree
from ._programs.strategies import programs
from .reference import map_tensors, reference_vmap, select_sample

__all__ = ["VmapCall", "vmap_calls"]


@dataclass(eq=False)
class VmapCall:
    """A random ``vmap`` call produced by :func:`vmap_calls`.

    Attributes
    ----------
    func : Program
        The per-sample function.
    args : tuple
        Batched positional arguments (the batch dimension of each argument
        sits where ``in_dims`` says; ``None`` arguments are not batched).
    in_dims, out_dims
        To pass to ``vmap``.
    kwargs : dict
        Keyword arguments, passed through unbatched.
    batch_size : int
    chunk_size : int or None
        A ``chunk_size`` to pass to ``vmap`` (results must not depend on it).
    """

    func: Program
    args: Tuple[Any, ...]
    in_dims: Any
    out_dims: Any
    kwargs: Dict[str, Any]
    batch_size: int
    chunk_size: Optional[int]

    def vmap_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``vmap`` itself: ``in_dims``, ``out_dims``, ``chunk_size``."""
        return {"in_dims": self.in_dims, "out_dims": self.out_dims, "chunk_size": self.chunk_size}

    def sample_args(self, b: int) -> Tuple[Any, ...]:
        """Positional arguments of sample ``b`` (batch dimensions removed)."""
        return select_sample(self.args, self.in_dims, b)

    def reference(self, func: Optional[Callable[..., Any]] = None, out_dims: Any = None) -> Any:
        """Python-loop reference for ``vmap(func, in_dims, out_dims)(*args, **kwargs)``.

        ``func`` defaults to :attr:`func` and ``out_dims`` to :attr:`out_dims`.
        """
        func = self.func if func is None else func
        out_dims = self.out_dims if out_dims is None else out_dims
        return reference_vmap(func, self.in_dims, out_dims)(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        def shape_tree(x: Any) -> str:
            leaves, spec = tree_flatten(x)
            return _render_tree(
                tree_unflatten(
                    [
                        _Raw(_fmt_shape(t.shape)) if isinstance(t, torch.Tensor) else _Raw(repr(t))
                        for t in leaves
                    ],
                    spec,
                )
            )

        kw = ", ".join(
            f"{k}={_fmt_shape(v.shape) if isinstance(v, torch.Tensor) else v!r}"
            for k, v in self.kwargs.items()
        )
        return (
            f"VmapCall(batch_size={self.batch_size}, in_dims={self.in_dims!r}, "
            f"out_dims={self.out_dims!r}, chunk_size={self.chunk_size!r},\n"
            f"  args={shape_tree(tuple(self.args))}, kwargs={{{kw}}},\n"
            f"  func={self.func!r})"
        )


@st.composite
def vmap_calls(
    draw: st.DrawFn,
    programs_strategy: Optional[st.SearchStrategy] = None,
    *,
    max_batch_size: int = 4,
    random_out_dims: bool = True,
    with_kwargs: bool = True,
    with_chunk_size: bool = True,
) -> VmapCall:
    """Random ``vmap`` calls (:class:`VmapCall` objects) over random programs.

    ``in_dims`` mixes ints (negative included), ``None`` and, for pytree
    arguments, per-leaf nested values; at least one argument is batched.

    Parameters
    ----------
    programs_strategy : SearchStrategy, optional
        Strategy for the per-sample function; default ``programs()``.
    max_batch_size : int
        Batch sizes are drawn from ``1 .. max_batch_size``.
    random_out_dims : bool
        Draw ``out_dims`` (int or, for tuple outputs, a tuple); otherwise 0.
    with_kwargs : bool
        Sometimes pass ``scale=`` as an unbatched keyword argument.
    with_chunk_size : bool
        Sometimes set ``chunk_size``.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> from hypothesis import given, settings
    >>> from tad_autograd.testing import assert_trees_close, vmap_calls
    >>> @settings(max_examples=10, deadline=None, database=None)
    ... @given(vmap_calls())
    ... def check(call):
    ...     expected = call.reference()          # Python loop over the batch
    ...     got = ta.vmap(call.func, **call.vmap_kwargs())(*call.args, **call.kwargs)
    ...     assert_trees_close(got, expected)
    >>> check()
    """
    prog: Program = draw(programs_strategy if programs_strategy is not None else programs())
    B = draw(st.integers(1, max_batch_size))
    seed = draw(st.integers(0, 2**31 - 2))
    gen = torch.Generator().manual_seed(seed)
    samples = [prog.args] + [prog.make_args(gen) for _ in range(B - 1)]

    def dim_for(ndim: int) -> int:
        return draw(st.integers(-(ndim + 1), ndim))

    in_dims_list: List[Any] = []
    n_tensor_args = len(prog.tensor_argnums)
    for i in range(prog.num_args):
        if i >= n_tensor_args:
            in_dims_list.append(None)
            continue
        arg = prog.args[i]
        leaves = tree_flatten(arg)[0]
        if draw(st.integers(0, 3)) == 0:
            in_dims_list.append(None)
        elif isinstance(arg, torch.Tensor) or draw(st.booleans()):
            in_dims_list.append(dim_for(min(t.dim() for t in leaves)))
        else:
            per = [draw(st.one_of(st.none(), st.integers(-(t.dim() + 1), t.dim()))) for t in leaves]
            in_dims_list.append(
                tuple(per) if isinstance(arg, tuple) else dict(zip(arg.keys(), per))
            )
    if all(d is None for d in broadcast_prefix(tuple(in_dims_list), tuple(prog.args))):
        first = prog.args[0]
        in_dims_list[0] = 0 if isinstance(first, torch.Tensor) else map_tensors(lambda t: 0, first)
    in_dims: Any = tuple(in_dims_list)
    if prog.passthrough is None and draw(st.booleans()):
        # a single int for every argument, when valid for all leaves
        all_leaves = tree_flatten(prog.args)[0]
        d = dim_for(min(t.dim() for t in all_leaves))
        in_dims = d

    # build batched args
    per_leaf = broadcast_prefix(
        in_dims if not isinstance(in_dims, int) else tuple([in_dims] * prog.num_args),
        tuple(prog.args),
    )
    flat_samples = [tree_flatten(tuple(s))[0] for s in samples]
    spec = tree_flatten(tuple(prog.args))[1]
    batched = []
    for j, d in enumerate(per_leaf):
        if d is None:
            batched.append(flat_samples[0][j])
        else:
            batched.append(torch.stack([fs[j] for fs in flat_samples], dim=d))
    args = tree_unflatten(batched, spec)

    # out_dims
    out_ndims = prog.output_ndims
    out_dims: Any = 0
    if random_out_dims:

        def min_ndim(tree: Any) -> int:
            return int(min(tree_flatten(tree)[0]))

        if prog.out_kind in ("tuple", "nested") and draw(st.booleans()):
            out_dims = tuple(dim_for(min_ndim(t)) for t in out_ndims)
        else:
            out_dims = dim_for(min_ndim(out_ndims))

    kwargs = {}
    if with_kwargs and draw(st.booleans()):
        scale = torch.rand((), generator=gen, dtype=torch.float64, device="cpu") + 0.5
        kwargs["scale"] = scale.to(dtype=prog.dtype, device=prog.device)
    chunk = draw(st.one_of(st.none(), st.integers(1, B))) if with_chunk_size else None
    return VmapCall(prog, args, in_dims, out_dims, kwargs, B, chunk)
