"""Automatic fallback: each recognised error provoked for real on this torch."""

from __future__ import annotations

import gc
import logging
import warnings
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from _helpers import OldStyleExp, assert_tree_close

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION
from tad_autograd.dispatch._fallback import MEMORY, UNTRANSFORMABLE, recognise

DT = torch.float64
TORCH2 = TORCH_VERSION.major >= 2
TRANSFORM = "func" if TORCH2 else "functorch"


def _new_style_without_vmap_rule() -> Any:
    class NoVmapRule(torch.autograd.Function):
        @staticmethod
        def forward(x):  # type: ignore[override]
            return x * 3

        @staticmethod
        def setup_context(ctx, inputs, output):  # type: ignore[override]
            pass

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            return grad * 3

    return NoVmapRule


def _provocations() -> Dict[str, Tuple[str, Callable[[], Tuple[Any, Callable[..., Any], Any]]]]:
    """entry key -> (transform, builder returning (transform kwargs, function, args))."""
    x = torch.randn(4, 3, dtype=DT)

    def old_style():
        return {}, lambda v: OldStyleExp.apply(v), (x[0],)

    def no_vmap_rule():
        fn = _new_style_without_vmap_rule()
        return {}, lambda v: fn.apply(v), (x,)

    def item():
        return {}, lambda v: v * v.sum().item(), (x,)

    def control_flow():
        return {}, lambda v: v * 2 if v.sum() > 0 else v * 3, (x,)

    def inplace_captured():
        buf = torch.zeros(3, dtype=DT)

        def f(v):
            b = buf.clone()
            buf.add_(v)  # mutates a captured tensor
            return v * 2 + b

        return {}, f, (x[0],)

    def inplace_vmap():
        def f(v):
            buf = torch.zeros(3, dtype=DT)
            buf.copy_(v)
            return buf * 2

        return {}, f, (x,)

    def no_batching_rule():
        return {}, lambda v: v * (v > 0).nonzero().shape[0], (x,)

    def data_access():
        return {}, lambda v: v * float(sum(v.tolist())), (x,)

    table = {
        "function-without-setup-context": ("jacrev", old_style),
        "function-without-vmap-rule": ("vmap", no_vmap_rule),
        "function-under-functorch-1.13": ("jacrev", old_style),
        "item-under-vmap": ("vmap", item),
        "data-dependent-control-flow": ("vmap", control_flow),
        "inplace-on-captured-tensor": ("jacrev", inplace_captured),
        "inplace-under-vmap": ("vmap", inplace_vmap),
        "no-batching-rule": ("vmap", no_batching_rule),
        "data-access-under-transform": ("vmap", data_access),
    }
    return table


PROVOCATIONS = _provocations()
ONLY_ON = {
    "function-without-setup-context": TORCH2,
    "function-without-vmap-rule": TORCH2,
    "function-under-functorch-1.13": not TORCH2,
}


def test_every_entry_has_a_provocation() -> None:
    assert {e.key for e in UNTRANSFORMABLE} == set(PROVOCATIONS)


def _call(transform: str, fn, args, **kwargs):
    t = ta.jacrev if transform == "jacrev" else ta.vmap
    return t(fn, **kwargs)(*args)


@pytest.mark.parametrize("key", sorted(PROVOCATIONS))
def test_entry_recognises_the_real_error(key: str) -> None:
    if not ONLY_ON.get(key, True):
        pytest.skip(f"{key} does not occur on torch {TORCH_VERSION}")
    transform, build = PROVOCATIONS[key]
    _, fn, args = build()
    with pytest.raises(Exception) as info:
        _call(transform, fn, args, backend=TRANSFORM)
    entry = recognise(info.value)
    assert entry is not None and entry.key == key, f"{type(info.value).__name__}: {info.value}"
    notes = "".join(getattr(info.value, "__notes__", [])) + str(info.value)
    assert "backend='autograd' would handle it" in notes


