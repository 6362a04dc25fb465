"""The automatic fallback is structural, and never less correct than autograd.

* An exception of any type and any wording that escapes a function transform
  is retried on the autograd backend: a torch release that rewords every
  message changes nothing.  Proven with an invented error that the function
  raises only when its argument is a transform wrapper.
* A retry that fails raises its own (eager, the user's real) exception, with
  the transform's as its context, and warns nothing.
* An error from eager code is not retried: the function runs once.
* The retry starts from the random state the first attempt started from, so
  values and the final RNG state equal one plain autograd run.
* Ops whose batched derivative torch gets wrong (``batching_defects``) are
  never vectorised in automatic mode.
* The references are a row loop of ``torch.autograd.grad`` on the eager
  function, or the explicit autograd backend for random functions.
"""

from __future__ import annotations

import warnings
from typing import Any, List

import pytest
import torch
from _helpers import reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.compat._torch_info import transforms_active as _transforms_active
from tad_autograd.dispatch._fallback import MEMORY

F64 = torch.float64


class InventedError(Exception):
    """An error no torch release has ever raised, with words no pattern knows."""


@pytest.fixture(autouse=True)
def _forget() -> Any:
    MEMORY.clear()
    yield
    MEMORY.clear()


def test_any_error_inside_a_transform_falls_back() -> None:
    calls: List[bool] = []

    def picky(v: torch.Tensor) -> torch.Tensor:
        calls.append(_transforms_active())
        if _transforms_active():
            raise InventedError("qwxz frobnicated")
        return v.sin() * 2

    x = torch.rand(5, 3, dtype=F64)
    with pytest.warns(ta.BackendFallbackWarning, match="qwxz frobnicated"):
        result = ta.vmap(picky)(x)
    torch.testing.assert_close(result, x.sin() * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second warning, no second attempt
        calls.clear()
        torch.testing.assert_close(ta.vmap(picky)(x), x.sin() * 2)
    assert calls == [False] * 5
    with pytest.raises(InventedError):  # an explicit backend never falls back
        ta.vmap(picky, backend=ta.available_backends()[0])(x)


def test_nested_jacrev_inside_vmap_falls_back() -> None:
    def picky(v: torch.Tensor) -> torch.Tensor:
        if _transforms_active():
            raise InventedError("only under a transform")
        return v.sin() * v.sum()

    x = torch.rand(4, 3, dtype=F64)
    with pytest.warns(ta.BackendFallbackWarning):
        result = ta.vmap(ta.jacrev(picky))(x)
    torch.testing.assert_close(result, torch.stack([reference_jacobian(picky, s) for s in x]))


def test_failed_retry_raises_the_eager_error_with_the_transform_error_as_context() -> None:
    def broken(v: torch.Tensor) -> torch.Tensor:
        if _transforms_active():
            raise InventedError("under the transform")
        raise KeyError("the user's real mistake")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing succeeded: no warning
        with pytest.raises(KeyError, match="real mistake") as info:
            ta.vmap(broken)(torch.rand(5, 3, dtype=F64))
    chain = []
    error: Any = info.value
    while error is not None:
        chain.append(error)
        error = error.__context__
    assert any(isinstance(e, InventedError) for e in chain), chain


def test_eager_error_is_not_retried() -> None:
    calls: List[int] = []

    def raises(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        raise ValueError("user error in the forward pass")

    with pytest.raises(ValueError, match="user error"):
        ta.jacrev(raises)(torch.rand(6, dtype=F64))
    assert calls == [1]


@pytest.mark.parametrize("explicit", [False, True])
def test_retry_restores_random_state(explicit: bool) -> None:
    generator = torch.Generator().manual_seed(7) if explicit else None

    def noisy(v: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(v.shape, dtype=v.dtype, generator=generator)
        return v * noise * v.sum().item()  # .item() fails under the transform, after the draw

    x = torch.rand(5, 3, dtype=F64)

    def run(backend: Any) -> Any:
        torch.manual_seed(0)
        if generator is not None:
            generator.manual_seed(7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            out = ta.vmap(noisy, randomness="different", backend=backend)(x)
        after = torch.rand(3) if generator is None else torch.rand(3, generator=generator)
        return out, after

    auto, auto_after = run(None)
    plain, plain_after = run("autograd")
    torch.testing.assert_close(auto, plain)
    torch.testing.assert_close(auto_after, plain_after)


FUNCTION_TRANSFORM_FAILURES = {
    "item": lambda v: v.sin() * v.sum().item(),
    "control flow": lambda v: v.sin() if v.sum() > 0 else v.cos(),
}


@pytest.mark.parametrize("name", list(FUNCTION_TRANSFORM_FAILURES))
@pytest.mark.parametrize("outer", ["vmap(jacrev)", "vmap(hessian)"])
def test_untransformable_under_vmap_of_derivatives(name: str, outer: str) -> None:
    f = FUNCTION_TRANSFORM_FAILURES[name]
    x = torch.rand(4, 3, dtype=F64) - 0.3
    if outer == "vmap(jacrev)":
        transformed = ta.vmap(ta.jacrev(f))
        expected = torch.stack([reference_jacobian(f, s) for s in x])
    else:
        transformed = ta.vmap(ta.hessian(lambda v: f(v).sum()))
        expected = torch.stack([reference_hessian(lambda u: f(u).sum(), s) for s in x])
    with pytest.warns(ta.BackendFallbackWarning):
        result = transformed(x)
    torch.testing.assert_close(result, expected)


def test_inplace_into_captured_tensor_under_vmap() -> None:
    buffer = torch.zeros(3, dtype=F64)

    def accumulate(v: torch.Tensor) -> torch.Tensor:
        buffer.add_(v)
        return buffer * 1

    x = torch.rand(4, 3, dtype=F64)
    with pytest.warns(ta.BackendFallbackWarning):
        result = ta.vmap(accumulate)(x)
    torch.testing.assert_close(result, x.cumsum(0))  # what one eager loop gives


def cdist_field(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, x).sum(-1)


@pytest.mark.usefixtures("torch_cdist_rule")  # torch's own (wrong) rule, its entry active
def test_automatic_mode_does_not_vectorise_through_defects() -> None:
    x = torch.rand(5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ta.jacrev(cdist_field)(x), reference_jacobian(cdist_field, x))
    batch = torch.stack([x, x * 0.7, x + 0.2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ta.vmap(ta.jacrev(cdist_field))(batch)
    torch.testing.assert_close(
        result, torch.stack([reference_jacobian(cdist_field, s) for s in batch])
    )
    reasons = [str(w.message) for w in caught if issubclass(w.category, ta.BackendFallbackWarning)]
    assert any("cdist" in r for r in reasons), reasons
    assert "cdist" in str(ta.explain(x))


def test_loop_samples_are_fresh_tensors() -> None:
    """``as_strided`` without an offset sees the sample's own storage, as outside vmap."""

    def first_two(v: torch.Tensor) -> torch.Tensor:
        return v.as_strided((2,), (1,), 0) * 1

    x = torch.arange(6, dtype=F64).reshape(2, 3)  # batch of 2: automatic mode loops too
    expected = torch.stack([first_two(s.clone()) for s in x])
    for backend in (None, "autograd"):
        torch.testing.assert_close(ta.vmap(first_two, backend=backend)(x), expected)


def test_fallback_reads_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every message unrecognisable (a torch that rewords them all), nothing changes."""
    import tad_autograd.dispatch._fallback as fallback

    monkeypatch.setattr(fallback, "recognise", lambda error: None)
    x = torch.rand(4, 3, dtype=F64)
    f = FUNCTION_TRANSFORM_FAILURES["item"]
    with pytest.warns(ta.BackendFallbackWarning):
        result = ta.vmap(ta.jacrev(f))(x)
    torch.testing.assert_close(result, torch.stack([reference_jacobian(f, s) for s in x]))
