"""The operators beyond jacrev in the calling contexts users have.

Every backend and automatic mode, against an independent reference (a row
loop of ``torch.autograd.grad`` on the eager function):

* custom ``autograd.Function``s without a forward-AD rule (written the old
  way) work on the autograd backend and in automatic mode for every
  operator, forward mode included, on every torch; an explicit transform
  backend raises rather than answer wrongly;
* ``no_grad``: computed, no graph; ``inference_mode``: computed where the
  installed ``torch.func`` computes it, else ``RuntimeError``;
* every result requires grad exactly when ``torch.func``'s does (inputs that
  require grad, captured parameters, nothing);
* the dtype is kept (float32, bfloat16);
* compositions: ``jacfwd(jacrev)``, ``vmap(jvp)``, ``vmap(hvp)``, ``vmap(grad)``,
  ``jvp`` of ``grad``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from _helpers import (
    OldStyleExp,
    assert_tree_close,
    make_new_style_exp,
    reference_hessian,
    reference_jacobian,
)

import tad_autograd as ta
from tad_autograd.compat._pytree import tree_flatten
from tad_autograd.compat._torch_info import TORCH_VERSION, Version
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.eager._grad_modes import inference_mode_derivatives

F64 = torch.float64


def energy(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * x.roll(1)).sum() + (x**3).sum()


def field(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * x.sum() + x.roll(1) ** 2


def _ops(f_vec: Callable[..., Any], f_scalar: Callable[..., Any], backend: Optional[str]):
    """Each operator at x (and tangent t), as a function of (x, t)."""
    kw: Dict[str, Any] = {"backend": backend}
    return {
        "grad": lambda x, t: ta.grad(f_scalar, **kw)(x),
        "grad_and_value": lambda x, t: ta.grad_and_value(f_scalar, **kw)(x),
        "vjp": lambda x, t: ta.vjp(f_vec, x, **kw)[1](t),
        "jvp": lambda x, t: ta.jvp(f_vec, (x,), (t,), **kw),
        "linearize": lambda x, t: ta.linearize(f_vec, x, **kw)[1](t),
        "jacfwd": lambda x, t: ta.jacfwd(f_vec, **kw)(x),
        "jacobian": lambda x, t: ta.jacobian(f_vec, **kw)(x),
        "hvp": lambda x, t: ta.hvp(f_scalar, (x,), (t,), **kw),
    }


def _references(f_vec, f_scalar, x, t):
    jac = reference_jacobian(f_vec, x)
    grad = reference_jacobian(f_scalar, x)
    return {
        "grad": grad,
        "grad_and_value": (grad, f_scalar(x)),
        "vjp": (t @ jac,),
        "jvp": (f_vec(x), jac @ t),
        "linearize": jac @ t,
        "jacfwd": jac,
        "jacobian": jac,
        "hvp": (f_scalar(x), (reference_hessian(f_scalar, x) @ t,)),
    }


OPS = list(_ops(field, energy, None))


@pytest.mark.filterwarnings("ignore::tad_autograd.BackendFallbackWarning")
@pytest.mark.parametrize("op", OPS)
def test_old_style_function_in_every_operator(backend: Optional[str], op: str) -> None:
    def f_vec(x):
        return OldStyleExp.apply(x) * x.roll(1)

    def f_scalar(x):
        return (OldStyleExp.apply(x) * x).sum()

    x, t = torch.linspace(0.1, 0.6, 6, dtype=F64), torch.linspace(-1, 1, 6, dtype=F64)
    call = _ops(f_vec, f_scalar, backend)[op]
    if backend is not None and REGISTRY.get(backend).is_transform:
        with pytest.raises(RuntimeError):  # torch.func refuses it; never a wrong number
            call(x, t)
        return
    assert_tree_close(call(x, t), _references(f_vec, f_scalar, x, t)[op])


@pytest.mark.filterwarnings("ignore::tad_autograd.BackendFallbackWarning")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["jvp", "linearize", "jacfwd", "jacobian", "hvp"])
def test_old_style_function_in_half_precision(
    backend: Optional[str], op: str, dtype: torch.dtype
) -> None:
    # forward mode through rows of backward passes, multiplied in half precision
    def f_vec(x):
        return OldStyleExp.apply(x.float()).to(dtype) * x.roll(1)

    def f_scalar(x):
        return (OldStyleExp.apply(x.float()).to(dtype) * x).sum()

    x, t = torch.linspace(0.1, 0.6, 6, dtype=dtype), torch.linspace(-1, 1, 6, dtype=dtype)
    call = _ops(f_vec, f_scalar, backend)[op]
    if backend is not None and REGISTRY.get(backend).is_transform:
        with pytest.raises(RuntimeError):  # torch.func refuses it; never a wrong number
            call(x, t)
        return
    expected = _references(f_vec, f_scalar, x.double(), t.double())[op]
    for r, e in zip(tree_flatten(call(x, t))[0], tree_flatten(expected)[0]):
        assert r.dtype == dtype
        torch.testing.assert_close(r.double(), e, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("op", OPS)
def test_no_grad_still_differentiates(backend: Optional[str], op: str) -> None:
    x = torch.linspace(0.1, 0.6, 6, dtype=F64).requires_grad_(True)
    t = torch.linspace(-1, 1, 6, dtype=F64)
    with torch.no_grad():
        result = _ops(field, energy, backend)[op](x, t)
    assert_tree_close(result, _references(field, energy, x, t)[op])
    assert not any(r.requires_grad for r in tree_flatten(result)[0])


@pytest.mark.parametrize("op", OPS)
def test_inference_mode(backend: Optional[str], op: str) -> None:
    with torch.inference_mode():
        x = torch.linspace(0.1, 0.6, 6, dtype=F64)
        t = torch.linspace(-1, 1, 6, dtype=F64)
        call = _ops(field, energy, backend)[op]
        if not inference_mode_derivatives():
            with pytest.raises(RuntimeError, match="inference_mode"):
                call(x, t)
            return
        result = call(x, t)
    assert_tree_close(result, _references(field, energy, x.clone(), t.clone())[op])


def _torch_func() -> Any:
    try:
        import torch.func as library
    except ImportError:  # torch 1.13
        import functorch as library
    return library


def _torch_func_ops(w: torch.Tensor, added: bool = False) -> Dict[str, Callable[..., Any]]:
    F = _torch_func()

    def f_vec(x):
        return field(x) + w if added else field(x) * w

    def f_scalar(x):
        return energy(x) + w if added else energy(x) * w

    return {
        "grad": lambda x, t: F.grad(f_scalar)(x),
        "grad_and_value": lambda x, t: F.grad_and_value(f_scalar)(x),
        "vjp": lambda x, t: F.vjp(f_vec, x)[1](t),
        "jvp": lambda x, t: F.jvp(f_vec, (x,), (t,)),
        "linearize": lambda x, t: F.jvp(f_vec, (x,), (t,))[1],
        "jacfwd": lambda x, t: F.jacfwd(f_vec)(x),
        "jacobian": lambda x, t: F.jacrev(f_vec)(x),
        "hvp": lambda x, t: _value_and_hvp(
            F.jvp(F.grad_and_value(f_scalar), (x,), (t,), has_aux=True)
        ),
    }


def _value_and_hvp(grad_ht_value):
    """torch.func's ``jvp(grad_and_value)`` result ``(grad, H t, value)`` as ``(value, H t)``."""
    return grad_ht_value[2], grad_ht_value[1]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "needs_grad", ["input", "captured", "captured, added", "tangent", "nothing"]
)
def test_requires_grad_as_torch_func(backend: Optional[str], op: str, needs_grad: str) -> None:
    """A captured parameter that multiplies the result, or is only added to it (then the
    derivatives do not depend on it and carry no graph)."""
    added = needs_grad == "captured, added"
    w = torch.tensor(1.5, dtype=F64, requires_grad=needs_grad.startswith("captured"))
    x = torch.linspace(0.1, 0.6, 6, dtype=F64).requires_grad_(needs_grad == "input")
    t = torch.linspace(-1, 1, 6, dtype=F64).requires_grad_(needs_grad == "tangent")
    if added:
        ours = _ops(lambda x: field(x) + w, lambda x: energy(x) + w, backend)[op](x, t)
    else:
        ours = _ops(lambda x: field(x) * w, lambda x: energy(x) * w, backend)[op](x, t)
    theirs = _torch_func_ops(w, added)[op](x, t)
    if op == "hvp":  # ours: (value, (H t,))
        ours = (ours[0], ours[1][0])
    assert [r.requires_grad for r in tree_flatten(ours)[0]] == [
        r.requires_grad for r in tree_flatten(theirs)[0]
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["grad", "vjp", "jvp", "jacfwd", "hvp"])
def test_dtype_is_kept(backend: Optional[str], op: str, dtype: torch.dtype) -> None:
    x = torch.linspace(0.1, 0.6, 6, dtype=dtype)
    t = torch.linspace(-1, 1, 6, dtype=dtype)
    result = _ops(field, energy, backend)[op](x, t)
    expected = _references(field, energy, x.double(), t.double())[op]
    for r, e in zip(tree_flatten(result)[0], tree_flatten(expected)[0]):
        assert r.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(r.double(), e, rtol=tol, atol=tol)


