"""jacrev: written once, run on every backend."""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_tree_close

import tad_autograd as ta

DT = torch.float64


def ref_jacobian(f, *inputs):
    return torch.autograd.functional.jacobian(f, inputs if len(inputs) > 1 else inputs[0])


def test_simple_matches_autograd_functional(backend: str) -> None:
    w = torch.randn(4, 3, dtype=DT)
    x = torch.randn(3, dtype=DT)

    def f(x):
        return torch.tanh(w @ x)

    assert_tree_close(ta.jacrev(f, backend=backend)(x), ref_jacobian(f, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_shape(backend: str, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, dtype=dtype)
    jac = ta.jacrev(lambda x: x.sin().sum(0), backend=backend)(x)
    assert jac.shape == (3, 2, 3) and jac.dtype == dtype
    expected = torch.zeros(3, 2, 3, dtype=dtype)
    for i in range(2):
        for j in range(3):
            expected[j, i, j] = x[i, j].cos()
    assert_tree_close(jac, expected)


def test_scalar_output_and_zero_dim_input(backend: str) -> None:
    x = torch.tensor(0.3, dtype=DT)
    jac = ta.jacrev(lambda x: x**3, backend=backend)(x)
    assert jac.shape == ()
    assert_tree_close(jac, 3 * x**2)


@pytest.mark.parametrize("argnums", [1, -1, (0, 1), (1, 0), (-2,)])
def test_argnums(backend: str, argnums) -> None:
    x, y = torch.randn(3, dtype=DT), torch.randn(2, dtype=DT)

    def f(x, y):
        return torch.outer(x.sin(), y.exp()).sum(1)

    jac = ta.jacrev(f, argnums=argnums, backend=backend)(x, y)
    full = ref_jacobian(f, x, y)
    if isinstance(argnums, int):
        assert_tree_close(jac, full[argnums])
    else:
        assert isinstance(jac, tuple) and len(jac) == len(argnums)
        assert_tree_close(jac, tuple(full[a] for a in argnums))


def test_pytree_inputs_and_outputs(backend: str) -> None:
    a, b = torch.randn(2, dtype=DT), torch.randn(3, dtype=DT)

    def f(d):
        s = d["a"].sum() * d["b"]
        return {"s": s, "t": (d["a"] ** 2, d["b"].prod())}

    jac = ta.jacrev(f, backend=backend)({"a": a, "b": b})
    assert set(jac) == {"s", "t"}
    assert set(jac["s"]) == {"a", "b"}
    assert jac["s"]["a"].shape == (3, 2) and jac["s"]["b"].shape == (3, 3)
    assert jac["t"][0]["a"].shape == (2, 2) and jac["t"][1]["b"].shape == (3,)
    assert_tree_close(jac["s"]["b"], a.sum() * torch.eye(3, dtype=DT))
    assert_tree_close(jac["t"][0]["a"], torch.diag(2 * a))
    assert_tree_close(jac["t"][0]["b"], torch.zeros(2, 3, dtype=DT))
    assert_tree_close(jac["t"][1]["b"], b.prod() / b)


def test_list_input_and_tuple_argnums(backend: str) -> None:
    xs = [torch.randn(2, dtype=DT), torch.randn(2, dtype=DT)]
    y = torch.randn(2, dtype=DT)

    def f(xs, y):
        return xs[0] * xs[1] * y

    jac = ta.jacrev(f, argnums=(0, 1), backend=backend)(xs, y)
    assert isinstance(jac, tuple) and isinstance(jac[0], list) and len(jac[0]) == 2
    assert_tree_close(jac[0][0], torch.diag(xs[1] * y))
    assert_tree_close(jac[1], torch.diag(xs[0] * xs[1]))


def test_unused_input_gives_zeros(backend: str) -> None:
    x, y = torch.randn(3, dtype=DT), torch.randn(2, dtype=DT)
    jac = ta.jacrev(lambda x, y: x * 2, argnums=(0, 1), backend=backend)(x, y)
    assert_tree_close(jac[1], torch.zeros(3, 2, dtype=DT))
    const = ta.jacrev(lambda x: torch.ones(2, dtype=DT), backend=backend)(x)
    assert_tree_close(const, torch.zeros(2, 3, dtype=DT))


def test_has_aux(backend: str) -> None:
    x = torch.randn(3, dtype=DT)
    jac, aux = ta.jacrev(
        lambda x: (x.sin(), {"n": x.norm(), "k": [x * 2]}), has_aux=True, backend=backend
    )(x)
    assert_tree_close(jac, torch.diag(x.cos()))
    assert_tree_close(aux["k"], [x * 2])
    assert_tree_close(aux["n"], x.norm())
    assert not aux["n"].requires_grad


def test_passthrough_non_tensor_args(backend: str) -> None:
    x = torch.randn(3, dtype=DT)

    class Config:
        scale = 2.0

    def f(x, n, label, cfg):
        assert n == 3 and label == "energy"
        return (cfg.scale * x) ** n

    jac = ta.jacrev(f, backend=backend)(x, 3, "energy", Config())
    assert_tree_close(jac, torch.diag(3 * 8 * x**2))


def test_keyword_arguments_pass_through(backend: str) -> None:
    x = torch.randn(3, dtype=DT)
    jac = ta.jacrev(lambda x, *, power: x**power, backend=backend)(x, power=2)
    assert_tree_close(jac, torch.diag(2 * x))


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 100])
def test_chunk_size_identical(backend: str, chunk_size: int) -> None:
    w = torch.randn(5, 4, dtype=DT)
    x = torch.randn(4, dtype=DT)

    def f(x):
        return torch.tanh(w @ x), (x**2).sum()

    full = ta.jacrev(f, backend=backend)(x)
    chunked = ta.jacrev(f, chunk_size=chunk_size, backend=backend)(x)
    assert_tree_close(chunked, full, rtol=0, atol=0)


