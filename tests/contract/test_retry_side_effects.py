"""A call that fails inside a transform is never run again over its own side effects (§3).

Automatic mode retries a ``vmap`` (or a forward-mode product) that failed
inside a function transform on the batch loop.  A failed attempt may have
updated tensors in place before it failed: its batched input, a captured
buffer, a module's running statistics.  Those are put back before the retry,
so every update is made once; one too large to have been kept raises
instead.  On the explicit transform backends torch.func refuses these
functions (``.item()``, ``batch_norm`` in training mode).  A call that
returns gives the per-sample loop's numbers with every update made once.

The references are a Python loop over the samples on fresh copies.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Optional

import pytest
import torch

import tad_autograd as ta

F64 = torch.float64
BATCH = 4  # above the batch the automatic vmap loops over directly: a transform runs first


def _run(call: Callable[[], Any], backend: Optional[str]) -> Optional[Any]:
    """``call()``; ``None`` where an explicit transform backend raised a ``RuntimeError``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        try:
            return call()
        except RuntimeError:
            if backend is None or backend == "autograd":  # these must compute it
                raise
            return None


def test_in_place_update_of_the_batched_input(backend: Optional[str]) -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)
        if x.sum().item() > 0:  # .item(): torch.func.vmap refuses, after the update
            return x * 2.0
        return x

    xs = torch.arange(BATCH * 3, dtype=F64).reshape(BATCH, 3)
    given = xs.clone()
    result = _run(lambda: ta.vmap(f, backend=backend)(given), backend)
    expected = torch.stack([f(x.clone()) for x in xs])
    if result is not None:
        torch.testing.assert_close(result, expected)
    torch.testing.assert_close(given, xs + 1.0)  # updated once, as by torch.func's vmap


def test_in_place_update_of_a_captured_buffer(backend: Optional[str]) -> None:
    buffer = torch.zeros(1, dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        buffer.add_(1.0)
        return x * float(x.sum().item() > -1.0)

    xs = torch.ones(BATCH, 3, dtype=F64)
    result = _run(lambda: ta.vmap(f, backend=backend)(xs), backend)
    if result is None:  # torch.func refused it
        return
    torch.testing.assert_close(result, xs)
    assert float(buffer) == BATCH


def test_batch_norm_running_statistics_in_train_mode(backend: Optional[str]) -> None:
    torch.manual_seed(0)
    xs = torch.randn(BATCH, 5, 3)
    norm = torch.nn.BatchNorm1d(3, momentum=None)
    reference = torch.nn.BatchNorm1d(3, momentum=None)
    result = _run(lambda: ta.vmap(norm, backend=backend)(xs), backend)
    if result is None:
        return
    expected = torch.stack([reference(x) for x in xs])
    torch.testing.assert_close(result, expected)
    assert int(norm.num_batches_tracked) == BATCH
    torch.testing.assert_close(norm.running_mean, reference.running_mean)
    torch.testing.assert_close(norm.running_var, reference.running_var)


def _noisy(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + torch.rand(x.shape, generator=generator, dtype=x.dtype)


class _Noise(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _noisy(x, self.gen)


class _Outer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.noise = _Noise()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(x)


def test_an_update_too_large_to_undo_raises_instead_of_repeating() -> None:
    from tad_autograd.compat._rng import KEPT_BYTES

    big = torch.zeros(KEPT_BYTES // 8 + 1, dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        big.add_(1.0)
        return x * float(x.sum().item() > -1.0)

    with pytest.raises(RuntimeError, match="too large"):
        ta.vmap(f)(torch.ones(BATCH, 3, dtype=F64))
    assert float(big[0]) == 1.0  # once, by the failed attempt


@pytest.mark.parametrize("batch", [2, BATCH])
@pytest.mark.parametrize("held", ["partial", "submodule"])
def test_generators_held_by_a_partial_or_a_submodule(
    backend: Optional[str], held: str, batch: int
) -> None:
    if held == "partial":
        generator = torch.Generator()
        f: Callable[..., Any] = functools.partial(_noisy, generator=generator)
    else:
        f = _Outer()
        generator = f.noise.gen
    xs = torch.zeros(batch, 3, dtype=F64)
    generator.manual_seed(0)
    one_draw = torch.rand(3, generator=generator, dtype=F64)
    generator.manual_seed(0)
    same = ta.vmap(f, randomness="same", backend=backend)(xs)
    for row in same:
        torch.testing.assert_close(row, one_draw)
    generator.manual_seed(0)
    with pytest.raises(RuntimeError):
        ta.vmap(f, randomness="error", backend=backend)(xs)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())


@pytest.mark.parametrize("batch", [2, BATCH])
def test_the_same_tensor_passed_twice_stays_one_tensor(backend: Optional[str], batch: int) -> None:
    """An update through one argument shows in the other, as in ``torch.func.vmap``."""

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a.add_(1.0)
        return a * b

    xs = torch.ones(batch, 3, dtype=F64)
    given = xs.clone()
    result = ta.vmap(f, backend=backend)(given, given)
    torch.testing.assert_close(result, (xs + 1.0) ** 2)
    torch.testing.assert_close(given, xs + 1.0)


_GLOBAL_GENERATOR = torch.Generator()


class _GlobalNoise(torch.nn.Module):
    """Draws from a module-level generator named in its forward (inside a comprehension)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = [torch.rand(x.shape, generator=_GLOBAL_GENERATOR, dtype=x.dtype) for _ in "a"]
        return x + noise[0]


@pytest.mark.parametrize("batch", [2, BATCH])
def test_generator_named_by_a_submodules_forward(backend: Optional[str], batch: int) -> None:
    f = torch.nn.Sequential(_GlobalNoise())
    xs = torch.zeros(batch, 3, dtype=F64)
    _GLOBAL_GENERATOR.manual_seed(0)
    one_draw = torch.rand(3, generator=_GLOBAL_GENERATOR, dtype=F64)
    _GLOBAL_GENERATOR.manual_seed(0)
    for row in ta.vmap(f, randomness="same", backend=backend)(xs):
        torch.testing.assert_close(row, one_draw)
    with pytest.raises(RuntimeError):
        ta.vmap(f, randomness="error", backend=backend)(xs)


def test_inference_tensor_updated_by_a_failed_attempt_is_put_back() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)
        return x * float(x.sum().item() > -1.0)

    with torch.inference_mode():
        xs = torch.zeros(BATCH, 3, dtype=F64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            result = ta.vmap(f)(xs)
    torch.testing.assert_close(result, torch.ones(BATCH, 3, dtype=F64))
    torch.testing.assert_close(xs, torch.ones(BATCH, 3, dtype=F64))  # updated once


@pytest.mark.parametrize("batch", [2, BATCH])
def test_an_expanded_batch_passed_twice_gives_each_sample_its_own_copy(
    backend: Optional[str], batch: int
) -> None:
    """Samples that share memory start from the values passed (torch.func refuses the update)."""

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a.add_(1.0)
        return a * b

    row = torch.ones(3, dtype=F64)
    given = row.expand(batch, 3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            result = ta.vmap(f, backend=backend)(given, given)
    except RuntimeError:  # torch.func: more than one element refers to one memory location
        assert backend is not None and backend != "autograd"
        return
    torch.testing.assert_close(result, torch.full((batch, 3), 4.0, dtype=F64))
