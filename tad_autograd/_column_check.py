"""A check of Jacobian-vector products from the double-vjp trick against one plain vjp.

The eager forward mode differentiates ``J^T v`` with respect to ``v``: it
runs torch's *backward* formulas backwards, which is exact only where those
formulas are differentiable and torch differentiates them right.  Measured
exceptions: formulas that divide and then mask (``sinc``, ``std`` of equal
values, ``norm`` at zero: the masked branch's ``0/0`` turns every column into
NaN), normalisation layers whose bias loses its double backward without a
weight (zeros), and tensor hooks that are not linear in the gradient.  A
first-order backward pass has none of these problems, so one of them, along
a random cotangent ``u``, checks the products: ``u^T (J t)`` must equal
``(J^T u)^T t``.  A random ``u`` (from a private generator) misses a wrong
product only if its error is orthogonal to ``u``, with probability zero.

Examples
--------
>>> import torch
>>> x = torch.tensor([1.0, 2.0], requires_grad=True)
>>> y = x ** 2
>>> probe = ReverseProbe([y], [x])
>>> probe.agrees([torch.tensor([2.0, 4.0])], [torch.ones(2)])
True
>>> probe.agrees([torch.tensor([2.0, 5.0])], [torch.ones(2)])
False
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

__all__ = ["ReverseProbe"]

#: Relative tolerance of the check per dtype (rounding differs between the two orders).
_RTOL = {torch.float64: 1e-7, torch.complex128: 1e-7, torch.float16: 3e-2, torch.bfloat16: 1e-1}
_DEFAULT_RTOL = 1e-3  # float32, complex64
_SEED = 0x5EED


class ReverseProbe:
    """``J^T u`` for a random ``u``, by one first-order backward pass through the graph.

    ``outputs`` must require grad and their graph must still be alive; it is
    retained.  Real outputs only are probed (``u`` is zero on complex ones).
    """

    def __init__(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> None:
        self.us = [_random_like(o, k) for k, o in enumerate(outputs)]
        with torch.enable_grad():
            grads = torch.autograd.grad(
                list(outputs), list(inputs), self.us, retain_graph=True, allow_unused=True
            )
        self.vjps: List[Optional[torch.Tensor]] = [None if g is None else g.detach() for g in grads]
        self.rtol = max(_RTOL.get(o.dtype, _DEFAULT_RTOL) for o in outputs)

    def agrees(self, products: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor]) -> bool:
        """Whether ``products`` (``J t`` per output) agree with the probe along ``tangents``."""
        lhs, lhs_scale = _dot(self.us, products)
        rhs, rhs_scale = _dot(self.vjps, tangents)
        return _close(lhs, rhs, self.rtol * (lhs_scale + rhs_scale))

    def agrees_by_columns(self, blocks: Sequence[Sequence[Optional[torch.Tensor]]]) -> bool:
        """Whether Jacobian ``blocks[k][i]`` (output ``k``, input ``i``, shaped
        ``(output numel, input numel)``; ``None`` for zero) agree with the probe."""
        for i, w in enumerate(self.vjps):
            total: Optional[torch.Tensor] = None
            scale: Optional[torch.Tensor] = None
            for u, row in zip(self.us, blocks):
                block = row[i]
                if block is None:
                    continue
                b = _as_real64(block)
                uu = _as_real64(u).reshape(-1)
                part, size = uu @ b, uu.abs() @ b.abs()
                total = part if total is None else total + part
                scale = size if scale is None else scale + size
            if total is None or scale is None:
                if w is not None and bool(_as_real64(w).ne(0).any()):
                    return False
                continue
            rhs = torch.zeros_like(total) if w is None else _as_real64(w).reshape(-1)
            if not bool(_close_each(total, rhs, self.rtol * (scale + rhs.abs())).all()):
                return False
        return True


def _random_like(o: torch.Tensor, k: int) -> torch.Tensor:
    if o.is_complex():
        return torch.zeros_like(o.detach())
    generator = torch.Generator(device=o.device)
    generator.manual_seed(_SEED + k)
    wide = torch.float64 if o.dtype == torch.float64 else torch.float32
    return torch.randn(o.shape, generator=generator, dtype=wide, device=o.device).to(o.dtype)


def _as_real64(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return torch.view_as_real(t.to(torch.complex128)) if t.is_complex() else t.to(torch.float64)


def _dot(
    a: Sequence[Optional[torch.Tensor]], b: Sequence[Optional[torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros((), dtype=torch.float64)
    scale = torch.zeros((), dtype=torch.float64)
    for x, y in zip(a, b):
        if x is None or y is None or x.is_complex() or y.is_complex():
            continue
        xx, yy = _as_real64(x).reshape(-1).cpu(), _as_real64(y).reshape(-1).cpu()
        total = total + xx @ yy
        scale = scale + xx.abs() @ yy.abs()
    return total, scale


def _close_each(a: torch.Tensor, b: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    both_nan = a.isnan() & b.isnan()
    return ((a - b).abs() <= tol) | both_nan | (a == b)


def _close(a: torch.Tensor, b: torch.Tensor, tol: torch.Tensor) -> bool:
    return bool(_close_each(a, b, tol).all())
