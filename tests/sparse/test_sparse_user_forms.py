"""Patterns and colourings as users hold them: NumPy arrays, SciPy sparse matrices, own colourings.

Results are compared with independent references (a row loop of
``torch.autograd.grad`` on the eager function), on every backend and in
automatic mode.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _sparse_models import band, banded_rhs, chain_energy, functional_hessian, random_sparse

import tad_autograd as ta

from _helpers import reference_jacobian  # isort: skip

SCIPY_FORMATS = ("coo", "csr", "csc", "bsr", "lil", "dok", "dia")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.to_dense(), expected, rtol=1e-10, atol=1e-12)


@pytest.fixture
def scipy_sparse():
    """``scipy.sparse``; the tests that use it are skipped where SciPy is not installed."""
    return pytest.importorskip("scipy.sparse")


def _scipy_forms(scipy_sparse, mask: torch.Tensor) -> dict:
    """The mask as a SciPy sparse matrix of every format, and as sparse arrays.

    Each maps to the pattern it stores: the mask, but for ``dia``, which stores
    every in-bounds entry of each diagonal holding one of the mask's entries.
    """
    dense = mask.numpy()
    r, c = mask.nonzero(as_tuple=True)
    offsets = torch.arange(mask.shape[1])[None, :] - torch.arange(mask.shape[0])[:, None]
    diagonals = torch.isin(offsets, torch.unique(c - r))
    forms = {
        fmt: (scipy_sparse.coo_matrix(dense).asformat(fmt), diagonals if fmt == "dia" else mask)
        for fmt in SCIPY_FORMATS
    }
    forms["csr_array"] = (scipy_sparse.csr_array(dense), mask)
    forms["coo_array"] = (scipy_sparse.coo_array(dense), mask)
    return forms


def _check_forms(backend, forms: dict, func, x: torch.Tensor) -> None:
    """Each form ``label: (pattern, the bool mask of its entries)`` gives the Jacobian."""
    expected = reference_jacobian(func, x)
    for label, (form, mask) in forms.items():
        for mode in ("forward", "reverse", "auto"):
            jac = ta.sparse_jacobian(func, form, mode=mode, backend=backend)
            result = jac(x)
            assert torch.equal(result.indices(), torch.stack(mask.nonzero(as_tuple=True))), label
            _close(result, expected)
        assert torch.equal(ta.colouring(form), ta.colouring(mask)), label


def test_numpy_patterns_give_the_jacobian(backend) -> None:
    func, pattern, x = random_sparse()
    forms = {
        "numpy bool": (pattern.numpy(), pattern),
        "numpy 0/1": (pattern.numpy().astype(np.int32), pattern),
    }
    _check_forms(backend, forms, func, x)


def test_scipy_patterns_give_the_jacobian(backend, scipy_sparse) -> None:
    func, pattern, x = random_sparse()
    _check_forms(backend, _scipy_forms(scipy_sparse, pattern), func, x)


def test_scipy_pattern_gives_the_hessian(backend, scipy_sparse) -> None:
    energy, pattern, x = chain_energy(12)
    upper = scipy_sparse.triu(scipy_sparse.csr_matrix(pattern.numpy()))  # symmetrised
    _close(ta.sparse_hessian(energy, upper, backend=backend)(x), functional_hessian(energy, x))


def test_scipy_stored_zeros_are_part_of_the_pattern(scipy_sparse) -> None:
    matrix = scipy_sparse.csr_matrix((np.array([0.0, 2.0]), (np.array([0, 1]), np.array([1, 0]))))
    assert ta.sparse_jacobian(lambda x: x.flip(0), matrix).pattern.pairs() == [(0, 1), (1, 0)]


def _band_with_stored_zeros(scipy_sparse, n: int) -> dict:
    """A tridiagonal pattern in every SciPy format, its entries (1, 0) and (3, 4) stored zeros."""
    pairs = band(n, 1).nonzero()
    data = np.ones(pairs.shape[0])
    for r, c in ((1, 0), (3, 4)):
        data[int(((pairs[:, 0] == r) & (pairs[:, 1] == c)).nonzero())] = 0.0
    where = (pairs[:, 0].numpy(), pairs[:, 1].numpy())
    forms = {}
    for kind in ("matrix", "array"):
        coo = getattr(scipy_sparse, f"coo_{kind}")((data, where), shape=(n, n))
        forms.update({f"{fmt}_{kind}": coo.asformat(fmt) for fmt in SCIPY_FORMATS})
        diagonals = np.ones((3, n))
        diagonals[0, 0] = diagonals[2, 4] = 0.0  # data[k, j] is the entry (j - offset[k], j)
        forms[f"dia_{kind} built"] = getattr(scipy_sparse, f"dia_{kind}")(
            (diagonals, [-1, 0, 1]), shape=(n, n)
        )
    return forms


def test_scipy_stored_zeros_of_every_format_are_part_of_the_pattern(backend, scipy_sparse) -> None:
    """Every format, ``dia`` included, keeps its explicitly stored zeros in the pattern."""
    func, pattern, x = banded_rhs(8, 1)
    expected = reference_jacobian(func, x)
    assert bool((expected[1, 0] != 0) & (expected[3, 4] != 0))
    for label, form in _band_with_stored_zeros(scipy_sparse, 8).items():
        jac = ta.sparse_jacobian(func, form, backend=backend)
        assert jac.pattern.nnz == form.nnz == int(pattern.sum()), label
        result = jac(x)
        assert torch.equal(result.indices(), torch.stack(pattern.nonzero(as_tuple=True))), label
        _close(result, expected)


@pytest.mark.parametrize(
    "array, needle",
    [
        (np.ones((3, 3)), "bool or 0/1 integer array, got dtype float64"),
        (np.ones((2, 2, 2), dtype=bool), r"2 dimensions.*\(2, 2, 2\)"),
        (np.array([[0, 2], [1, 1]]), "values other than 0 and 1.*torch.from_numpy"),
    ],
)
def test_malformed_numpy_patterns_raise_value_error(array: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ta.sparse_jacobian(lambda x: x, array)


def test_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SciPy: every other form works and the error lists the forms; nothing imports it."""
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    func, pattern, x = banded_rhs(8, 1)
    _close(ta.sparse_jacobian(func, pattern.numpy())(x), reference_jacobian(func, x))
    with pytest.raises(TypeError, match="a SciPy sparse matrix or array; got object"):
        ta.colouring(object())
    code = "import sys, tad_autograd; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- colouring=


