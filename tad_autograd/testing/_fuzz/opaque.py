"""Fuzzing second-order operators through backward passes that cannot be differentiated.

An :class:`OpaqueCase` is a function ``f(x) = use(Cube.apply(pre(x)), x)``
with ``Cube`` one of :mod:`~tad_autograd.testing._fuzz.opaque_functions`
(``@once_differentiable``, NumPy or ``.detach()`` backward; old or new style),
``pre`` in :data:`PRES`, ``use`` in :data:`USES` (``y * x``, ``sin(y)``,
``y ** 2`` ...: mostly non-linear), and its scalar ``s(x) = (f(x) * c).sum()``,
under one operator of :data:`SECOND_ORDER`:

* ``hessian``: ``hessian(s)(x)``; ``hvp``: ``hvp(s, (x,), (t,))``;
* ``jacrev_jacrev`` / ``jacfwd_jacrev``: ``jacrev(jacrev(f))(x)`` / ``jacfwd(jacrev(f))(x)``;
* ``jvp_grad``: ``jvp(grad(s), (x,), (t,))``; ``vjp_grad``: ``vjp(grad(s), x)`` applied
  to ``c2``; ``linearize_grad``: ``linearize(grad(s), x)`` applied to ``t``.

:func:`check_opaque_case` runs it on every available backend and automatic
mode (the inner operator on the same backend).  Each must either raise a
``RuntimeError`` naming the Function's class, or return
the true second derivative: the row loop of ``torch.autograd.grad`` over the
*twin* Function with a differentiable backward, in float64 (itself checked by
central finite differences of the exact gradient).  Never another value.  An
explicit transform backend may instead raise ``torch.func``'s own exception
where ``torch.func`` refuses the same operator of the twin too (old-style
Functions; forward mode through a Function without a ``jvp`` rule: half the
cases give the Function one).  A backend that returns a value ran ``f`` once
(``autograd`` and automatic mode).

Examples
--------
>>> "hessian" in SECOND_ORDER and "jacfwd_jacrev" in SECOND_ORDER
True
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from hypothesis import strategies as st

from ...compat._pytree import tree_flatten, tree_unflatten
from ..compare import default_tolerances
from ..operators import direct_ops, ref_jacrev, transform_backends
from ..strategies import shapes
from .opaque_functions import OPAQUE_KINDS, STYLES, opaque_function, twin_function
from .support import Backends, assert_leaves_close, backends_and_auto, context, describe

__all__ = ["SECOND_ORDER", "PRES", "USES", "OpaqueCase", "opaque_cases", "check_opaque_case"]

SECOND_ORDER = (
    "hessian",
    "hvp",
    "jacrev_jacrev",
    "jacfwd_jacrev",
    "jvp_grad",
    "vjp_grad",
    "linearize_grad",
)
#: What the Function is applied to.
PRES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "x": lambda x: x,
    "sin(x)": torch.sin,
    "0.7 * x + 0.2": lambda x: 0.7 * x + 0.2,
}
#: How the Function's output ``y`` is used (``linear`` included: the backward is
#: differentiated whatever follows it).
USES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "y * x": lambda y, x: y * x,
    "sin(y)": lambda y, x: torch.sin(y),
    "y ** 2": lambda y, x: y * y,
    "exp(tanh(y)) * x": lambda y, x: torch.exp(torch.tanh(y)) * x,
    "2 * y": lambda y, x: 2 * y,
}


class OpaqueCase:
    """One case: Function kind and style, ``pre``, ``use``, operator, point and directions."""

    def __init__(self, **kw: Any) -> None:
        self.kind: str = kw["kind"]
        self.style: str = kw["style"]
        self.jvp: bool = kw["jvp"]
        self.pre: str = kw["pre"]
        self.use: str = kw["use"]
        self.op: str = kw["op"]
        self.x: torch.Tensor = kw["x"]
        self.t: torch.Tensor = kw["t"]
        self.c: torch.Tensor = kw["c"]
        self.c2: torch.Tensor = kw["c2"]
        self.context: str = kw["context"]
        self.input_kind: str = kw["input_kind"]

    @property
    def cube(self) -> Any:
        return opaque_function(self.kind, self.style, self.jvp)

    @property
    def twin(self) -> Any:
        return twin_function(self.style, self.jvp)

    def functions(self, cube: Any, calls: List[int]) -> Any:
        """``(f, s)`` with Function ``cube``; each call of ``f`` appends to ``calls``."""
        pre, use, c = PRES[self.pre], USES[self.use], self.c

        def f(x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            y: torch.Tensor = cube.apply(pre(x))
            return use(y, x)

        def s(x: torch.Tensor) -> torch.Tensor:
            return (f(x) * c.to(x.dtype)).sum()

        return f, s

    def __repr__(self) -> str:
        return (
            f"OpaqueCase(op={self.op!r}, f(x) = use(Cube.apply(pre(x)), x) with "
            f"Cube={self.cube.__name__} (kind={self.kind!r}, style={self.style!r}, "
            f"with a jvp rule: {self.jvp}), "
            f"pre={self.pre!r}, use={self.use!r}, s(x) = (f(x) * c).sum(), "
            f"context={self.context!r}, input_kind={self.input_kind!r},\n"
            f"  x={self.x!r},\n  t={self.t!r},\n  c={self.c!r},\n  c2={self.c2!r})"
        )


@st.composite
def opaque_cases(
    draw: st.DrawFn,
    *,
    ops: Sequence[str] = SECOND_ORDER,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
    contexts: Sequence[str] = ("plain", "no_grad"),
) -> OpaqueCase:
    """Random :class:`OpaqueCase` objects."""
    shape = draw(shapes(max_ndim=2, max_side=3, max_numel=6))
    dtype = draw(st.sampled_from(list(dtypes)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def uniform() -> torch.Tensor:
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)

    return OpaqueCase(
        kind=draw(st.sampled_from(OPAQUE_KINDS)),
        style=draw(st.sampled_from(STYLES)),
        jvp=draw(st.booleans()),
        pre=draw(st.sampled_from(list(PRES))),
        use=draw(st.sampled_from(list(USES))),
        op=draw(st.sampled_from(list(ops))),
        x=uniform(),
        t=uniform(),
        c=uniform(),
        c2=uniform(),
        context=draw(st.sampled_from(list(contexts))),
        input_kind=draw(st.sampled_from(["plain", "leaf"])),
    )


def second_order(
    case: OpaqueCase, f: Callable[..., Any], s: Callable[..., Any], backend: Any, ns: Any = None
) -> Any:
    """The case's operator of ``f``/``s`` on ``backend`` (``None``: automatic), called at ``x``.

    ``ns``: the namespace of the operators, by default ``tad_autograd``; torch.func's
    (``backend`` then ignored) to learn what torch.func itself does.
    """
    import tad_autograd

    ta = tad_autograd if ns is None else ns
    kw = {"backend": backend} if ns is None else {}
    t, c2 = case.t, case.c2

    def call(x: torch.Tensor) -> Any:
        if case.op == "hessian":
            return ta.hessian(s, **kw)(x)
        if case.op == "hvp":
            return ta.hvp(s, (x,), (t,), **kw)
        if case.op == "jacrev_jacrev":
            return ta.jacrev(ta.jacrev(f, **kw), **kw)(x)
        if case.op == "jacfwd_jacrev":
            return ta.jacfwd(ta.jacrev(f, **kw), **kw)(x)
        inner = ta.grad(s, **kw)
        if case.op == "jvp_grad":
            return ta.jvp(inner, (x,), (t,), **kw)
        if case.op == "vjp_grad":
            out, fn = ta.vjp(inner, x, **kw)
            return out, fn(c2)
        out, fn = ta.linearize(inner, x, **kw)  # "linearize_grad"
        return out, fn(t)

    return call


def truth(case: OpaqueCase) -> Any:
    """The true result, in float64: the row loop over the twin Function (differentiable)."""
    f, s = case.functions(case.twin, [])
    x = case.x.detach().to(torch.float64)
    t, c2 = case.t.to(torch.float64), case.c2.to(torch.float64)
    n = x.numel()
    grad = ref_jacrev(s)(x).detach()
    hess = ref_jacrev(ref_jacrev(s))(x).detach()
    _check_hessian_by_differences(s, x, hess)
    h = hess.reshape(n, n)
    if case.op == "hessian":
        return hess
    if case.op == "hvp":
        return s(x).detach(), ((h @ t.reshape(-1)).reshape(x.shape),)
    if case.op in ("jacrev_jacrev", "jacfwd_jacrev"):
        return ref_jacrev(ref_jacrev(f))(x).detach()
    if case.op == "vjp_grad":
        return grad, ((c2.reshape(-1) @ h).reshape(x.shape),)
    return grad, (h @ t.reshape(-1)).reshape(x.shape)  # jvp_grad, linearize_grad


def _check_hessian_by_differences(
    s: Callable[..., Any], x: torch.Tensor, hess: torch.Tensor
) -> None:
    eps, n = 1e-6, x.numel()
    cols = []
    for k in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[k] = eps
        e = e.reshape(x.shape)
        plus, minus = ref_jacrev(s)(x + e).detach(), ref_jacrev(s)(x - e).detach()
        cols.append(((plus - minus) / (2 * eps)).reshape(-1))
    numeric = torch.stack(cols, -1) if cols else torch.zeros(0, 0, dtype=torch.float64)
    torch.testing.assert_close(hess.reshape(n, n), numeric, rtol=1e-5, atol=1e-6)


class _DirectNamespace:
    """``torch.func``'s operators under ``tad_autograd``'s names (``hessian`` reverse over reverse,
    ``hvp`` as ``jvp`` of ``grad``)."""

    def __init__(self, mod: Any) -> None:
        self.mod = mod

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mod, name)

    def hessian(self, f: Callable[..., Any]) -> Any:
        return self.mod.jacrev(self.mod.jacrev(f))

    def hvp(self, f: Callable[..., Any], primals: Any, tangents: Any) -> Any:
        value = f(*primals)
        return value, self.mod.jvp(self.mod.grad(f), primals, tangents)[1]

    def linearize(self, f: Callable[..., Any], *primals: Any) -> Any:
        out = f(*primals)
        return out, lambda *t: self.mod.jvp(f, primals, t)[1]


def _direct_error(case: OpaqueCase) -> Optional[BaseException]:
    """torch.func's exception on the same operator of the *twin* (``None``: it computes it)."""
    return _direct_outcome(case, case.twin)[1]


