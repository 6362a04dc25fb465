"""``linearize``: one run of the function, every product at the original point.

On every backend and automatic mode the function runs once; products use the
draws of that run and stay at the point ``linearize`` was called at, even
after the caller updates a primal in place.  References: a row loop of
``torch.autograd.grad`` at a copy of the original point, and the draws read
off the returned output.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_tree_close, reference_jacobian

import tad_autograd as ta

DT = torch.float64


def _field(x: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, 12, dtype=x.dtype).reshape(4, 3)
    return torch.tanh(w @ x) * x.sin()[:1]


def _saving(x: torch.Tensor) -> torch.Tensor:
    """Backward formulas that save the input itself."""
    return torch.sin(x) * x + x.roll(1) ** 2


def test_products_stay_at_the_original_point_after_an_in_place_update(backend) -> None:
    x = torch.tensor([0.3, -0.7, 1.1], dtype=DT)
    jac = reference_jacobian(_saving, x.clone())
    out, jvp_fn = ta.linearize(_saving, x, backend=backend)
    x.mul_(3.0).add_(0.5)
    for _ in range(2):
        t = torch.randn(3, dtype=DT)
        assert_tree_close(jvp_fn(t), jac @ t)


def test_products_use_the_draws_of_the_returned_output(backend) -> None:
    x = torch.tensor([0.5, 1.5, -2.0, 3.0], dtype=DT)
    out, jvp_fn = ta.linearize(lambda x: x * torch.rand_like(x), x, backend=backend)
    draws = out / x  # d(x * r)/dx . t = r * t
    for _ in range(3):
        t = torch.randn(4, dtype=DT)
        assert_tree_close(jvp_fn(t), draws * t)


def test_the_function_runs_once_for_any_number_of_products(backend) -> None:
    calls = []

    def f(x):
        calls.append(1)
        return x.exp() * x

    x = torch.tensor([0.1, 0.2], dtype=DT)
    out, jvp_fn = ta.linearize(f, x, backend=backend)
    for _ in range(3):
        jvp_fn(torch.randn(2, dtype=DT))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "tangents",
    [
        pytest.param((torch.ones(3, dtype=torch.float32),), id="float32 for float64"),
        pytest.param((torch.ones(4, dtype=DT),), id="shape"),
        pytest.param((torch.ones(3, dtype=DT),) * 2, id="two for one"),
        pytest.param(((torch.ones(3, dtype=DT),),), id="nested"),
        pytest.param((1.0,), id="not a tensor"),
    ],
)
def test_mismatched_tangents_raise_runtime_error(backend, tangents) -> None:
    x = torch.tensor([0.3, -0.7, 1.1], dtype=DT)
    _, jvp_fn = ta.linearize(_field, x, backend=backend)
    with pytest.raises(RuntimeError, match="linearize"):
        jvp_fn(*tangents)
