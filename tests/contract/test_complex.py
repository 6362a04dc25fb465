"""Complex numbers: every operator takes the complex inputs and outputs torch.func takes.

``TABLE`` is what :mod:`torch.func` does on current torch (2.13) for each
operator and each kind of function: real or complex input, real or complex
output (for the scalar operators: a real scalar of a complex input, a complex
scalar).  ``"ok"`` cells give a value, the others name the exception type.
Every backend and automatic mode follows the table on every torch of the
matrix (older ``torch.func``/``functorch`` releases accept more, e.g.
functorch 1.13's ``jacfwd`` of a complex output; the library refuses those as
current torch.func does).  Values are checked against independent references
(plain ``torch.autograd.grad`` with torch's conjugate convention, central
finite differences in complex128) and, where the installed torch has
``torch.func`` and it gives a value, against torch.func's value.
``test_torch_func_follows_the_table`` measures torch.func's behaviour live.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from _helpers import assert_tree_close, reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION

try:
    import torch.func as torch_func

    HAS_TORCH_FUNC = True
except ImportError:  # torch 1.13
    torch_func = None  # type: ignore[assignment]
    HAS_TORCH_FUNC = False

#: The torch release the table was measured on: there torch.func must follow it exactly.
MEASURED_ON = (2, 13)

R, C = torch.float64, torch.complex128
EPS = 1e-6

# -- the functions: input kind -> output kind ---------------------------------------------

ELEMENTWISE: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "r->r": lambda x: torch.sin(x) * x,
    "r->c": lambda x: torch.sin(x) * (1 + 2j) + x * x,
    "c->c": lambda x: torch.sin(x) * x.conj(),
    "c->r": lambda x: (x * x.conj()).real + torch.sin(x).imag,
}
SCALAR: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "r->r": lambda x: (torch.sin(x) * x).sum(),
    "r->c": lambda x: (torch.sin(x) * (1 + 2j)).sum(),
    "c->c": lambda x: (torch.sin(x) * x).sum(),
    "c->r": lambda x: (x * x.conj()).real.sum() + torch.sin(x).imag.sum(),
}
CELLS = tuple(ELEMENTWISE)


def _input(cell: str) -> torch.Tensor:
    return torch.randn(3, dtype=R if cell.startswith("r") else C)


def _tangent(x: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(x)


# -- the operators: how the library and torch.func are called -----------------------------

Call = Callable[[Any, Callable[..., Any], torch.Tensor, torch.Tensor], Any]


def _vjp(m: Any, f: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, **kw: Any) -> Any:
    out, vjp_fn = m.vjp(f, x, **kw)
    return out, vjp_fn(torch.ones_like(out) * (0.5 - 1j if out.is_complex() else 0.5))


def _linearize(m: Any, f: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, **kw: Any) -> Any:
    out, jvp_fn = m.linearize(f, x, **kw)
    return out, jvp_fn(t)


def _hvp(m: Any, f: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, **kw: Any) -> Any:
    if m is ta:
        return ta.hvp(f, (x,), (t,), **kw)
    _, product = m.jvp(m.grad(f), (x,), (t,))  # torch.func's documented hvp: forward over reverse
    return f(x), (product,)


def _jacobian_auto(m: Any, f: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, **kw: Any):
    if m is not ta:
        return None  # no namesake in torch.func
    jac = ta.jacobian(f, mode="auto", **kw)
    jac(x)  # the first call learns the output size (reverse), the second may go forward
    return jac(x)


def _named(mode: str) -> Call:
    def call(m: Any, f: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, **kw: Any) -> Any:
        if m is ta:
            return ta.jacobian(f, mode=mode, **kw)(x)
        return (m.jacfwd if mode == "forward" else m.jacrev)(f)(x)

    return call


OPERATORS: Dict[str, Tuple[bool, Call]] = {  # name: (scalar function?, call)
    "jacrev": (False, lambda m, f, x, t, **kw: m.jacrev(f, **kw)(x)),
    "jacfwd": (False, lambda m, f, x, t, **kw: m.jacfwd(f, **kw)(x)),
    "jacobian_forward": (False, _named("forward")),
    "jacobian_reverse": (False, _named("reverse")),
    "jacobian_auto": (False, _jacobian_auto),
    "vjp": (False, _vjp),
    "jvp": (False, lambda m, f, x, t, **kw: m.jvp(f, (x,), (t,), **kw)),
    "linearize": (False, _linearize),
    "vmap": (False, lambda m, f, x, t, **kw: m.vmap(f, **kw)(torch.stack([x, 2 * x]))),
    "vmap_jacrev": (
        False,
        lambda m, f, x, t, **kw: m.vmap(m.jacrev(f, **kw), **kw)(torch.stack([x, 2 * x])),
    ),
    "grad": (True, lambda m, f, x, t, **kw: m.grad(f, **kw)(x)),
    "grad_and_value": (True, lambda m, f, x, t, **kw: m.grad_and_value(f, **kw)(x)),
    "hessian": (True, lambda m, f, x, t, **kw: m.hessian(f, **kw)(x)),
    "hvp": (True, _hvp),
}

_JAC = {"r->r": "ok", "r->c": RuntimeError, "c->c": RuntimeError, "c->r": RuntimeError}
_ANY = {cell: "ok" for cell in CELLS}
_REAL_SCALAR = {"r->r": "ok", "r->c": RuntimeError, "c->c": RuntimeError, "c->r": "ok"}

#: torch.func on torch 2.13: "ok" or the exception type, per operator and function kind.
TABLE: Dict[str, Dict[str, Any]] = {
    "jacrev": _JAC,
    "jacfwd": _JAC,
    "jacobian_forward": _JAC,
    "jacobian_reverse": _JAC,
    "jacobian_auto": _JAC,
    "vjp": _ANY,
    "jvp": _ANY,
    "linearize": _ANY,
    "vmap": _ANY,
    "vmap_jacrev": _JAC,
    "grad": _REAL_SCALAR,  # grad of a real scalar of a complex input: the conjugate convention
    "grad_and_value": _REAL_SCALAR,
    "hessian": _JAC,
    "hvp": _REAL_SCALAR,
}


def _function(op: str, cell: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return (SCALAR if OPERATORS[op][0] else ELEMENTWISE)[cell]


def _outcome(call: Callable[[], Any], quiet: bool = False) -> Tuple[Any, Any]:
    try:
        if not quiet:
            return "ok", call()
        with warnings.catch_warnings():  # torch.func's own deprecation warnings (torch.jit)
            warnings.simplefilter("ignore")
            return "ok", call()
    except Exception as error:  # the table records the type
        return type(error), error


# -- independent references ---------------------------------------------------------------


def _finite_difference(f: Callable[..., Any], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (f(x + EPS * t) - f(x - EPS * t)) / (2 * EPS)


def _autograd_grad(f: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
    """The conjugate-convention gradient of a real scalar, by plain autograd."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(f(x), x)[0]


