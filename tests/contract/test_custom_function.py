"""Custom autograd.Functions in both styles."""

from __future__ import annotations

import warnings

import pytest
import torch
from _helpers import OldStyleExp, assert_tree_close, make_new_style_exp

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION

DT = torch.float64
needs_torch2 = pytest.mark.skipif(
    TORCH_VERSION.major < 2, reason="new-style autograd.Function needs torch >= 2.0"
)


def test_old_style_function_autograd_backend() -> None:
    x = torch.randn(3, dtype=DT)
    f = lambda x: OldStyleExp.apply(x) * x  # noqa: E731
    jac = ta.jacrev(f, backend="autograd")(x)
    assert_tree_close(jac, torch.diag(x.exp() * (1 + x)))
    h = ta.hessian(lambda x: OldStyleExp.apply(x).sum(), backend="autograd")(x)
    assert_tree_close(h, torch.diag(x.exp()))
    v = ta.vmap(ta.jacrev(lambda x: OldStyleExp.apply(x).sum()), backend="autograd")(
        x.reshape(3, 1)
    )
    assert_tree_close(v, x.exp().reshape(3, 1))


def test_old_style_function_transform_backends_raise_clearly(transform_backend: str) -> None:
    x = torch.randn(3, dtype=DT)
    with pytest.raises(RuntimeError, match="autograd.Function") as info:
        ta.jacrev(lambda x: OldStyleExp.apply(x), backend=transform_backend)(x)
    assert "backend='autograd' would handle it" in str(info.value) + "".join(
        getattr(info.value, "__notes__", [])
    )


@needs_torch2
def test_new_style_function_every_backend(backend: str) -> None:
    if backend == "functorch" and TORCH_VERSION.major < 2:
        pytest.skip("functorch 1.13 cannot transform any autograd.Function")
    fn = make_new_style_exp()
    x = torch.randn(3, dtype=DT)
    assert_tree_close(ta.jacrev(lambda x: fn.apply(x), backend=backend)(x), torch.diag(x.exp()))
    assert_tree_close(
        ta.hessian(lambda x: fn.apply(x).sum(), backend=backend)(x), torch.diag(x.exp())
    )
    xs = torch.randn(4, 3, dtype=DT)
    assert_tree_close(ta.vmap(lambda x: fn.apply(x), backend=backend)(xs), xs.exp())


def test_old_style_function_automatic_mode() -> None:
    """Automatic jacrev runs the forward eagerly: no fallback needed; vmap falls back once."""
    x = torch.randn(3, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jac = ta.jacrev(lambda x: OldStyleExp.apply(x))(x)
    assert_tree_close(jac, torch.diag(x.exp()))
    xs = torch.randn(4, 3, dtype=DT)
    with pytest.warns(ta.BackendFallbackWarning):
        out = ta.vmap(lambda x: OldStyleExp.apply(x))(xs)
    assert_tree_close(out, xs.exp())
