"""Custom ``autograd.Function`` nodes whose backward pass cannot be differentiated.

Each computes ``x ** 3`` with the backward ``3 * x ** 2 * g``, written so that
torch cannot differentiate the backward itself:

* ``once_differentiable``: the backward is decorated with
  ``@torch.autograd.function.once_differentiable``;
* ``numpy``: the backward computes in NumPy;
* ``detach``: the backward uses ``x.detach()`` (a silent partial graph: the
  result is linear in ``g`` but forgets its dependence on ``x``).

:data:`OPAQUE_KINDS` names them; :func:`opaque_function` returns the class of a
kind in the old style (``forward(ctx, x)``) or the new style (``setup_context``,
``generate_vmap_rule``; torch >= 2.0), and :func:`twin_function` the same cube
with a differentiable backward (the reference).  Either may have a forward-mode
rule ``jvp`` (``3 * x ** 2 * x_t``).  Every class name ends in
``Cube`` so an error naming the Function is recognisable.

Examples
--------
>>> import torch
>>> x = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
>>> cube = opaque_function("numpy", "old")
>>> cube.__name__
'NumpyOldCube'
>>> (g,) = torch.autograd.grad(cube.apply(x).sum(), x)
>>> torch.allclose(g, 3 * x.detach() ** 2)
True
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from ..functions import NEW_STYLE_FUNCTIONS_SUPPORTED

__all__ = ["OPAQUE_KINDS", "STYLES", "opaque_function", "twin_function"]

#: How the backward is made non-differentiable.
OPAQUE_KINDS = ("once_differentiable", "numpy", "detach")
#: ``"old"`` (``forward(ctx, x)``) everywhere; ``"new"`` (``setup_context``) on torch >= 2.0.
STYLES = ("old", "new") if NEW_STYLE_FUNCTIONS_SUPPORTED else ("old",)


def _backward_once(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    x: torch.Tensor
    (x,) = ctx.saved_tensors
    return 3 * x * x * g


def _backward_numpy(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    xn = x.detach().cpu().numpy()
    gn = g.detach().cpu().numpy()
    import numpy

    # 0-d arrays multiply into NumPy scalars, which torch 1.13's from_numpy refuses
    result = numpy.asarray(3 * xn * xn * gn)
    return torch.from_numpy(result).to(device=g.device, dtype=g.dtype)


def _backward_detach(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    x: torch.Tensor
    (x,) = ctx.saved_tensors
    xd = x.detach()
    return 3 * xd * xd * g


def _backward_twin(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    x: torch.Tensor
    (x,) = ctx.saved_tensors
    return 3 * x * x * g


_BACKWARDS = {
    "once_differentiable": torch.autograd.function.once_differentiable(_backward_once),
    "numpy": _backward_numpy,
    "detach": _backward_detach,
    "twin": _backward_twin,
}
_NAMES = {
    "once_differentiable": "OnceDifferentiable",
    "numpy": "Numpy",
    "detach": "Detached",
    "twin": "Twin",
}


def _old_forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
    ctx.save_for_backward(x)
    ctx.save_for_forward(x)
    return x * x * x


def _new_forward(x: torch.Tensor) -> torch.Tensor:
    return x * x * x


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.save_for_forward(inputs[0])


def _jvp(ctx: Any, x_t: torch.Tensor) -> torch.Tensor:
    x: torch.Tensor
    (x,) = ctx.saved_tensors
    return 3 * x * x * x_t


_CACHE: Dict[Tuple[str, str, bool], type] = {}


def _make(kind: str, style: str, jvp: bool) -> type:
    key = (kind, style, jvp)
    if key not in _CACHE:
        name = f"{_NAMES[kind]}{style.capitalize()}{'Jvp' if jvp else ''}Cube"
        body: Dict[str, Any] = {"backward": staticmethod(_BACKWARDS[kind])}
        if jvp:
            body["jvp"] = staticmethod(_jvp)
        if style == "old":
            body["forward"] = staticmethod(_old_forward)
        else:
            if not NEW_STYLE_FUNCTIONS_SUPPORTED:  # pragma: no cover - torch 1.13
                raise ValueError("new-style autograd.Function needs torch >= 2.0")
            body["forward"] = staticmethod(_new_forward)
            body["setup_context"] = staticmethod(_setup_context)
            body["generate_vmap_rule"] = True
        _CACHE[key] = type(name, (torch.autograd.Function,), body)
    return _CACHE[key]


def opaque_function(kind: str, style: str, jvp: bool = False) -> Any:
    """The cube Function of ``kind`` (:data:`OPAQUE_KINDS`) in ``style`` (:data:`STYLES`);
    ``jvp=True`` gives it a (differentiable) forward-mode rule ``jvp``."""
    if kind not in OPAQUE_KINDS:
        raise ValueError(f"kind must be one of {OPAQUE_KINDS}, got {kind!r}")
    return _make(kind, style, jvp)


def twin_function(style: str, jvp: bool = False) -> Any:
    """The cube Function with a differentiable backward (the second-order reference).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    >>> (g,) = torch.autograd.grad(twin_function("old").apply(x), x, create_graph=True)
    >>> torch.autograd.grad(g, x)[0].item()
    3.0
    """
    return _make("twin", style, jvp)
