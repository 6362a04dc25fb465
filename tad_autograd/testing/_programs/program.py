"""The :class:`Program` objects that :func:`~tad_autograd.testing.strategies.programs` draws.

A program is a list of steps (``v0 = x0``, ``v3 = sin(v1) * v2`` ...), each with
a static shape and magnitude bound; its ``repr`` is readable pseudo-code.

Examples
--------
>>> _render_tree((_Raw("x"), {"a": [_Raw("y")]}))
"(x, {'a': [y]})"
>>> _fmt_shape((2, 3))
'[2, 3]'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch

from ...compat._pytree import tree_unflatten

__all__ = ["BOUND_MAX", "MAX_NUMEL", "Program"]

#: Largest allowed static magnitude bound of any intermediate value.
BOUND_MAX = 8.0
#: Largest number of elements of any intermediate value.
MAX_NUMEL = 32


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

    Calling ``program(*args, scale=None)`` evaluates it; the keyword ``scale``
    (a tensor broadcastable to every output, not batched by ``vmap``)
    multiplies every output leaf.

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
    output_ndims
        The output pytree of ``int`` (each output leaf's number of dimensions).
    constants : dict
        Fixed weights (``W*``), masks (``M*``) and index tensors (``I*``).
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
        return tree_unflatten(
            [torch.Size(self._steps[i].shape) for i in self._output_ids], self._out_spec
        )

    @property
    def output_ndims(self) -> Any:
        """The output pytree with each leaf's number of dimensions (``int`` leaves)."""
        return tree_unflatten([len(self._steps[i].shape) for i in self._output_ids], self._out_spec)

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
        return tree_unflatten(outs, self._out_spec)

    # -- rendering ---------------------------------------------------------
    def _render_return(self) -> str:
        names = [f"v{i}" for i in self._output_ids]
        if self.passthrough is not None:
            names[0] = f"{names[0]} / x{len(self._arg_kinds)}"
        return _render_tree(tree_unflatten([_Raw(n) for n in names], self._out_spec))

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
