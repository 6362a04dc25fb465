"""Transform-aware helpers: is this tensor a function-transform wrapper?

Scientific codes validate their inputs (``max(numbers)``, ``if (r < 0).any():
raise``); under ``vmap`` such checks cannot run, because a batched tensor has
no single value to look at.  :func:`~tad_autograd.is_transformed` and
:func:`~tad_autograd.is_batched` let such code skip them there, on every
supported torch and backend, without importing private torch modules itself.
They read torch's own wrapper flags (``torch._C._functorch``, present and
alike on torch 1.13 to the current release), so nothing is imported or
initialised for them.

Under the ``"autograd"`` backend (and automatic mode's loops) tensors are
plain, so both return ``False`` there: value checks simply run.

Examples
--------
>>> import torch, tad_autograd as ta
>>> def energy(r):
...     if not ta.is_transformed(r) and (r <= 0).any():
...         raise ValueError("distances must be positive")
...     return (1 / r).sum()
>>> ta.vmap(energy)(torch.ones(4, 3))
tensor([3., 3., 3., 3.])
"""

from __future__ import annotations

from typing import Any

import torch
from torch._C import _functorch

__all__ = ["is_transformed", "is_batched"]


def is_transformed(tensor: Any) -> bool:
    """Whether ``tensor`` is a function-transform wrapper (``vmap``, ``grad``, ``jacrev``, ...).

    Parameters
    ----------
    tensor : Any
        Usually a tensor seen inside a transformed function; anything else
        gives ``False``.

    Returns
    -------
    bool
        ``True`` inside a transform of a transform backend (``"func"``,
        ``"functorch"``); ``False`` for plain tensors, also inside the
        ``"autograd"`` backend's loops.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.is_transformed(torch.zeros(2))
    False
    >>> seen = []
    >>> _ = ta.vmap(lambda t: seen.append(ta.is_transformed(t)) or t, backend="autograd")(
    ...     torch.zeros(3, 2))
    >>> seen
    [False, False, False]
    """
    return isinstance(tensor, torch.Tensor) and bool(_functorch.is_functorch_wrapped_tensor(tensor))


def is_batched(tensor: Any) -> bool:
    """Whether ``tensor`` is batched by a ``vmap`` at any level of transform wrappers.

    ``vmap(grad(f))`` hands ``f`` a gradient-tracking wrapper around a batched
    tensor: that counts as batched.

    Parameters
    ----------
    tensor : Any
        Usually a tensor seen inside a transformed function.

    Returns
    -------
    bool
        ``True`` under a transform backend's ``vmap``; ``False`` for plain
        tensors, under ``grad``/``jacrev`` alone, and inside the
        ``"autograd"`` backend's loop ``vmap``.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.is_batched(torch.zeros(2))
    False
    >>> batched = ta.fvmap(lambda t: torch.tensor(float(ta.is_batched(t))))(torch.zeros(3, 2))
    >>> batched
    tensor([1., 1., 1.])
    """
    if not isinstance(tensor, torch.Tensor):
        return False
    while _functorch.is_functorch_wrapped_tensor(tensor):
        if _functorch.is_batchedtensor(tensor):
            return True
        tensor = _functorch.get_unwrapped(tensor)
    return False
