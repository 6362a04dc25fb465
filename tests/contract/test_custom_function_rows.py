"""Rows through custom autograd.Functions: vectorised unless their backward hides a defect (§3, §8).

A custom Function's backward is Python that the autograd engine runs outside
any torch function mode.  Automatic mode watches it *as it runs* in the
vectorised backward pass: a backward that calls an op whose batched
derivative the installed torch gets wrong (or runs a backward pass of its
own) makes the rows loop; a harmless one is vectorised.  References: a row
loop of ``torch.autograd.grad`` on the eager function.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterator, Optional

import pytest
import torch
from _helpers import assert_tree_close, make_new_style_exp, reference_hessian, reference_jacobian

import tad_autograd as ta
import tad_autograd.compat._transform_failures as failures
from tad_autograd.compat._torch_info import TORCH_VERSION
from tad_autograd.compat.batching_defects import BatchingDefect
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.eager._rows import last_rows_decision, note_rows

F64 = torch.float64
needs_torch2 = pytest.mark.skipif(
    TORCH_VERSION.major < 2, reason="a vmap rule for an autograd.Function needs torch >= 2.0"
)
#: torch's own (wrong) batching rule of cdist's backward in force, its table entry active
needs_cdist_defect = pytest.mark.usefixtures("torch_cdist_rule")


def _kw(backend: Optional[str]) -> Dict[str, Any]:
    return {} if backend is None else {"backend": backend}


def _explicit_transform(backend: Optional[str]) -> bool:
    return backend is not None and REGISTRY.get(backend).is_transform


def _dist_function(y: torch.Tensor) -> Any:
    """Distances to ``y``; its backward calls cdist's backward directly (batched wrongly)."""

    class Dist(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return torch.cdist(x, y)

        @staticmethod
        def setup_context(ctx: Any, inputs: Any, output: Any) -> None:  # type: ignore[override]
            ctx.save_for_backward(inputs[0], output)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            x, d = ctx.saved_tensors
            return torch.ops.aten._cdist_backward(grad.contiguous(), x, y, 2.0, d)

    return Dist


@needs_torch2
@needs_cdist_defect
def test_defective_op_in_a_custom_backward_gives_the_row_loop_answer(
    backend: Optional[str],
) -> None:
    if _explicit_transform(backend):
        pytest.skip("an explicitly chosen transform backend runs torch's own batching rule")
    g = torch.Generator().manual_seed(0)
    dist = _dist_function(torch.randn(5, 3, dtype=F64, generator=g)).apply
    x = torch.randn(6, 3, dtype=F64, generator=g)
    note_rows("")
    assert_tree_close(ta.jacrev(dist, **_kw(backend))(x), reference_jacobian(dist, x))
    if backend is None:
        assert last_rows_decision() == "looped: custom Function Dist's backward calls cdist"
        assert "Dist's backward calls cdist" in str(ta.explain(x))


@pytest.fixture
def sinh_is_defective(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend this torch batches ``sinh``'s derivative wrongly (a table entry of our own)."""
    fake = BatchingDefect(
        op="sinh",
        since="0",
        fixed_in=None,
        nodes=frozenset(),
        callables=("torch.sinh", "torch.Tensor.sinh"),
        what="injected by a test",
    )
    real = failures.defective_callables

    def callables(stage: Any = None) -> Dict[Any, BatchingDefect]:
        found = dict(real(stage))
        stages = (stage,) if isinstance(stage, str) else stage
        if stages is None or "derivative" in stages:
            found.update({torch.sinh: fake, torch.Tensor.sinh: fake})
        return found

    monkeypatch.setattr(failures, "defective_callables", callables)
    monkeypatch.setattr(failures, "_WATCH_CALLABLES", {})
    monkeypatch.setattr(failures, "_STAGES", failures._STAGES | {"derivative"})
    yield


class _SavesItsInput(torch.autograd.Function):
    """A new-style Function (vmap rule generated) whose backward reads its input."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:  # type: ignore[override]
        ctx.save_for_backward(inputs[0])


class _SinhBackward(_SavesItsInput):
    """cosh(x) * x, its backward built on sinh (an op a test may declare defective)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cosh(x) * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (torch.sinh(x) * x + torch.cosh(x))


def _through_sinh(x: torch.Tensor) -> torch.Tensor:
    return _SinhBackward.apply(x.sin()).sum() * x


@needs_torch2
@pytest.mark.usefixtures("sinh_is_defective")
def test_a_defect_in_a_custom_backward_loops_the_rows(backend: Optional[str]) -> None:
    x = torch.linspace(-1, 1, 6, dtype=F64)
    note_rows("")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        jac = ta.jacrev(_through_sinh, **_kw(backend))(x)
        hess = ta.hessian(lambda t: _through_sinh(t).sum(), **_kw(backend))(x)
    assert_tree_close(jac, reference_jacobian(_through_sinh, x))
    assert_tree_close(hess, reference_hessian(lambda t: _through_sinh(t).sum(), x))
    if backend is None:
        assert last_rows_decision() == (
            "looped: custom Function _SinhBackward's backward calls sinh"
        )


@needs_torch2
def test_a_harmless_custom_function_is_vectorised(backend: Optional[str]) -> None:
    exp = make_new_style_exp()

    def f(x: torch.Tensor) -> torch.Tensor:
        return exp.apply(torch.tanh(x) * x.sum())

    x = torch.linspace(-1, 1, 6, dtype=F64)
    note_rows("")
    assert_tree_close(ta.jacrev(f, **_kw(backend))(x), reference_jacobian(f, x))
    if backend is None:
        assert last_rows_decision() == "vectorised"
    hess = ta.hessian(lambda t: f(t).sum(), **_kw(backend))(x)
    assert_tree_close(hess, reference_hessian(lambda t: f(t).sum(), x))
    if backend is None:
        assert last_rows_decision() == "vectorised"
        assert ta.explain(x).rows == "vectorised"


class _NestedGrad(_SavesItsInput):
    """x ** 3, its backward a backward pass of its own (whose ops no watch sees)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x**3

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        w = torch.ones((), dtype=x.dtype, requires_grad=True)
        with torch.enable_grad():
            (dw,) = torch.autograd.grad((w * 3).sum(), w)
        return grad * dw.detach() * x**2


@needs_torch2
@needs_cdist_defect
def test_a_backward_pass_inside_a_custom_backward_loops_the_rows(backend: Optional[str]) -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return _NestedGrad.apply(x) * 2

    x = torch.linspace(-1, 1, 6, dtype=F64)
    note_rows("")
    assert_tree_close(ta.jacrev(f, **_kw(backend))(x), reference_jacobian(f, x))
    if backend is None:
        decision = last_rows_decision()
        assert decision is not None and decision.startswith("looped"), decision


@needs_torch2
@needs_cdist_defect
def test_defective_op_in_a_custom_backward_inside_a_transform(backend: Optional[str]) -> None:
    """``vmap(jacrev)``: the Function's backward runs inside the transform, watched there."""
    if _explicit_transform(backend):
        pytest.skip("an explicitly chosen transform backend runs torch's own batching rule")
    g = torch.Generator().manual_seed(1)
    dist = _dist_function(torch.randn(5, 3, dtype=F64, generator=g)).apply
    batch = torch.randn(3, 6, 3, dtype=F64, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ta.vmap(ta.jacrev(dist, **_kw(backend)), **_kw(backend))(batch)
    assert_tree_close(result, torch.stack([reference_jacobian(dist, s) for s in batch]))
    if backend is None:
        reasons = [str(w.message) for w in caught if w.category is ta.BackendFallbackWarning]
        assert any("cdist" in r for r in reasons), reasons


def _nested_dist_function(y: torch.Tensor) -> Any:
    """Distances to ``y`` (p=1); its backward applies a second custom Function whose
    forward runs cdist's backward (batched wrongly), hidden from a watch of the backward."""

    class Pullback(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            d = torch.cdist(x, y, p=1)
            return torch.ops.aten._cdist_backward(grad.contiguous(), x, y, 1.0, d)

        @staticmethod
        def setup_context(ctx: Any, inputs: Any, output: Any) -> None:  # type: ignore[override]
            pass

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
            raise RuntimeError("not differentiated twice here")

    class Dist(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            ctx.save_for_backward(x)
            return torch.cdist(x, y, p=1)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            (x,) = ctx.saved_tensors
            return Pullback.apply(x, grad)

    return Dist


@needs_torch2
@needs_cdist_defect
def test_a_custom_function_applied_in_a_custom_backward_is_watched(
    backend: Optional[str],
) -> None:
    if _explicit_transform(backend):
        pytest.skip("an explicitly chosen transform backend runs torch's own batching rule")
    g = torch.Generator().manual_seed(1)
    dist = _nested_dist_function(torch.randn(4, 3, dtype=F64, generator=g)).apply
    x = torch.randn(5, 3, dtype=F64, generator=g)
    assert_tree_close(ta.jacrev(dist, **_kw(backend))(x), reference_jacobian(dist, x))


@needs_cdist_defect
def test_vmap_of_a_vjp_function_through_a_defective_op(backend: Optional[str]) -> None:
    """The rows of a Jacobian as users take them, ``vmap(vjp_fn)(identity)``, through cdist."""
    if _explicit_transform(backend):
        pytest.skip("an explicitly chosen transform backend runs torch's own batching rule")
    g = torch.Generator().manual_seed(2)
    y = torch.randn(4, 3, dtype=F64, generator=g)
    x = torch.randn(5, 3, dtype=F64, generator=g)

    def f(a: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a, y, p=1).reshape(-1)

    _, vjp_fn = ta.vjp(f, x, **_kw(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        (rows,) = ta.vmap(vjp_fn, **_kw(backend))(torch.eye(20, dtype=F64))
    assert_tree_close(rows, reference_jacobian(f, x))
