"""The batch loop (autograd backend, small automatic batches) detects random ops without numpy."""

from __future__ import annotations

import warnings

import pytest
import torch

import tad_autograd as ta


@pytest.fixture
def torch_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``Tensor.numpy`` fail as it does on a torch built without numpy."""

    def no_numpy(self: torch.Tensor, *args: object, **kwargs: object) -> None:
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)


@pytest.mark.usefixtures("torch_without_numpy")
@pytest.mark.parametrize("backend", ["autograd", None])
def test_random_op_detected_without_numpy(backend: str) -> None:
    x = torch.ones(2, 3, dtype=torch.float64)  # batch of 2: the automatic choice loops too
    with pytest.raises(RuntimeError, match="randomness error mode"):
        ta.vmap(lambda v: v + torch.rand(3, dtype=v.dtype), backend=backend)(x)
    result = ta.vmap(lambda v: v.sum(), backend=backend)(x)
    assert torch.equal(result, torch.full((2,), 3.0, dtype=torch.float64))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_automatic_vmap_loops_over_small_batches_only(device: str) -> None:
    """Up to the device's loop size no transform runs, so ``.item()`` needs no fallback."""
    from tad_autograd.dispatch._automatic import LOOP_MAX_BATCH, LOOP_MAX_BATCH_ACCELERATOR

    largest = LOOP_MAX_BATCH if device == "cpu" else LOOP_MAX_BATCH_ACCELERATOR

    def f(v: torch.Tensor) -> torch.Tensor:
        return v * v.sum().item()

    looped = torch.ones(largest, 3, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(ta.vmap(f)(looped), 3 * looped)
    vectorised = torch.ones(largest + 1, 3, device=device)
    with pytest.warns(ta.BackendFallbackWarning, match="item"):
        torch.testing.assert_close(ta.vmap(f)(vectorised), 3 * vectorised)


class _Forwarding:
    """A callable wrapper that forwards unknown attributes to its function (no ``__wrapped__``)."""

    def __init__(self, fn: object) -> None:
        self.fn = fn

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["fn"], name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)  # type: ignore[operator, no-any-return]


@pytest.mark.parametrize("wrap", ["transformed", "nested transforms", "forwarding object"])
def test_generators_found_through_wrappers(wrap: str) -> None:
    """The generator in a function's closure is found however the function is wrapped."""
    from tad_autograd.compat._visible import visible_generators

    gen = torch.Generator()

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand(x.shape, generator=gen, dtype=x.dtype)

    wrapped = {
        "transformed": lambda: ta.jacrev(noisy),
        "nested transforms": lambda: ta.vmap(ta.jacrev(noisy, backend="autograd")),
        "forwarding object": lambda: _Forwarding(noisy),
    }[wrap]()
    assert visible_generators(wrapped, (torch.zeros(2),)) == [gen]