def test_jacfwd_of_jacrev_is_the_hessian(backend: Optional[str]) -> None:
    x = torch.linspace(0.1, 0.6, 5, dtype=F64)
    hess = ta.jacfwd(ta.jacrev(energy, backend=backend), backend=backend)(x)
    assert_tree_close(hess, reference_hessian(energy, x))


def test_vmap_of_jvp_hvp_and_grad(backend: Optional[str]) -> None:
    xs = torch.linspace(0.1, 1.5, 15, dtype=F64).reshape(3, 5)
    ts = torch.linspace(-1, 1, 15, dtype=F64).reshape(3, 5)
    kw = {"backend": backend}
    jv = ta.vmap(lambda x, t: ta.jvp(field, (x,), (t,), **kw)[1], **kw)(xs, ts)
    hv = ta.vmap(lambda x, t: ta.hvp(energy, (x,), (t,), **kw)[1][0], **kw)(xs, ts)
    g = ta.vmap(ta.grad(energy, **kw), **kw)(xs)
    for i in range(3):
        assert_tree_close(jv[i], reference_jacobian(field, xs[i]) @ ts[i])
        assert_tree_close(hv[i], reference_hessian(energy, xs[i]) @ ts[i])
        assert_tree_close(g[i], reference_jacobian(energy, xs[i]))


