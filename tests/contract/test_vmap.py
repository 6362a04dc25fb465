"""vmap: written once, run on every backend."""

from __future__ import annotations

import warnings

import pytest
import torch
from _helpers import assert_tree_close

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION, Version

DT = torch.float64


def loop(f, xs, dim=0):
    return torch.stack([f(x) for x in xs.unbind(dim)])


def test_basic(backend: str) -> None:
    xs = torch.randn(4, 3, dtype=DT)
    f = lambda x: x.sin() * x.sum()  # noqa: E731
    assert_tree_close(ta.vmap(f, backend=backend)(xs), loop(f, xs))


@pytest.mark.parametrize("in_dim", [1, -1])
def test_in_dims_int_and_negative(backend: str, in_dim: int) -> None:
    xs = torch.randn(3, 5, dtype=DT)
    out = ta.vmap(lambda x: x * 2, in_dims=in_dim, backend=backend)(xs)
    assert_tree_close(out, (xs * 2).T)


def test_in_dims_none_and_nested(backend: str) -> None:
    xs = torch.randn(4, 3, dtype=DT)
    w = torch.randn(3, dtype=DT)
    pair = (torch.randn(2, 4, dtype=DT), torch.randn(2, dtype=DT))

    def f(x, w, p):
        return x * w + p[0].sum() + p[1].sum()

    out = ta.vmap(f, in_dims=(0, None, (1, None)), backend=backend)(xs, w, pair)
    expected = torch.stack([xs[b] * w + pair[0][:, b].sum() + pair[1].sum() for b in range(4)])
    assert_tree_close(out, expected)


def test_out_dims(backend: str) -> None:
    xs = torch.randn(4, 3, dtype=DT)
    a, b = ta.vmap(lambda x: (x * 2, x.sum()), out_dims=(1, 0), backend=backend)(xs)
    assert_tree_close(a, (xs * 2).T)
    assert_tree_close(b, xs.sum(1))


def test_dict_output_and_kwargs(backend: str) -> None:
    xs = torch.randn(4, 3, dtype=DT)
    scale = torch.randn(3, dtype=DT)
    out = ta.vmap(lambda x, *, scale: {"y": x * scale}, backend=backend)(xs, scale=scale)
    assert_tree_close(out, {"y": xs * scale})


def test_unbatched_output_is_expanded(backend: str) -> None:
    xs = torch.randn(4, 3, dtype=DT)
    out = ta.vmap(lambda x: torch.ones(2, dtype=DT), backend=backend)(xs)
    assert_tree_close(out, torch.ones(4, 2, dtype=DT))


def test_randomness_error(backend: str) -> None:
    xs = torch.randn(4, 3)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="randomness"):
        ta.vmap(lambda x: x + torch.rand(()), backend=backend)(xs)
    assert torch.equal(torch.get_rng_state(), state)


def test_randomness_same(backend: str) -> None:
    xs = torch.zeros(5, 3)
    out = ta.vmap(lambda x: x + torch.rand(3), randomness="same", backend=backend)(xs)
    assert all(torch.equal(out[0], row) for row in out)


def test_randomness_different(backend: str) -> None:
    xs = torch.zeros(5, 3)
    out = ta.vmap(lambda x: x + torch.rand(3), randomness="different", backend=backend)(xs)
    assert len({tuple(row.tolist()) for row in out}) == 5


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 50])
def test_chunk_size_identical(backend: str, chunk_size: int) -> None:
    xs = torch.randn(7, 3, dtype=DT)
    f = lambda x: (x.exp(), x.norm())  # noqa: E731
    assert_tree_close(
        ta.vmap(f, chunk_size=chunk_size, backend=backend)(xs),
        ta.vmap(f, backend=backend)(xs),
        rtol=0,
        atol=0,
    )


def test_chunked_randomness_same(backend: str) -> None:
    out = ta.vmap(lambda x: x + torch.rand(2), randomness="same", chunk_size=2, backend=backend)(
        torch.zeros(5, 2)
    )
    assert all(torch.equal(out[0], row) for row in out)


def test_vmap_differentiable(backend: str) -> None:
    xs = torch.randn(4, 3, dtype=DT, requires_grad=True)
    out = ta.vmap(lambda x: (x**2).sum(), backend=backend)(xs)
    (g,) = torch.autograd.grad(out.sum(), xs)
    assert_tree_close(g, 2 * xs.detach())


@pytest.mark.parametrize("size", [1, 2, 3])
def test_small_batches(backend: str, size: int) -> None:
    xs = torch.randn(size, 3, dtype=DT)
    w = torch.randn(3, dtype=DT)
    out = ta.vmap(lambda x, w: (x * w).sin(), in_dims=(0, None), backend=backend)(xs, w)
    assert_tree_close(out, (xs * w).sin())
    forces = ta.vmap(ta.jacrev(lambda x: (x**3).sum()), backend=backend)(xs)
    assert_tree_close(forces, 3 * xs**2)
    with pytest.raises(RuntimeError, match="randomness"):
        ta.vmap(lambda x: x + torch.rand(()), backend=backend)(xs)
    same = ta.vmap(lambda x: x + torch.rand(3), randomness="same", backend=backend)(
        torch.zeros(size, 3)
    )
    assert all(torch.equal(same[0], row) for row in same)


@pytest.mark.parametrize("size", [1, 3])
def test_inference_mode_and_in_place_updates(backend: str, size: int) -> None:
    """Inference tensors have no version counter; an in-place update still reaches them."""

    def double_in_place(v: torch.Tensor) -> torch.Tensor:
        v.mul_(2)
        return v.sin()

    with torch.inference_mode():
        x = torch.linspace(0.1, 0.3, size)
        expected = (2 * x).sin()
        assert_tree_close(ta.vmap(torch.sin, backend=backend)(x), x.sin())
        assert_tree_close(ta.vmap(double_in_place, backend=backend)(x), expected)
        assert_tree_close(x, 2 * torch.linspace(0.1, 0.3, size))


@pytest.mark.parametrize("out_dims", [3, -4])
def test_out_dims_past_the_last_dimension_raises(backend: str, out_dims: int) -> None:
    # an output that is the batched input itself, and one computed from it
    xs = torch.randn(2, 3, 4, dtype=DT)
    for fn in (lambda x: x, lambda x: x * 2):
        with pytest.raises(IndexError):
            ta.vmap(fn, out_dims=out_dims, backend=backend)(xs)


def test_unbatched_none_output_computed_per_sample(backend: str | None) -> None:
    """An ``out_dims=None`` output computed from unbatched inputs (a new tensor in each sample)
    is returned once, also where automatic mode loops (a function with ``.item()``)."""
    xs = torch.randn(4, 3, dtype=DT)
    s = torch.randn(3, dtype=DT)

    def scaled(x: torch.Tensor, s: torch.Tensor):
        sign = 1.0 if float(x.sum().item()) > 0 else -1.0
        return x * sign, s * 2

    if backend is not None and backend != "autograd":
        pytest.skip("torch.func refuses .item() under vmap")
    call = ta.vmap(scaled, in_dims=(0, None), out_dims=(0, None), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        if backend is None and TORCH_VERSION < Version("2.0"):
            # functorch 1.13 refuses out_dims=None itself: the retry holds such outputs to
            # the strict rule (the same tensor in every sample), as documented
            with pytest.raises(ValueError, match="out_dim"):
                call(xs, s)
            return
        batched, once = call(xs, s)
    assert_tree_close(batched, torch.stack([scaled(x, s)[0] for x in xs]))
    assert_tree_close(once, s * 2)
