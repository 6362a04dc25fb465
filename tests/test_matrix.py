"""What the installed torch gets (backends, resolution, chunk_size, warnings).

This module runs unchanged in every env of the tox matrix (torch 1.13.1,
torch 2.0.0 + functorch 2.0.0, the current torch) and asserts the behaviour
that is specific to the torch it finds: the automatic choice, which backends
are unavailable and why, that the deprecated ``functorch`` alias never warns
when chosen explicitly, and that ``chunk_size`` works in every backend,
including functorch 1.13, which has no native ``chunk_size``.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, List

import pytest
import torch

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION, Version, module_exists
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.dispatch._resolver import resolve_cached
from tad_autograd.dispatch._settings import ENV_VAR
from tad_autograd.errors import BackendUnavailableError

TORCH_1 = TORCH_VERSION < Version("2.0")
needs_torch_1 = pytest.mark.skipif(not TORCH_1, reason=f"torch {TORCH_VERSION} >= 2.0")
needs_torch_2 = pytest.mark.skipif(TORCH_1, reason=f"torch {TORCH_VERSION} < 2.0")
needs_functorch = pytest.mark.skipif(
    not module_exists("functorch"), reason="the functorch package is not installed"
)
DT = torch.float64
EXACT = {"rtol": 1e-12, "atol": 1e-14}
AGREE = {"rtol": 1e-10, "atol": 1e-12}


def backend_in_use() -> str:
    """Inside a transformed function: the backend that runs it."""
    return ta.get_backend()


# --------------------------------------------------------------------------- automatic choice


def test_automatic_choice_for_installed_torch() -> None:
    expected = "functorch" if TORCH_1 else "func"
    assert resolve_cached(None, "cpu", False).backend.name == expected
    assert ta.explain(torch.zeros(2)).backend == expected
    seen: List[str] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(backend_in_use())
        return x.sin()

    ta.jacrev(f)(torch.zeros(2))
    ta.vmap(f)(torch.zeros(3, 2))
    ta.hessian(lambda x: f(x).sum())(torch.zeros(2))
    assert set(seen) == {expected}


def test_available_backends_for_installed_torch() -> None:
    names = ta.available_backends()
    assert names[-1] == "autograd"
    assert ("func" in names) is (not TORCH_1)
    assert ("functorch" in names) is module_exists("functorch")


# --------------------------------------------------------------------------- torch 1.13


@needs_torch_1
@pytest.mark.parametrize("name", ["func", "torch.func"])
def test_func_unavailable_on_torch_1(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = f"torch.func needs torch >= 2.0, found {TORCH_VERSION}"
    if TORCH_VERSION == Version("1.13.1"):
        assert reason == "torch.func needs torch >= 2.0, found 1.13.1"
    with pytest.raises(BackendUnavailableError, match=reason):
        ta.set_backend(name)
    assert ta.get_backend() == "auto"
    with pytest.raises(BackendUnavailableError, match=reason):
        ta.jacrev(torch.sin, backend=name)
    with pytest.raises(BackendUnavailableError, match=reason):
        ta.vmap(torch.sin, backend=name)
    with pytest.raises(BackendUnavailableError, match=reason):
        ta.hessian(torch.sin, backend=name)
    with pytest.raises(BackendUnavailableError, match=reason):
        ta.fjacrev(torch.sin, backend=name)
    with pytest.raises(BackendUnavailableError, match=reason):
        with ta.use_backend(name):
            pass  # pragma: no cover
    monkeypatch.setenv(ENV_VAR, name)
    with pytest.raises(BackendUnavailableError, match=reason) as info:
        ta.jacrev(torch.sin)(torch.zeros(2))
    assert "fix:" in str(info.value)


@needs_torch_1
def test_functorch_has_no_native_chunk_size_on_torch_1() -> None:
    """The chunking emulation, not functorch, serves chunk_size on 1.13."""
    from tad_autograd.backends.functorch import _transforms

    assert not _transforms().native_chunks


# --------------------------------------------------------------------------- torch >= 2.0


@needs_torch_2
@needs_functorch
def test_functorch_available_but_never_automatic_on_torch_2() -> None:
    assert "functorch" in ta.available_backends()
    for device_type in ("cpu", "cuda"):
        resolution = resolve_cached(None, device_type, False)
        assert resolution.backend.name == "func"
        assert "functorch" not in [b.name for b in resolution.candidates]
        assert resolve_cached(None, device_type, True).backend.name == "func"
    assert "never chosen automatically" in str(ta.explain(torch.zeros(1)))


@pytest.fixture
def no_warnings() -> Iterator[List[warnings.WarningMessage]]:
    """Record every warning, bypassing filters and the once-per-location registry."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