def test_jvp_of_grad_is_a_hessian_vector_product(backend: Optional[str]) -> None:
    x, t = torch.linspace(0.1, 0.6, 5, dtype=F64), torch.linspace(-1, 1, 5, dtype=F64)
    kw = {"backend": backend}
    _, hv = ta.jvp(ta.grad(energy, **kw), (x,), (t,), **kw)
    assert_tree_close(hv, reference_hessian(energy, x) @ t)


@pytest.mark.parametrize("needs_grad", ["input", "captured", "nothing"])
def test_nested_results_require_grad_as_torch_func(backend: Optional[str], needs_grad: str) -> None:
    F = _torch_func()
    w = torch.tensor(1.5, dtype=F64, requires_grad=needs_grad == "captured")
    x = torch.linspace(0.1, 0.6, 5, dtype=F64).requires_grad_(needs_grad == "input")
    t = torch.linspace(-1, 1, 5, dtype=F64)

    def f(x):
        return energy(x) * w

    kw = {"backend": backend}
    ours = {
        "jvp(grad)": ta.jvp(ta.grad(f, **kw), (x,), (t,), **kw),
        "jacfwd(jacrev)": ta.jacfwd(ta.jacrev(f, **kw), **kw)(x),
    }
    theirs = {
        "jvp(grad)": F.jvp(F.grad(f), (x,), (t,)),
        "jacfwd(jacrev)": F.jacfwd(F.jacrev(f))(x),
    }
    for name in ours:
        assert_tree_close(ours[name], theirs[name])
        got = [r.requires_grad for r in tree_flatten(ours[name])[0]]
        assert got == [r.requires_grad for r in tree_flatten(theirs[name])[0]], name


