"""Arithmetic steps of random programs: elementwise maps, sums, products, norms.

Each ``op_*`` function draws one step from the state of a
:class:`~tad_autograd.testing._programs.builder.ProgramBuilder` (``pb``), or returns
``None`` when the drawn step would break the static bounds
(:data:`~tad_autograd.testing._programs.program.BOUND_MAX`,
:data:`~tad_autograd.testing._programs.program.MAX_NUMEL`); the builder then adds a
unary step instead.

Examples
--------
>>> sorted(_UNARY)[:3]
['cos', 'exp_tanh', 'sigmoid']
>>> _UNARY["square"][2](3.0)  # the magnitude bound of square(v) when |v| <= 3
9.0
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple, cast

import torch
from hypothesis import strategies as st

from .builder import ProgramBuilder
from .program import BOUND_MAX, MAX_NUMEL, _broadcast, _numel, _Step

__all__ = [
    "unary",
    "op_binary",
    "op_matmul_weight",
    "op_matmul_pair",
    "op_linear",
    "op_reduce",
    "op_norm",
]


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


def unary(pb: ProgramBuilder, src: int) -> _Step:
    s = pb.steps[src]
    names = [n for n, (_, _, bf) in _UNARY.items() if bf(s.bound) <= BOUND_MAX]
    name = pb.draw(st.sampled_from(names))
    fn, tmpl, bf = _UNARY[name]
    return _Step(
        s.shape,
        bf(s.bound),
        tmpl.format(f"v{src}"),
        lambda vals, args, fn=fn, src=src: fn(vals[src]),
    )


def op_binary(pb: ProgramBuilder) -> Optional[_Step]:
    a = pb.pick_always()
    sa = pb.steps[a]
    b = pb.pick_always(
        lambda s: (
            _broadcast(sa.shape, s.shape) is not None
            and _numel(cast(Tuple[int, ...], _broadcast(sa.shape, s.shape))) <= MAX_NUMEL
        )
    )
    sb = pb.steps[b]
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
    o = pb.draw(st.sampled_from(ops))
    bound = sa.bound * sb.bound if o == "*" else sa.bound + sb.bound
    f = {"+": torch.add, "-": torch.sub, "*": torch.mul}[o]
    return _Step(
        shape, bound, f"v{a} {o} v{b}", lambda vals, args, f=f, a=a, b=b: f(vals[a], vals[b])
    )


def op_matmul_weight(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick(lambda s: len(s.shape) >= 1)
    if src is None:
        return None
    s = pb.steps[src]
    k = pb.draw(st.integers(1, 3))
    n = s.shape[-1]
    shape = s.shape[:-1] + (k,)
    if _numel(shape) > MAX_NUMEL:
        return None
    w = pb.rand((n, k)) * math.sqrt(3.0 / n)  # uniform with variance 1/n
    w, bound = _bounded_weight(w, s.bound)
    name = pb.const("W", w)
    return _Step(
        shape,
        bound,
        f"v{src} @ {name}",
        lambda vals, args, src=src, w=w: torch.matmul(vals[src], w),
    )


def op_matmul_pair(pb: ProgramBuilder) -> Optional[_Step]:
    a = pb.pick(lambda s: len(s.shape) in (1, 2))
    if a is None:
        return None
    sa = pb.steps[a]
    b = pb.pick(lambda s: len(s.shape) in (1, 2) and s.shape[0] == sa.shape[-1])
    if b is None:
        return None
    sb = pb.steps[b]
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


def op_linear(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick_always()
    s = pb.steps[src]
    out_shape = pb.draw_shape()
    n_in, n_out = max(_numel(s.shape), 1), _numel(out_shape)
    w = pb.rand((n_in, n_out)) * math.sqrt(3.0 / n_in)
    w, bound = _bounded_weight(w, s.bound)
    name = pb.const("W", w)
    return _Step(
        tuple(out_shape),
        bound,
        f"(v{src}.reshape(-1) @ {name}).reshape({list(out_shape)})",
        lambda vals, args, src=src, w=w, out_shape=tuple(out_shape): torch.matmul(
            vals[src].reshape(-1), w
        ).reshape(out_shape),
    )


def op_reduce(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick_always()
    s = pb.steps[src]
    nd = len(s.shape)
    kind = pb.draw(st.sampled_from(["sum", "mean", "cumsum"]))
    if kind == "cumsum":
        if nd == 0:
            return None
        d = pb.draw(st.integers(-nd, nd - 1))
        bound = s.bound * s.shape[d]
        if bound > BOUND_MAX:
            return None
        return _Step(
            s.shape,
            bound,
            f"v{src}.cumsum(dim={d})",
            lambda vals, args, src=src, d=d: torch.cumsum(vals[src], dim=d),
        )
    if nd == 0 or pb.draw(st.booleans()):
        count = _numel(s.shape)
        if kind == "sum" and s.bound * count > BOUND_MAX:
            kind = "mean"
        bound = s.bound * count if kind == "sum" else s.bound
        f = torch.sum if kind == "sum" else torch.mean
        return _Step((), bound, f"v{src}.{kind}()", lambda vals, args, f=f, src=src: f(vals[src]))
    dims = pb.draw_dims(nd)
    keepdim = pb.draw(st.booleans())
    pos = {d % nd for d in dims}
    count = _numel([s.shape[d] for d in pos])
    if kind == "sum" and s.bound * count > BOUND_MAX:
        kind = "mean"
    bound = s.bound * count if kind == "sum" else s.bound
    shape = tuple((1 if i in pos else n) for i, n in enumerate(s.shape) if keepdim or i not in pos)
    f = torch.sum if kind == "sum" else torch.mean
    return _Step(
        shape,
        bound,
        f"v{src}.{kind}(dim={dims}, keepdim={keepdim})",
        lambda vals, args, f=f, src=src, dims=dims, keepdim=keepdim: f(
            vals[src], dim=dims, keepdim=keepdim
        ),
    )


def op_norm(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick_always()
    s = pb.steps[src]
    nd = len(s.shape)
    if nd == 0 or pb.draw(st.booleans()):
        dims: Tuple[int, ...] = tuple(range(nd))
    else:
        dims = tuple(sorted(d % nd for d in pb.draw_dims(nd)))
    count = _numel([s.shape[d] for d in dims])
    shape = tuple(n for i, n in enumerate(s.shape) if i not in dims)
    if pb.draw(st.booleans()):
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


def _bounded_weight(w: torch.Tensor, input_bound: float) -> Tuple[torch.Tensor, float]:
    """``w`` scaled down so that ``x @ w`` stays within ``BOUND_MAX``; and that bound."""
    bound = input_bound * float(w.abs().sum(0).max())
    if bound > BOUND_MAX:
        return w * (BOUND_MAX / bound), BOUND_MAX
    return w, bound
