"""Real-model energies for the ``models`` section: tight binding with SCF, an MLP potential.

Every energy is ``energy(positions, field)``: positions (N, 3) and a uniform
electric field (3,), both float64 (or the benchmarked dtype), returning a
0-dim tensor.

* :func:`tight_binding` -- a tight-binding-like self-consistent-charge energy:
  one orbital per atom, distance-dependent hopping ``-t exp(-b (r - r0))``,
  on-site energies shifted by the charges (``U q``, plus the Coulomb-like
  kernel ``1 / sqrt(r^2 + 1)``) and by the field (``F . r``), a few
  fixed-point SCF iterations with linear charge mixing, each one
  diagonalising the Hamiltonian with a custom symmetric-eigensolver
  :class:`torch.autograd.Function`.  Energy: twice the sum of the occupied
  eigenvalues (half filling), minus the double-counted Coulomb term, minus
  ``F . dipole``.  Two eigensolvers: :class:`EighVmapRule` (``setup_context``
  and a ``vmap`` staticmethod) and :class:`EighGeneratedVmap`
  (``generate_vmap_rule = True``).
* :func:`mlp_potential` -- pairwise Gaussian radial descriptors per atom,
  plus the field's projection on the position, through a two-layer tanh MLP,
  summed over atoms.

The eigensolvers' backward pass (and ``jvp``, for forward mode) is the
standard eigenvector formula, written with differentiable torch operations so
that every order of derivative works:

``grad_A = V (diag(grad_w) + F o (V^T grad_V)) V^T``, symmetrised,
with ``F_ij = d / (d^2 + eta)``, ``d = w_j - w_i`` (Lorentzian broadening
``eta`` for near-degenerate pairs; 0 on the diagonal).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import torch

#: broadening of the eigenvector derivative's 1 / (w_j - w_i) for near-degenerate pairs
BROADENING = 1e-12
SCF_ITERATIONS = 4
MIXING = 0.4
HOPPING, DECAY, R0 = 1.0, 1.2, 1.5
HUBBARD = 0.6
Energy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _inverse_gaps(w: torch.Tensor) -> torch.Tensor:
    """``F[..., i, j] = d / (d^2 + eta)`` with ``d = w_j - w_i`` off the diagonal, 0 on it.

    The diagonal is masked, not computed: there ``d`` is 0 and the derivative
    of ``d / (d^2 + eta)`` is ``1 / eta``, so a computed diagonal would add
    and subtract ``1e12``-sized terms in the second derivative.
    """
    d = w.unsqueeze(-2) - w.unsqueeze(-1)
    off = ~torch.eye(w.shape[-1], dtype=torch.bool, device=w.device)
    return torch.where(off, d / (d * d + BROADENING), torch.zeros_like(d))


def _eigh_backward(
    w: torch.Tensor, v: torch.Tensor, grad_w: torch.Tensor, grad_v: torch.Tensor
) -> torch.Tensor:
    """The gradient of a symmetric matrix from those of its eigenvalues and eigenvectors."""
    f = _inverse_gaps(w)
    vt = v.transpose(-1, -2)
    inner = torch.diag_embed(grad_w) + f * (vt @ grad_v)
    g = v @ inner @ vt
    return 0.5 * (g + g.transpose(-1, -2))


def _eigh_jvp(
    w: torch.Tensor, v: torch.Tensor, a_t: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The tangents of the eigenvalues and eigenvectors along a symmetric tangent ``a_t``."""
    f = _inverse_gaps(w)
    vt = v.transpose(-1, -2)
    inner = vt @ (0.5 * (a_t + a_t.transpose(-1, -2))) @ v
    return torch.diagonal(inner, dim1=-2, dim2=-1), v @ (f * inner)


