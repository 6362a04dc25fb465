"""Compositions and hessian agree on every backend."""

from __future__ import annotations

import torch
from _helpers import assert_tree_close

import tad_autograd as ta

DT = torch.float64


def energy(pos):
    i, j = torch.triu_indices(len(pos), len(pos), 1)
    r2 = ((pos[i] - pos[j]) ** 2).sum(-1)
    return (r2.reciprocal() ** 6 - r2.reciprocal() ** 3).sum() * 4


def positions(n=4, batch=None):
    base = torch.tensor(
        [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.1], [0.9, 1.0, 1.0]], dtype=DT
    )[:n]
    if batch is None:
        return base
    return base + 0.05 * torch.randn(batch, n, 3, dtype=DT)


def reference_hessian(pos):
    return torch.autograd.functional.hessian(energy, pos)


def test_hessian(backend: str) -> None:
    pos = positions()
    h = ta.hessian(energy, backend=backend)(pos)
    assert h.shape == (4, 3, 4, 3)
    assert_tree_close(h, reference_hessian(pos))


def test_hessian_vector_output_argnums_tuple(backend: str) -> None:
    x, y = torch.randn(3, dtype=DT), torch.randn(2, dtype=DT)

    def f(x, y):
        return (x.sin() * y.sum()).sum() + (y**3).sum()

    h = ta.hessian(f, argnums=(0, 1), backend=backend)(x, y)
    hxx, hxy = h[0]
    hyx, hyy = h[1]
    assert_tree_close(hxx, torch.diag(-x.sin() * y.sum()))
    assert_tree_close(hxy, x.cos()[:, None].expand(3, 2))
    assert_tree_close(hyx, x.cos()[None, :].expand(2, 3))
    assert_tree_close(hyy, torch.diag(6 * y))


def test_jacrev_of_jacrev_equals_hessian(backend: str) -> None:
    pos = positions()
    jj = ta.jacrev(ta.jacrev(energy), backend=backend)(pos)
    assert_tree_close(jj, reference_hessian(pos))


def test_nested_inherits_backend(backend: str) -> None:
    seen = []

    def f(x):
        seen.append(ta.get_backend())
        return (x**3).sum()

    ta.jacrev(ta.jacrev(f), backend=backend)(torch.randn(3, dtype=DT))
    expected = backend or ta.explain(torch.ones(1)).backend
    assert seen and set(seen) == {expected}


def test_vmap_of_jacrev(backend: str) -> None:
    batch = positions(batch=3)
    forces = ta.vmap(ta.jacrev(energy), backend=backend)(batch)
    expected = torch.stack([torch.autograd.functional.jacobian(energy, p) for p in batch])
    assert_tree_close(forces, expected)


def test_vmap_of_hessian_in_dims(backend: str) -> None:
    xs = torch.randn(3, 4, dtype=DT)
    w = torch.randn(4, dtype=DT)

    def f(x, w):
        return ((x * w).sin()).sum()

    hs = ta.vmap(ta.hessian(f), in_dims=(0, None), backend=backend)(xs, w)
    expected = torch.stack([torch.diag(-(x * w).sin() * w**2) for x in xs])
    assert_tree_close(hs, expected)


def test_jacrev_of_vmap(backend: str) -> None:
    xs = torch.randn(3, 2, dtype=DT)
    jac = ta.jacrev(ta.vmap(lambda x: (x**2).sum()), backend=backend)(xs)
    expected = torch.zeros(3, 3, 2, dtype=DT)
    for b in range(3):
        expected[b, b] = 2 * xs[b]
    assert_tree_close(jac, expected)


def test_all_backends_agree() -> None:
    batch = positions(batch=2)
    results = {}
    for name in ta.available_backends():
        results[name] = (
            ta.jacrev(energy, backend=name)(batch[0]),
            ta.hessian(energy, backend=name)(batch[0]),
            ta.vmap(ta.jacrev(energy), backend=name)(batch),
        )
    names = list(results)
    for other in names[1:]:
        assert_tree_close(results[other], results[names[0]], rtol=1e-10)


def test_inside_a_raw_torch_transform() -> None:
    """Automatic transforms nested in the user's own torch.func/functorch vmap still work."""
    from tad_autograd.compat._torch_info import TORCH_VERSION

    if TORCH_VERSION.major >= 2:
        from torch.func import vmap as raw_vmap
    else:
        from functorch import vmap as raw_vmap
    batch = positions(batch=3)
    forces = raw_vmap(ta.jacrev(energy))(batch)
    expected = torch.stack([torch.autograd.functional.jacobian(energy, p) for p in batch])
    assert_tree_close(forces, expected)
    small = raw_vmap(ta.vmap(lambda p: (p**2).sum()))(batch[:, :2])
    assert_tree_close(small, (batch[:, :2] ** 2).sum(-1))


def test_plain_autograd_refused_inside_a_forward_transform_says_why() -> None:
    """torch refuses plain autograd inside forward-mode transforms; the error says which
    operator ran it and what works instead."""
    import pytest

    energy = lambda x: (x**3).sum()  # noqa: E731
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    outer = [b for b in ta.available_backends() if b != "autograd"]
    if not outer:
        pytest.skip("no transform backend")
    with pytest.raises(RuntimeError) as info:
        ta.jacfwd(ta.grad(energy, backend="autograd"), backend=outer[0])(x)
    text = str(info.value) + "".join(getattr(info.value, "__notes__", ()))
    assert "backend='autograd'" in text and "automatic mode" in text
