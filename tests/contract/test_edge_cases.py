"""Edge cases where a result could silently differ from torch.func or plain autograd (§3-§6).

Each was once wrong; the references are a row loop of ``torch.autograd.grad``
on the eager function, a Python loop, or what ``torch.func`` documents.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import pytest
import torch
from _helpers import reference_jacobian

import tad_autograd as ta

F64 = torch.float64
#: torch's own (wrong) batching rule of cdist's backward in force, its table entry active
needs_defect = pytest.mark.usefixtures("torch_cdist_rule")


def _kw(backend: Optional[str]) -> Any:
    return {} if backend is None else {"backend": backend}


@needs_defect
def test_defective_op_called_through_torch_ops_is_not_vectorised() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(5, 3, dtype=F64, generator=g)
    batch = torch.randn(4, 6, 3, dtype=F64, generator=g)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.cdist(x, y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        result = ta.vmap(ta.jacrev(f))(batch)
    torch.testing.assert_close(result, torch.stack([reference_jacobian(f, s) for s in batch]))


@needs_defect
def test_defective_op_inside_a_custom_function_backward_is_not_vectorised() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(5, 3, dtype=F64, generator=g)

    class Dist(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            d = torch.cdist(x, y)
            ctx.save_for_backward(x, d)
            return d

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            x, d = ctx.saved_tensors
            return torch.ops.aten._cdist_backward(grad.contiguous(), x, y, 2.0, d)

    x = torch.randn(6, 3, dtype=F64, generator=g)
    torch.testing.assert_close(ta.jacrev(Dist.apply)(x), reference_jacobian(Dist.apply, x))


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_randomness_same_with_explicit_generator_and_chunks(
    backend: Optional[str], chunk_size: Optional[int]
) -> None:
    generator = torch.Generator().manual_seed(1)

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand((), generator=generator, dtype=x.dtype)

    out = ta.vmap(noisy, randomness="same", chunk_size=chunk_size, **_kw(backend))(
        torch.zeros(5, 2)
    )
    assert torch.equal(out, out[:1].expand_as(out)), out


@pytest.mark.parametrize("batch", [2, 5])
def test_out_dims_none_for_a_batched_output_is_refused_in_automatic_mode(batch: int) -> None:
    with pytest.raises(ValueError, match="out_dim"):
        ta.vmap(lambda x: x * 2, out_dims=None)(torch.ones(batch, 3))


@pytest.mark.parametrize("sample", [(3,), ()], ids=["vectors", "scalars"])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_in_place_update_of_a_batched_input_reaches_the_caller(
    backend: Optional[str], batch: int, sample: tuple
) -> None:
    """As under torch.func, whatever the batch size, sample shape and backend."""

    def bump(x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x * 2

    x = torch.zeros((batch, *sample))
    out = ta.vmap(bump, **_kw(backend))(x)
    torch.testing.assert_close(x, torch.ones((batch, *sample)))
    torch.testing.assert_close(out, torch.full((batch, *sample), 2.0))


def test_empty_batch(backend: Optional[str]) -> None:
    empty = torch.zeros(0, 3, 3, dtype=F64)
    if backend == "autograd":  # the loop needs one made-up sample for the output's shape
        result = ta.vmap(lambda m: m @ m, **_kw(backend))(empty)
    else:
        result = ta.vmap(torch.linalg.inv, **_kw(backend))(empty)
    assert result.shape == (0, 3, 3)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="randomness"):
        ta.vmap(lambda v: v + torch.rand(()), **_kw(backend))(torch.zeros(0, 2))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("in_dims", [True, (True,)])
def test_bool_in_dims_is_a_type_error(backend: Optional[str], in_dims: Any) -> None:
    with pytest.raises(TypeError, match="in_dims"):
        ta.vmap(torch.sum, in_dims=in_dims, **_kw(backend))(torch.ones(3, 2))


def test_aux_returning_the_input_is_the_input(backend: Optional[str]) -> None:
    x = torch.tensor([0.3, 0.2], dtype=F64, requires_grad=True)
    with torch.no_grad():
        jac, aux = ta.jacrev(lambda t: (t.sin(), t), has_aux=True, **_kw(backend))(x)
    assert aux is x
    torch.testing.assert_close(jac, torch.diag(x.detach().cos()))