class _Eigh(torch.autograd.Function):
    """Symmetric eigensolver: forward, ``setup_context``, backward and jvp of both variants."""

    @staticmethod
    def forward(a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return torch.linalg.eigh(a)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.save_for_backward(*output)
        ctx.save_for_forward(*output)

    @staticmethod
    def backward(ctx: Any, grad_w: torch.Tensor, grad_v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w, v = ctx.saved_tensors
        return _eigh_backward(w, v, grad_w, grad_v)

    @staticmethod
    def jvp(ctx: Any, a_t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        w, v = ctx.saved_tensors
        return _eigh_jvp(w, v, a_t)


class EighVmapRule(_Eigh):
    """Symmetric eigensolver with an explicit ``vmap`` rule."""

    @staticmethod
    def vmap(info: Any, in_dims: Tuple[Any], a: torch.Tensor) -> Any:
        """eigh is batched over leading dimensions: move the vmapped one first."""
        (dim,) = in_dims
        a = a if dim is None else a.movedim(dim, 0)
        return EighVmapRule.apply(a), (None if dim is None else 0,) * 2


class EighGeneratedVmap(_Eigh):
    """Symmetric eigensolver whose ``vmap`` rule torch generates."""

    generate_vmap_rule = True


def _pairs(pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, N) with 0 on the diagonal (differentiable there) and an off-diagonal mask."""
    n = pos.shape[-2]
    off = ~torch.eye(n, dtype=torch.bool, device=pos.device)
    d = pos.unsqueeze(-2) - pos.unsqueeze(-3)
    r2 = (d * d).sum(-1)
    r = torch.sqrt(torch.where(off, r2, torch.ones_like(r2)))
    return torch.where(off, r, torch.zeros_like(r)), off


def tight_binding(eigh: Any) -> Energy:
    """The SCF tight-binding energy ``E(positions, field)`` diagonalising with ``eigh.apply``."""

    def energy(pos: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        n = pos.shape[-2]
        r, off = _pairs(pos)
        hop = torch.where(off, -HOPPING * torch.exp(-DECAY * (r - R0)), torch.zeros_like(r))
        gamma = torch.rsqrt(r * r + 1.0)  # Coulomb-like kernel, 1 on the diagonal
        onsite = torch.linspace(-0.3, 0.3, n, dtype=pos.dtype, device=pos.device)
        potential = onsite + pos @ field
        q = torch.zeros_like(onsite)
        n_occ = n // 2
        for _ in range(SCF_ITERATIONS):
            shift = HUBBARD * q + gamma @ q
            h = hop + torch.diag_embed(potential + shift)
            w, v = eigh.apply(h)
            occupied = v[..., :n_occ]
            q_new = 2.0 * (occupied * occupied).sum(-1) - 1.0
            q = (1.0 - MIXING) * q + MIXING * q_new
        band = 2.0 * w[..., :n_occ].sum(-1)
        coulomb = 0.5 * (HUBBARD * (q * q).sum(-1) + q @ gamma @ q)
        dipole = q @ pos
        return band - coulomb - field @ dipole

    return energy


class MLP:
    """Fixed random weights of a K -> H -> H -> 1 tanh network (float64 master data)."""

    def __init__(self, features: int, hidden: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)

        def layer(n_in: int, n_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
            w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) / math.sqrt(n_in)
            return w, 0.1 * torch.randn(n_out, generator=g, dtype=torch.float64)

        self.layers = [layer(features, hidden), layer(hidden, hidden), layer(hidden, 1)]


RADIAL_CENTRES = 8


def mlp_potential(dtype: torch.dtype = torch.float64, device: str = "cpu") -> Energy:
    """Gaussian radial descriptors (and the field's projection) -> 2-layer tanh MLP -> energy."""
    net = MLP(RADIAL_CENTRES + 1)
    layers = [(w.to(device, dtype), b.to(device, dtype)) for w, b in net.layers]
    centres = torch.linspace(0.8, 3.0, RADIAL_CENTRES, dtype=dtype, device=device)

    def energy(pos: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        r, off = _pairs(pos)
        cutoff = torch.where(off, 0.5 * (torch.cos(math.pi * r / 4.0) + 1.0), torch.zeros_like(r))
        g = torch.exp(-2.0 * (r.unsqueeze(-1) - centres) ** 2) * cutoff.unsqueeze(-1)
        descriptors = torch.cat([g.sum(-2), (pos @ field).unsqueeze(-1)], -1)
        h = descriptors
        for k, (w, b) in enumerate(layers):
            h = h @ w.T + b
            if k < len(layers) - 1:
                h = torch.tanh(h)
        return h.sum()

    return energy


def geometry(n_atoms: int, seed: int = 0) -> torch.Tensor:
    """A compact random molecule-like structure (N, 3) float64: jittered lattice, spacing 1.4."""
    from benchmarks.problems import cluster

    return cluster(n_atoms, seed) * (1.4 / 1.12)


def field(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return 0.05 * torch.randn(3, generator=g, dtype=torch.float64)


#: Becke-Johnson damping parameters of D3(BJ) for PBE
D3_PARAM = {"s6": 1.0, "s8": 0.7875, "a1": 0.4289, "a2": 4.4407}
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903


def numbers(n_atoms: int) -> torch.Tensor:
    """Atomic numbers of the dispersion model: alternating C, H, O, N."""
    return torch.tensor([(6, 1, 8, 7)[i % 4] for i in range(n_atoms)])
