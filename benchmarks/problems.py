"""The physical and toy models the benchmarks differentiate.

The Lennard-Jones energy is not defined here: the benchmarks use the
library's reference model, :func:`tad_autograd.report.lennard_jones`.  Its
positions come from :func:`cluster` below rather than from
:func:`tad_autograd.report.cluster`, which has one fixed seed (the ``vmap``
grid needs ``B`` distinct structures, the Hessian grid another seed) and
Gaussian jitter (pair distances down to ~0.88 at 1000 atoms; here >= 0.94).

Every problem is built once in float64 ("master" data) and cast to the
benchmarked dtype; the reference result of a cell is computed in float64
from the *cast* data, so float32 cells are checked against exact values of
the very inputs they were given.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

LATTICE = 1.12  # ~ the Lennard-Jones minimum 2**(1/6)
JITTER = 0.05  # keeps every pair distance >= 1.12 - 2*sqrt(3)*0.05 > 0.94


def cluster(n_atoms: int, seed: int = 0) -> torch.Tensor:
    """A compact, non-overlapping random cluster: jittered simple-cubic lattice, (N, 3) float64.

    The atoms nearest the lattice's centre, each moved by at most ``JITTER``
    per coordinate (uniform), so every structure of every seed is a valid
    input of the Lennard-Jones and Morse energies.
    """
    g = torch.Generator().manual_seed(seed)
    side = math.ceil(n_atoms ** (1.0 / 3.0)) + 1
    r = torch.arange(side, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    centre = grid.mean(0)
    order = torch.argsort(((grid - centre) ** 2).sum(-1) + 1e-6 * torch.arange(len(grid)))
    pos = grid[order[:n_atoms]] * LATTICE
    pos = pos + JITTER * (2 * torch.rand(pos.shape, generator=g, dtype=torch.float64) - 1)
    return pos


def morse_energy(n_atoms: int, device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Morse pair-potential energy (D = 1, a = 1.5, r0 = 1.12) of ``pos`` (N, 3)."""
    i, j = torch.triu_indices(n_atoms, n_atoms, 1, device=device)

    def energy(pos: torch.Tensor) -> torch.Tensor:
        d = pos[i] - pos[j]
        r = torch.sqrt((d * d).sum(-1))
        return ((1.0 - torch.exp(-1.5 * (r - LATTICE))) ** 2).sum()

    return energy


def tanh_layer(n: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(W, x)`` float64 for f(x) = tanh(W x), W (n, n) ~ N(0, 1/n), x (n,) ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return w, x


def make_tanh(w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w @ x)

    return f


def make_wide(a: torch.Tensor, b: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x) = A tanh(B x): a Jacobian whose rows each need a wide (hidden-size) backward pass."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return a @ torch.tanh(b @ x)

    return f


def batch_of_clusters(batch: int, n_atoms: int, seed: int = 0) -> torch.Tensor:
    """(B, N, 3) float64: ``batch`` independently jittered clusters."""
    return torch.stack([cluster(n_atoms, seed + b) for b in range(batch)])


class OldStyleSquare(torch.autograd.Function):
    """x**2 as an old-style custom Function (``forward(ctx, x)``, no ``setup_context``).

    torch.func cannot transform it, so automatic mode falls back to ``"autograd"``.
    """

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2.0 * x * grad


def make_fallback_fn(w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w @ OldStyleSquare.apply(x))

    return f
