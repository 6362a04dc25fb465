"""Rows through backward hooks: watched as they run, looped where one hides a defect (§3, §8).

A tensor hook (``register_hook``), a graph node's hook or pre-hook and a
module's full backward hook are Python the autograd engine calls during a
backward pass, out of sight of any torch function mode.  Inside a vectorised
pass a hook's own ops are batched: one that calls an op whose batched
derivative the installed torch gets wrong (or runs a backward pass of its
own) must make the rows loop; a harmless one leaves them vectorised.
References: a row loop of ``torch.autograd.grad`` on the eager function.
An explicitly chosen transform backend returns what :mod:`torch.func`
returns (a documented difference), so it is left out where that is wrong.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from _helpers import assert_tree_close, reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.eager._rows import last_rows_decision, note_rows

F64 = torch.float64
#: torch's own (wrong) batching rule of cdist's backward in force, its table entry active
needs_cdist_defect = pytest.mark.usefixtures("torch_cdist_rule")
_B = torch.linspace(-1.0, 1.0, 12, dtype=F64).reshape(4, 3)


def _kw(backend: Optional[str]) -> Dict[str, Any]:
    return {} if backend is None else {"backend": backend}


def _skip_explicit_transform(backend: Optional[str]) -> None:
    if backend is not None and REGISTRY.get(backend).is_transform:
        pytest.skip("an explicitly chosen transform backend batches the hook as torch.func does")


_A = torch.linspace(0.0, 2.0, 15, dtype=F64).reshape(5, 3).requires_grad_(True)


def _through_cdist(g: torch.Tensor) -> torch.Tensor:
    """``g`` plus a vjp of ``cdist(A, B, p=1)`` with cotangent ``g``: a hook that runs a
    backward pass of its own through an op batched wrongly."""
    with torch.enable_grad():
        (ga,) = torch.autograd.grad(torch.cdist(_A, _B, p=1), _A, g[:20].reshape(5, 4))
    return g + torch.cat([ga.reshape(-1), ga.reshape(-1)[:5]])


def _tensor_hooked(hook: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def f(x: torch.Tensor) -> torch.Tensor:
        y = x.sin()
        if y.requires_grad:
            y.register_hook(hook)
        return y * 2.0 + x**2

    return f


def _node_hooked(x: torch.Tensor) -> torch.Tensor:
    y = x.sin()
    if y.requires_grad:  # a pre-hook on the node: it changes the gradient flowing in
        y.grad_fn.register_prehook(lambda grads: (_through_cdist(grads[0]),))
    return y * 2.0


class _Shift(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sin() * 1.5


def _module_hooked() -> Callable[..., Any]:
    module = _Shift()
    module.register_full_backward_hook(lambda m, gin, gout: (_through_cdist(gin[0]),))

    def f(x: torch.Tensor) -> torch.Tensor:
        return module(x) * 2.0

    return f


X = torch.linspace(-1.0, 1.0, 20, dtype=F64)


def _assert_vmapped_vjp_rows(f: Callable[..., Any], backend: Optional[str]) -> None:
    """A ``vmap`` of ``f``'s vjp function over the identity gives the reference Jacobian."""
    _, vjp_fn = ta.vjp(f, X, **_kw(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        (rows,) = ta.vmap(vjp_fn, **_kw(backend))(torch.eye(20, dtype=F64))
    assert_tree_close(rows, reference_jacobian(f, X))


@needs_cdist_defect
@pytest.mark.parametrize("kind", ["tensor", "node", "module"])
def test_a_hook_calling_a_defective_op_gives_the_row_loop_answer(
    backend: Optional[str], kind: str
) -> None:
    _skip_explicit_transform(backend)
    f = {"tensor": _tensor_hooked(_through_cdist), "node": _node_hooked}.get(kind)
    f = f if f is not None else _module_hooked()
    note_rows("")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # module hooks on inputs that need no grad
        got = ta.jacrev(f, **_kw(backend))(X)
        ref = reference_jacobian(f, X)
    assert_tree_close(got, ref)
    if backend is None:
        decision = last_rows_decision()
        assert decision is not None and decision.startswith("looped"), decision


@needs_cdist_defect
def test_a_hook_calling_a_defective_op_in_second_order_and_vjp_functions(
    backend: Optional[str],
) -> None:
    _skip_explicit_transform(backend)
    f = _tensor_hooked(_through_cdist)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return f(x).pow(2).sum()

    assert_tree_close(ta.hessian(energy, **_kw(backend))(X), reference_hessian(energy, X))
    _assert_vmapped_vjp_rows(f, backend)


@needs_cdist_defect
def test_graph_jacobian_through_a_hook_calling_a_defective_op() -> None:
    f = _tensor_hooked(_through_cdist)
    x = X.clone().requires_grad_(True)
    out = f(x)
    note_rows("")
    assert_tree_close(ta.graph_jacobian(out, x), reference_jacobian(f, X))
    decision = last_rows_decision()
    assert decision is not None and decision.startswith("looped"), decision


def test_a_harmless_hook_is_vectorised(backend: Optional[str]) -> None:
    f = _tensor_hooked(lambda g: g * torch.cos(g) + 1.0)
    note_rows("")
    assert_tree_close(ta.jacrev(f, **_kw(backend))(X), reference_jacobian(f, X))
    if backend is None:
        assert last_rows_decision() == "vectorised"


def _output_hooked(kind: str) -> Callable[..., Any]:
    """A hook calling a defective op on the returned output itself (its tensor or its node):
    the engine runs it first, before any other hook of the pass."""

    def f(x: torch.Tensor) -> torch.Tensor:
        y = x.sin() * 2.0 + x**2
        if y.requires_grad and kind == "tensor":
            y.register_hook(_through_cdist)
        elif y.requires_grad:
            y.grad_fn.register_prehook(lambda grads: (_through_cdist(grads[0]),))
        return y

    return f


@needs_cdist_defect
@pytest.mark.parametrize("kind", ["tensor", "node"])
def test_a_hook_on_the_returned_output_gives_the_row_loop_answer(
    backend: Optional[str], kind: str
) -> None:
    _skip_explicit_transform(backend)
    f = _output_hooked(kind)
    note_rows("")
    assert_tree_close(ta.jacrev(f, **_kw(backend))(X), reference_jacobian(f, X))
    if backend is None:
        decision = last_rows_decision()
        assert decision is not None and decision.startswith("looped"), decision
    _assert_vmapped_vjp_rows(f, backend)


@needs_cdist_defect
@pytest.mark.parametrize("size", [3, 5])
def test_a_vmap_of_derivatives_through_a_hook_calling_a_defective_op(
    backend: Optional[str], size: int
) -> None:
    """Batched by a vmap around (more samples than a vmap loops), the derivative runs inside
    a transform: its hooks must be watched there too."""
    _skip_explicit_transform(backend)
    f = _tensor_hooked(_through_cdist)
    xs = torch.stack([X * (1.0 + 0.1 * k) for k in range(size)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ta.BackendFallbackWarning)
        jacobians = ta.vmap(ta.jacrev(f, **_kw(backend)), **_kw(backend))(xs)

        def row(v: torch.Tensor) -> torch.Tensor:
            return ta.vjp(f, X, **_kw(backend))[1](v)[0]

        rows = ta.vmap(row, **_kw(backend))(torch.eye(20, dtype=F64)[:size])
    assert_tree_close(jacobians, torch.stack([reference_jacobian(f, x) for x in xs]))
    if backend is None:  # the automatic vmap fell back to a loop, and said so
        assert any(issubclass(w.category, ta.BackendFallbackWarning) for w in caught)
    assert_tree_close(rows, reference_jacobian(f, X)[:size])