def _direct_outcome(case: OpaqueCase, cube: Any) -> Tuple[Any, Optional[BaseException]]:
    """torch.func's own result (or exception) for the same operator through ``cube``."""
    direct = direct_ops()
    if direct is None:  # pragma: no cover
        return None, None
    f, s = case.functions(cube, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return second_order(case, f, s, None, _DirectNamespace(direct.mod))(
                case.x.clone()
            ), None
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            return None, exc


def check_opaque_case(case: OpaqueCase, backends: Backends = None) -> None:
    """Every backend and automatic mode raises naming the Function, or returns the truth.

    An explicitly chosen transform backend may instead give what :mod:`torch.func`
    itself gives for the same operator (the library documents that it
    differentiates a new-style Function's backward as torch.func does).

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(opaque_cases(ops=("hessian",)), lambda c: True)
    >>> try:
    ...     check_opaque_case(case, backends=["autograd"])
    ... except AssertionError:
    ...     pass  # the library under test may still be wrong here
    """

    backends = backends_and_auto(backends)
    want = truth(case)
    transforms = set(transform_backends())
    refused = _direct_error(case)
    theirs, their_error = _direct_outcome(case, case.cube) if transforms else (None, None)
    name = case.cube.__name__
    for backend in backends:
        what = f"{case.op}(backend={backend!r}) through {name}\n{case!r}"
        calls: List[int] = []
        f, s = case.functions(case.cube, calls)
        x = case.x.detach().clone()
        if case.input_kind == "leaf":
            x.requires_grad_(True)
        error: Optional[BaseException] = None
        with context(case.context), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                got = second_order(case, f, s, backend)(x)
            except Exception as exc:  # judged below
                error = exc
        if error is not None:
            # an explicit transform backend may refuse what torch.func refuses even for the twin
            # (old-style Functions; forward mode without a jvp rule), with torch.func's type
            as_torch_func = backend in transforms and any(
                e is not None and type(error) is type(e) for e in (refused, their_error)
            )
            assert as_torch_func or (isinstance(error, RuntimeError) and name in str(error)), (
                f"{what}: expected a RuntimeError naming {name}, got {describe(error)}"
                + (f" (torch.func on the twin: {describe(refused)})" if refused else "")
            )
            continue
        if backend in transforms and their_error is None and theirs is not None:
            # torch.func's hvp is jvp of grad: compare the leaves, not the nesting
            mine, their_leaves = tree_flatten(got)[0], tree_flatten(_as_float64(theirs))[0]
            _compare(mine, their_leaves, case.x.dtype, what + " (torch.func's own)")
        else:
            _compare(got, want, case.x.dtype, what)
        if backend not in transforms:
            assert len(calls) == 1, f"{what}: f ran {len(calls)} times for one call, not once"


def _as_float64(tree: Any) -> Any:
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([t.detach().to(torch.float64) for t in leaves], spec)


def _compare(got: Any, want: Any, dtype: torch.dtype, what: str) -> None:
    rtol, atol = default_tolerances(dtype)
    if dtype == torch.float32:
        rtol, atol = 1e-4, 1e-5
    assert_leaves_close(
        got,
        want,
        f"{what} (the true second derivative)",
        rtol=rtol,
        atol=atol,
        convert=lambda g, w: (g.to(torch.float64), w),
    )
