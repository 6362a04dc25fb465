"""An automatic ``vmap`` whose transform fails loops; each sample keeps automatic mode."""

from __future__ import annotations

import warnings
from typing import Any, List

import pytest
import torch
from _helpers import assert_tree_close, reference_hessian

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION
from tad_autograd.dispatch._resolver import resolve_cached

pytestmark = [
    pytest.mark.skipif(TORCH_VERSION.major < 2, reason="generate_vmap_rule needs torch >= 2.0"),
    # torch 2.0 batches eigh by its slow fallback, and says so
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
]


class Eigh(torch.autograd.Function):
    """``torch.linalg.eigh`` with a generated vmap rule; backward from the saved outputs.

    Its generated rule cannot batch a Hessian (torch.func raises inside the transform).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor) -> Any:  # type: ignore[override]
        return torch.linalg.eigh(a)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:  # type: ignore[override]
        ctx.save_for_backward(*output)

    @staticmethod
    def backward(ctx: Any, grad_w: torch.Tensor, grad_v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _, v = ctx.saved_tensors
        return v @ torch.diag_embed(grad_w) @ v.transpose(-1, -2)


def test_fallback_loop_runs_each_sample_automatically() -> None:
    """The samples' Hessians run on automatic mode's first choice, not plain autograd loops,
    and agree with a row loop of ``torch.autograd.grad``; the fallback warns as before."""
    seen: List[str] = []

    def energy(x: torch.Tensor) -> torch.Tensor:
        seen.append(ta.get_backend())
        return Eigh.apply(torch.outer(x, x) + torch.diag(x))[0].pow(2).sum()

    batch = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([reference_hessian(energy, x) for x in batch])
    seen.clear()
    hessians = ta.vmap(ta.hessian(energy))
    with pytest.warns(ta.BackendFallbackWarning, match="using backend 'autograd'"):
        assert_tree_close(hessians(batch), expected)
    first = resolve_cached(None, "cpu", False).backend.name
    assert first != "autograd"
    assert seen[-len(batch) :] == [first] * len(batch)  # not "autograd"
    seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ta.BackendFallbackWarning)  # remembered: warned once
        assert_tree_close(hessians(batch), expected)
    assert seen == [first] * len(batch)


def test_explicit_autograd_vmap_keeps_autograd_inside() -> None:
    """``backend='autograd'`` chosen explicitly still runs the derivatives inside on it."""
    seen: List[str] = []

    def energy(x: torch.Tensor) -> torch.Tensor:
        seen.append(ta.get_backend())
        return (x.sin() ** 2).sum()

    batch = torch.randn(2, 3, dtype=torch.float64)
    result = ta.vmap(ta.hessian(energy), backend="autograd")(batch)
    assert set(seen) == {"autograd"}
    assert_tree_close(result, torch.stack([reference_hessian(energy, x) for x in batch]))