@needs_torch_2
@needs_functorch
def test_explicit_functorch_emits_no_warning(
    no_warnings: List[warnings.WarningMessage], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(3, dtype=DT)
    xs = torch.randn(4, 3, dtype=DT)

    def energy(x: torch.Tensor) -> torch.Tensor:
        assert backend_in_use() == "functorch"
        return (x.sin() ** 2).sum()

    b = "functorch"
    ta.jacrev(energy, backend=b)(x)
    ta.jacrev(energy, backend=b, chunk_size=1)(x)
    ta.fjacrev(energy, backend=b)(x)
    ta.vmap(energy, backend=b)(xs)
    ta.vmap(energy, backend=b, chunk_size=2)(xs)
    ta.fvmap(energy, backend=b)(xs)
    ta.hessian(energy, backend=b)(x)
    ta.vmap(ta.jacrev(energy, backend=b), backend=b)(xs)
    ta.vmap(lambda x: x + torch.rand(3, dtype=DT), randomness="same", backend=b)(xs)
    with ta.use_backend(b):
        ta.jacrev(ta.jacrev(energy))(x)
    ta.set_backend(b)
    try:
        ta.vmap(ta.hessian(energy))(xs)
    finally:
        ta.set_backend("auto")
    monkeypatch.setenv(ENV_VAR, b)
    ta.jacrev(energy)(x)
    ta.explain(x)


@needs_torch_2
@needs_functorch
def test_functorch_agrees_with_func_on_torch_2() -> None:
    x = torch.randn(4, 3, dtype=DT)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ x.T).sum(0)

    for transform in (ta.jacrev, ta.hessian):
        torch.testing.assert_close(
            transform(f, backend="functorch")(x), transform(f, backend="func")(x), **AGREE
        )


# --------------------------------------------------------------------------- chunk_size

CHUNKS = [1, 2, 3, 5, 1000]


def _model(x: torch.Tensor, w: torch.Tensor, label: str = "") -> Any:
    """Two outputs of different shapes, depending on both inputs."""
    h = torch.tanh(x @ w)
    return {"energy": (h**2).sum(), "features": [h * x[:, :1], x.cos()]}


def _inputs() -> Any:
    torch.manual_seed(1)
    return torch.randn(3, 2, dtype=DT), torch.randn(2, 4, dtype=DT)


def _assert_same(actual: Any, expected: Any, tol: Any = EXACT) -> None:
    a, a_spec = torch.utils._pytree.tree_flatten(actual)
    e, e_spec = torch.utils._pytree.tree_flatten(expected)
    assert str(a_spec) == str(e_spec)
    for u, v in zip(a, e):
        if isinstance(v, torch.Tensor):
            assert u.shape == v.shape and u.dtype == v.dtype
            torch.testing.assert_close(u, v, **tol)
        else:
            assert u == v


@pytest.mark.parametrize("argnums", [0, 1, (0, 1), (-2,)])
def test_jacrev_chunk_size(backend: str, argnums: Any) -> None:
    x, w = _inputs()
    reference = ta.jacrev(_model, argnums, backend=backend)(x, w, "label")
    for chunk_size in CHUNKS:
        got = ta.jacrev(_model, argnums, chunk_size=chunk_size, backend=backend)(x, w, "label")
        _assert_same(got, reference)
    _assert_same(reference, ta.jacrev(_model, argnums, backend="autograd")(x, w, "label"), AGREE)


def test_jacrev_chunk_size_has_aux(backend: str) -> None:
    x, w = _inputs()

    def f(x: torch.Tensor, w: torch.Tensor) -> Any:
        out = _model(x, w)
        return out["features"], {"e": out["energy"]}

    ref_jac, ref_aux = ta.jacrev(f, (0, 1), has_aux=True, backend=backend)(x, w)
    for chunk_size in CHUNKS:
        jac, aux = ta.jacrev(f, (0, 1), has_aux=True, chunk_size=chunk_size, backend=backend)(x, w)
        _assert_same(jac, ref_jac)
        _assert_same(aux, ref_aux)