def _reference(op: str, cell: str, x: torch.Tensor, t: torch.Tensor) -> Any:
    f = _function(op, cell)
    if op in ("jacrev", "jacfwd", "jacobian_forward", "jacobian_reverse", "jacobian_auto"):
        return reference_jacobian(f, x)
    if op == "vmap":
        return torch.stack([f(x), f(2 * x)])
    if op == "vmap_jacrev":
        return torch.stack([reference_jacobian(f, x), reference_jacobian(f, 2 * x)])
    if op == "vjp":
        out = f(x)
        v = torch.ones_like(out) * (0.5 - 1j if out.is_complex() else 0.5)
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(f(xx), xx, v)
        # R-linear duality of the vjp with the jvp: Re <v, J t> = Re <J^* v, t>
        jt = _finite_difference(f, x, t)
        torch.testing.assert_close(
            (v.conj() * jt).real.sum(), (g.conj() * t).real.sum(), rtol=1e-6, atol=1e-8
        )
        return out, (g,)
    if op in ("jvp", "linearize"):
        return f(x), _finite_difference(f, x, t)
    if op in ("grad", "grad_and_value"):
        g = _autograd_grad(f, x)
        # the conjugate convention: d f = Re <g, d x>, checked by finite differences
        torch.testing.assert_close(
            _finite_difference(f, x, t), (g.conj() * t).real.sum(), rtol=1e-6, atol=1e-8
        )
        return g if op == "grad" else (g, f(x))
    if op == "hessian":
        return reference_hessian(f, x)
    if op == "hvp":
        return f(x), (_finite_difference(lambda y: _autograd_grad(f, y), x, t),)
    raise AssertionError(op)


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TORCH_FUNC, reason="torch.func needs torch >= 2.0")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("op", [op for op in OPERATORS if op != "jacobian_auto"])
def test_torch_func_follows_the_table(op: str, cell: str) -> None:
    """What torch.func does, measured live: on the torch the table was measured on, exactly
    the table; on older ones it refuses no more than the table does."""
    x = _input(cell)
    kind, value = _outcome(
        lambda: OPERATORS[op][1](torch_func, _function(op, cell), x, x), quiet=True
    )
    expected = TABLE[op][cell]
    if TORCH_VERSION.release[:2] >= MEASURED_ON:
        assert kind == expected, f"torch.func {op} {cell}: {kind} ({value}), table: {expected}"
    elif expected == "ok" and op != "linearize":  # torch 2.0's fails on Python-number constants
        assert kind == "ok", f"torch.func {op} {cell} raised {value!r}"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("op", list(OPERATORS))
