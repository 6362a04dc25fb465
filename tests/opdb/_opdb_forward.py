"""Forward mode in the OpInfo sweep: ``jacfwd`` and ``jvp`` against reverse mode.

The references come from the reverse-mode row loop: the Jacobian in the
outputs' dtypes (the tangents' dtypes, as forward mode returns them) and, for
``jvp``, the Jacobian times one fixed tangent.  :func:`eager_forward` computes
``jvp`` with plain :mod:`torch.autograd.forward_ad` dual numbers, no library
at all: the sweep records it as the pseudo-mode :data:`FORWARD_AD`, which
tells a defect of torch's forward-mode formula for an op (wrong in every
backend that pushes tangents forward) from a defect of its batched forward
mode (``jacfwd``, ``vmap`` of ``jvp``, wrong where the dual numbers are right:
a ``BATCHING_DEFECTS`` entry).
"""

from __future__ import annotations

from typing import Any, Callable, List

import torch
import torch.autograd.forward_ad as fwAD

#: Forward-mode transforms of the sweep.
FORWARD = frozenset({"jacfwd", "jvp"})
#: The pseudo-mode of plain dual numbers (no library), recorded for ``jvp``.
FORWARD_AD = "forward_ad"


def tangent_of(x: torch.Tensor) -> torch.Tensor:
    """The fixed, irregular tangent of ``jvp``, shaped like ``x``."""
    return torch.linspace(-1, 1.3, x.numel(), dtype=x.dtype).reshape(x.shape)


def times_tangent(jac: Any, tangent: torch.Tensor) -> Any:
    """``J @ t`` for a Jacobian in the structure of ``f``'s output (a tensor or a tuple)."""

    def one(block: torch.Tensor) -> torch.Tensor:
        out_shape = block.shape[: block.dim() - tangent.dim()]
        product = block.reshape(-1, tangent.numel()).double() @ tangent.reshape(-1).double()
        return product.to(block.dtype).reshape(out_shape)

    return one(jac) if isinstance(jac, torch.Tensor) else tuple(one(b) for b in jac)


def forward_from_jacobian(jac: Any, out: Any, transform: str, tangent: torch.Tensor) -> Any:
    """``jacfwd``'s or ``jvp``'s answer from a Jacobian and the output ``out`` of ``f``."""
    if isinstance(jac, torch.Tensor):
        jac = jac.to(out.dtype)
    else:
        jac = tuple(j.to(o.dtype) for j, o in zip(jac, out))
    return jac if transform == "jacfwd" else (out, times_tangent(jac, tangent))


def eager_forward(f: Callable[[torch.Tensor], Any], x: torch.Tensor, tangent: torch.Tensor) -> Any:
    """``jvp``'s ``(f(x), J t)`` by one pass of plain dual numbers; a missing tangent is zero."""
    with fwAD.dual_level():
        out = f(fwAD.make_dual(x, tangent))
        single = isinstance(out, torch.Tensor)
        primals: List[torch.Tensor] = []
        tangents: List[torch.Tensor] = []
        for o in (out,) if single else out:
            unpacked = fwAD.unpack_dual(o)
            primals.append(unpacked.primal.clone())
            t = unpacked.tangent
            tangents.append(torch.zeros_like(primals[-1]) if t is None else t.clone())
    if single:
        return primals[0], tangents[0]
    return tuple(primals), tuple(tangents)
