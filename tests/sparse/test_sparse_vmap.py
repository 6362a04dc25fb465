"""``vmap`` over a sparse derivative: one sparse result per sample, stacked.

Torch's ``vmap`` cannot batch sparse tensors, so a transform backend's
``vmap`` raises a ``NotImplementedError`` saying so (before any product is
computed) and automatic mode falls back to the loop with a warning quoting
that reason whole.  The dense ``values`` are batched without a fallback.
Compared with a loop of independent per-sample references on every backend
and in automatic mode.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _sparse_models import DT, banded_rhs, chain_energy, functional_hessian

import tad_autograd as ta
from tad_autograd.dispatch._registry import REGISTRY

from _helpers import reference_jacobian  # isort: skip

REASON = (
    "returns a sparse tensor, which torch's vmap cannot batch; vmap its .values "
    "(dense, vectorised) or vmap it with backend='autograd' (a loop), as automatic mode does"
)


def _samples(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return x + 0.1 * torch.randn(3, *x.shape, generator=g, dtype=DT)


def _vmapped_everywhere(derivative, xs: torch.Tensor, expected: torch.Tensor, backend) -> None:
    """vmap on the autograd backend, in automatic mode, and on ``backend`` when it transforms."""
    looped = torch.stack([derivative(x) for x in xs])
    for sparse in (ta.vmap(derivative, backend="autograd")(xs), looped):
        assert sparse.layout == torch.sparse_coo and sparse.shape == expected.shape
        torch.testing.assert_close(sparse.to_dense(), expected, rtol=1e-10, atol=1e-12)
    with pytest.warns(ta.BackendFallbackWarning) as record:
        automatic = ta.vmap(derivative)(xs)
    torch.testing.assert_close(automatic.to_dense(), expected, rtol=1e-10, atol=1e-12)
    assert any(REASON + ")" in str(w.message) for w in record), [str(w.message) for w in record]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second warning
        ta.vmap(derivative)(xs)
    if backend is not None and REGISTRY.get(backend).is_transform:
        with pytest.raises(NotImplementedError, match="torch's vmap cannot batch"):
            ta.vmap(derivative, backend=backend)(xs)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_vmap_of_a_sparse_jacobian(backend, mode: str) -> None:
    func, pattern, x = banded_rhs(8, 1)
    xs = _samples(x)
    expected = torch.stack([reference_jacobian(func, s) for s in xs])
    jac = ta.sparse_jacobian(func, pattern, mode=mode, backend=backend)
    _vmapped_everywhere(jac, xs, expected, backend)


def test_vmap_of_a_sparse_hessian(backend) -> None:
    energy, pattern, x = chain_energy(8)
    xs = _samples(x)
    expected = torch.stack([functional_hessian(energy, s) for s in xs])
    _vmapped_everywhere(ta.sparse_hessian(energy, pattern, backend=backend), xs, expected, backend)


def _values_of(dense: torch.Tensor, derivative) -> torch.Tensor:
    """The entries of each sample's dense reference at the pattern's (row-sorted) entries."""
    rows, cols = torch.tensor(derivative.pattern.pairs()).T
    return dense[:, rows, cols]


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_vmap_of_sparse_jacobian_values_is_vectorised(backend, mode: str) -> None:
    func, pattern, x = banded_rhs(8, 1)
    xs = _samples(x)
    jac = ta.sparse_jacobian(func, pattern, mode=mode, backend=backend)
    expected = _values_of(torch.stack([reference_jacobian(func, s) for s in xs]), jac)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        values = ta.vmap(jac.values, backend=backend)(xs)
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(values[1], jac(xs[1]).values(), rtol=1e-12, atol=1e-14)
    if backend is not None and REGISTRY.get(backend).is_transform:  # one call for the batch
        calls = []
        counted = ta.sparse_jacobian(
            lambda u: calls.append(1) or func(u), pattern, mode=mode, backend=backend
        )
        ta.vmap(counted.values, backend=backend)(xs)
        assert len(calls) == 1


@pytest.mark.parametrize("kind", ["symmetric", "star", "column"])
def test_vmap_of_sparse_hessian_values_is_vectorised(backend, kind: str) -> None:
    energy, pattern, x = chain_energy(8)
    xs = _samples(x)
    hess = ta.sparse_hessian(energy, pattern, kind=kind, backend=backend)
    expected = _values_of(torch.stack([functional_hessian(energy, s) for s in xs]), hess)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = ta.vmap(hess.values, backend=backend)(xs)
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=1e-12)


def test_values_with_check_cannot_be_batched(backend) -> None:
    func, pattern, x = banded_rhs(8, 1)
    jac = ta.sparse_jacobian(func, pattern, check=True, backend=backend)
    torch.testing.assert_close(jac.values(x), jac(x).values(), rtol=0, atol=0)
    if backend is not None and REGISTRY.get(backend).is_transform:
        with pytest.raises(NotImplementedError, match=r"check=True\).values cannot be batched"):
            ta.vmap(jac.values, backend=backend)(_samples(x))