def test_no_grad_does_not_stop_jacobian(backend: str) -> None:
    x = torch.randn(3, dtype=DT)
    with torch.no_grad():
        jac = ta.jacrev(lambda x: x.exp(), backend=backend)(x)
        assert not torch.is_grad_enabled()
    assert_tree_close(jac, torch.diag(x.exp()))
    assert not jac.requires_grad


def test_result_differentiable_when_input_requires_grad(backend: str) -> None:
    x = torch.randn(3, dtype=DT, requires_grad=True)
    jac = ta.jacrev(lambda x: x**3, backend=backend)(x)
    assert jac.requires_grad
    (g,) = torch.autograd.grad(jac.sum(), x)
    assert_tree_close(g, 6 * x.detach())
    assert x.grad is None


def test_result_differentiable_wrt_captured_parameter(backend: str) -> None:
    w = torch.randn(3, dtype=DT, requires_grad=True)
    x = torch.randn(3, dtype=DT)
    forces = ta.jacrev(lambda x: (w * x**2).sum(), backend=backend)(x)
    assert forces.requires_grad
    (g,) = torch.autograd.grad(forces.sum(), w)
    assert_tree_close(g, 2 * x)


def test_result_not_tracked_without_requires_grad(backend: str) -> None:
    x = torch.randn(3, dtype=DT)
    assert not ta.jacrev(lambda x: x.sin(), backend=backend)(x).requires_grad


def test_forces_of_lennard_jones(backend: str) -> None:
    pos = torch.tensor(
        [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.1], [0.9, 1.0, 1.0]], dtype=DT
    )

    def energy(pos):
        i, j = torch.triu_indices(len(pos), len(pos), 1)
        r = (pos[i] - pos[j]).norm(dim=-1)
        return (4 * (r**-12 - r**-6)).sum()

    p = pos.clone().requires_grad_()
    (expected,) = torch.autograd.grad(energy(p), p)
    assert_tree_close(ta.jacrev(energy, backend=backend)(pos), expected)