@pytest.mark.parametrize("form", ["tensor", "numpy", "list"])
def test_own_colourings_are_used_as_given(backend, form: str) -> None:
    func, pattern, x = banded_rhs(10, 1)
    expected = reference_jacobian(func, x)
    cyclic = torch.arange(10) % 5  # valid, with more colours than needed: kept as it is
    given = {"tensor": cyclic, "numpy": cyclic.numpy(), "list": cyclic.tolist()}[form]
    for mode in ("forward", "reverse"):
        jac = ta.sparse_jacobian(func, pattern, mode=mode, colouring=given, backend=backend)
        assert jac.mode == mode and jac.n_colours == 5 and jac.colours.tolist() == cyclic.tolist()
        assert "5 " in repr(jac)
        _close(jac(x), expected)


def test_own_row_colouring_of_a_wide_pattern(backend) -> None:
    func, pattern, x = random_sparse(6, 9, density=0.3)
    rows = list(range(6))  # every row its own colour: always orthogonal
    jac = ta.sparse_jacobian(func, pattern, mode="reverse", colouring=rows, backend=backend)
    _close(jac(x), reference_jacobian(func, x))


@pytest.mark.parametrize(
    "kind, colours",
    [
        ("column", [0, 1, 2, 3, 4] * 2),
        ("star", [0, 1, 2, 3, 4] * 2),
        ("symmetric", [0, 1, 2] * 3 + [0]),
    ],
)
def test_own_hessian_colourings(backend, kind: str, colours: list) -> None:
    energy, pattern, x = chain_energy(10)  # pentadiagonal
    hess = ta.sparse_hessian(energy, pattern, kind=kind, colouring=colours, backend=backend)
    assert hess.colours.tolist() == colours
    _close(hess(x), functional_hessian(energy, x))