def test_operator_follows_the_table(backend, op: str, cell: str) -> None:
    x = _input(cell)
    t = _tangent(x)
    f = _function(op, cell)
    call = OPERATORS[op][1]
    expected = TABLE[op][cell]
    kind, value = _outcome(lambda: call(ta, f, x, t, backend=backend))
    if expected != "ok":
        assert kind == expected, f"{op} {cell}: expected {expected.__name__}, got {value!r}"
        message = str(value)
        assert "floating point dtype can require gradients" not in message, message
        assert "complex" in message, f"{op} {cell}: the message does not say why: {message}"
        return
    assert kind == "ok", f"{op} {cell} raised {value!r}"
    assert_tree_close(value, _reference(op, cell, x, t), rtol=1e-6, atol=1e-8)
    if HAS_TORCH_FUNC:
        ref_kind, ref_value = _outcome(lambda: call(torch_func, f, x, t), quiet=True)
        if ref_kind == "ok" and ref_value is not None:  # torch 2.0's linearize may raise
            assert_tree_close(value, ref_value)


def test_grad_of_a_real_scalar_of_a_complex_input(backend) -> None:
    """torch.func.grad's conjugate-convention gradient: d/dz |z|^2 summed is 2 z."""
    z = torch.randn(4, dtype=torch.complex128)

    def f(z):
        return (z * z.conj()).real.sum()

    assert_tree_close(ta.grad(f, backend=backend)(z), 2 * z)
    g, value = ta.grad_and_value(f, backend=backend)(z)
    assert_tree_close(g, 2 * z)
    assert_tree_close(value, f(z))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_grad_of_mixed_real_and_complex_arguments(backend, dtype) -> None:
    z = torch.randn(3, dtype=dtype)
    w = torch.randn(3, dtype=torch.float32 if dtype == torch.complex64 else torch.float64)

    def f(z, w, k):
        return ((z.abs() ** 2) * w).sum() * k

    gz, gw = ta.grad(f, argnums=(0, 1), backend=backend)(z, w, 3.0)
    assert_tree_close(gz, 6 * z * w)
    assert_tree_close(gw, 3 * z.abs() ** 2)


def test_jacfwd_of_a_complex_output_is_refused_on_every_torch(backend) -> None:
    """functorch 1.13's jacfwd returns a Jacobian here; torch.func raises, and so does every
    backend on every torch."""
    with pytest.raises(RuntimeError, match="complex"):
        ta.jacfwd(lambda x: x * (1 + 1j), backend=backend)(torch.ones(2))


def test_jvp_through_a_custom_function_of_complex_values(backend) -> None:
    """The rows of an opaque graph: a complex output needs the rows of its real and imaginary
    parts, a complex input the real inner product of each row with the tangent."""

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[override]
            return x * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[override]
            return g * 2

    if backend in ("func", "functorch"):
        pytest.skip("an old-style autograd.Function runs only on the autograd backend")
    for cell in CELLS:
        f = {
            "r->r": lambda x: torch.sin(Scale.apply(x)),
            "r->c": lambda x: torch.sin(Scale.apply(x)) * (1 + 2j),
            "c->c": lambda x: torch.sin(Scale.apply(x)) * x.conj(),
            "c->r": lambda x: (Scale.apply(x) * x.conj()).real,
        }[cell]
        x = _input(cell)
        t = _tangent(x)
        expected = _finite_difference(f, x, t)
        assert_tree_close(ta.jvp(f, (x,), (t,), backend=backend)[1], expected, 1e-6, 1e-8)
        assert_tree_close(ta.linearize(f, x, backend=backend)[1](t), expected, 1e-6, 1e-8)