@pytest.mark.parametrize("key", sorted(PROVOCATIONS))
def test_automatic_mode_falls_back_once(key: str, caplog: pytest.LogCaptureFixture) -> None:
    if not ONLY_ON.get(key, True):
        pytest.skip(f"{key} does not occur on torch {TORCH_VERSION}")
    transform, build = PROVOCATIONS[key]
    _, fn, args = build()
    expected = _call(transform, fn, args, backend="autograd")
    _, fn, args = build()  # fresh state for functions that mutate captured tensors
    if transform == "jacrev":
        # Automatic jacrev runs the forward pass eagerly, so it needs no fallback.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = _call(transform, fn, args)
    else:
        with caplog.at_level(logging.INFO, logger="tad_autograd"):
            with pytest.warns(
                ta.BackendFallbackWarning, match="using backend 'autograd'"
            ) as record:
                first = _call(transform, fn, args)
        assert len(record) == 1
        assert any("fallback" in r.message for r in caplog.records if r.levelno == logging.INFO)
    if key != "inplace-on-captured-tensor":  # its value depends on the mutated buffer
        assert_tree_close(first, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _call(transform, fn, args)  # remembered: no retry, no warning


def test_user_errors_propagate_unchanged_and_are_not_retried() -> None:
    calls = []

    class MyError(ValueError):
        pass

    def f(x):
        calls.append(1)
        raise MyError("bad input from the user")

    with pytest.raises(MyError, match="bad input from the user") as info:
        ta.jacrev(f)(torch.ones(2))
    assert len(calls) == 1
    assert not getattr(info.value, "__notes__", None)

    def shape_error(x):
        calls.append(1)
        return x @ torch.ones(5, dtype=x.dtype)

    calls.clear()
    with pytest.raises(RuntimeError):
        ta.jacrev(shape_error)(torch.ones(2))
    assert len(calls) == 1


def test_explicit_backend_never_falls_back() -> None:
    calls = []

    def f(v):
        calls.append(1)
        return OldStyleExp.apply(v)

    with pytest.raises(RuntimeError, match="autograd.Function"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ta.jacrev(f, backend=TRANSFORM)(torch.ones(2, dtype=DT))
    assert len(calls) == 1


def test_remembered_per_function_weakly() -> None:
    def make():
        scale = torch.tensor(2.0, dtype=DT)
        return lambda v: OldStyleExp.apply(v) * scale  # a closure

    f = make()
    with pytest.warns(ta.BackendFallbackWarning):
        ta.vmap(f)(torch.ones(4, dtype=DT))
    assert MEMORY.recall(f, (("vmap",), torch.empty(()).device.type)) == "autograd"
    assert len(MEMORY.describe()) == 1
    del f
    gc.collect()
    assert MEMORY.describe() == ()


def test_fallback_after_earlier_success_warns_at_the_call_and_is_right() -> None:
    """A function that becomes untransformable after transformed calls (the cached choice).

    The warning points at the caller's line on both the first-call and the
    cached path, and the result is the autograd backend's.
    """
    old_style = [False]

    def f(v: torch.Tensor) -> torch.Tensor:
        return OldStyleExp.apply(v) if old_style[0] else v.exp()

    batched = ta.vmap(f)
    x = torch.linspace(0.0, 1.0, 4, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_tree_close(batched(x), x.exp())  # transformed, and cached
        assert_tree_close(batched(x), x.exp())
    old_style[0] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = batched(x)
    assert_tree_close(result, x.exp())
    assert [w.category for w in caught] == [ta.BackendFallbackWarning]
    assert caught[0].filename == __file__
    assert MEMORY.recall(f, (("vmap",), torch.empty(()).device.type)) == "autograd"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no retry, no second warning
        assert_tree_close(batched(x), x.exp())

    g = ta.vmap(lambda v: OldStyleExp.apply(v))  # the first call falls back
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g(x)
    assert [w.filename for w in caught] == [__file__]


def test_bound_methods_are_remembered_and_not_kept_alive() -> None:
    class Model:
        def energy(self, v):
            return OldStyleExp.apply(v).sum()

    model = Model()
    with pytest.warns(ta.BackendFallbackWarning):
        ta.vmap(model.energy)(torch.ones(4, dtype=DT))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ta.vmap(model.energy)(torch.ones(4, dtype=DT))  # a new bound-method object
    del model
    gc.collect()
    assert MEMORY.describe() == ()


def test_nested_fallback_gives_right_hessian() -> None:
    x = torch.randn(3, dtype=DT)

    def energy(v):
        return (OldStyleExp.apply(v) * v).sum()

    expected = torch.diag(x.exp() * (2 + x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eager forward: no fallback needed
        assert_tree_close(ta.jacrev(ta.jacrev(energy))(x), expected)
        assert_tree_close(ta.hessian(energy)(x), expected)
    with pytest.warns(ta.BackendFallbackWarning):  # under vmap the Function is transformed
        hs = ta.vmap(ta.hessian(energy))(x.reshape(3, 1))
    assert_tree_close(hs, (x.exp() * (2 + x)).reshape(3, 1, 1))
    with pytest.warns(ta.BackendFallbackWarning):
        hj = ta.jacrev(ta.vmap(ta.jacrev(energy)))(x.reshape(3, 1))
    assert_tree_close(hj.reshape(3, 3), expected)


def test_explain_mentions_settings_and_fallbacks() -> None:
    text = str(ta.explain(torch.ones(1)))
    assert "automatic" in text and "TAD_AUTOGRAD_BACKEND" in text
    if TORCH2:
        assert "deprecated alias" in text
    else:
        assert "torch.func needs torch >= 2.0" in text
    f = lambda v: OldStyleExp.apply(v)  # noqa: E731
    with pytest.warns(ta.BackendFallbackWarning):
        ta.vmap(f)(torch.ones(4, dtype=DT))
    assert "Remembered fallbacks" in str(ta.explain(torch.ones(1)))
    assert "'autograd'" in str(ta.explain(device="mps"))
    assert ta.explain(device="mps").backend == "autograd"


def test_resolution_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tad_autograd"):
        ta.jacrev(torch.sin)(torch.zeros(2))
    assert any(r.levelno == logging.DEBUG and "backend" in r.message for r in caplog.records)
