"""Forward mode gives reverse mode's derivative on every call, not only the first (§3, §5).

The eager forward mode (automatic mode, the ``"autograd"`` backend) records the
first ``jvp`` of a function and pushes dual numbers on later calls.  Each test
calls the operator several times in a row and compares every answer with an
independent reference: a row loop of ``torch.autograd.grad`` on the eager
function (hooks and ``no_grad`` blocks included, as reverse mode sees them).

Where :mod:`torch.func` legitimately differs (its dual numbers pass through a
``no_grad`` block, a tensor hook and a graph-less backward pass; it cannot run
NumPy on its tensors), the transform backends are skipped, as
``docs/semantics.rst`` says.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from _helpers import assert_tree_close, reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.report import lennard_jones

F64 = torch.float64
CALLS = 3
X = torch.tensor([0.5, 1.0, -2.0], dtype=F64)
T = torch.tensor([1.0, 2.0, 3.0], dtype=F64)


def _eager_only(backend: Optional[str], why: str) -> None:
    if backend is not None and REGISTRY.get(backend).is_transform:
        pytest.skip(f"torch.func differs here by design: {why}")


def _jvp_each_call(f: Callable[..., Any], backend: Optional[str], x: torch.Tensor = X) -> None:
    expected = reference_jacobian(f, x) @ T
    for _ in range(CALLS):
        assert_tree_close(ta.jvp(f, (x,), (T,), backend=backend)[1], expected)


def _numpy_fast_path(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad:
        return torch.sin(x) * x.sum()
    return torch.from_numpy(np.sin(x.numpy()) * x.numpy().sum())  # no derivative wanted


def _no_grad_fast_path(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad:
        return torch.sin(x) * x.sum()
    with torch.no_grad():
        return torch.sin(x) * x.sum()


def test_jvp_branch_on_requires_grad_to_a_numpy_path(backend: Optional[str]) -> None:
    _eager_only(backend, "its inputs never require grad and cannot go through NumPy")
    _jvp_each_call(_numpy_fast_path, backend)


def test_jvp_branch_on_requires_grad_to_a_no_grad_path(backend: Optional[str]) -> None:
    _jvp_each_call(_no_grad_fast_path, backend)


def test_jvp_branch_on_grad_mode_under_the_callers_no_grad(backend: Optional[str]) -> None:
    _eager_only(backend, "under no_grad its function sees grad mode off")

    def f(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return torch.sin(x) * x.sum()
        return torch.from_numpy(np.sin(x.numpy()) * x.numpy().sum())

    expected = reference_jacobian(f, X) @ T
    for _ in range(CALLS):
        with torch.no_grad():
            product = ta.jvp(f, (X,), (T,), backend=backend)[1]
        assert_tree_close(product, expected)


def test_jvp_of_forces_computed_by_autograd_grad(backend: Optional[str]) -> None:
    _eager_only(backend, "torch.autograd.grad cannot differentiate its tensors")
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.1, 0.1, 0.0], [0.2, 1.2, -0.1]], dtype=F64)
    t = torch.linspace(-1.0, 1.0, 9, dtype=F64).reshape(3, 3)

    def forces(p: torch.Tensor) -> torch.Tensor:
        return -torch.autograd.grad(lennard_jones(p), p, create_graph=True)[0]

    expected = -(reference_hessian(lennard_jones, pos).reshape(9, 9) @ t.reshape(9)).reshape(3, 3)
    for _ in range(CALLS):
        assert_tree_close(ta.jvp(forces, (pos,), (t,), backend=backend)[1], expected)


def _hooked(x: torch.Tensor) -> torch.Tensor:
    y = x.sin()
    if y.requires_grad:
        y.register_hook(lambda g: 2 * g)  # a gradient-scaling hook: reverse mode's answer
    return y * 3


def test_jvp_with_a_tensor_hook_on_every_call(backend: Optional[str]) -> None:
    _eager_only(backend, "dual numbers ignore tensor hooks")
    _jvp_each_call(_hooked, backend)
    # the memory of earlier (automatic) calls never changes the autograd backend's answer
    assert_tree_close(
        ta.jvp(_hooked, (X,), (T,), backend="autograd")[1], reference_jacobian(_hooked, X) @ T
    )


def test_jvp_later_call_into_a_no_grad_branch(backend: Optional[str]) -> None:
    _eager_only(backend, "dual numbers pass through a no_grad block")

    def f(x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:
            return torch.sin(x) * 2
        with torch.no_grad():
            scale = (x**2).sum()  # reverse mode: a constant
        return x * scale

    for x in (X.abs(), -X.abs(), X.abs(), -X.abs()):
        assert_tree_close(ta.jvp(f, (x,), (T,), backend=backend)[1], reference_jacobian(f, x) @ T)


def test_jvp_backward_pass_without_create_graph_inside(backend: Optional[str]) -> None:
    _eager_only(backend, "dual numbers pass through a backward pass without a graph")

    def f(x: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad((x**3).sum(), x)  # no create_graph: a constant
        return x * g

    _jvp_each_call(f, backend)


def _energy(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * x.sum()


def _scaled_by_norm(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            s = x.norm()
        return fn(x) / s

    return wrapper


def test_jvp_decorated_function_has_its_own_verdict(backend: Optional[str]) -> None:
    _eager_only(backend, "dual numbers pass through a no_grad block")
    base = functools.wraps(_energy)(lambda x: _energy(x))  # remembered afresh
    variant = _scaled_by_norm(base)
    silenced = torch.no_grad()(base)
    for _ in range(CALLS):
        ta.jvp(base, (X,), (T,), backend=backend)
    for _ in range(CALLS):
        assert_tree_close(
            ta.jvp(variant, (X,), (T,), backend=backend)[1], reference_jacobian(variant, X) @ T
        )
        assert_tree_close(ta.jvp(silenced, (X,), (T,), backend=backend)[1], torch.zeros_like(X))


def _doubles_in_place(x: torch.Tensor) -> torch.Tensor:
    x.mul_(2)
    return x**2


def test_forward_mode_of_a_function_updating_its_input_in_place(backend: Optional[str]) -> None:
    x = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([1.0, -1.0], dtype=F64)
    rows = reference_jacobian(lambda v: _doubles_in_place(v.clone()), x)
    eager = backend is None or not REGISTRY.get(backend).is_transform
    for _ in range(CALLS):
        given, tangent = x.clone(), t.clone()
        product = ta.jvp(_doubles_in_place, (given,), (tangent,), backend=backend)[1]
        assert_tree_close(product, rows @ t)
        if eager:  # torch.func's forward mode updates the caller's primal and tangent
            assert torch.equal(given, x) and torch.equal(tangent, t)
    for _ in range(CALLS):
        given = x.clone()
        assert_tree_close(ta.jacfwd(_doubles_in_place, backend=backend)(given), rows)
        if eager:  # torch.func.linearize runs the function twice: it doubles twice
            assert_tree_close(
                ta.linearize(_doubles_in_place, given, backend=backend)[1](t), rows @ t
            )
            assert torch.equal(given, x)


def _data_dependent(x: torch.Tensor) -> torch.Tensor:
    return x * (2.0 if x.sum().item() > 0 else 1.0)  # .item(): vmap loops


def _with_noise(fn: Callable[..., Any], gen: torch.Generator) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(x: torch.Tensor) -> torch.Tensor:
        return fn(x) + torch.randn(x.shape, generator=gen, dtype=x.dtype)

    return wrapper


class _Noisy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _data_dependent(x) + torch.randn(x.shape, generator=self.gen, dtype=x.dtype)


@pytest.mark.parametrize("where", ["wrapped_closure", "module_attribute"])
def test_vmap_loop_sees_the_generator(backend: Optional[str], where: str) -> None:
    _eager_only(backend, "torch.func cannot vmap .item()")
    gen = torch.Generator()
    f = _with_noise(_data_dependent, gen) if where == "wrapped_closure" else _Noisy()
    if where == "module_attribute":
        gen = f.gen
    xs = torch.ones(4, 3, dtype=F64)
    gen.manual_seed(0)
    one_draw = 2.0 * xs[0] + torch.randn(3, generator=gen, dtype=F64)
    gen.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        out = ta.vmap(f, randomness="same", backend=backend)(xs)
        for row in out:
            assert_tree_close(row, one_draw)
        gen.manual_seed(0)
        with pytest.raises(RuntimeError):
            ta.vmap(f, randomness="error", backend=backend)(xs)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())
