"""Sparse Jacobians and Hessians, on every backend and in automatic mode.

Each model's result is compared with the dense result of the same backend
*and* with independent references (a row loop of ``torch.autograd.grad``,
``torch.autograd.functional``, finite differences through ``gradcheck``).
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from _helpers import OldStyleExp, reference_hessian
from _sparse_models import (
    DT,
    HESSIAN_MODELS,
    JACOBIAN_MODELS,
    band,
    banded_rhs,
    chain_energy,
    column_dense,
    functional_hessian,
    gradcheck_sparse,
    reference_jacobian,
)

import tad_autograd as ta
from tad_autograd.eager._grad_modes import inference_mode_derivatives


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = DT) -> None:
    f64 = dtype == torch.float64
    torch.testing.assert_close(
        actual.detach(),
        expected.detach().to(dtype),
        rtol=1e-10 if f64 else 1e-5,
        atol=1e-12 if f64 else 1e-6,
    )


def _check_layout(result: torch.Tensor, pattern: torch.Tensor) -> None:
    """A coalesced COO tensor whose entries are exactly the pattern's, sorted row-major."""
    assert result.layout == torch.sparse_coo and result.is_coalesced()
    assert result.shape == pattern.shape
    rows, cols = pattern.nonzero(as_tuple=True)
    assert torch.equal(result.indices(), torch.stack([rows, cols]))


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("model", list(JACOBIAN_MODELS))
def test_sparse_jacobian_equals_dense_and_reference(backend, model: str, mode: str) -> None:
    func, pattern, x = JACOBIAN_MODELS[model]()
    reference = reference_jacobian(func, x)
    assert not reference[~pattern].any(), "the model's pattern misses a non-zero"
    jac = ta.sparse_jacobian(func, pattern, mode=mode, backend=backend)
    result = jac(x)
    _check_layout(result, pattern)
    _close(result.to_dense(), reference)
    _close(result.to_dense(), ta.jacrev(func, backend=backend)(x).reshape(pattern.shape))
    assert jac.n_colours >= jac.lower_bound and jac.mode == mode


@pytest.mark.parametrize("model", list(JACOBIAN_MODELS))
def test_sparse_jacobian_matches_finite_differences(backend, model: str) -> None:
    func, pattern, x = JACOBIAN_MODELS[model]()
    assert gradcheck_sparse(func, ta.sparse_jacobian(func, pattern, backend=backend)(x), x)


@pytest.mark.parametrize("model", list(HESSIAN_MODELS))
def test_sparse_hessian_equals_dense_and_reference(backend, model: str) -> None:
    _check_hessian(backend, model, "symmetric")


@pytest.mark.parametrize("kind", ["star", "column"])
@pytest.mark.parametrize("model", list(HESSIAN_MODELS))
def test_other_hessian_colourings_automatic_mode(model: str, kind: str) -> None:
    _check_hessian(None, model, kind)


def _check_hessian(backend, model: str, kind: str) -> None:
    energy, pattern, x = HESSIAN_MODELS[model]()
    reference = functional_hessian(energy, x)
    assert not reference[~pattern].any(), "the model's pattern misses a non-zero"
    hess = ta.sparse_hessian(energy, pattern, kind=kind, backend=backend)
    result = hess(x)
    _check_layout(result, pattern)
    _close(result.to_dense(), reference)
    n = x.numel()
    _close(result.to_dense(), ta.hessian(energy, backend=backend)(x).reshape(n, n))


@pytest.mark.parametrize("model", list(HESSIAN_MODELS))
def test_sparse_hessian_matches_finite_differences_of_the_gradient(backend, model: str) -> None:
    energy, pattern, x = HESSIAN_MODELS[model]()

    def gradient(t: torch.Tensor) -> torch.Tensor:  # plain autograd: independent of the library
        with torch.enable_grad():
            t = t.detach().requires_grad_(True)
            return torch.autograd.grad(energy(t), t)[0].reshape(-1)

    hess = ta.sparse_hessian(energy, pattern, backend=backend)
    assert gradcheck_sparse(gradient, hess(x), x)


