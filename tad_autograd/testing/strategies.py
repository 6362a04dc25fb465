"""Hypothesis strategies that build random differentiable programs.

A *program* is a small random function of several tensor (or pytree-of-tensor)
arguments, assembled from a little expression language: smooth elementwise ops,
matmuls and linear maps with fixed random weights, reductions, broadcasting,
indexing and slicing, ``torch.where`` with a fixed mask, norms kept away from
their kinks, view ops and, optionally, custom ``torch.autograd.Function`` nodes.
Every program carries example arguments, ``argnums`` to differentiate with
respect to, and flags describing what it contains.  Its ``repr`` is readable
pseudo-code, so hypothesis failure reports show exactly what was run.

Values are kept finite and O(1) (every intermediate has a static magnitude
bound, see ``BOUND_MAX``), so float32 comparisons at ``rtol=1e-5`` are
meaningful.

Examples
--------
>>> import torch
>>> from hypothesis import given, settings
>>> from tad_autograd.testing.strategies import programs
>>> @settings(max_examples=5, deadline=None, database=None)
... @given(programs(dtypes=[torch.float64]))
... def check(program):
...     out = program(*program.args)
...     assert program.dtype == torch.float64
>>> check()
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union, cast

import torch
from hypothesis import strategies as st

from . import _tree

__all__ = [
    "NEW_STYLE_FUNCTIONS_SUPPORTED",
    "OldStyleSin",
    "NewStyleSiLU",
    "Program",
    "VmapCall",
    "shapes",
    "float_dtypes",
    "argnums_for",
    "programs",
    "vmap_calls",
]

_m = re.match(r"(\d+)\.(\d+)", torch.__version__)
_TORCH_VERSION = (int(_m.group(1)), int(_m.group(2))) if _m else (0, 0)

#: ``True`` when this torch supports ``autograd.Function`` with
#: ``setup_context`` / ``generate_vmap_rule`` (torch >= 2.0).
NEW_STYLE_FUNCTIONS_SUPPORTED: bool = _TORCH_VERSION >= (2, 0)

#: Largest allowed static magnitude bound of any intermediate value.
BOUND_MAX = 8.0
#: Largest number of elements of any intermediate value.
MAX_NUMEL = 32


# --------------------------------------------------------------------------
# custom autograd.Function nodes
# --------------------------------------------------------------------------
class OldStyleSin(torch.autograd.Function):
    """``sin`` as an old-style ``autograd.Function`` (``forward(ctx, x)``).

    Function transforms (``torch.func``/``functorch``) refuse it; only the
    ``"autograd"`` backend (and the automatic fallback) can differentiate it.
    Its backward is differentiable, so double backward works.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
        x: torch.Tensor
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


if NEW_STYLE_FUNCTIONS_SUPPORTED:

    class NewStyleSiLU(torch.autograd.Function):
        """``x * sigmoid(x)`` as a new-style ``autograd.Function``.

        Uses ``setup_context`` and ``generate_vmap_rule = True`` so every
        backend, function transforms included, can take it (torch >= 2.0).
        """

        generate_vmap_rule = True

        @staticmethod
        def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
            return x * torch.sigmoid(x)

        @staticmethod
        def setup_context(  # type: ignore[override,unused-ignore]
            ctx: Any, inputs: Tuple[Any, ...], output: Any
        ) -> None:
            (x,) = inputs
            ctx.save_for_backward(x)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
            x: torch.Tensor
            (x,) = ctx.saved_tensors
            s = torch.sigmoid(x)
            return g * (s + x * s * (1 - s))

else:  # pragma: no cover - torch 1.13
    NewStyleSiLU = None  # type: ignore[assignment,misc]


# --------------------------------------------------------------------------
# program steps
# --------------------------------------------------------------------------
def _exp_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.tanh(x))


