"""A function's own ``torch.no_grad()`` block under forward-mode operators run inside transforms.

Automatic mode and the autograd backend give reverse mode's derivative (the
block's results are constants) from every forward-mode operator; an explicit
transform backend gives torch.func's (dual numbers pass through the block).
For ``f(x) = x * s`` with ``s = sum(x ** 2)`` computed under ``no_grad`` both
are closed forms: ``s I`` and ``s I + 2 x x^T``.  Inside ``vmap`` (batches
large enough to be vectorised) the inner operator runs inside a transform,
where automatic mode watches for such blocks; inside a transform the
library did not start it cannot fall back, and raises.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import pytest
import torch

import tad_autograd as ta
from tad_autograd.compat._transform_failures import GradModeOffError
from tad_autograd.dispatch._registry import REGISTRY

F64 = torch.float64
X = torch.tensor(
    [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [0.2, 0.1, -0.3], [1.5, -0.5, 0.25]], dtype=F64
)
T = torch.tensor([1.0, -1.0, 0.5], dtype=F64)


def f(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        s = (x * x).sum()
    return x * s


def _jacobians(backend: Optional[str]) -> torch.Tensor:
    """The closed-form Jacobian per sample: reverse mode's, or dual numbers' (explicit
    transform backend)."""
    s = (X * X).sum(1)
    eye = torch.eye(3, dtype=F64)
    reverse = s[:, None, None] * eye
    if backend is not None and REGISTRY.get(backend).is_transform:
        return reverse + 2 * X[:, :, None] * X[:, None, :]
    return reverse


OPERATORS: Dict[str, Callable[[Optional[str]], Callable[[torch.Tensor], Any]]] = {
    "jacfwd": lambda b: ta.jacfwd(f, backend=b),
    "jacobian_forward": lambda b: ta.jacobian(f, mode="forward", backend=b),
    "jvp": lambda b: lambda x: ta.jvp(f, (x,), (T,), backend=b)[1],
    "linearize": lambda b: lambda x: ta.linearize(f, x, backend=b)[1](T),
}


# automatic mode leaves the transform for plain autograd, with its fallback warning
@pytest.mark.filterwarnings("ignore::tad_autograd.BackendFallbackWarning")
@pytest.mark.parametrize("name", OPERATORS)
def test_forward_mode_inside_vmap(backend: Optional[str], name: str) -> None:
    got = ta.vmap(OPERATORS[name](backend), backend=backend)(X)
    expected = _jacobians(backend)
    if name in ("jvp", "linearize"):
        expected = expected @ T
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", OPERATORS)
def test_automatic_forward_mode_inside_a_users_vmap_raises(name: str) -> None:
    vmap = getattr(getattr(torch, "func", None), "vmap", None)
    if vmap is None:  # torch 1.13: functorch's
        vmap = pytest.importorskip("functorch").vmap
    with pytest.raises(GradModeOffError, match="no_grad"):
        vmap(OPERATORS[name](None))(X)
    assert torch.is_grad_enabled()  # the block's exit restored it
