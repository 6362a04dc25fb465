"""Automatic mode's decisions are objects (``dispatch._automatic.Plan``) that match calls."""

from __future__ import annotations

import warnings

import pytest
import torch

import tad_autograd as ta
from tad_autograd.dispatch._automatic import builder_for, compiled_builder_for, plan
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.dispatch._resolver import resolve_cached


def _automatic_plan() -> object:
    resolution = resolve_cached(None, "cpu", False)
    return plan(resolution.backend, resolution.automatic, resolution.candidates)


def test_plan_names_how_calls_run_and_where_they_fall_back() -> None:
    resolution = resolve_cached(None, "cpu", False)
    decisions = _automatic_plan()
    assert decisions.backend == resolution.backend.name == ta.explain().backend
    assert decisions.runs == ta.explain().strategy
    assert decisions.fallback == tuple(b.name for b in resolution.candidates[1:])
    if resolution.backend.is_transform:
        assert decisions.runs == "eager-vectorised"
        assert decisions.fallback[-1] == "autograd"
    else:
        assert decisions.runs == "loop" and decisions.vmap_loops_up_to == (0, 0)


def test_explicit_backends_run_their_own_operators(transform_backend: str) -> None:
    backend = REGISTRY.get(transform_backend)
    assert plan(backend, automatic=False).runs == "transform"
    assert plan(backend, automatic=False).fallback == ()
    assert builder_for(backend, automatic=True, transforms_only=True).runs == "transform"
    assert compiled_builder_for(backend).runs == "compiled"
    assert plan(REGISTRY.get("autograd"), automatic=True).runs == "loop"


def test_vmap_loop_size_in_the_plan_is_what_calls_do() -> None:
    """A function that calls ``.item()`` runs without fallback up to the plan's loop size only."""
    decisions = _automatic_plan()
    if decisions.runs != "eager-vectorised":
        pytest.skip("no transform backend: automatic vmap always loops")
    largest = decisions.vmap_loops_up_to[0]

    def f(v: torch.Tensor) -> torch.Tensor:
        return v * v.sum().item()

    looped = torch.ones(largest, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(ta.vmap(f)(looped), 3 * looped)
    vectorised = torch.ones(largest + 1, 3)
    with pytest.warns(ta.BackendFallbackWarning, match=decisions.fallback[-1]):
        torch.testing.assert_close(ta.vmap(f)(vectorised), 3 * vectorised)