def _x_tanh_x(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(x)


# name -> (callable, rendering template, bound function, squashing?)
_UNARY: Dict[str, Tuple[Callable[[torch.Tensor], torch.Tensor], str, Callable[[float], float]]] = {
    "sin": (torch.sin, "sin({})", lambda b: min(b, 1.0)),
    "cos": (torch.cos, "cos({})", lambda b: 1.0),
    "tanh": (torch.tanh, "tanh({})", lambda b: min(b, 1.0)),
    "sigmoid": (torch.sigmoid, "sigmoid({})", lambda b: 1.0),
    "exp_tanh": (_exp_tanh, "exp(tanh({}))", lambda b: math.e),
    "softplus": (torch.nn.functional.softplus, "softplus({})", lambda b: b + 0.7),
    "square": (torch.square, "square({})", lambda b: b * b),
    "x_tanh_x": (_x_tanh_x, "{0} * tanh({0})", lambda b: b),
}
_SQUASHING = ("sin", "cos", "tanh", "sigmoid", "exp_tanh")


@dataclass
class _Step:
    shape: Tuple[int, ...]
    bound: float
    text: str  # rendering of the right-hand side
    fn: Callable[..., torch.Tensor]  # called as fn(vals, args); lambdas bind extra defaults


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _broadcast(a: Tuple[int, ...], b: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
    try:
        return tuple(torch.broadcast_shapes(a, b))  # type: ignore[no-untyped-call,unused-ignore]
    except RuntimeError:
        return None


def _index_text(ndim: int, dim: int, item: str) -> str:
    parts = [":"] * dim + [item]
    return "[" + ", ".join(parts) + "]"


class Program:
    """A random differentiable program produced by :func:`programs`.

    Attributes
    ----------
    args : tuple
        Example positional arguments (tensors, tuples/dicts of tensors and,
        optionally, a trailing Python ``int`` that is never differentiated).
    argnums : int or tuple of int
        Arguments to differentiate with respect to (may be negative).
    dtype, device
        Floating dtype and device of every tensor.
    has_old_style_function : bool
        Contains an old-style ``autograd.Function`` (``forward(ctx, ...)``):
        only the ``"autograd"`` backend and the automatic fallback can
        transform it; ``torch.func``/``functorch`` backends must raise.
    has_new_style_function : bool
        Contains a ``setup_context``/``generate_vmap_rule`` Function.
    tensor_argnums : tuple of int
        Positions of the arguments that hold tensors (the ones ``argnums``
        may name).
    input_shapes, output_shapes
        Per-argument pytrees of ``torch.Size`` (``None`` for non-tensor
        arguments) and the output pytree of ``torch.Size``.
    constants : dict
        Fixed weights (``W*``), masks (``M*``) and index tensors (``I*``).

    Calling ``program(*args, scale=None)`` evaluates it; the keyword ``scale``
    (a tensor broadcastable to every output, not batched by ``vmap``)
    multiplies every output leaf.
    """

    def __init__(
        self,
        *,
        seed: int,
        dtype: torch.dtype,
        device: Union[str, torch.device],
        arg_kinds: List[str],
        arg_shapes: List[List[Tuple[int, ...]]],
        steps: List[_Step],
        output_ids: List[int],
        out_spec: Any,
        out_kind: str,
        passthrough: Optional[int],
        argnums: Union[int, Tuple[int, ...]],
        constants: Dict[str, torch.Tensor],
        flags: Set[str],
        make_arg_leaf: Callable[[Tuple[int, ...], torch.Generator], torch.Tensor],
    ) -> None:
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device(device)
        self._arg_kinds = arg_kinds
        self._arg_shapes = arg_shapes
        self._steps: List[_Step] = steps
        self._output_ids = output_ids
        self._out_spec = out_spec
        self.out_kind = out_kind
        self.passthrough = passthrough
        self.argnums = argnums
        self.constants = constants
        self.has_old_style_function = "old_style_function" in flags
        self.has_new_style_function = "new_style_function" in flags
        self._flags = tuple(sorted(flags))
        self._make_arg_leaf = make_arg_leaf
        self.tensor_argnums = tuple(range(len(arg_kinds)))
        gen = torch.Generator().manual_seed(seed + 1)
        self.args = self.make_args(gen)

    # -- structure ---------------------------------------------------------
    @property
    def has_custom_function(self) -> bool:
        return self.has_old_style_function or self.has_new_style_function

    @property
    def num_args(self) -> int:
        return len(self._arg_kinds) + (1 if self.passthrough is not None else 0)

    @property
    def input_shapes(self) -> Tuple[Any, ...]:
        shapes = tuple(
            self._arg_tree(i, [torch.Size(s) for s in self._arg_shapes[i]])
            for i in range(len(self._arg_kinds))
        )
        return shapes + ((None,) if self.passthrough is not None else ())

    @property
    def output_shapes(self) -> Any:
        return _tree.unflatten(
            self._out_spec, [torch.Size(self._steps[i].shape) for i in self._output_ids]
        )

    def _arg_tree(self, i: int, leaves: List[Any]) -> Any:
        kind = self._arg_kinds[i]
        if kind == "tensor":
            return leaves[0]
        if kind == "tuple":
            return tuple(leaves)
        return {k: v for k, v in zip("ab", leaves)}

    def make_args(self, generator: torch.Generator) -> Tuple[Any, ...]:
        """Fresh random example arguments of the right shapes (values in [-1, 1])."""
        args = []
        for i in range(len(self._arg_kinds)):
            args.append(
                self._arg_tree(i, [self._make_arg_leaf(s, generator) for s in self._arg_shapes[i]])
            )
        if self.passthrough is not None:
            args.append(self.passthrough)
        return tuple(args)

    # -- evaluation --------------------------------------------------------
    def __call__(self, *args: Any, scale: Optional[torch.Tensor] = None) -> Any:
        if len(args) != self.num_args:
            raise TypeError(f"program takes {self.num_args} positional arguments, got {len(args)}")
        vals: List[torch.Tensor] = []
        for step in self._steps:
            vals.append(step.fn(vals, args))
        outs = [vals[i] for i in self._output_ids]
        if self.passthrough is not None:
            outs[0] = outs[0] / args[-1]
        if scale is not None:
            outs = [o * scale for o in outs]
        return _tree.unflatten(self._out_spec, outs)

    # -- rendering ---------------------------------------------------------
    def _render_return(self) -> str:
        names = [f"v{i}" for i in self._output_ids]
        if self.passthrough is not None:
            names[0] = f"{names[0]} / x{len(self._arg_kinds)}"
        return _render_tree(_tree.unflatten(self._out_spec, [_Raw(n) for n in names]))

    def __repr__(self) -> str:
        params = []
        for i in range(len(self._arg_kinds)):
            shapes = [_Raw(_fmt_shape(s)) for s in self._arg_shapes[i]]
            params.append(f"x{i}: {_render_tree(self._arg_tree(i, shapes))}")
        if self.passthrough is not None:
            params.append(f"x{len(self._arg_kinds)}: int = {self.passthrough}")
        flags = f", flags={list(self._flags)}" if self._flags else ""
        lines = [
            f"Program(seed={self.seed}, dtype={self.dtype}, device={self.device.type!r}, "
            f"argnums={self.argnums!r}{flags}):",
            f"    def f({', '.join(params)}, *, scale=None):",
        ]
        for i, step in enumerate(self._steps):
            lines.append(f"        v{i} = {step.text}    # {_fmt_shape(step.shape)}")
        lines.append(
            f"        return {self._render_return()}    # (each leaf times scale if given)"
        )
        if self.constants:
            lines.append(
                "    constants (fixed, from seed): "
                + ", ".join(
                    f"{k}: {_fmt_shape(v.shape)} {str(v.dtype).replace('torch.', '')}"
                    for k, v in self.constants.items()
                )
            )
        return "\n".join(lines)


class _Raw:
    def __init__(self, s: str):
        self.s = s

    def __repr__(self) -> str:
        return self.s


def _render_tree(tree: Any) -> str:
    if isinstance(tree, tuple):
        inner = ", ".join(_render_tree(t) for t in tree)
        return f"({inner},)" if len(tree) == 1 else f"({inner})"
    if isinstance(tree, list):
        return "[" + ", ".join(_render_tree(t) for t in tree) + "]"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k!r}: {_render_tree(v)}" for k, v in tree.items()) + "}"
    return repr(tree)


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------
def shapes(
    *, max_ndim: int = 3, max_side: int = 3, max_numel: int = MAX_NUMEL
) -> st.SearchStrategy:
    """Tensor shapes, including 0-d and size-1 dimensions.

    Parameters
    ----------
    max_ndim, max_side : int
        Largest number of dimensions and largest size of one dimension.
    max_numel : int
        Largest number of elements.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(shapes(max_ndim=2))
    ... def check(shape):
    ...     assert len(shape) <= 2 and all(1 <= s <= 3 for s in shape)
    >>> check()
    """
    return (
        st.lists(st.integers(1, max_side), min_size=0, max_size=max_ndim)
        .map(tuple)
        .filter(lambda s: _numel(s) <= max_numel)
    )


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
    ...          lambda p: p.num_args == 2 and p.argnums == (0, 1))
    >>> print(p)  # doctest: +ELLIPSIS
    Program(seed=..., dtype=torch.float32, device='cpu', argnums=(0, 1)):
        def f(x0: [], x1: [], *, scale=None):
            v0 = x0    # []
            v1 = x1    # []
            v2 = sin(v0)    # []
            return v2    # (each leaf times scale if given)
    """
    dtype = draw(float_dtypes(dtypes))
    seed = draw(st.integers(0, 2**31 - 2))
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device) if device is not None else torch.empty(()).device

    def rand(shape: Sequence[int], low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        t = torch.rand(shape, generator=gen, dtype=torch.float64, device="cpu") * (high - low) + low
        return t.to(dtype=dtype, device=dev)

    def make_arg_leaf(shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
        t = torch.rand(shape, generator=g, dtype=torch.float64, device="cpu") * 2 - 1
        return t.to(dtype=dtype, device=dev)

    constants: Dict[str, torch.Tensor] = {}
    flags: Set[str] = set()

    def const(prefix: str, value: torch.Tensor) -> str:
        name = f"{prefix}{sum(1 for k in constants if k.startswith(prefix))}"
        constants[name] = value
        return name

    # ---- arguments --------------------------------------------------------
    n_args = draw(st.integers(1, max_args))
    arg_kinds: List[str] = []
    arg_shapes: List[List[Tuple[int, ...]]] = []
    steps: List[_Step] = []
    shape_st = shapes(max_ndim=max_ndim, max_side=max_side)
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
            steps.append(_Step(s, 1.0, text, lambda vals, args, getter=getter: getter(args)))

    use_new = new_style_functions and NEW_STYLE_FUNCTIONS_SUPPORTED

    # ---- operations --------------------------------------------------------
    def pick(pred: Callable[[_Step], bool] = lambda s: True) -> Optional[int]:
        cands = [k for k, s in enumerate(steps) if pred(s)]
        if not cands:
            return None
        return draw(st.sampled_from(cands))

    def pick_always(pred: Callable[[_Step], bool] = lambda s: True) -> int:
        """:func:`pick` where a candidate always exists (no predicate, or one `a` meets)."""
        chosen = pick(pred)
        assert chosen is not None
        return chosen

    def unary(src: int) -> _Step:
        s = steps[src]
        names = [n for n, (_, _, bf) in _UNARY.items() if bf(s.bound) <= BOUND_MAX]
        name = draw(st.sampled_from(names))
        fn, tmpl, bf = _UNARY[name]
        return _Step(
            s.shape,
            bf(s.bound),
            tmpl.format(f"v{src}"),
            lambda vals, args, fn=fn, src=src: fn(vals[src]),
        )

    def op_binary() -> Optional[_Step]:
        a = pick_always()
        sa = steps[a]
        b = pick_always(
            lambda s: (
                _broadcast(sa.shape, s.shape) is not None
                and _numel(cast(Tuple[int, ...], _broadcast(sa.shape, s.shape))) <= MAX_NUMEL
            )
        )
        sb = steps[b]
        shape = cast(Tuple[int, ...], _broadcast(sa.shape, sb.shape))
        ops = [
            o
            for o, bd in (
                ("+", sa.bound + sb.bound),
                ("-", sa.bound + sb.bound),
                ("*", sa.bound * sb.bound),
            )
            if bd <= BOUND_MAX
        ]
        if not ops:
            return None
        o = draw(st.sampled_from(ops))
        bound = sa.bound * sb.bound if o == "*" else sa.bound + sb.bound
        f = {"+": torch.add, "-": torch.sub, "*": torch.mul}[o]
        return _Step(
            shape, bound, f"v{a} {o} v{b}", lambda vals, args, f=f, a=a, b=b: f(vals[a], vals[b])
        )

    def op_matmul_weight() -> Optional[_Step]:
        src = pick(lambda s: len(s.shape) >= 1)
        if src is None:
            return None
        s = steps[src]
        k = draw(st.integers(1, 3))
        n = s.shape[-1]
        shape = s.shape[:-1] + (k,)
        if _numel(shape) > MAX_NUMEL:
            return None
        w = rand((n, k)) * math.sqrt(3.0 / n)  # uniform with variance 1/n
        bound = s.bound * float(w.abs().sum(0).max())
        if bound > BOUND_MAX:
            w = w * (BOUND_MAX / bound)
            bound = BOUND_MAX
        name = const("W", w)
        return _Step(
            shape,
            bound,
            f"v{src} @ {name}",
            lambda vals, args, src=src, w=w: torch.matmul(vals[src], w),
        )

    def op_matmul_pair() -> Optional[_Step]:
        a = pick(lambda s: len(s.shape) in (1, 2))
        if a is None:
            return None
        sa = steps[a]
        b = pick(lambda s: len(s.shape) in (1, 2) and s.shape[0] == sa.shape[-1])
        if b is None:
            return None
        sb = steps[b]
        shape = sa.shape[:-1] + sb.shape[1:]
        bound = sa.bound * sb.bound * sa.shape[-1]
        if bound > BOUND_MAX:
            return None
        return _Step(
            shape,
            bound,
            f"v{a} @ v{b}",
            lambda vals, args, a=a, b=b: torch.matmul(vals[a], vals[b]),
        )

    def op_linear() -> Optional[_Step]:
        src = pick_always()
        s = steps[src]
        out_shape = draw(shapes(max_ndim=max_ndim, max_side=max_side))
        n_in, n_out = max(_numel(s.shape), 1), _numel(out_shape)
        w = rand((n_in, n_out)) * math.sqrt(3.0 / n_in)
        bound = s.bound * float(w.abs().sum(0).max())
        if bound > BOUND_MAX:
            w = w * (BOUND_MAX / bound)
            bound = BOUND_MAX
        name = const("W", w)
        return _Step(
            tuple(out_shape),
            bound,
            f"(v{src}.reshape(-1) @ {name}).reshape({list(out_shape)})",
            lambda vals, args, src=src, w=w, out_shape=tuple(out_shape): torch.matmul(
                vals[src].reshape(-1), w
            ).reshape(out_shape),
        )

    def draw_dims(ndim: int) -> Tuple[int, ...]:
        dims = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
        return tuple(d - ndim if draw(st.booleans()) else d for d in dims)

    def op_reduce() -> Optional[_Step]:
        src = pick_always()
        s = steps[src]
        nd = len(s.shape)
        kind = draw(st.sampled_from(["sum", "mean", "cumsum"]))
        if kind == "cumsum":
            if nd == 0:
                return None
            d = draw(st.integers(-nd, nd - 1))
            bound = s.bound * s.shape[d]
            if bound > BOUND_MAX:
                return None
            return _Step(
                s.shape,
                bound,
                f"v{src}.cumsum(dim={d})",
                lambda vals, args, src=src, d=d: torch.cumsum(vals[src], dim=d),
            )
        if nd == 0 or draw(st.booleans()):
            count = _numel(s.shape)
            if kind == "sum" and s.bound * count > BOUND_MAX:
                kind = "mean"
            bound = s.bound * count if kind == "sum" else s.bound
            f = torch.sum if kind == "sum" else torch.mean
            return _Step(
                (), bound, f"v{src}.{kind}()", lambda vals, args, f=f, src=src: f(vals[src])
            )
        dims = draw_dims(nd)
        keepdim = draw(st.booleans())
        pos = {d % nd for d in dims}
        count = _numel([s.shape[d] for d in pos])
        if kind == "sum" and s.bound * count > BOUND_MAX:
            kind = "mean"
        bound = s.bound * count if kind == "sum" else s.bound
        shape = tuple(
            (1 if i in pos else n) for i, n in enumerate(s.shape) if keepdim or i not in pos
        )
        f = torch.sum if kind == "sum" else torch.mean
        return _Step(
            shape,
            bound,
            f"v{src}.{kind}(dim={dims}, keepdim={keepdim})",
            lambda vals, args, f=f, src=src, dims=dims, keepdim=keepdim: f(
                vals[src], dim=dims, keepdim=keepdim
            ),
        )

    def op_index() -> Optional[_Step]:
        src = pick(lambda s: len(s.shape) >= 1)
        if src is None:
            return None
        s = steps[src]
        nd = len(s.shape)
        d = draw(st.integers(0, nd - 1))
        n = s.shape[d]
        kind = draw(st.sampled_from(["int", "slice", "fancy"]))
        if kind == "int":
            i = draw(st.integers(-n, n - 1))
            key = (slice(None),) * d + (i,)
            shape = s.shape[:d] + s.shape[d + 1 :]
            text = f"v{src}" + _index_text(nd, d, str(i))
        elif kind == "slice":
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, n))
            step = draw(st.integers(1, 2))
            key = (slice(None),) * d + (slice(start, stop, step),)
            shape = s.shape[:d] + (len(range(start, stop, step)),) + s.shape[d + 1 :]
            text = f"v{src}" + _index_text(
                nd, d, f"{start}:{stop}" + (f":{step}" if step != 1 else "")
            )
        else:
            idx_list = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
            shape = s.shape[:d] + (len(idx_list),) + s.shape[d + 1 :]
            if _numel(shape) > MAX_NUMEL:
                return None
            idx = torch.tensor(idx_list, dtype=torch.long, device=dev)
            name = const("I", idx)
            key = tuple([slice(None)] * d + [cast(Any, idx)])
            text = f"v{src}" + _index_text(nd, d, f"{name}={idx_list}")
        return _Step(shape, s.bound, text, lambda vals, args, src=src, key=key: vals[src][key])

    def op_where() -> Optional[_Step]:
        a = pick_always()
        sa = steps[a]
        b = pick(
            lambda s: (
                s is not sa
                and _broadcast(sa.shape, s.shape) is not None
                and _numel(cast(Tuple[int, ...], _broadcast(sa.shape, s.shape))) <= MAX_NUMEL
            )
        )
        if b is None:
            return None
        sb = steps[b]
        shape = cast(Tuple[int, ...], _broadcast(sa.shape, sb.shape))
        mask = torch.rand(shape, generator=gen, device="cpu") < 0.5
        mask = mask.to(dev)
        name = const("M", mask)
        return _Step(
            shape,
            max(sa.bound, sb.bound),
            f"where({name}, v{a}, v{b})",
            lambda vals, args, a=a, b=b, mask=mask: torch.where(mask, vals[a], vals[b]),
        )

    def op_norm() -> Optional[_Step]:
        src = pick_always()
        s = steps[src]
        nd = len(s.shape)
        if nd == 0 or draw(st.booleans()):
            dims: Tuple[int, ...] = tuple(range(nd))
        else:
            dims = tuple(sorted(d % nd for d in draw_dims(nd)))
        count = _numel([s.shape[d] for d in dims])
        shape = tuple(n for i, n in enumerate(s.shape) if i not in dims)
        if draw(st.booleans()):
            bound = math.sqrt(count * s.bound**2 + 1)
            if bound > BOUND_MAX:
                return None
            if dims:
                return _Step(
                    shape,
                    bound,
                    f"sqrt(square(v{src}).sum(dim={dims}) + 1)",
                    lambda vals, args, src=src, dims=dims: torch.sqrt(
                        torch.sum(vals[src] * vals[src], dim=dims) + 1
                    ),
                )
            return _Step(
                shape,
                bound,
                f"sqrt(square(v{src}) + 1)",
                lambda vals, args, src=src: torch.sqrt(vals[src] * vals[src] + 1),
            )
        bound = math.sqrt(count * (s.bound**2 + 1))
        if bound > BOUND_MAX:
            return None
        ndims = dims + (-1,)
        return _Step(
            shape,
            bound,
            f"vector_norm(stack([v{src}, ones_like(v{src})], -1), dim={ndims})",
            lambda vals, args, src=src, ndims=ndims: torch.linalg.vector_norm(
                torch.stack([vals[src], torch.ones_like(vals[src])], -1), dim=ndims
            ),
        )

    def op_permute() -> Optional[_Step]:
        src = pick(lambda s: len(s.shape) >= 2)
        if src is None:
            return None
        s = steps[src]
        perm = tuple(draw(st.permutations(range(len(s.shape)))))
        return _Step(
            tuple(s.shape[p] for p in perm),
            s.bound,
            f"v{src}.permute{perm}",
            lambda vals, args, src=src, perm=perm: vals[src].permute(perm),
        )

    def op_expand() -> Optional[_Step]:
        src = pick_always(lambda s: len(s.shape) < max_ndim + 1)
        s = steps[src]
        d = draw(st.integers(0, len(s.shape)))
        k = draw(st.integers(1, 3))
        shape = s.shape[:d] + (k,) + s.shape[d:]
        if _numel(shape) > MAX_NUMEL:
            return None
        return _Step(
            shape,
            s.bound,
            f"v{src}.unsqueeze({d}).expand({list(shape)})",
            lambda vals, args, src=src, d=d, shape=shape: vals[src].unsqueeze(d).expand(shape),
        )

    def op_stack() -> Optional[_Step]:
        a = pick_always()
        sa = steps[a]
        if 2 * _numel(sa.shape) > MAX_NUMEL:
            return None
        b = pick_always(lambda s: s.shape == sa.shape)
        d = draw(st.integers(-len(sa.shape) - 1, len(sa.shape)))
        dp = d % (len(sa.shape) + 1)
        shape = sa.shape[:dp] + (2,) + sa.shape[dp:]
        return _Step(
            shape,
            max(sa.bound, steps[b].bound),
            f"stack([v{a}, v{b}], dim={d})",
            lambda vals, args, a=a, b=b, d=d: torch.stack([vals[a], vals[b]], dim=d),
        )

    def op_custom() -> Optional[_Step]:
        styles = (["new"] if use_new else []) + (["old"] if old_style_functions else [])
        if not styles:
            return None
        style = draw(st.sampled_from(styles))
        src = pick_always()
        s = steps[src]
        if style == "old":
            flags.add("old_style_function")
            return _Step(
                s.shape,
                min(s.bound, 1.0),
                f"OldStyleSin.apply(v{src})",
                lambda vals, args, src=src: OldStyleSin.apply(vals[src]),  # type: ignore[no-untyped-call]
            )
        flags.add("new_style_function")
        return _Step(
            s.shape,
            s.bound,
            f"NewStyleSiLU.apply(v{src})",
            lambda vals, args, src=src: NewStyleSiLU.apply(vals[src]),  # type: ignore[no-untyped-call]
        )

    op_table: Dict[str, Optional[Callable[[], Optional[_Step]]]] = {
        "unary": None,
        "binary": op_binary,
        "matmul": op_matmul_weight,
        "matmul_pair": op_matmul_pair,
        "linear": op_linear,
        "reduce": op_reduce,
        "index": op_index,
        "where": op_where,
        "norm": op_norm,
        "permute": op_permute,
        "expand": op_expand,
        "stack": op_stack,
        "custom": op_custom,
    }
    n_ops = draw(st.integers(1, max_ops))
    for _ in range(n_ops):
        kind = draw(st.sampled_from(list(op_table)))
        step = None
        make = op_table[kind]
        if make is not None:
            step = make()
        if step is None:
            step = unary(pick_always())
        steps.append(step)

    # ---- outputs ------------------------------------------------------------
    last = len(steps) - 1
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
    out_spec = _tree.flatten(skeleton)[1]

    passthrough = draw(st.integers(1, 3)) if passthrough_args and draw(st.booleans()) else None
    num_args = n_args + (1 if passthrough is not None else 0)
    an = draw(argnums_for(num_args, list(range(n_args)))) if argnums else 0

    return Program(
        seed=seed,
        dtype=dtype,
        device=dev,
        arg_kinds=arg_kinds,
        arg_shapes=arg_shapes,
        steps=steps,
        output_ids=output_ids,
        out_spec=out_spec,
        out_kind=out_kind,
        passthrough=passthrough,
        argnums=an,
        constants=constants,
        flags=flags,
        make_arg_leaf=make_arg_leaf,
    )


# --------------------------------------------------------------------------
# vmap calls
# --------------------------------------------------------------------------
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

    def __init__(
        self,
        func: Program,
        args: Tuple[Any, ...],
        in_dims: Any,
        out_dims: Any,
        kwargs: Dict[str, Any],
        batch_size: int,
        chunk_size: Optional[int],
    ) -> None:
        self.func = func
        self.args = args
        self.in_dims = in_dims
        self.out_dims = out_dims
        self.kwargs = kwargs
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    def vmap_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``vmap`` itself: ``in_dims``, ``out_dims``, ``chunk_size``."""
        return {"in_dims": self.in_dims, "out_dims": self.out_dims, "chunk_size": self.chunk_size}

    def sample_args(self, b: int) -> Tuple[Any, ...]:
        """Positional arguments of sample ``b`` (batch dimensions removed)."""
        return _select_sample(self.args, self.in_dims, b)

    def reference(self, func: Optional[Callable[..., Any]] = None, out_dims: Any = None) -> Any:
        """Python-loop reference for ``vmap(func, in_dims, out_dims)(*args, **kwargs)``.

        ``func`` defaults to :attr:`func` and ``out_dims`` to :attr:`out_dims`.
        """
        func = self.func if func is None else func
        out_dims = self.out_dims if out_dims is None else out_dims
        outs = [func(*self.sample_args(b), **self.kwargs) for b in range(self.batch_size)]
        return _stack_outputs(outs, out_dims)

    def __repr__(self) -> str:
        def shape_tree(x: Any) -> str:
            return _render_tree(
                _tree.tree_map(
                    lambda t: (
                        _Raw(_fmt_shape(t.shape)) if isinstance(t, torch.Tensor) else _Raw(repr(t))
                    ),
                    x,
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


def _select_sample(args: Tuple[Any, ...], in_dims: Any, b: int) -> Tuple[Any, ...]:
    leaves, spec, _ = _tree.flatten(tuple(args))
    dims = _tree.broadcast_prefix(
        in_dims if not isinstance(in_dims, (int, type(None))) else tuple([in_dims] * len(args)),
        tuple(args),
    )
    out = [leaf if d is None else leaf.select(d, b) for leaf, d in zip(leaves, dims)]
    sample: Tuple[Any, ...] = _tree.unflatten(spec, out)
    return sample


def _stack_outputs(outs: List[Any], out_dims: Any) -> Any:
    leaves0, spec, _ = _tree.flatten(outs[0])
    dims = _tree.broadcast_prefix(out_dims, outs[0])
    per_sample = [_tree.flatten(o)[0] for o in outs]
    stacked = [torch.stack([p[i] for p in per_sample], dim=d) for i, d in enumerate(dims)]
    return _tree.unflatten(spec, stacked)


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
        leaves = _tree.flatten(arg)[0]
        if draw(st.integers(0, 3)) == 0:
            in_dims_list.append(None)
        elif isinstance(arg, torch.Tensor) or draw(st.booleans()):
            in_dims_list.append(dim_for(min(t.dim() for t in leaves)))
        else:
            per = [draw(st.one_of(st.none(), st.integers(-(t.dim() + 1), t.dim()))) for t in leaves]
            in_dims_list.append(
                tuple(per) if isinstance(arg, tuple) else dict(zip(arg.keys(), per))
            )
    if all(d is None for d in _tree.broadcast_prefix(tuple(in_dims_list), tuple(prog.args))):
        first = prog.args[0]
        in_dims_list[0] = (
            0 if isinstance(first, torch.Tensor) else _tree.tree_map(lambda t: 0, first)
        )
    in_dims: Any = tuple(in_dims_list)
    if prog.passthrough is None and draw(st.booleans()):
        # a single int for every argument, when valid for all leaves
        all_leaves = _tree.flatten(prog.args)[0]
        d = dim_for(min(t.dim() for t in all_leaves))
        in_dims = d

    # build batched args
    per_leaf = _tree.broadcast_prefix(
        in_dims if not isinstance(in_dims, int) else tuple([in_dims] * prog.num_args),
        tuple(prog.args),
    )
    flat_samples = [_tree.flatten(tuple(s))[0] for s in samples]
    spec = _tree.flatten(tuple(prog.args))[1]
    batched = []
    for j, d in enumerate(per_leaf):
        if d is None:
            batched.append(flat_samples[0][j])
        else:
            batched.append(torch.stack([fs[j] for fs in flat_samples], dim=d))
    args = _tree.unflatten(spec, batched)

    # out_dims
    out_shapes = prog.output_shapes
    out_dims: Any = 0
    if random_out_dims:

        def min_ndim(tree: Any) -> int:
            return min(len(s) for s in _tree.flatten(tree)[0])

        if prog.out_kind in ("tuple", "nested") and draw(st.booleans()):
            out_dims = tuple(dim_for(min_ndim(t)) for t in out_shapes)
        else:
            out_dims = dim_for(min_ndim(out_shapes))

    kwargs = {}
    if with_kwargs and draw(st.booleans()):
        scale = torch.rand((), generator=gen, dtype=torch.float64, device="cpu") + 0.5
        kwargs["scale"] = scale.to(dtype=prog.dtype, device=prog.device)
    chunk = draw(st.one_of(st.none(), st.integers(1, B))) if with_chunk_size else None
    return VmapCall(prog, args, in_dims, out_dims, kwargs, B, chunk)
