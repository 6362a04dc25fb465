"""Bad input to the sparse operators: every mistake raises, naming what was given.

Pattern mistakes that need the function's shapes surface at the call, in
every backend and in automatic mode, with the same type; the rest when the
operator is built.  Nothing is silently accepted.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _sparse_models import DT, band, banded_rhs, chain_energy

import tad_autograd as ta
from tad_autograd.errors import UnknownBackendError


def test_jacobian_pattern_of_the_wrong_shape_names_both_shapes(backend) -> None:
    func, _, x = banded_rhs(8, 1)
    for mode in ("forward", "reverse"):
        jac = ta.sparse_jacobian(func, band(8, 1, m=7), mode=mode, backend=backend)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning either: the retry fails alike
            with pytest.raises(ValueError, match=r"shape \(7, 8\).*shape \(8, 8\)"):
                jac(x)
    pairs = ta.sparse_jacobian(func, [(0, 0), (3, 9)], backend=backend)
    with pytest.raises(ValueError, match=r"at least shape \(4, 10\).*has shape \(8, 8\)"):
        pairs(x)


def test_hessian_pattern_of_the_wrong_shape(backend) -> None:
    energy, _, x = chain_energy(6)
    with pytest.raises(ValueError, match=r"shape \(5, 5\).*Hessian of func has shape \(6, 6\)"):
        ta.sparse_hessian(energy, band(5, 1), backend=backend)(x)
    with pytest.raises(ValueError, match=r"must be square.*\(6, 5\)"):
        ta.sparse_hessian(energy, band(5, 1, m=6))


@pytest.mark.parametrize(
    "sparsity, needle",
    [
        (torch.ones(3, 3), "must be a bool tensor, got dtype torch.float32"),
        (torch.ones(3, 3, 3, dtype=torch.bool), r"2 dimensions.*\(3, 3, 3\)"),
        (torch.ones(3, 3, dtype=torch.long), r"shape \(nnz, 2\), got shape \(3, 3\)"),
        (torch.tensor([[0, -1]]), "non-negative"),
        ([(0, 1, 2)], "pairs of ints"),
        ([(0.5, 1)], "pairs of ints"),
        ([(True, 1)], "pairs of ints"),
        (torch.ones(2, 2, 2).to_sparse(), "2 dimensions"),
    ],
)
def test_malformed_patterns_raise_value_error_at_once(sparsity, needle: str) -> None:
    f = lambda x: x  # noqa: E731
    for build in (
        lambda: ta.sparse_jacobian(f, sparsity),
        lambda: ta.sparse_hessian(f, sparsity),
        lambda: ta.colouring(sparsity),
    ):
        with pytest.raises(ValueError, match=needle):
            build()


def test_pattern_of_another_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="got str"):
        ta.sparse_jacobian(lambda x: x, "banded")


def test_bad_options() -> None:
    f, pattern = (lambda x: x), band(4, 1)
    with pytest.raises(ValueError, match="mode must be one of.*'sideways'"):
        ta.sparse_jacobian(f, pattern, mode="sideways")
    with pytest.raises(ValueError, match="kind must be one of.*'row'"):
        ta.sparse_hessian(f, pattern, kind="row")
    with pytest.raises(ValueError, match="chunk_size"):
        ta.sparse_jacobian(f, pattern, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        ta.sparse_hessian(f, pattern, chunk_size="2")
    with pytest.raises(TypeError, match="check must be a bool"):
        ta.sparse_jacobian(f, pattern, check="yes")
    with pytest.raises(UnknownBackendError):
        ta.sparse_jacobian(f, pattern, backend="nope")
    with pytest.raises(TypeError, match="callable"):
        ta.sparse_hessian(3, pattern)
    with pytest.raises(ValueError, match="kind must be one of"):
        ta.colouring(pattern, kind="diagonal")
    with pytest.raises(ValueError, match="order must be one of"):
        ta.colouring(pattern, order="random")
    with pytest.raises(ValueError, match="square"):
        ta.colouring(band(4, 1, m=3), kind="symmetric")
    with pytest.raises(ValueError, match="probes"):
        ta.detect_sparsity(f, torch.zeros(2), probes=0)
    with pytest.raises(ValueError, match="scale"):
        ta.detect_sparsity(f, torch.zeros(2), scale=-1.0)


def test_argnums_mistakes() -> None:
    f, pattern, x = lambda x, y: x * y, band(3, 0), torch.ones(3, dtype=DT)
    for op in (ta.sparse_jacobian, ta.sparse_hessian):
        with pytest.raises(NotImplementedError, match=r"argnums must be an int.*\(0, 1\)"):
            op(f, pattern, (0, 1))
        with pytest.raises(RuntimeError, match="argnums must be int"):
            op(f, pattern, "0")
        with pytest.raises(RuntimeError, match="out of range"):
            op(f, pattern, 2)(x, x)
    with pytest.raises(NotImplementedError, match="argnums must be an int"):
        ta.detect_sparsity(f, x, x, argnums=(0,))


def test_arguments_and_outputs_that_cannot_be_differentiated(backend) -> None:
    pattern = band(3, 0)
    x = torch.ones(3, dtype=DT)
    with pytest.raises(RuntimeError, match="dtype torch.int64"):
        ta.sparse_jacobian(lambda t: t, pattern, backend=backend)(torch.ones(3, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="one tensor"):
        ta.sparse_jacobian(lambda d: d["a"], pattern, backend=backend)({"a": x})
    for mode in ("forward", "reverse"):
        with pytest.raises(NotImplementedError, match="must return one tensor, got tuple"):
            ta.sparse_jacobian(lambda t: (t, t), pattern, mode=mode, backend=backend)(x)
        with pytest.raises(RuntimeError, match="dtype torch.int64"):
            ta.sparse_jacobian(lambda t: (t > 0).long(), pattern, mode=mode, backend=backend)(x)
    with pytest.raises(RuntimeError, match=r"must return a scalar.*\(3,\)"):
        ta.sparse_hessian(lambda t: t**2, pattern, backend=backend)(x)
    with pytest.raises(RuntimeError, match="complex128"):
        ta.sparse_jacobian(lambda t: t, pattern, backend=backend)(x.to(torch.complex128))
