"""Functions with known sparse Jacobians and Hessians, and independent references.

Each model is ``(func, structural pattern, point)``: the pattern holds every
entry that can be non-zero (the test checks that the dense Jacobian is zero
off it), so ``sparse_jacobian(func, pattern)`` must equal the dense result.
The references use nothing of the library: a row loop of
``torch.autograd.grad``, ``torch.autograd.functional`` and finite
differences through ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

DT = torch.float64
Model = Tuple[Callable[..., torch.Tensor], torch.Tensor, torch.Tensor]


def band(n: int, half_width: int, m: int | None = None) -> torch.Tensor:
    """Bool ``(m, n)`` pattern with ``|i - j| <= half_width``."""
    i = torch.arange(m if m is not None else n)
    j = torch.arange(n)
    return (i[:, None] - j[None, :]).abs() <= half_width


def banded_rhs(n: int = 24, half_width: int = 2) -> Model:
    """A nonlinear stencil (a discretised reaction-diffusion right-hand side)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2 * half_width + 1, generator=g, dtype=DT)

    def rhs(u: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(u, (half_width, half_width))
        out = u - u**3
        for k in range(2 * half_width + 1):
            shifted = padded[k : k + n]
            out = out + w[k] * torch.sin(shifted) * (1 + 0.1 * u)
        return out

    return rhs, band(n, half_width), torch.randn(n, generator=g, dtype=DT)


def block_diagonal(blocks: int = 5, size: int = 4) -> Model:
    """``tanh(W_k x_k)`` for each block ``x_k`` of the input (dense diagonal blocks)."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(blocks, size, size, generator=g, dtype=DT)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("kij,kj->ki", w, x.reshape(blocks, size))).reshape(-1)

    pattern = torch.block_diag(*[torch.ones(size, size, dtype=torch.bool)] * blocks)
    return f, pattern, torch.randn(blocks * size, generator=g, dtype=DT)


def arrow_head(n: int = 16) -> Model:
    """Row 0 reads every input, every output reads input 0 (a dense first row and column)."""
    g = torch.Generator().manual_seed(3)

    def f(x: torch.Tensor) -> torch.Tensor:
        head = torch.sin(x).sum().reshape(1) * x[0]
        return torch.cat([head, x[1:] ** 2 + x[0] * x[1:]])

    pattern = torch.eye(n, dtype=torch.bool)
    pattern[0, :] = pattern[:, 0] = True
    return f, pattern, torch.randn(n, generator=g, dtype=DT)


def random_sparse(m: int = 18, n: int = 15, density: float = 0.2, seed: int = 4) -> Model:
    """``(A * P) @ sin(x) + ((A * P) @ x) ** 2``: its Jacobian is non-zero exactly on ``P``."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.rand(m, n, generator=g) < density
    a = torch.randn(m, n, generator=g, dtype=DT) * pattern

    def f(x: torch.Tensor) -> torch.Tensor:
        return a @ torch.sin(x) + (a @ x) ** 2

    return f, pattern, torch.randn(n, generator=g, dtype=DT)


def column_dense(n: int = 12) -> Model:
    """Every output reads input 0 and its own input: 2 column colours, ``n`` row colours."""
    g = torch.Generator().manual_seed(5)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-x[0]) * x + x**3

    pattern = torch.eye(n, dtype=torch.bool)
    pattern[:, 0] = True
    return f, pattern, torch.randn(n, generator=g, dtype=DT)


JACOBIAN_MODELS: Dict[str, Callable[[], Model]] = {
    "banded": banded_rhs,
    "block_diagonal": block_diagonal,
    "arrow_head": arrow_head,
    "random": random_sparse,
    "column_dense": column_dense,
}


def chain_energy(n: int = 20) -> Model:
    """Anharmonic springs between neighbours and next neighbours: a pentadiagonal Hessian."""
    g = torch.Generator().manual_seed(6)

    def energy(x: torch.Tensor) -> torch.Tensor:
        d1 = x[1:] - x[:-1] - 1.0
        d2 = x[2:] - x[:-2] - 2.0
        return (d1**2 + 0.3 * d1**4).sum() + 0.1 * (torch.cos(d2)).sum()

    x = torch.arange(n, dtype=DT) + 0.1 * torch.randn(n, generator=g, dtype=DT)
    return energy, band(n, 2), x


CUTOFF = 1.6


