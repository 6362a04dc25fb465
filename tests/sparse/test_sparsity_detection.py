"""detect_sparsity: never misses an entry that is non-zero at the probes, on every test model.

The reference is the set of non-zero entries of the dense Jacobian (a row
loop of ``torch.autograd.grad``) at the given point and at other random
points; the structural patterns of the models bound the result from above.
"""

from __future__ import annotations

import pytest
import torch
from _sparse_models import (
    DT,
    HESSIAN_MODELS,
    JACOBIAN_MODELS,
    cutoff_pair_energy,
    functional_hessian,
    lattice,
    neighbour_pattern,
    reference_jacobian,
)

import tad_autograd as ta


@pytest.mark.parametrize("model", list(JACOBIAN_MODELS))
def test_jacobian_patterns_are_found(backend, model: str) -> None:
    func, structure, x = JACOBIAN_MODELS[model]()
    found = ta.detect_sparsity(func, x, backend=backend)
    assert found.dtype == torch.bool and found.shape == structure.shape
    g = torch.Generator().manual_seed(11)
    for point in (x, x + torch.randn(x.shape, generator=g, dtype=DT)):
        nonzero = reference_jacobian(func, point) != 0
        assert not (nonzero & ~found).any(), "an entry non-zero at a point was missed"
    assert not (found & ~structure).any()  # and nothing that cannot be non-zero
    assert torch.equal(found, structure)  # these models are non-zero wherever they can be


@pytest.mark.parametrize("model", list(HESSIAN_MODELS))
def test_hessian_patterns_are_found(model: str) -> None:
    energy, structure, x = HESSIAN_MODELS[model]()
    found = ta.detect_sparsity(energy, x, hessian=True)
    assert found.shape == (x.numel(), x.numel())
    nonzero = functional_hessian(energy, x) != 0
    assert not (nonzero & ~found).any()
    if model != "cutoff_pairs":
        assert torch.equal(found, structure)


def test_cutoff_pattern_is_local_to_the_probes() -> None:
    """Pairs inside the cutoff at some probe are found; pairs far beyond it never are."""
    pos = lattice()
    found = ta.detect_sparsity(cutoff_pair_energy, pos, hessian=True)
    at_pos = neighbour_pattern(pos)
    reach = 0.1 * (pos.abs().max() + 1) * 2  # the largest change of a distance at the probes
    assert not (at_pos & ~found).any()
    assert not (found & ~neighbour_pattern(pos, float(1.6 + reach))).any()


def test_a_coincidental_zero_at_the_given_point_is_found() -> None:
    def f(x):
        return x[0] * x[1]

    at_zero = ta.detect_sparsity(f, torch.zeros(2, dtype=DT), probes=1)
    assert at_zero.tolist() == [[False, False]]  # one probe sees d/dx0 = x1 = 0 only
    assert ta.detect_sparsity(f, torch.zeros(2, dtype=DT)).tolist() == [[True, True]]


def test_what_it_documents_it_can_miss() -> None:
    """A derivative that vanishes on a region around every probe is missed, as documented."""

    def f(x):
        return torch.relu(x) + x[0]

    x = torch.tensor([1.0, -5.0, -5.0], dtype=DT)
    found = ta.detect_sparsity(f, x)
    assert found[:, 0].all() and found[0, 0]
    assert not found[1, 1] and not found[2, 2]  # relu is flat at every probe near -5


def test_reproducible_and_leaves_the_random_state_alone() -> None:
    func, _, x = JACOBIAN_MODELS["banded"]()
    state = torch.get_rng_state()
    first = ta.detect_sparsity(func, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, ta.detect_sparsity(func, x))


def test_other_arguments_and_float32() -> None:
    def f(scale, x):
        return scale * torch.stack([x[0] * x[1], x[2] ** 2])

    found = ta.detect_sparsity(f, torch.tensor(2.0), torch.ones(3), argnums=1)
    assert found.tolist() == [[True, True, False], [False, False, True]]


def test_detected_pattern_drives_the_sparse_operators() -> None:
    for name in ("banded", "random"):
        func, _, x = JACOBIAN_MODELS[name]()
        pattern = ta.detect_sparsity(func, x)
        ta.sparse_jacobian(func, pattern, check=True)(x)
    energy, _, y = HESSIAN_MODELS["cutoff_pairs"]()
    ta.sparse_hessian(energy, ta.detect_sparsity(energy, y, hessian=True), check=True)(y)
