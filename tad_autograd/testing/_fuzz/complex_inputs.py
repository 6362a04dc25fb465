"""Fuzzing complex inputs: real-valued and complex-valued functions of complex tensors.

A :class:`ComplexCase` is ``u = pre(z)`` (:data:`COMPLEX_PRES`: holomorphic
``sin``, ``exp``, ``z * z``, ``z * w`` and the non-holomorphic ``z * conj(z)``),
then either a real-valued map (:data:`REAL_POSTS`: ``abs(u) ** 2``, ``u.real``,
``u.imag``, ``abs(u)``) under ``grad`` (of ``(r * c).sum()``), ``vjp`` (with a
real cotangent) or ``jacrev``, or the complex ``u`` itself under ``jacrev``,
``jacfwd`` or ``jvp`` (with a complex tangent).

:func:`check_complex_case` calls ``torch.func`` (``functorch`` on 1.13)
directly, and every available backend and automatic mode:

* where ``torch.func`` raises, every backend raises the same exception type;
* where it returns, every backend returns its value, which also equals an
  independent reference: ``torch.autograd.grad`` on the eager function
  (``grad``, ``vjp``) or central finite differences in complex128 along real
  and imaginary directions (``jvp``, ``jacfwd``);
* ``f`` runs once per call on ``autograd`` and in automatic mode.

Examples
--------
>>> from hypothesis import find
>>> find(complex_cases(), lambda case: case.op in COMPLEX_OPERATORS).z.dtype.is_complex
True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from hypothesis import strategies as st

from ..operators import direct_ops, transform_backends
from ..strategies import shapes
from .support import Backends, assert_leaves_close, backends_and_auto, call_quietly

__all__ = [
    "COMPLEX_PRES",
    "REAL_POSTS",
    "REAL_OPERATORS",
    "COMPLEX_OPERATORS",
    "ComplexCase",
    "complex_cases",
    "check_complex_case",
]

COMPLEX_PRES: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sin(z)": lambda z, w: torch.sin(z),
    "exp(z / 2)": lambda z, w: torch.exp(z / 2),
    "z * z": lambda z, w: z * z,
    "z * w": lambda z, w: z * w,
    "z * conj(z) + z": lambda z, w: z * z.conj() + z,
}
REAL_POSTS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs(u) ** 2": lambda u: u.abs() ** 2,
    "u.real": lambda u: u.real,
    "u.imag": lambda u: u.imag,
    "abs(u)": lambda u: u.abs(),
}
#: Operators of real-valued functions of complex inputs.
REAL_OPERATORS = ("grad", "vjp", "jacrev")
#: Operators of complex-valued functions of complex inputs.
COMPLEX_OPERATORS = ("jacrev", "jacfwd", "jvp")
_FD_EPS = 1e-7


class ComplexCase:
    """A complex function, an operator, the point ``z`` and the directions."""

    def __init__(self, **kw: Any) -> None:
        self.pre: str = kw["pre"]
        self.post: Optional[str] = kw["post"]  # None: complex-valued
        self.op: str = kw["op"]
        self.z: torch.Tensor = kw["z"]
        self.w: torch.Tensor = kw["w"]
        self.c: torch.Tensor = kw["c"]  # real weights / cotangent
        self.t: torch.Tensor = kw["t"]  # complex tangent

    def functions(self, calls: List[int]) -> Tuple[Callable[..., Any], Callable[..., Any]]:
        """``(f, s)``: the function of ``z`` (counted in ``calls``) and ``(f(z) * c).sum()``."""
        pre, post, w, c = COMPLEX_PRES[self.pre], self.post, self.w, self.c

        def f(z: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            u = pre(z, w.to(z.dtype))
            return REAL_POSTS[post](u) if post is not None else u

        def s(z: torch.Tensor) -> torch.Tensor:
            r = f(z)
            return (r * c.to(r.dtype)).sum()

        return f, s

    def __repr__(self) -> str:
        body = f"{self.post.replace('u', 'pre(z)')}" if self.post else "pre(z)"
        return (
            f"ComplexCase(op={self.op!r}, f(z) = {body} with pre(z) = {self.pre}, "
            f"s(z) = (f(z) * c).sum(),\n  z={self.z!r},\n  w={self.w!r},\n  c={self.c!r},\n"
            f"  t={self.t!r})"
        )


@st.composite
def complex_cases(
    draw: st.DrawFn, *, dtypes: Sequence[torch.dtype] = (torch.complex128, torch.complex64)
) -> ComplexCase:
    """Random :class:`ComplexCase` objects."""
    shape = draw(shapes(max_ndim=2, max_side=3, max_numel=6))
    dtype = draw(st.sampled_from(list(dtypes)))
    real_valued = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def uniform(complex_: bool = True) -> torch.Tensor:
        re = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        if not complex_:
            return re.to(torch.float32 if dtype == torch.complex64 else torch.float64)
        im = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        return torch.complex(re, im).to(dtype)

    return ComplexCase(
        pre=draw(st.sampled_from(list(COMPLEX_PRES))),
        post=draw(st.sampled_from(list(REAL_POSTS))) if real_valued else None,
        op=draw(st.sampled_from(REAL_OPERATORS if real_valued else COMPLEX_OPERATORS)),
        z=uniform(),
        w=uniform(),
        c=uniform(complex_=False),
        t=uniform(),
    )


def _operator(mod: Any, case: ComplexCase, calls: List[int], **kw: Any) -> Callable[..., Any]:
    f, s = case.functions(calls)
    if case.op == "grad":
        return mod.grad(s, **kw)  # type: ignore[no-any-return]
    if case.op in ("jacrev", "jacfwd"):
        return getattr(mod, case.op)(f, **kw)  # type: ignore[no-any-return]
    if case.op == "vjp":

        def vjp(z: torch.Tensor) -> Any:
            out, fn = mod.vjp(f, z, **kw)
            return out, fn(case.c)

        return vjp
    return lambda z: mod.jvp(f, (z,), (case.t,), **kw)  # "jvp"


def _fd(case: ComplexCase, direction: torch.Tensor) -> torch.Tensor:
    """Central difference of ``f`` along ``direction`` at ``z``, in complex128."""
    f, _ = case.functions([])
    z = case.z.to(torch.complex128)
    d = direction.to(torch.complex128)
    difference: torch.Tensor = (f(z + _FD_EPS * d) - f(z - _FD_EPS * d)) / (2 * _FD_EPS)
    return difference


def reference(case: ComplexCase) -> Any:
    """An independent reference of the case (complex128 / float64)."""
    f, s = case.functions([])
    z = case.z.detach().to(torch.complex128).requires_grad_(True)
    if case.op == "grad":
        return torch.autograd.grad(s(z), z)[0]
    if case.op == "vjp":
        out = f(z)
        return out.detach(), (torch.autograd.grad(out, z, case.c.to(out.dtype))[0],)
    if case.op == "jvp":
        return f(z).detach(), _fd(case, case.t)
    if case.op == "jacfwd":
        n = z.numel()
        cols = [
            _fd(case, torch.eye(n, dtype=torch.complex128)[k].reshape(z.shape)) for k in range(n)
        ]
        out_shape = f(z.detach()).shape
        if not cols:
            return torch.zeros(out_shape + z.shape, dtype=torch.complex128)
        return torch.stack([c.reshape(-1) for c in cols], -1).reshape(out_shape + z.shape)
    return None  # jacrev: torch.func's value is the only reference


def check_complex_case(case: ComplexCase, backends: Backends = None) -> None:
    """Every backend and automatic mode: torch.func's value (and the reference), or its error.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(complex_cases(), lambda c: c.op == "vjp")
    >>> check_complex_case(case, backends=["autograd"])
    """
    import tad_autograd as ta

    backends = backends_and_auto(backends)
    direct = direct_ops()
    if direct is None:  # pragma: no cover
        return
    transforms = set(transform_backends())
    want, direct_error = call_quietly(_operator(direct.mod, case, []), case.z.clone())
    if case.op in ("jacrev", "jacfwd") and direct_error is None:
        # the Jacobian operators refuse complex inputs as current torch.func does, also where
        # an older functorch (1.13) took them
        want, direct_error = None, RuntimeError("complex inputs of a Jacobian operator")
    ref = reference(case)
    if direct_error is None and ref is not None:
        _assert_complex_close(
            want, ref, case.z.dtype, f"{direct.name} vs the independent reference\n{case!r}"
        )
    for backend in backends:
        what = f"{case.op}(backend={backend!r})\n{case!r}"
        calls: List[int] = []
        got, error = call_quietly(_operator(ta, case, calls, backend=backend), case.z.clone())
        if direct_error is not None:
            assert error is not None, (
                f"{what}: {direct.name} raises {type(direct_error).__name__}: {direct_error}; "
                "this backend returned a value"
            )
            assert type(error) is type(direct_error), (
                f"{what}: raised {type(error).__name__}: {error}; {direct.name} raises "
                f"{type(direct_error).__name__}: {direct_error}"
            )
            continue
        assert error is None, (
            f"{what}: raised {type(error).__name__}: {error}; {direct.name} computes it"
        )
        _assert_complex_close(got, want, case.z.dtype, f"{what}: vs {direct.name}")
        if backend not in transforms:
            assert len(calls) == 1, f"{what}: f ran {len(calls)} times, not once"


def _assert_complex_close(got: Any, want: Any, dtype: torch.dtype, what: str) -> None:
    """Close in ``want``'s dtype, or the real part of the pair where one side is real."""

    def convert(g: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        assert g.dtype == w.dtype or w.dtype in (torch.complex128, torch.float64), (
            f"{what}: dtype {g.dtype} != {w.dtype}"
        )
        if w.dtype.is_complex != g.dtype.is_complex:
            return g, w.to(g.dtype)
        return g.to(w.dtype), w

    tol = 1e-5 if dtype == torch.complex64 else 1e-7
    assert_leaves_close(got, want, what, rtol=tol, atol=tol, convert=convert, check_dtype=False)
