"""Typed access to :mod:`torch.autograd.forward_ad` dual numbers (untyped in torch).

Examples
--------
>>> import torch
>>> with dual_level():
...     primal, tangent = unpack_dual(make_dual(torch.zeros(1), torch.ones(1)))
>>> tangent
tensor([1.])
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import torch
import torch.autograd.forward_ad as _fwAD

from ._locks import TRANSFORM_LOCK
from ._torch_info import cache, is_compiling

__all__ = ["dual_level", "make_dual", "unpack_dual", "level_active", "forward_ad_ready"]

dual_level = _fwAD.dual_level


def make_dual(primal: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """A dual number with ``primal`` and ``tangent`` (inside :func:`dual_level`)."""
    dual: torch.Tensor = _fwAD.make_dual(primal, tangent)  # type: ignore[no-untyped-call]
    return dual


def unpack_dual(x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(primal, tangent)`` of ``x``; the tangent is ``None`` for a plain tensor."""
    unpacked: Any = _fwAD.unpack_dual(x)  # type: ignore[no-untyped-call]
    return unpacked.primal, unpacked.tangent


def level_active() -> bool:
    """Whether a dual level is open (dual numbers may exist); a global read."""
    return bool(_fwAD._current_level >= 0)


def forward_ad_ready() -> None:
    """Load torch's forward-AD machinery once, keeping its own deprecation warnings quiet.

    The first dual number of a process makes torch compile decompositions
    with ``torch.jit.script``, which newer releases deprecate with a warning
    the user did not cause.  Every forward-mode operator calls this first;
    not while dynamo traces (compiled code makes no eager dual numbers, and a
    lock cannot be traced).

    Examples
    --------
    >>> forward_ad_ready()
    """
    if not is_compiling():
        _load_forward_ad()


@cache
def _load_forward_ad() -> None:
    with TRANSFORM_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with dual_level():
            make_dual(torch.zeros(1), torch.zeros(1))
