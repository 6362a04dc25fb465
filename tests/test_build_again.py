"""A transform built again with the same arguments skips their checks; nothing else changes."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import tad_autograd as ta
from tad_autograd.backends.autograd import AutogradBackend
from tad_autograd.dispatch._registry import unregister_backend

X = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)


def energy(x: torch.Tensor) -> torch.Tensor:
    return (x**3).sum()


@pytest.mark.parametrize(
    "good, bad",
    [
        (lambda: ta.vmap(torch.sum, in_dims=1), lambda: ta.vmap(torch.sum, in_dims=True)),
        (lambda: ta.vmap(torch.sum, out_dims=0), lambda: ta.vmap(torch.sum, out_dims=False)),
        (lambda: ta.jacrev(energy, chunk_size=1), lambda: ta.jacrev(energy, chunk_size=True)),
        (lambda: ta.jacrev(energy, has_aux=True), lambda: ta.jacrev(energy, has_aux=1)),
        (lambda: ta.jacrev(energy, argnums=1), lambda: ta.jacrev(energy, argnums=True)),
        (lambda: ta.hessian(energy, chunk_size=1), lambda: ta.hessian(energy, chunk_size=True)),
    ],
)
def test_bool_is_refused_after_the_equal_int(
    good: Callable[[], Any], bad: Callable[[], Any]
) -> None:
    """``True == 1``: an argument built before must not let the bool through."""
    good()
    good()
    with pytest.raises((TypeError, RuntimeError, ValueError)):
        bad()(X)


def test_invalid_arguments_raise_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            ta.jacrev(energy, chunk_size=0)
        with pytest.raises(RuntimeError):
            ta.vmap(torch.sum, randomness="sometimes")


def test_unregistered_backend_is_refused_though_built_before() -> None:
    class Loop(AutogradBackend):
        name = "build-again-loop"

    ta.register_backend(Loop(), priority=1)
    try:
        for build in (ta.jacrev, ta.hessian, ta.vmap):
            assert build(energy if build is not ta.vmap else torch.sum, backend=Loop.name)
    finally:
        unregister_backend(Loop.name)
    for build in (ta.jacrev, ta.hessian, ta.vmap):
        with pytest.raises(ta.UnknownBackendError):
            build(energy, backend=Loop.name)


@pytest.mark.parametrize("backend", [None, "autograd", *ta.available_backends()])
def test_built_per_call_gives_the_reference(backend: str) -> None:
    """Built inside a loop, each transform is a fresh object with the right answer."""
    expected = torch.diag((6 * X).reshape(-1)).reshape(2, 2, 2, 2)
    built = []
    for _ in range(3):
        h = ta.hessian(energy, backend=backend)
        torch.testing.assert_close(h(X), expected)
        torch.testing.assert_close(ta.jacrev(ta.jacrev(energy), backend=backend)(X), expected)
        torch.testing.assert_close(ta.vmap(torch.sum, backend=backend)(X), X.sum(1))
        built.append(h)
    assert built[0] is not built[1]
    assert built[0].__name__ == "hessian(energy)" and "hessian(energy)" in repr(built[0])
