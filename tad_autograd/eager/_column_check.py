"""A check of Jacobian-vector products from the double-vjp trick against a plain vjp.

The eager forward mode differentiates ``J^T u`` with respect to ``u``: it
runs torch's *backward* formulas backwards, which is exact only where those
formulas are differentiable and torch differentiates them right.  Measured
exceptions: formulas that divide and then mask (``sinc``, ``std`` of equal
values, ``norm`` at zero: the masked branch's ``0/0`` turns every column into
NaN), normalisation layers whose bias loses its double backward without a
weight (zeros), and tensor hooks that are not linear in the gradient.  The
first-order backward pass that records ``J^T u`` has none of these problems,
and its value is a plain vector-Jacobian product, so it checks the products
for free: ``u^T (J t)`` must equal ``(J^T u)^T t``.  The cotangents ``u`` are
random (uniform in [0.5, 1.5], from a private generator reseeded on every
call, so results are reproducible), so a wrong product passes only if its
error is orthogonal to ``u``, with probability zero.

Examples
--------
>>> import torch
>>> x = torch.tensor([1.0, 2.0], requires_grad=True)
>>> y = x ** 2
>>> (u,) = probe_cotangents([y])
>>> (vjp,) = torch.autograd.grad(y, x, u)
>>> probe = ReverseProbe([u], [vjp])
>>> probe.agrees([torch.tensor([2.0, 4.0])], [torch.ones(2)])
True
>>> probe.agrees([torch.tensor([2.0, 5.0])], [torch.ones(2)])
False
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["ReverseProbe", "probe_cotangents"]

#: Relative tolerance of the check per dtype (rounding differs between the two orders).
_RTOL = {torch.float64: 1e-7, torch.complex128: 1e-7, torch.float16: 3e-2, torch.bfloat16: 1e-1}
_DEFAULT_RTOL = 1e-3  # float32, complex64
_SEED = 0x5EED
_GENERATORS: Dict[Tuple[str, Optional[int]], torch.Generator] = {}
_LOCK = threading.Lock()


def probe_cotangents(outputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Random cotangents shaped like ``outputs``, the same on every call.

    Examples
    --------
    >>> import torch
    >>> [u.shape for u in probe_cotangents([torch.zeros(2, 3)])]
    [torch.Size([2, 3])]
    """
    if not outputs:
        return []
    device = outputs[0].device
    with _LOCK:
        key = (device.type, device.index)
        generator = _GENERATORS.get(key)
        if generator is None:
            generator = _GENERATORS[key] = torch.Generator(device=device)
        generator.manual_seed(_SEED)
        return [_uniform(o, generator) for o in outputs]


def _uniform(o: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    wide = torch.float64 if o.dtype in (torch.float64, torch.complex128) else torch.float32
    if o.device != generator.device:
        u = torch.rand(o.shape, generator=generator, dtype=wide, device=generator.device)
        u = u.to(o.device)
    else:
        u = torch.rand(o.shape, generator=generator, dtype=wide, device=o.device)
    return (u + 0.5).to(o.dtype)


class ReverseProbe:
    """Cotangents ``us`` and the exact ``J^T u`` (``vjps``, per input; ``None`` for zero)."""

    def __init__(self, us: Sequence[torch.Tensor], vjps: Sequence[Optional[torch.Tensor]]) -> None:
        self.us = [u.detach() for u in us]
        self.vjps = [None if g is None else g.detach() for g in vjps]
        self.rtol = max((_RTOL.get(u.dtype, _DEFAULT_RTOL) for u in us), default=_DEFAULT_RTOL)

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
                b = _wide(block.detach())
                if b.is_complex() or u.is_complex():  # Re <u, J e_j> = Re (J^T u)_j
                    b = b.real if not u.is_complex() else b
                    uu = u.reshape(-1).to(b.dtype)
                    part = (uu.conj() @ b).real if b.is_complex() else uu.real @ b
                    size = uu.abs().to(b.abs().dtype) @ b.abs()
                else:
                    uu = u.reshape(-1).to(b.dtype)
                    part, size = uu @ b, uu @ b.abs()  # uu is positive
                total = part if total is None else total + part
                scale = size if scale is None else scale + size
            if total is None or scale is None:
                continue
            rhs = torch.zeros_like(total) if w is None else _wide(w).reshape(-1).real
            if not _close(total, rhs, self.rtol * (scale + rhs.abs())):
                return False
        return True


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _dot(
    a: Sequence[Optional[torch.Tensor]], b: Sequence[Optional[torch.Tensor]]
) -> Tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros((), dtype=torch.float64)
    scale = torch.zeros((), dtype=torch.float64)
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        xx, yy = _flat_wide(x), _flat_wide(y)
        if xx.is_complex() or yy.is_complex():  # Re <x, y>: torch's vjp is the adjoint in it
            total = total + _real_dot(xx, yy).cpu()
        else:
            total = total + (xx @ yy).cpu()
        scale = scale + (xx.abs() @ yy.abs()).cpu()
    return total, scale


def _flat_wide(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().reshape(-1)
    return t.to(torch.complex128) if t.is_complex() else t.double()


def _real_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Re(sum(conj(x) * y))``, for real or complex ``x`` and ``y``."""
    if not x.is_complex():
        return x @ y.real
    if not y.is_complex():
        return x.real @ y
    return x.real @ y.real + x.imag @ y.imag


def _close(a: torch.Tensor, b: torch.Tensor, tol: torch.Tensor) -> bool:
    """``|a - b| <= tol`` everywhere, NaN matching NaN and infinities themselves."""
    close = (a - b).abs() <= tol
    if bool(close.all()):
        return True
    return bool((close | (a.isnan() & b.isnan()) | (a == b)).all())