def test_cutoff_hessian_needs_fewer_products_than_the_dense_one() -> None:
    energy, pattern, x = HESSIAN_MODELS["cutoff_pairs"]()
    counts = {
        k: ta.sparse_hessian(energy, pattern, kind=k).n_colours
        for k in ("symmetric", "star", "column")
    }
    assert counts["symmetric"] <= counts["star"] <= counts["column"] < x.numel()


def _two_material_chain(n: int, stiff: str) -> torch.Tensor:
    """A spring chain's tridiagonal Hessian: bonds of one half 1e8 times stiffer."""
    g = torch.Generator().manual_seed(0)
    off = torch.rand(n - 1, generator=g, dtype=DT) + 0.5
    half = slice(n // 2, None) if stiff == "right" else slice(None, n // 2)
    off[half] *= 1e8
    diag = torch.rand(n, generator=g, dtype=DT) + 1.0
    return torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)


@pytest.mark.parametrize("n", [40, 41])
@pytest.mark.parametrize("stiff", ["left", "right"])
def test_substitution_keeps_small_entries_beside_large_ones(backend, n: int, stiff: str) -> None:
    """kind="symmetric" recovers O(1) entries to rtol 1e-10 although the tree holds 1e8 ones."""
    h = _two_material_chain(n, stiff)
    x = torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(1))

    def energy(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ h @ x

    expected = reference_hessian(energy, x)
    assert torch.equal(expected != 0, h != 0)
    sparse = ta.sparse_hessian(energy, h != 0, kind="symmetric", backend=backend)
    assert sparse.n_colours == 2  # one two-coloured tree: the whole chain
    torch.testing.assert_close(sparse(x).to_dense(), expected, rtol=1e-10, atol=0)


def test_float32(backend) -> None:
    func, pattern, x = banded_rhs()
    reference = reference_jacobian(func, x)
    for mode in ("forward", "reverse"):
        result = ta.sparse_jacobian(func, pattern, mode=mode, backend=backend)(x.float())
        assert result.dtype == torch.float32
        _close(result.to_dense(), reference, torch.float32)
    energy, hpattern, y = chain_energy()
    result = ta.sparse_hessian(energy, hpattern, backend=backend)(y.float())
    assert result.dtype == torch.float32
    _close(result.to_dense(), functional_hessian(energy, y), torch.float32)


def test_argnums_kwargs_and_shapes(backend) -> None:
    """A (3, 4) argument at argnums=1, a (2, 6) output, keyword arguments passed through."""
    w = torch.randn(12, 12, dtype=DT) * band(12, 1)

    def f(scale, x, *, shift):
        return (scale * torch.tanh(w @ x.reshape(-1) + shift)).reshape(2, 6)

    x, scale = torch.randn(3, 4, dtype=DT), torch.tensor(2.0, dtype=DT)
    pattern = band(12, 1)
    for argnums in (1, -1):
        result = ta.sparse_jacobian(f, pattern, argnums, backend=backend)(scale, x, shift=0.5)
        expected = reference_jacobian(lambda t: f(scale, t, shift=0.5), x)
        _close(result.to_dense(), expected)

    def energy(scale, x, *, shift):
        return scale * ((x.reshape(-1)[1:] - x.reshape(-1)[:-1] + shift) ** 4).sum()

    result = ta.sparse_hessian(energy, pattern, 1, backend=backend)(scale, x, shift=0.5)
    _close(result.to_dense(), functional_hessian(lambda t: energy(scale, t, shift=0.5), x))


def test_old_style_function_in_automatic_mode_and_autograd_backend() -> None:
    """A function only plain autograd can differentiate: automatic mode falls back."""
    func, pattern, x = banded_rhs(10, 1)

    def f(u):
        return func(u) * OldStyleExp.apply(u)

    reference = reference_jacobian(f, x)
    for mode in ("forward", "reverse"):
        _close(
            ta.sparse_jacobian(f, pattern, mode=mode, backend="autograd")(x).to_dense(), reference
        )
        jac = ta.sparse_jacobian(f, pattern, mode=mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            first = jac(x)
        _close(first.to_dense(), reference)
        _close(jac(x).to_dense(), reference)  # remembered: no second warning (errors here)


def test_index_pairs_take_their_shape_from_the_call(backend) -> None:
    """Pairs carry no shape: trailing rows and columns without entries come from func."""
    x = torch.randn(6, dtype=DT)

    def f(x):
        return torch.cat([x[:3] ** 2, torch.zeros(4, dtype=x.dtype)])

    pairs = [(0, 0), (1, 1), (2, 2)]
    result = ta.sparse_jacobian(f, pairs, backend=backend)(x)
    assert result.shape == (7, 6)
    _close(result.to_dense(), reference_jacobian(f, x))
    as_tensor = ta.sparse_jacobian(f, torch.tensor(pairs), mode="forward", backend=backend)(x)
    _close(as_tensor.to_dense(), result.to_dense())


def test_sparse_tensor_patterns_and_results_as_patterns() -> None:
    func, pattern, x = JACOBIAN_MODELS["random"]()
    first = ta.sparse_jacobian(func, pattern)(x)
    with warnings.catch_warnings():  # torch's "CSR support is in beta" on creating one
        warnings.simplefilter("ignore", UserWarning)
        csr = pattern.double().to_sparse_csr()
    for again in (first, csr, pattern.to_sparse()):
        _close(ta.sparse_jacobian(func, again)(x).to_dense(), first.to_dense())


def test_empty_pattern_gives_zeros(backend) -> None:
    x = torch.randn(4, dtype=DT)
    result = ta.sparse_jacobian(
        lambda t: t.sum().reshape(1) * 0, torch.zeros(1, 4, dtype=torch.bool), backend=backend
    )(x)
    assert result.shape == (1, 4) and result._nnz() == 0
    hess = ta.sparse_hessian(lambda t: t.sum(), [], backend=backend)(x)
    assert hess.shape == (4, 4) and hess._nnz() == 0


def test_chunk_size_gives_the_same_result(backend) -> None:
    func, pattern, x = banded_rhs()
    whole = ta.sparse_jacobian(func, pattern, backend=backend)(x)
    for mode in ("forward", "reverse"):
        chunked = ta.sparse_jacobian(func, pattern, mode=mode, chunk_size=2, backend=backend)(x)
        _close(chunked.to_dense(), whole.to_dense())
    energy, hpattern, y = chain_energy()
    h = ta.sparse_hessian(energy, hpattern, chunk_size=1, backend=backend)(y)
    _close(h.to_dense(), functional_hessian(energy, y))


def test_check_option(backend) -> None:
    func, pattern, x = banded_rhs(12, 2)
    ta.sparse_jacobian(func, pattern, check=True, backend=backend)(x)  # the right pattern passes
    narrow = band(12, 1)
    with pytest.raises(ValueError, match=r"outside the sparsity pattern are not zero: \(0, 2\)"):
        ta.sparse_jacobian(func, narrow, check=True, backend=backend)(x)
    energy, hpattern, y = chain_energy(10)
    ta.sparse_hessian(energy, hpattern, check=True, backend=backend)(y)
    with pytest.raises(ValueError, match="dense Hessian outside the sparsity pattern"):
        ta.sparse_hessian(energy, band(10, 1), check=True, backend=backend)(y)


# Badly scaled rows: a stiff pair of rows of scale ``big`` and a soft row coupled weakly
# (``small``) to the stiff variables; the missed entry is tiny beside ``big`` but not
# beside its own row (``where="row"``) or its own column (``where="column"``).
_SCALES = {torch.float64: (1e8, 0.009), torch.float32: (1e4, 0.05)}


def _stiff_rhs(dtype: torch.dtype, where: str):
    big, small = _SCALES[dtype]

    def rhs(u: torch.Tensor) -> torch.Tensor:
        fast = -big * u[0] + big * u[1] ** 2
        slow = -u[2] + (small * u[0] if where == "row" else 0)
        return torch.stack([fast, -fast - u[1] + (small * u[2] if where == "column" else 0), slow])

    right = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    missed = (2, 0) if where == "row" else (1, 2)
    wrong = right.clone()
    right[missed] = True
    return rhs, right, wrong, missed, torch.tensor([0.2, 0.4, 0.7], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("where", ["row", "column"])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_check_catches_a_missed_entry_small_beside_other_rows(backend, dtype, where, mode) -> None:
    """A missed entry counts against the scale of its own row or column, not the matrix's."""
    rhs, right, wrong, missed, u = _stiff_rhs(dtype, where)
    expected = reference_jacobian(rhs, u)
    assert float(expected[missed]) == pytest.approx(_SCALES[dtype][1])
    label = rf"1 entry .*\({missed[0]}, {missed[1]}\)"
    with pytest.raises(ValueError, match=f"sparse_jacobian\\(check=True\\): {label}"):
        ta.sparse_jacobian(rhs, wrong, mode=mode, check=True, backend=backend)(u)
    J = ta.sparse_jacobian(rhs, right, mode=mode, check=True, backend=backend)(u)
    _close(J.to_dense(), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_check_catches_a_missed_hessian_entry_small_beside_other_rows(backend, dtype) -> None:
    big, small = _SCALES[dtype]

    def energy(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * big * (x[0] - x[1]) ** 2 + 0.5 * x[2] ** 2 + small * x[0] * x[2]

    x = torch.tensor([0.3, -0.2, 0.5], dtype=dtype)
    expected = functional_hessian(energy, x)
    with pytest.raises(ValueError, match=r"dense Hessian outside .* \(0, 2\) = "):
        ta.sparse_hessian(energy, band(3, 1), check=True, backend=backend)(x)
    H = ta.sparse_hessian(energy, torch.ones(3, 3, dtype=torch.bool), check=True, backend=backend)
    _close(H(x).to_dense(), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_check_passes_rounding_noise_of_a_right_pattern(backend, dtype) -> None:
    """A row whose derivative is zero but comes out as rounding noise is no missed entry."""
    big = _SCALES[dtype][0]

    def func(u: torch.Tensor) -> torch.Tensor:
        return torch.stack([big * u[0] * u[1], torch.softmax(u * 3, 0).sum()])

    u = torch.tensor([0.3, -1.1, 0.25, 2.0], dtype=dtype)
    pattern = torch.zeros(2, 4, dtype=torch.bool)
    pattern[0, :2] = True
    noise = reference_jacobian(func, u)[1]
    J = ta.sparse_jacobian(func, pattern, check=True, backend=backend)(u)
    assert float(noise.abs().max()) < 1e3 * torch.finfo(dtype).eps  # noise, perhaps not 0
    _close(J.to_dense()[0], reference_jacobian(func, u)[0], dtype)


def _pattern_forms(dense: torch.Tensor) -> dict:
    """The same pattern in every form ``sparsity`` takes."""
    pairs = dense.nonzero()
    return {
        "bool": dense,
        "sparse": dense.to(DT).to_sparse(),
        "pairs-list": [tuple(p) for p in pairs.tolist()],
        "pairs-tensor": pairs,
    }


@pytest.mark.parametrize("form", ["bool", "sparse", "pairs-list", "pairs-tensor"])
@pytest.mark.parametrize("empty", [False, True], ids=["missing-entries", "empty"])
@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_check_verifies_every_pattern_form(backend, form, empty, mode) -> None:
    """check=True compares with the dense derivative whatever form the pattern takes, an
    empty pattern (which claims a zero derivative) included."""
    n = 6
    func, x = torch.sin, torch.randn(n, dtype=DT)
    narrow = torch.zeros(n, n, dtype=torch.bool)
    if not empty:
        narrow[torch.arange(n - 1), torch.arange(n - 1)] = True  # misses entry (5, 5)
    sparsity = _pattern_forms(narrow)[form]
    missed = "6 entries" if empty else r"1 entry .*\(5, 5\)"
    with pytest.raises(ValueError, match=f"sparse_jacobian\\(check=True\\): {missed}"):
        ta.sparse_jacobian(func, sparsity, mode=mode, check=True, backend=backend)(x)
    whole = _pattern_forms(torch.eye(n, dtype=torch.bool))[form]
    J = ta.sparse_jacobian(func, whole, mode=mode, check=True, backend=backend)(x)
    _close(J.to_dense(), torch.diag(torch.cos(x)))


@pytest.mark.parametrize("form", ["bool", "sparse", "pairs-list", "pairs-tensor"])
@pytest.mark.parametrize("empty", [False, True], ids=["missing-entries", "empty"])
def test_check_verifies_every_hessian_pattern_form(backend, form, empty) -> None:
    n = 5
    energy, y = (lambda x: (x**3).sum()), torch.randn(n, dtype=DT)
    narrow = torch.zeros(n, n, dtype=torch.bool)
    if not empty:
        narrow[0, 0] = True
    sparsity = _pattern_forms(narrow)[form]
    with pytest.raises(ValueError, match=r"sparse_hessian\(check=True\): \d+ entr"):
        ta.sparse_hessian(energy, sparsity, check=True, backend=backend)(y)
    whole = _pattern_forms(torch.eye(n, dtype=torch.bool))[form]
    H = ta.sparse_hessian(energy, whole, check=True, backend=backend)(y)
    _close(H.to_dense(), torch.diag(6 * y))


@pytest.mark.parametrize("form", ["bool", "sparse", "pairs-list", "pairs-tensor"])
def test_check_passes_an_empty_pattern_of_a_zero_derivative(backend, form) -> None:
    empty = _pattern_forms(torch.zeros(3, 4, dtype=torch.bool))[form]
    x = torch.randn(4, dtype=DT)
    J = ta.sparse_jacobian(lambda x: torch.ones(3, dtype=DT), empty, check=True, backend=backend)(x)
    assert J._nnz() == 0 and J.shape == (3, 4)
    hempty = _pattern_forms(torch.zeros(4, 4, dtype=torch.bool))[form]
    H = ta.sparse_hessian(lambda x: x.sum(), hempty, check=True, backend=backend)(x)
    assert H._nnz() == 0 and H.shape == (4, 4)


def test_auto_mode_takes_the_side_with_fewer_colours() -> None:
    func, pattern, x = column_dense()
    forward = ta.sparse_jacobian(func, pattern)
    assert (forward.mode, forward.n_colours) == ("forward", 2)
    assert ta.sparse_jacobian(func, pattern, mode="reverse").n_colours == pattern.shape[0]
    rows = ta.sparse_jacobian(lambda t: t, pattern.T.contiguous())
    assert (rows.mode, rows.n_colours) == ("reverse", 2)
    tie = ta.sparse_jacobian(func, band(8, 1))
    assert tie.mode == "reverse"


def test_hessian_pattern_is_symmetrised() -> None:
    energy, pattern, x = chain_energy(8)
    upper = pattern.triu()
    result = ta.sparse_hessian(energy, upper)(x)
    _check_layout(result, pattern)
    _close(result.to_dense(), functional_hessian(energy, x))


def test_results_are_differentiable_like_the_dense_ones(backend) -> None:
    func, pattern, x = banded_rhs(10, 1)
    x = x.clone().requires_grad_(True)
    for mode in ("forward", "reverse"):
        sparse = ta.sparse_jacobian(func, pattern, mode=mode, backend=backend)(x)
        dense = ta.jacrev(func, backend=backend)(x)
        assert sparse.requires_grad == dense.requires_grad
        if dense.requires_grad:
            weights = torch.randn(pattern.shape, dtype=DT) * pattern
            (got,) = torch.autograd.grad((sparse.to_dense() * weights).sum(), x)
            (expected,) = torch.autograd.grad((dense * weights).sum(), x)
            _close(got, expected)


def test_no_side_effects(backend) -> None:
    func, pattern, x = banded_rhs(10, 1)
    x = x.clone().requires_grad_(True)
    x.grad = torch.ones_like(x)
    version, state = x._version, torch.get_rng_state()
    grad_mode = torch.is_grad_enabled()
    ta.sparse_jacobian(func, pattern, check=True, backend=backend)(x)
    energy, hpattern, y = chain_energy(10)
    ta.sparse_hessian(energy, hpattern, backend=backend)(y)
    ta.detect_sparsity(func, x, backend=backend)
    assert x.requires_grad and torch.equal(x.grad, torch.ones_like(x)) and x._version == version
    assert torch.equal(torch.get_rng_state(), state) and torch.is_grad_enabled() == grad_mode
    with torch.no_grad():  # derivatives are still computed under no_grad, as in torch.func
        _close(
            ta.sparse_jacobian(func, pattern, backend=backend)(x).to_dense(),
            reference_jacobian(func, x),
        )


def test_threads_share_one_operator(backend) -> None:
    """One pre-built operator called from several threads at once gives each its own answer."""
    func, pattern, _ = banded_rhs(12, 2)
    energy, hpattern, _ = chain_energy(12)
    ops = {
        "forward": ta.sparse_jacobian(func, pattern, mode="forward", backend=backend),
        "reverse": ta.sparse_jacobian(func, pattern, mode="reverse", backend=backend),
        "hessian": ta.sparse_hessian(energy, hpattern, backend=backend),
    }
    inputs = [torch.randn(12, dtype=DT) for _ in range(4)]
    errors: list = []

    def work(x: torch.Tensor) -> None:
        try:
            for _ in range(3):
                for name, op in ops.items():
                    expected = (
                        functional_hessian(energy, x)
                        if name == "hessian"
                        else reference_jacobian(func, x)
                    )
                    _close(op(x).to_dense(), expected)
        except Exception as error:  # noqa: BLE001 - reported below, with the thread's input
            errors.append(error)

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_inference_mode(backend) -> None:
    """Right values where torch.func differentiates inside inference_mode, else a clear error."""
    func, pattern, x = banded_rhs(8, 1)
    energy, hpattern, y = chain_energy(8)
    jacobian_ref, hessian_ref = reference_jacobian(func, x), functional_hessian(energy, y)
    with torch.inference_mode():
        if inference_mode_derivatives():
            for mode in ("forward", "reverse"):
                result = ta.sparse_jacobian(func, pattern, mode=mode, backend=backend)(x)
                _close(result.to_dense(), jacobian_ref)
            _close(ta.sparse_hessian(energy, hpattern, backend=backend)(y).to_dense(), hessian_ref)
        else:
            with pytest.raises(RuntimeError, match="inference_mode"):
                ta.sparse_jacobian(func, pattern, backend=backend)(x)
            with pytest.raises(RuntimeError, match="inference_mode"):
                ta.sparse_hessian(energy, hpattern, backend=backend)(y)


def test_kept_seeds_are_plain_tensors(backend) -> None:
    """The seeds an operator keeps for later calls (and other threads) belong to no transform."""
    func, pattern, _ = banded_rhs(12, 2)
    energy, hpattern, _ = chain_energy(12)
    ops = [
        ta.sparse_jacobian(func, pattern, mode="forward", backend=backend),
        ta.sparse_jacobian(func, pattern, mode="reverse", backend=backend),
        ta.sparse_hessian(energy, hpattern, backend=backend),
    ]
    x = torch.randn(12, dtype=DT)
    for op in ops:
        for _ in range(2):
            op(x)
        assert op._seeds, op
        assert not any(ta.is_transformed(seed) for seed in op._seeds.values()), op
