"""The operators, each written once: a small descriptor per operator.

An :class:`Operator` says everything the rest of the library needs to know
about one operator, so nothing downstream switches on its name:

* ``name``, for messages;
* ``mode``: ``"reverse"``, ``"forward"`` or ``"batch"`` (``vmap``);
* ``at_once``: it evaluates at a point (``vjp``, ``jvp``, ``linearize``,
  ``hvp``) rather than building a function of the inputs;
* ``stages``: the defects of the installed torch it must not run into as a
  derivative inside an automatic transform; ``inner_stages``: those the
  automatic composite watches for while running it on a transform backend;
* ``second_order``: it differentiates twice by itself;
* ``complex_inputs``: complex arguments are differentiable (of a real scalar);
  ``integer_error``: the exception an integer argument raises, as in
  :mod:`torch.func` (``ValueError`` in forward mode);
* ``on_backend``: the operator on a backend (a backend's native version, or
  the protocol's derivation from its primitives, see
  :class:`~tad_autograd.backends.base.Backend`);
* ``eager``: its implementation by the eager engine (:mod:`tad_autograd.eager`),
  what automatic mode runs outside function transforms;
* ``compiled``: what automatic mode runs while dynamo traces, where that
  differs from ``on_backend``; ``composed``: an operator made of others
  (``hessian``), built on whatever runs the call.

:data:`HOW` says how each backend computes it, in words: the rows of the
docs' operator table.

Every built operator is a callable of the call's positional arguments: the
function's inputs for a transform, the primals (and tangents) for an
operator evaluated at once.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch

from ..compat._pytree import tree_flatten
from ..compat._torch_info import is_compiling
from ..compat._transform_failures import FORWARD_STAGES, REVERSE_STAGES
from ..compat.batching_defects import Stages
from ..eager._forward_mode import eager_jacfwd, eager_jvp, eager_linearize
from ..eager._jacobian import eager_jacobian
from ..eager._products import eager_grad, eager_grad_and_value, eager_hvp, eager_vjp
from ..eager._rows import LOOP_MAX_ROWS
from .base import Backend

__all__ = [
    "Params",
    "Operator",
    "Builds",
    "Plain",
    "JACREV",
    "HESSIAN",
    "VMAP",
    "GRAD",
    "GRAD_AND_VALUE",
    "JACFWD",
    "VJP",
    "JVP",
    "LINEARIZE",
    "HVP",
    "OPERATORS",
    "HOW",
]

Fn = Callable[..., Any]


class Params(NamedTuple):
    """An operator's parameters, as its public function took them.

    Examples
    --------
    >>> Params(argnums=1).has_aux
    False
    """

    argnums: Any = 0
    has_aux: bool = False
    chunk_size: Optional[int] = None
    randomness: str = "error"
    in_dims: Any = 0
    out_dims: Any = 0


class Builds:
    """What builds operators for a call: a backend, or how automatic mode runs on one.

    Attributes
    ----------
    backend : Backend
        The backend whose library does the work (its name is the one users see).
    runs : str
        How a call runs, as ``explain()``, the fallback warning and the logs name
        it: ``"transform"``, ``"loop"``, ``"eager-vectorised"`` or ``"compiled"``.
    eager : bool
        The user's function runs eagerly (not under a function transform), so
        derivatives nested in it may run the same way again.
    """

    backend: Backend
    runs: str = ""
    eager: bool = False

    def build(self, op: Operator, func: Fn, params: Params) -> Fn:
        """``op`` of ``func`` with ``params``, as a callable of the call's arguments."""
        if op.composed is not None:
            return op.composed(self, func, params)
        return op.on_backend(self.backend, func, params)

    def __repr__(self) -> str:
        return f"<{self.runs!r} on backend {self.backend.name!r}>"