@pytest.mark.parametrize(
    "colouring, mode, needle",
    [
        (
            [0, 1, 0, 1, 0, 1],
            "forward",
            r"columns 0 and 2 share colour 0 but both have entries in row 1",
        ),
        (
            [0, 1, 0, 1, 0, 1],
            "reverse",
            r"rows 0 and 2 share colour 0 but both have entries in column 1",
        ),
        ([0, 1, 2], "forward", r"one colour per column of the pattern \(6\), got 3"),
        ([0, 1, 2, 0, 1, -2], "forward", "non-negative integers, got -2"),
        ([0, 1, 2, 0, 1, 2.0], "forward", "integer colours, got 2.0"),
        (torch.tensor([0.0, 1.0]), "forward", "integer colours, got a tensor of torch.float32"),
        (torch.ones(6, dtype=torch.bool), "forward", "integer colours"),
        (np.zeros(6), "reverse", "integer colours, got a NumPy array of float64"),
        (torch.zeros(2, 3, dtype=torch.long), "forward", r"1 dimension\), got shape \(2, 3\)"),
        ([0, 1, 2, 0, 1, 2], "auto", "name the mode: mode='forward'"),
    ],
)
def test_bad_colourings_raise_value_error_naming_the_problem(colouring, mode, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        ta.sparse_jacobian(lambda x: x, band(6, 1), mode=mode, colouring=colouring)


def test_bad_hessian_colourings_name_the_offending_pair() -> None:
    f, pattern = (lambda x: x.sum()), band(6, 1)
    with pytest.raises(
        ValueError, match="columns 0 and 2 share colour 0 but both have entries in row 1"
    ):
        ta.sparse_hessian(f, pattern, kind="column", colouring=[0, 1, 0, 1, 0, 1])
    with pytest.raises(
        ValueError, match=r"entry \(1, 2\) can be read from neither side \(columns 2 and 0"
    ):
        ta.sparse_hessian(f, pattern, kind="star", colouring=[0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="adjacent vertices 0 and 1 share colour 0"):
        ta.sparse_hessian(f, pattern, kind="star", colouring=[0, 0, 1, 2, 0, 1])
    cycle = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])  # a 4-cycle
    with pytest.raises(ValueError, match="not an acyclic colouring.*closes a two-coloured cycle"):
        ta.sparse_hessian(f, cycle, colouring=[0, 1, 0, 1])
    with pytest.raises(TypeError, match="got str"):
        ta.sparse_hessian(f, pattern, colouring="greedy")


def test_own_colouring_of_index_pairs_must_fit_the_call(backend) -> None:
    func, _, x = banded_rhs(8, 1)
    pairs = [(r, c) for r in range(8) for c in range(8) if abs(r - c) <= 1 and c < 7]
    with pytest.raises(ValueError, match="needs at least 7 colours"):
        ta.sparse_jacobian(func, pairs, mode="forward", colouring=[0, 1, 2])
    jac = ta.sparse_jacobian(
        func, pairs, mode="forward", colouring=[0, 1, 2] * 2 + [0], backend=backend
    )
    with pytest.raises(
        ValueError, match=r"colouring has 7 colours, but the Jacobian of func has 8 columns"
    ):
        jac(x)
    full = ta.sparse_jacobian(
        func, pairs, mode="forward", colouring=[0, 1, 2] * 2 + [0, 1], backend=backend
    )
    expected = reference_jacobian(func, x)
    expected[:, 7] = 0  # the pattern leaves column 7 out
    _close(full(x), expected)