def test_hessian_chunk_size(backend: str) -> None:
    x, w = _inputs()

    def energy(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _model(x, w)["energy"]

    reference = ta.hessian(energy, (0, 1), backend=backend)(x, w)
    for chunk_size in (1, 4, 1000):
        _assert_same(
            ta.hessian(energy, (0, 1), chunk_size=chunk_size, backend=backend)(x, w), reference
        )
    _assert_same(reference, ta.hessian(energy, (0, 1), backend="autograd")(x, w), AGREE)


def test_jacrev_chunk_size_nested_in_vmap(backend: str) -> None:
    xs = torch.randn(5, 3, 2, dtype=DT)
    _, w = _inputs()
    jac = ta.jacrev(lambda x, w: _model(x, w)["features"], chunk_size=4, backend=backend)
    got = ta.vmap(jac, in_dims=(0, None), chunk_size=2, backend=backend)(xs, w)
    expected = ta.vmap(
        ta.jacrev(lambda x, w: _model(x, w)["features"]), in_dims=(0, None), backend="autograd"
    )(xs, w)
    _assert_same(got, expected, AGREE)


@pytest.mark.parametrize("out_dims", [0, -1, (1, 0), (-2, -1)])
def test_vmap_chunk_size(backend: str, out_dims: Any) -> None:
    xs = torch.randn(7, 3, dtype=DT)
    ws = torch.randn(3, 7, 2, dtype=DT)
    bias = torch.randn(2, dtype=DT)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, scale: float) -> Any:
        return (x @ w + b) * scale, x.sum()

    in_dims = (0, 1, None)
    reference = ta.vmap(f, in_dims, out_dims, backend=backend)(xs, ws, bias, scale=2.0)
    for chunk_size in (1, 2, 3, 7, 100):
        got = ta.vmap(f, in_dims, out_dims, chunk_size=chunk_size, backend=backend)(
            xs, ws, bias, scale=2.0
        )
        _assert_same(got, reference)
    _assert_same(
        reference, ta.vmap(f, in_dims, out_dims, backend="autograd")(xs, ws, bias, scale=2.0), AGREE
    )


def test_vmap_chunk_size_sum_of_a_scalar(backend: str) -> None:
    """A sum of a 0-d intermediate, in chunks of any size (functorch 1.13 raises for a
    batch of one sample there, so its emulated chunks hold two at least)."""
    xs = torch.randn(5, 1, dtype=DT)
    expected = torch.stack([(x @ x).sum() for x in xs])
    for chunk_size in (1, 2, 3, 4):
        got = ta.vmap(lambda x: (x @ x).sum(), chunk_size=chunk_size, backend=backend)(xs)
        torch.testing.assert_close(got, expected, **EXACT)


def test_vmap_chunk_size_unbatched_output(backend: str) -> None:
    """An output that does not depend on the batch is broadcast, wherever out_dims puts it."""
    c = torch.arange(6, dtype=DT).reshape(2, 3)
    xs = torch.randn(4, 5, dtype=DT)
    for out_dims in (0, 1, -1, 2, -3):
        expected = c.unsqueeze(out_dims % 3).expand(
            *c.shape[: out_dims % 3], 4, *c.shape[out_dims % 3 :]
        )
        for chunk_size in (None, 1, 3):
            got = ta.vmap(
                lambda x: c * 1.0, out_dims=out_dims, chunk_size=chunk_size, backend=backend
            )(xs)
            assert torch.equal(got, expected), (out_dims, chunk_size)


def _random_rows(backend: str, randomness: str, chunk_size: Any, seed: int = 7) -> torch.Tensor:
    xs = torch.zeros(5, 3, dtype=DT)
    torch.manual_seed(seed)
    return ta.vmap(
        lambda x: x + torch.rand(3, dtype=DT),
        randomness=randomness,
        chunk_size=chunk_size,
        backend=backend,
    )(xs)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 5, 8])
def test_vmap_chunk_size_randomness_same(backend: str, chunk_size: Any) -> None:
    """Every sample sees the same draws, chunked or not (functorch 1.13 has no native chunks)."""
    rows = _random_rows(backend, "same", chunk_size)
    assert torch.equal(rows, rows[:1].expand_as(rows))
    assert torch.equal(rows, _random_rows(backend, "same", None))
    assert not torch.equal(rows, _random_rows(backend, "same", chunk_size, seed=8))


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 8])
def test_vmap_chunk_size_randomness_different(backend: str, chunk_size: Any) -> None:
    rows = _random_rows(backend, "different", chunk_size)
    assert rows.shape == (5, 3)
    assert len({tuple(r.tolist()) for r in rows}) == 5
    assert ((rows >= 0) & (rows < 1)).all()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_vmap_chunk_size_randomness_error(backend: str, chunk_size: Any) -> None:
    with pytest.raises(RuntimeError, match="random"):
        _random_rows(backend, "error", chunk_size)


@pytest.mark.parametrize("transform", ["jacrev", "vmap"])
def test_chunk_size_agrees_across_backends(transform: str) -> None:
    x, w = _inputs()
    xs = torch.randn(6, 3, 2, dtype=DT)
    results = {}
    for name in ta.available_backends():
        if transform == "jacrev":
            results[name] = ta.jacrev(_model, (0, 1), chunk_size=3, backend=name)(x, w)
        else:
            results[name] = ta.vmap(_model, (0, None), chunk_size=4, backend=name)(xs, w)
    reference = results.pop("autograd")
    for got in results.values():
        _assert_same(got, reference, AGREE)


def test_builtin_backends_are_registered() -> None:
    """Every env runs the backend-parametrized tests over all three (unavailable ones skip)."""
    assert set(REGISTRY.names()) >= {"func", "functorch", "autograd"}