class Plain(Builds):
    """An explicitly chosen backend's own operators: ``"transform"`` or ``"loop"``.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.backends.autograd import AutogradBackend
    >>> Plain(AutogradBackend()).build(JACREV, torch.sin, Params())(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.runs = "transform" if backend.is_transform else "loop"
        self.eager = not backend.is_transform


class Operator(NamedTuple):
    """One operator, written once (see the module docstring).

    Examples
    --------
    >>> JACFWD.mode, JACFWD.at_once, HVP.second_order
    ('forward', False, True)
    """

    name: str
    mode: str
    at_once: bool
    stages: Stages
    inner_stages: Stages
    second_order: bool
    on_backend: Callable[[Backend, Fn, Params], Fn]
    eager: Optional[Callable[[Fn, Params, Optional[Fn]], Fn]] = None
    compiled: Optional[Callable[[Backend, Fn, Params], Fn]] = None
    composed: Optional[Callable[[Builds, Fn, Params], Fn]] = None
    complex_inputs: bool = False
    integer_error: type = RuntimeError

    @property
    def batches(self) -> bool:
        """``vmap``: runs the function per sample, differentiates nothing."""
        return self.mode == "batch"

    def __repr__(self) -> str:
        return f"<operator {self.name}>"


_TANGENT_STAGES: Stages = REVERSE_STAGES + ("tangent",)


def _input_numel(args: Tuple[Any, ...], argnums: Any) -> int:
    """How many elements the differentiated arguments have (a bad ``argnums`` counts as many)."""
    total = 0
    for n in (argnums,) if isinstance(argnums, int) else argnums:
        if not -len(args) <= n < len(args):
            return LOOP_MAX_ROWS + 1  # the transform raises torch.func's error
        total += sum(x.numel() for x in tree_flatten(args[n])[0] if isinstance(x, torch.Tensor))
    return total


def _eager_jacrev(func: Fn, p: Params, vmap: Optional[Fn]) -> Fn:
    argnums, has_aux, chunk_size = p.argnums, p.has_aux, p.chunk_size  # read once, not per call

    def jacobian_fn(*args: Any) -> Any:
        return eager_jacobian(func, argnums, has_aux, args, vmap, chunk_size)

    return jacobian_fn


def _eager_jacfwd(func: Fn, p: Params, vmap: Optional[Fn]) -> Fn:
    def jacobian_fn(*args: Any) -> Any:
        # the columns of one eager pass (more than a few vectorised): nothing in the
        # function can refuse that, so it runs once and is never retried
        batch = vmap if _input_numel(args, p.argnums) > LOOP_MAX_ROWS else None
        return eager_jacfwd(func, p.argnums, p.has_aux, p.randomness, args, batch, p.chunk_size)

    return jacobian_fn


def _compiled_hvp(b: Backend, func: Fn, p: Params) -> Fn:
    """Reverse over reverse (``vjp`` of ``grad_and_value``): a custom ``autograd.Function``
    without forward-mode rules compiles too; ``tangents @ H`` equals ``H @ tangents`` for
    every twice continuously differentiable function."""

    def value_and_product(primals: Tuple[Any, ...], tangents: Tuple[Any, ...]) -> Any:
        gradient = b.grad_and_value(func, tuple(range(len(primals))), has_aux=False)
        _, vjp_fn, value = b.vjp(gradient, primals, has_aux=True)
        return value, vjp_fn(tangents)

    return value_and_product


def _hvp(b: Backend, func: Fn, p: Params) -> Fn:
    """The backend's ``hvp``; reverse over reverse on a transform backend while dynamo traces:
    inductor (torch 2.13) compiles ``jvp`` of ``grad`` of a pair energy to wrong numbers."""
    compiled = _compiled_hvp(b, func, p) if b.is_transform else None

    def value_and_product(primals: Tuple[Any, ...], tangents: Tuple[Any, ...]) -> Any:
        if compiled is not None and is_compiling():
            return compiled(primals, tangents)
        return b.hvp(func, primals, tangents)

    return value_and_product


JACREV = Operator(
    "jacrev",
    "reverse",
    False,
    REVERSE_STAGES,
    REVERSE_STAGES,
    False,
    lambda b, f, p: b.jacrev(f, p.argnums, has_aux=p.has_aux, chunk_size=p.chunk_size),
    _eager_jacrev,
)
HESSIAN = Operator(
    "hessian",
    "reverse",
    False,
    REVERSE_STAGES,
    REVERSE_STAGES,
    True,
    JACREV.on_backend,
    composed=lambda r, f, p: r.build(JACREV, r.build(JACREV, f, p), p),
    integer_error=ValueError,
)
VMAP = Operator(
    "vmap",
    "batch",
    False,
    REVERSE_STAGES,
    "forward",
    False,
    lambda b, f, p: b.vmap(f, p.in_dims, p.out_dims, p.randomness, chunk_size=p.chunk_size),
)
GRAD_AND_VALUE = Operator(
    "grad_and_value",
    "reverse",
    False,
    REVERSE_STAGES,
    REVERSE_STAGES,
    False,
    lambda b, f, p: b.grad_and_value(f, p.argnums, has_aux=p.has_aux),
    lambda f, p, vmap: lambda *args: eager_grad_and_value(f, p.argnums, p.has_aux, args),
    complex_inputs=True,
)
GRAD = GRAD_AND_VALUE._replace(
    name="grad",
    on_backend=lambda b, f, p: b.grad(f, p.argnums, has_aux=p.has_aux),
    eager=lambda f, p, vmap: lambda *args: eager_grad(f, p.argnums, p.has_aux, args),
)
JACFWD = Operator(
    "jacfwd",
    "forward",
    False,
    _TANGENT_STAGES,
    FORWARD_STAGES,
    False,
    lambda b, f, p: b.jacfwd(
        f, p.argnums, has_aux=p.has_aux, randomness=p.randomness, chunk_size=p.chunk_size
    ),
    _eager_jacfwd,
    integer_error=ValueError,
)
VJP = Operator(
    "vjp",
    "reverse",
    True,
    REVERSE_STAGES,
    REVERSE_STAGES,
    False,
    lambda b, f, p: lambda *primals: b.vjp(f, primals, has_aux=p.has_aux),
    lambda f, p, vmap: lambda *primals: eager_vjp(f, primals, p.has_aux),
)
JVP = Operator(
    "jvp",
    "forward",
    True,
    _TANGENT_STAGES,
    _TANGENT_STAGES,
    False,
    lambda b, f, p: lambda primals, tangents: b.jvp(f, primals, tangents, has_aux=p.has_aux),
    lambda f, p, vmap: lambda primals, tangents: eager_jvp(f, primals, tangents, p.has_aux),
)
LINEARIZE = Operator(
    "linearize",
    "forward",
    True,
    _TANGENT_STAGES,
    _TANGENT_STAGES,
    False,
    lambda b, f, p: lambda *primals: b.linearize(f, primals),
    lambda f, p, vmap: lambda *primals: eager_linearize(f, primals),
)
HVP = Operator(
    "hvp",
    "forward",
    True,
    _TANGENT_STAGES,
    _TANGENT_STAGES,
    True,
    lambda b, f, p: _hvp(b, f, p),
    lambda f, p, vmap: lambda primals, tangents: eager_hvp(f, primals, tangents),
    compiled=_compiled_hvp,
)

#: Every operator, for code that reads their traits (the fuzzer's tables).
OPERATORS: Tuple[Operator, ...] = (
    JACREV,
    HESSIAN,
    VMAP,
    GRAD_AND_VALUE,
    GRAD,
    JACFWD,
    VJP,
    JVP,
    LINEARIZE,
    HVP,
)

#: How each backend computes each operator, in words: ``func``, ``functorch`` on
#: torch 1.13, ``functorch`` on torch >= 2, ``autograd`` (the docs' operator table).
HOW: Dict[Operator, Tuple[str, str, str, str]] = {
    JACREV: ("native", "native; chunks derived", "native", "eager: row loop"),
    HESSIAN: ("jacrev of jacrev",) * 3 + ("eager: reverse over reverse",),
    VMAP: ("native", "native; chunks derived", "native", "eager: a loop over the batch"),
    GRAD_AND_VALUE: ("native",) * 3 + ("eager: one backward pass",),
    GRAD: ("native",) * 3 + ("eager: one backward pass",),
    JACFWD: ("native; chunks derived",) * 3 + ("eager: columns from one graph (double vjp)",),
    VJP: ("native",) * 3 + ("eager: backward passes on demand",),
    JVP: ("native",) * 3 + ("eager: one graph, then dual numbers",),
    LINEARIZE: ("derived: vmap of jvp",) * 3 + ("eager: one graph, a backward pass per call",),
    HVP: ("derived: jvp of grad",) * 3 + ("eager: reverse over reverse",),
}
