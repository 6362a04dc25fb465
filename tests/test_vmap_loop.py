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
    from tad_autograd.dispatch.automatic import LOOP_MAX_BATCH, LOOP_MAX_BATCH_ACCELERATOR

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


class _CountSamples:
    """``v * 2`` summed, counting the calls (a loop calls once per sample, a transform once)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (v * 2).sum()


def _calls_per_vmap(f: _CountSamples, batch: torch.Tensor, times: int) -> list:
    counts = []
    for _ in range(times):
        before = f.calls
        torch.testing.assert_close(ta.vmap(f)(batch), (batch * 2).sum(-1))
        counts.append(f.calls - before)
    return counts


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> object:
    """A fresh per-function cost memory for automatic ``vmap``'s small batches."""
    from tad_autograd.dispatch import automatic
    from tad_autograd.eager import _small_batches

    monkeypatch.setattr(automatic, "_SMALL", _small_batches.SmallBatchChoice())
    return _small_batches


@pytest.mark.parametrize(
    ("expensive", "margin", "expected"),
    [
        (float("inf"), 1.0, [2] * 6),  # cheap: always a loop, the transform never tried
        (0.0, float("inf"), [2, 2, 1, 1, 1, 1]),  # the transform measured faster: kept
        (0.0, 0.0, [2, 2, 1, 1, 2, 2]),  # the transform measured slower: the loop again
    ],
)
def test_automatic_vmap_of_a_small_batch_follows_the_measured_cost(
    small_batches: object,
    monkeypatch: pytest.MonkeyPatch,
    expensive: float,
    margin: float,
    expected: list,
) -> None:
    monkeypatch.setattr(small_batches, "EXPENSIVE_SAMPLE_S", expensive)
    monkeypatch.setattr(small_batches, "MARGIN", margin)
    assert _calls_per_vmap(_CountSamples(), torch.ones(2, 3), 6) == expected


def test_a_small_batch_the_transform_cannot_run_keeps_looping(
    small_batches: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expensive function with ``.item()``: the trial transform fails, silently."""
    monkeypatch.setattr(small_batches, "EXPENSIVE_SAMPLE_S", 0.0)
    calls = []

    def f(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return v * v.sum().item()

    x = torch.ones(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            torch.testing.assert_close(ta.vmap(f)(x), 3 * x)
    # two loops, the failed trial (one call, then its loop), then loops
    assert len(calls) == 2 + 2 + (1 + 2) + 2 + 2
