"""Calling contexts and differentiability, against an independent reference.

Every backend and automatic mode; the reference is a row loop of
``torch.autograd.grad`` on the eager function (never another backend).

* under ``torch.no_grad()`` the derivative is computed, also for inputs
  that require grad or are non-leaf, and carries no graph;
* ``aux`` stays differentiable with respect to a captured parameter, as under
  ``torch.func``; a Jacobian of a Jacobian of inputs that require no grad
  carries no graph;
* inside ``torch.inference_mode()``: the derivative where the installed
  ``torch.func`` computes it, a ``RuntimeError`` where it returns zeros.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
from _helpers import reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.eager._grad_modes import inference_mode_derivatives

F64 = torch.float64


def energy(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * x.roll(1)).sum()


def field(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * x.sum() + x.roll(1) ** 2  # 6 rows: the vectorised path in automatic


def _kw(backend: Optional[str]) -> Any:
    return {} if backend is None else {"backend": backend}


INPUTS = {
    "plain": lambda: torch.linspace(0.1, 0.9, 6, dtype=F64),
    "requires-grad leaf": lambda: torch.linspace(0.1, 0.9, 6, dtype=F64).requires_grad_(True),
    "non-leaf": lambda: torch.linspace(0.1, 0.9, 6, dtype=F64).requires_grad_(True) * 1.0,
    "view": lambda: torch.linspace(0.1, 1.7, 12, dtype=F64).reshape(6, 2)[:, 0],
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_no_grad_still_differentiates(backend: Optional[str], kind: str) -> None:
    x = INPUTS[kind]()
    with torch.no_grad():
        jac = ta.jacrev(field, **_kw(backend))(x)
        hess = ta.hessian(energy, **_kw(backend))(x)
        jac_aux, aux = ta.jacrev(lambda t: (field(t), t.sum()), has_aux=True, **_kw(backend))(x)
        j0, j1 = ta.jacrev(lambda a, b: a * b.sum(), argnums=(0, 1), **_kw(backend))(x, x)
        batched = ta.vmap(ta.jacrev(field), **_kw(backend))(torch.stack([x, x * 0.5, x + 1]))
    torch.testing.assert_close(jac, reference_jacobian(field, x))
    torch.testing.assert_close(jac_aux, reference_jacobian(field, x))
    torch.testing.assert_close(hess, reference_hessian(energy, x))
    torch.testing.assert_close(j0, reference_jacobian(lambda a: a * x.sum(), x))
    torch.testing.assert_close(j1, reference_jacobian(lambda b: x * b.sum(), x))
    expected = torch.stack([reference_jacobian(field, s) for s in (x, x * 0.5, x + 1)])
    torch.testing.assert_close(batched, expected)
    for result in (jac, hess, jac_aux, aux, j0, j1, batched):
        assert not result.requires_grad, "a result computed under no_grad carries a graph"


def test_aux_differentiable_wrt_captured_parameter(backend: Optional[str]) -> None:
    w = torch.tensor(2.0, dtype=F64, requires_grad=True)
    x = torch.linspace(0.1, 0.9, 6, dtype=F64)
    _, aux = ta.jacrev(lambda t: (t.sin(), w * 3 + t.sum().detach()), has_aux=True, **_kw(backend))(
        x
    )
    assert aux.requires_grad, "aux lost its graph to the captured parameter"
    (grad,) = torch.autograd.grad(aux, w)
    torch.testing.assert_close(grad, torch.tensor(3.0, dtype=F64))


def test_aux_of_inputs_only_carries_no_graph(backend: Optional[str]) -> None:
    x = torch.linspace(0.1, 0.9, 6, dtype=F64)
    _, aux = ta.jacrev(lambda t: (t.sin(), t.cos()), has_aux=True, **_kw(backend))(x)
    assert not aux.requires_grad
    torch.testing.assert_close(aux, x.cos())


def test_nested_jacobian_carries_no_graph(backend: Optional[str]) -> None:
    a = torch.linspace(0.1, 0.9, 4, dtype=F64)
    c = torch.linspace(1.1, 1.9, 4, dtype=F64)
    inner = ta.jacrev(lambda p, q: (p * q * q).sum(), 1, **_kw(backend))
    result = ta.jacrev(inner, 0, **_kw(backend))(a, c)
    assert not result.requires_grad, "jacrev(jacrev(f, 1), 0) keeps a graph torch.func has not"
    torch.testing.assert_close(result, torch.diag(2 * c))


def test_nested_jacobian_keeps_graph_to_parameters(backend: Optional[str]) -> None:
    w = torch.tensor(1.5, dtype=F64, requires_grad=True)
    x = torch.linspace(0.1, 0.9, 4, dtype=F64)
    hess = ta.hessian(lambda t: w * (t**3).sum(), **_kw(backend))(x)
    assert hess.requires_grad
    (grad,) = torch.autograd.grad(hess.sum(), w)
    torch.testing.assert_close(grad, (6 * x).sum())


@pytest.mark.parametrize("transform", ["jacrev", "hessian", "vmap(jacrev)"])
def test_inference_mode(backend: Optional[str], transform: str) -> None:
    x = torch.linspace(0.1, 0.9, 6, dtype=F64)
    build = {
        "jacrev": lambda: ta.jacrev(field, **_kw(backend)),
        "hessian": lambda: ta.hessian(energy, **_kw(backend)),
        "vmap(jacrev)": lambda: ta.vmap(ta.jacrev(field), **_kw(backend)),
    }[transform]
    arg = torch.stack([x, x + 1, x * 2]) if transform == "vmap(jacrev)" else x
    if transform == "jacrev":
        expected = reference_jacobian(field, x)
    elif transform == "hessian":
        expected = reference_hessian(energy, x)
    else:
        expected = torch.stack([reference_jacobian(field, s) for s in arg])
    fn = build()
    with torch.inference_mode():
        arg = arg.clone()  # an inference tensor, as users have there
        if not inference_mode_derivatives():
            with pytest.raises(RuntimeError, match="inference_mode"):
                fn(arg)
            return
        result = fn(arg)
    torch.testing.assert_close(result, expected)


def test_bfloat16_vectorised_rows(backend: Optional[str]) -> None:
    """Six rows take automatic mode's vectorised path; torch.eye lacks bfloat16 on torch 2.0."""
    x = torch.linspace(0.1, 0.9, 6)
    result = ta.jacrev(torch.sin, **_kw(backend))(x.to(torch.bfloat16))
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result.float(), torch.diag(x.cos()), rtol=2e-2, atol=2e-2)


