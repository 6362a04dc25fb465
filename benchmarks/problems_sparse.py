"""The problems of the ``sparse`` section: banded ODE right-hand sides and a cutoff potential.

* a **tridiagonal** Jacobian: the method-of-lines right-hand side of a 1-D
  reaction-diffusion equation (Allen-Cahn), ``u_t = D u_xx + u - u^3``;
* a **pentadiagonal** Jacobian: the Kuramoto-Sivashinsky equation,
  ``u_t = -u_xx - u_xxxx - u u_x``, with second-order stencils;
* a **pentadiagonal** Hessian: a chain of anharmonic springs between
  neighbours and next neighbours;
* a **cutoff Lennard-Jones** Hessian: ``4 (r^-12 - r^-6) (1 - (r/rc)^2)^2``
  for the pairs closer than ``rc = 2.5`` at the benchmarked configuration (a
  fixed neighbour list, as a molecular-dynamics code keeps between list
  updates), positions from :func:`benchmarks.problems.cluster`.

Each builder returns ``(func, pattern, x)``: the pattern holds every entry
that can be non-zero (as index pairs or a bool tensor).
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from benchmarks.problems import cluster

Problem = Tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor]

#: The Lennard-Jones cutoff (in units of sigma).
CUTOFF = 2.5


def band_pairs(n: int, half_width: int) -> torch.Tensor:
    """``(nnz, 2)`` index pairs of the band ``|i - j| <= half_width`` of an ``n x n`` matrix."""
    i = torch.arange(n)
    rows = torch.cat([i[max(0, -d) : n - max(0, d)] for d in range(-half_width, half_width + 1)])
    cols = torch.cat([i[max(0, d) : n - max(0, -d)] for d in range(-half_width, half_width + 1)])
    return torch.stack([rows, cols], 1)


def stencil(shape: Tuple[int, ...], periodic: bool) -> torch.Tensor:
    """Index pairs of the five-point (2-D) or seven-point (3-D) Laplacian on a grid."""
    n = math.prod(shape)
    idx = torch.arange(n).reshape(shape)
    rows, cols = [idx.reshape(-1)], [idx.reshape(-1)]
    for d in range(len(shape)):
        for step in (1, -1):
            keep = torch.ones(shape, dtype=torch.bool)
            if not periodic:
                edge = [slice(None)] * len(shape)
                edge[d] = -1 if step == 1 else 0
                keep[tuple(edge)] = False
            rows.append(idx[keep])
            cols.append(torch.roll(idx, -step, d)[keep])
    return torch.stack([torch.cat(rows), torch.cat(cols)], 1)


def _pad(u: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.pad(u, (k, k))


def allen_cahn(n: int) -> Problem:
    """Tridiagonal: ``D (u[i-1] - 2 u[i] + u[i+1]) / h^2 + u - u^3``, zero boundary values."""
    h = 1.0 / (n + 1)
    g = torch.Generator().manual_seed(n)
    x = 0.5 * torch.sin(torch.linspace(0, 3.14159, n, dtype=torch.float64))
    x = x + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)

    def rhs(u: torch.Tensor) -> torch.Tensor:
        p = _pad(u, 1)
        return 1e-3 * (p[:-2] - 2 * u + p[2:]) / h**2 + u - u**3

    return rhs, band_pairs(n, 1), x


def kuramoto_sivashinsky(n: int) -> Problem:
    """Pentadiagonal: ``-u_xx - u_xxxx - u u_x`` by central differences, zero boundary values."""
    h = 32.0 / (n + 1)
    g = torch.Generator().manual_seed(n + 1)
    x = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)

    def rhs(u: torch.Tensor) -> torch.Tensor:
        p = _pad(u, 2)
        uxx = (p[1:-3] - 2 * u + p[3:-1]) / h**2
        uxxxx = (p[:-4] - 4 * p[1:-3] + 6 * u - 4 * p[3:-1] + p[4:]) / h**4
        ux = (p[3:-1] - p[1:-3]) / (2 * h)
        return -uxx - uxxxx - u * ux

    return rhs, band_pairs(n, 2), x


def spring_chain(n: int) -> Problem:
    """Pentadiagonal Hessian: springs to the next and the next-but-one neighbour."""
    g = torch.Generator().manual_seed(n + 2)
    x = torch.arange(n, dtype=torch.float64) + 0.1 * torch.randn(
        n, generator=g, dtype=torch.float64
    )

    def energy(u: torch.Tensor) -> torch.Tensor:
        d1 = u[1:] - u[:-1] - 1.0
        d2 = u[2:] - u[:-2] - 2.0
        return (d1**2 + 0.25 * d1**4).sum() + 0.5 * (d2**2 * torch.cos(d2)).sum()

    return energy, band_pairs(n, 2), x


def neighbour_list(pos: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """``(pairs, 2)`` atom pairs ``i < j`` closer than ``cutoff``."""
    close = torch.cdist(pos, pos) < cutoff
    return torch.triu(close, 1).nonzero()


def cutoff_lennard_jones(n_atoms: int) -> Problem:
    """The cutoff Lennard-Jones energy of ``n_atoms`` and its Hessian pattern (index pairs).

    The pattern is that of the neighbour list: the 3 x 3 blocks of every pair
    and every atom.  The energy is a flat vector of coordinates (3 N,), so the
    Hessian is ``(3 N, 3 N)``.
    """
    pos = cluster(n_atoms, seed=2)
    pairs = neighbour_list(pos)
    i, j = pairs[:, 0], pairs[:, 1]
    rc2 = CUTOFF**2

    def energy(flat: torch.Tensor) -> torch.Tensor:
        p = flat.reshape(-1, 3)
        d = p[i] - p[j]
        r2 = (d * d).sum(-1)
        inv6 = r2**-3
        return (4 * (inv6 * inv6 - inv6) * (1 - r2 / rc2) ** 2).sum()

    atoms = torch.cat([pairs, pairs.flip(1), torch.arange(n_atoms).repeat(2, 1).T])
    k = torch.arange(3)
    rows = (3 * atoms[:, 0, None, None] + k[None, :, None]).expand(-1, 3, 3).reshape(-1)
    cols = (3 * atoms[:, 1, None, None] + k[None, None, :]).expand(-1, 3, 3).reshape(-1)
    return energy, torch.stack([rows, cols], 1), pos.reshape(-1)


def reference_rows(
    func: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    rows: torch.Tensor,
    hessian: bool,
) -> torch.Tensor:
    """Rows ``rows`` of the dense Jacobian (or Hessian) by ``torch.autograd.grad``, one at a time.

    The independent check of the cells whose dense derivative is too costly to compute.
    """
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        out = func(xr)
        if hessian:
            out = torch.autograd.grad(out, xr, create_graph=True)[0]
        out = out.reshape(-1)
        got = [torch.autograd.grad(out[int(r)], xr, retain_graph=True)[0] for r in rows]
    return torch.stack(got)
