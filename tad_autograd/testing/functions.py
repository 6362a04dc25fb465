"""Custom ``torch.autograd.Function`` nodes that random programs may hold.

:class:`OldStyleSin` (``forward(ctx, x)``) only plain autograd can transform;
:class:`NewStyleSiLU` (``setup_context`` and ``generate_vmap_rule``, torch >= 2.0)
every backend can.

Examples
--------
>>> import torch
>>> NEW_STYLE_FUNCTIONS_SUPPORTED == (int(torch.__version__.split(".")[0]) >= 2)
True
"""

from __future__ import annotations

import re
from typing import Any, Tuple

import torch

__all__ = ["NEW_STYLE_FUNCTIONS_SUPPORTED", "OldStyleSin", "NewStyleSiLU"]

_m = re.match(r"(\d+)\.(\d+)", torch.__version__)
_TORCH_VERSION = (int(_m.group(1)), int(_m.group(2))) if _m else (0, 0)

#: ``True`` when this torch supports ``autograd.Function`` with
#: ``setup_context`` / ``generate_vmap_rule`` (torch >= 2.0).
NEW_STYLE_FUNCTIONS_SUPPORTED: bool = _TORCH_VERSION >= (2, 0)


class OldStyleSin(torch.autograd.Function):
    """``sin`` as an old-style ``autograd.Function`` (``forward(ctx, x)``).

    Function transforms (``torch.func``/``functorch``) refuse it; only the
    ``"autograd"`` backend (and the automatic fallback) can differentiate it.
    Its backward is differentiable, so double backward works.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    >>> (g,) = torch.autograd.grad(OldStyleSin.apply(x).sum(), x)
    >>> torch.allclose(g, x.cos())
    True
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
        x: torch.Tensor
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


if NEW_STYLE_FUNCTIONS_SUPPORTED:

    class NewStyleSiLU(torch.autograd.Function):
        """``x * sigmoid(x)`` as a new-style ``autograd.Function``.

        Uses ``setup_context`` and ``generate_vmap_rule = True`` so every
        backend, function transforms included, can take it (torch >= 2.0).

        Examples
        --------
        >>> import torch
        >>> x = torch.tensor([0.5], dtype=torch.float64)
        >>> torch.allclose(NewStyleSiLU.apply(x), torch.nn.functional.silu(x))
        True
        """

        generate_vmap_rule = True

        @staticmethod
        def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
            return x * torch.sigmoid(x)

        @staticmethod
        def setup_context(  # type: ignore[override,unused-ignore]
            ctx: Any, inputs: Tuple[Any, ...], output: Any
        ) -> None:
            (x,) = inputs
            ctx.save_for_backward(x)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
            x: torch.Tensor
            (x,) = ctx.saved_tensors
            s = torch.sigmoid(x)
            return g * (s + x * s * (1 - s))

else:  # pragma: no cover - torch 1.13
    NewStyleSiLU = None  # type: ignore[assignment,misc]