def test_constant_block_is_differentiable_as_under_torch_func(backend: Optional[str]) -> None:
    """torch.func computes all rows in one joint backward pass: every block has a graph."""
    x = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    identity, sine = ta.jacrev(lambda t: (t, t.sin()), **_kw(backend))(x)
    assert identity.requires_grad and sine.requires_grad
    torch.testing.assert_close(identity, torch.eye(2, dtype=F64))
    (grad,) = torch.autograd.grad(identity.sum() + sine.sum(), x)
    torch.testing.assert_close(grad, -x.detach().sin())


def test_hessian_blocks_carry_graphs_as_jacrev_of_jacrev(backend: Optional[str]) -> None:
    a = torch.tensor(0.3, dtype=F64, requires_grad=True)
    b = torch.tensor(0.5, dtype=F64, requires_grad=True)
    blocks = ta.hessian(lambda p, q: q.sin(), (0, 1), **_kw(backend))(a, b)
    assert [[t.requires_grad for t in row] for row in blocks] == [[False, True], [False, True]]
    torch.testing.assert_close(blocks[1][1], -b.detach().sin())


def test_aux_carries_no_graph_in_inference_mode(backend: Optional[str]) -> None:
    if not inference_mode_derivatives():
        pytest.skip("this torch's torch.func does not differentiate inside inference_mode")
    w = torch.tensor(1.25, dtype=F64, requires_grad=True)
    x = torch.tensor([0.3, -0.2], dtype=F64)
    with torch.inference_mode():
        jac, aux = ta.jacrev(lambda t: (t.sin(), t.sum() * w), has_aux=True, **_kw(backend))(x)
    assert not aux.requires_grad and not jac.requires_grad
    torch.testing.assert_close(jac, torch.diag(x.cos()))


def test_vmap_returns_an_input_itself(backend: Optional[str]) -> None:
    xs = torch.randn(3, 2, dtype=F64, requires_grad=True)
    with torch.no_grad():
        sine, same = ta.vmap(lambda t: (t.sin(), t), **_kw(backend))(xs)
    assert same is xs
    torch.testing.assert_close(sine, xs.detach().sin())
