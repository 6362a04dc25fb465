"""``is_transformed`` / ``is_batched`` on every backend and automatic mode."""

from __future__ import annotations

from typing import Any, List, Optional

import torch

import tad_autograd as ta


def _kw(backend: Optional[str]) -> Any:
    return {} if backend is None else {"backend": backend}


def _probe(seen: List[Any]) -> Any:
    def f(t: torch.Tensor) -> torch.Tensor:
        seen.append((ta.is_transformed(t), ta.is_batched(t)))
        return (t * t).sum()

    return f


def test_plain_tensors_and_non_tensors() -> None:
    assert not ta.is_transformed(torch.zeros(2)) and not ta.is_batched(torch.zeros(2))
    assert not ta.is_transformed(3.0) and not ta.is_batched(None)


def test_under_vmap(backend: Optional[str]) -> None:
    seen: List[Any] = []
    ta.vmap(_probe(seen), **_kw(backend))(torch.ones(5, 2))
    transformed = backend in ("func", "functorch") or (backend is None and seen[0][0])
    expected = (True, True) if transformed else (False, False)
    assert set(seen) == {expected}
    if backend in ("func", "functorch"):
        assert seen == [(True, True)]  # one call on the batch
    if backend == "autograd":
        assert len(seen) == 5  # one call per sample, plain tensors


def test_under_jacrev_and_vmap_of_jacrev(transform_backend: str) -> None:
    seen: List[Any] = []
    ta.jacrev(_probe(seen), backend=transform_backend)(torch.ones(2))
    assert seen == [(True, False)]  # a gradient-tracking wrapper, not batched
    seen.clear()
    ta.vmap(ta.jacrev(_probe(seen)), backend=transform_backend)(torch.ones(3, 2))
    assert seen == [(True, True)]  # batched below the gradient-tracking wrapper


def test_value_checks_can_be_skipped(backend: Optional[str]) -> None:
    def energy(r: torch.Tensor) -> torch.Tensor:
        if not ta.is_transformed(r) and bool((r <= 0).any()):
            raise ValueError("distances must be positive")
        return (1 / r).sum()

    r = torch.linspace(1.0, 2.0, 12, dtype=torch.float64).reshape(4, 3)
    forces = ta.vmap(ta.jacrev(energy), **_kw(backend))(r)
    torch.testing.assert_close(forces, -1 / r**2)
