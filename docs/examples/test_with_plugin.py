"""Example test module for the ``autograd_backend`` fixture (shown in docs/testing.rst).

Run it with the plugin loaded, which happens automatically when tad_autograd
is installed (``pytest11`` entry point), or explicitly::

    python -m pytest -p tad_autograd.testing.plugin docs/examples/test_with_plugin.py
"""

import pytest
import torch

import tad_autograd as ta


def lj_energy(pos):
    i, j = torch.triu_indices(pos.shape[0], pos.shape[0], offset=1)
    sr6 = (1.0 / (pos[i] - pos[j]).norm(dim=-1)) ** 6
    return (4.0 * (sr6**2 - sr6)).sum()


POS = torch.tensor(
    [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.0], [0.0, 0.0, 1.3]],
    dtype=torch.float64,
)


def test_forces_sum_to_zero(autograd_backend):
    # Runs once per available backend, inside use_backend(autograd_backend).
    assert ta.get_backend() == autograd_backend
    forces = -ta.jacrev(lj_energy)(POS)
    assert torch.allclose(forces.sum(0), torch.zeros(3, dtype=torch.float64))


@pytest.mark.autograd_backends("func", "autograd")
def test_hessian_is_symmetric(autograd_backend):
    # Only these two; "func" is reported as skipped on torch < 2.0.
    h = ta.hessian(lj_energy)(POS).reshape(12, 12)
    assert torch.allclose(h, h.T)