def _custom_functions_with_opaque_backward():
    import numpy as np
    from torch.autograd.function import once_differentiable

    class NumpyExp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[override]
            ctx.save_for_backward(x)
            return x.exp()

        @staticmethod
        def backward(ctx, g):  # type: ignore[override]
            (x,) = ctx.saved_tensors
            return g * torch.from_numpy(np.exp(x.detach().cpu().numpy())).to(g)

    class OnceExp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[override]
            ctx.save_for_backward(x)
            return x.exp()

        @staticmethod
        @once_differentiable
        def backward(ctx, g):  # type: ignore[override]
            (x,) = ctx.saved_tensors
            return g * x.exp()

    return {"numpy backward": NumpyExp, "once_differentiable": OnceExp}


@pytest.mark.filterwarnings("ignore::tad_autograd.BackendFallbackWarning")
@pytest.mark.parametrize("kind", ["numpy backward", "once_differentiable"])
def test_second_derivatives_through_an_opaque_backward_raise(
    backend: Optional[str], kind: str
) -> None:
    """Plain autograd returns wrong Hessians here (the backward has no graph); never us."""
    fn = _custom_functions_with_opaque_backward()[kind]
    x, t = torch.tensor([0.5, 1.0], dtype=F64), torch.ones(2, dtype=F64)

    def f(x):
        return fn.apply(x).sum()

    kw = {"backend": backend}
    if backend is not None and REGISTRY.get(backend).is_transform:
        with pytest.raises(RuntimeError):  # torch.func refuses the old-style Function
            ta.jacrev(f, **kw)(x)
    else:  # first derivatives are exact
        assert_tree_close(ta.jacrev(f, **kw)(x.clone().requires_grad_(True)), x.exp())
        assert_tree_close(ta.grad(f, **kw)(x), x.exp())
        assert_tree_close(ta.jvp(fn.apply, (x,), (t,), **kw)[1], x.exp())
    for second in (
        lambda: ta.hvp(f, (x,), (t,), **kw),
        lambda: ta.hessian(f, **kw)(x),
        lambda: ta.jvp(ta.grad(f, **kw), (x,), (t,), **kw),
        lambda: ta.jacfwd(ta.jacrev(f, **kw), **kw)(x),
    ):
        with pytest.raises(RuntimeError):
            second()


@pytest.mark.skipif(
    TORCH_VERSION.major < 2, reason="new-style autograd.Function needs torch >= 2.0"
)
def test_linearize_under_no_grad_of_a_custom_function_of_a_captured_leaf(
    backend: Optional[str],
) -> None:
    # torch.func.jvp lets the Function record a graph under no_grad; linearize must not
    new_style_exp = make_new_style_exp()
    w = torch.tensor(0.3, dtype=F64, requires_grad=True)
    x, t = torch.tensor(0.5, dtype=F64), torch.tensor(1.0, dtype=F64)

    def f(x):
        return new_style_exp.apply(w), x * 2

    with torch.no_grad():
        out, jvp_fn = ta.linearize(f, x, backend=backend)
        product = jvp_fn(t)
    assert [o.requires_grad for o in (*out, *product)] == [False] * 4  # as plain autograd
    if TORCH_VERSION >= Version("2.1"):  # torch 2.0's linearize fails on x * 2
        with torch.no_grad(), warnings.catch_warnings():  # torch.fx's own warning on 2.13
            warnings.simplefilter("ignore", UserWarning)
            theirs = torch.func.linearize(f, x)[0]
        assert [o.requires_grad for o in theirs] == [False, False]
    assert_tree_close(
        (out, product), ((w.exp().detach(), 2 * x), (torch.zeros((), dtype=F64), 2 * t))
    )