def cutoff_pair_energy(pos: torch.Tensor) -> torch.Tensor:
    """A pair potential that vanishes smoothly (with two derivatives) at ``CUTOFF``.

    ``phi(r) = (1/r^6 - 1/r^3) * (1 - r/rc)^3`` for ``r < rc``, else 0; pairs
    beyond the cutoff contribute nothing, so the Hessian is sparse.
    """
    n = pos.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    d = pos[i] - pos[j]
    r2 = (d * d).sum(-1)
    inside = r2 < CUTOFF**2
    r2 = torch.where(inside, r2, torch.ones_like(r2))  # no NaN from far pairs' sqrt
    r = torch.sqrt(r2)
    phi = (r2**-3 - r2**-1.5) * (1 - r / CUTOFF) ** 3
    return torch.where(inside, phi, torch.zeros_like(phi)).sum()


def lattice(n_atoms: int = 12, seed: int = 7) -> torch.Tensor:
    """Atoms on a jittered simple-cubic lattice (spacing 1), positions ``(n_atoms, 3)``."""
    g = torch.Generator().manual_seed(seed)
    side = 3
    r = torch.arange(side, dtype=DT)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    return grid + 0.08 * (2 * torch.rand(grid.shape, generator=g, dtype=DT) - 1)


def neighbour_pattern(pos: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """The Hessian pattern of a pair potential: 3x3 blocks of atoms closer than ``cutoff``."""
    atoms = torch.cdist(pos, pos) < cutoff
    return atoms.repeat_interleave(3, 0).repeat_interleave(3, 1)


def cutoff_model() -> Model:
    pos = lattice()
    return cutoff_pair_energy, neighbour_pattern(pos), pos


def arrow_energy(n: int = 16) -> Model:
    """``x_0 * sum(sin x) + sum(x^4)``: a Hessian with a dense first row and column."""
    g = torch.Generator().manual_seed(8)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return x[0] * torch.sin(x).sum() + (x**4).sum()

    pattern = torch.eye(n, dtype=torch.bool)
    pattern[0, :] = pattern[:, 0] = True
    return energy, pattern, torch.randn(n, generator=g, dtype=DT)


def block_energy(blocks: int = 4, size: int = 3) -> Model:
    """A sum of independent dense quartic blocks: a block-diagonal Hessian."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(blocks, size, size, generator=g, dtype=DT)

    def energy(x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("kij,kj->ki", w, x.reshape(blocks, size))
        return (torch.cosh(y) + y**4).sum()

    pattern = torch.block_diag(*[torch.ones(size, size, dtype=torch.bool)] * blocks)
    return energy, pattern, torch.randn(blocks * size, generator=g, dtype=DT) * 0.5


HESSIAN_MODELS: Dict[str, Callable[[], Model]] = {
    "chain": chain_energy,
    "cutoff_pairs": cutoff_model,
    "arrow_head": arrow_energy,
    "block_diagonal": block_energy,
}


# ----------------------------------------------------------------------------- references


def reference_jacobian(func: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
    """``(out.numel(), x.numel())`` by a row loop of ``torch.autograd.grad``."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        out = func(xr).reshape(-1)
        rows = [
            torch.autograd.grad(out[k], xr, retain_graph=True, allow_unused=True)[0]
            for k in range(out.numel())
        ]
    return torch.stack([torch.zeros_like(x) if r is None else r for r in rows]).reshape(
        out.numel(), x.numel()
    )


def functional_hessian(func: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
    """``torch.autograd.functional.hessian``, flattened to ``(x.numel(), x.numel())``."""
    return torch.autograd.functional.hessian(func, x).reshape(x.numel(), x.numel())


class _SparseBackward(torch.autograd.Function):
    """``func`` forward; backward through a fixed sparse Jacobian (for ``gradcheck``)."""

    @staticmethod
    def forward(ctx, x, func, jacobian):  # type: ignore[override]
        ctx.jacobian = jacobian
        ctx.shape = x.shape
        return func(x.detach()).reshape(-1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        vjp = torch.sparse.mm(ctx.jacobian.t(), grad.reshape(-1, 1))
        return vjp.reshape(ctx.shape), None, None


def gradcheck_sparse(func: Callable[..., Any], jacobian: torch.Tensor, x: torch.Tensor) -> bool:
    """``torch.autograd.gradcheck`` of ``func`` at ``x``, ``jacobian`` (sparse) its derivative.

    gradcheck compares the analytic Jacobian, read from our backward (so from
    the sparse Jacobian computed at ``x``), with central finite differences of
    ``func`` around ``x``.
    """
    x = x.detach().clone().requires_grad_(True)
    jacobian = jacobian.detach()
    return bool(
        torch.autograd.gradcheck(
            lambda t: _SparseBackward.apply(t, func, jacobian),
            (x,),
            eps=1e-6,
            atol=1e-6,
            rtol=1e-5,
            raise_exception=True,
        )
    )
