"""The migration tables (docs/migrating*.rst), row by row: the old call and ours, side by side.

Each test runs the call a user migrates away from -- :mod:`torch.func`, ``functorch``
(torch 1.13), :mod:`torch.autograd.functional`, ``tad_mctc.autograd`` 0.7 -- and the
replacement the docs give, on the same inputs, and compares the results with
:func:`torch.testing.assert_close`.  The old library is the independent reference here.

``tad_mctc`` comes with the ``migration`` extra (``pip install -e ".[test,migration]"``);
where it is not importable, its tests are skipped.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.testing import assert_close

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION, Version

TORCH2 = TORCH_VERSION >= Version("2.0")
needs_torch2 = pytest.mark.skipif(not TORCH2, reason="torch.func needs torch >= 2.0")


def energy(pos: torch.Tensor) -> torch.Tensor:
    """A pair potential (Lennard-Jones-like), written for one structure ``(n, 3)``."""
    d = pos[..., :, None, :] - pos[..., None, :, :]
    n = pos.shape[-2]
    r2 = (d**2).sum(-1) + torch.eye(n, dtype=pos.dtype)
    inv6 = r2**-3
    return (inv6**2 - inv6).triu(1).sum((-1, -2))


def scaled(pos: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    return strength * energy(pos)


def field(x: torch.Tensor) -> torch.Tensor:
    """A vector-valued function, R^4 -> R^3."""
    return torch.stack([x[0] * x[1], x[1].sin() + x[2] ** 2, x[3].exp() * x[0]])


@pytest.fixture
def pos() -> torch.Tensor:
    """Four atoms near a tetrahedron (no two closer than 1.0), float64."""
    gen = torch.Generator().manual_seed(0)
    base = torch.tensor(
        [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.1, 0.0], [0.0, 0.0, 1.1]], dtype=torch.float64
    )
    return base + 0.05 * torch.rand(base.shape, generator=gen, dtype=torch.float64)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.tensor([0.3, -0.7, 1.2, 0.4], dtype=torch.float64)


def _assert_same_operators(ref: Any, pos: torch.Tensor, x: torch.Tensor) -> None:
    """The operators ``torch.func`` and ``functorch`` share, each against ``ref``'s."""
    v = torch.ones_like(x)
    assert_close(ta.jacrev(field)(x), ref.jacrev(field)(x))
    assert_close(ta.jacfwd(field)(x), ref.jacfwd(field)(x))
    assert_close(ta.grad(energy)(pos), ref.grad(energy)(pos))
    assert_close(ta.grad_and_value(energy)(pos), ref.grad_and_value(energy)(pos))
    assert_close(ta.hessian(energy)(pos), ref.hessian(energy)(pos))
    assert_close(ta.jvp(field, (x,), (v,)), ref.jvp(field, (x,), (v,)))
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert_close(ta.vjp(field, x)[1](w), ref.vjp(field, x)[1](w))
    batch = torch.stack([pos, 1.1 * pos])
    assert_close(ta.vmap(ta.jacrev(energy))(batch), ref.vmap(ref.jacrev(energy))(batch))


# --------------------------------------------------------------------------- torch.func


@needs_torch2
def test_torch_func_operators(pos: torch.Tensor, x: torch.Tensor) -> None:
    import torch.func as tf

    _assert_same_operators(tf, pos, x)
    v = torch.ones_like(x)
    assert_close(ta.jacobian(field)(x), tf.jacrev(field)(x))
    assert_close(ta.vjp(field, x)[0], tf.vjp(field, x)[0])
    out, jvp_fn = ta.linearize(field, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.func.linearize's tracer warns
        ref_out, ref_jvp_fn = tf.linearize(field, x)
    assert_close(out, ref_out)
    assert_close(jvp_fn(v), ref_jvp_fn(v))
    batch = torch.stack([pos, 1.1 * pos])
    assert_close(ta.vmap(energy)(batch), tf.vmap(energy)(batch))
    strength = torch.tensor(2.0, dtype=torch.float64)
    assert_close(
        ta.vmap(ta.jacrev(scaled), in_dims=(0, None))(batch, strength),
        tf.vmap(tf.jacrev(scaled), in_dims=(0, None))(batch, strength),
    )


@needs_torch2
def test_torch_func_hvp_is_jvp_of_grad(pos: torch.Tensor) -> None:
    import torch.func as tf

    t = torch.ones_like(pos)
    _, ours = ta.hvp(energy, (pos,), (t,))
    assert_close(ours[0], tf.jvp(tf.grad(energy), (pos,), (t,))[1])


@needs_torch2
def test_functional_call_composes(x: torch.Tensor) -> None:
    """``functional_call`` stays torch's; our operators differentiate through it."""
    from torch.func import functional_call

    model = torch.nn.Linear(4, 2).double()
    params = dict(model.named_parameters())
    ours = ta.jacrev(lambda p: functional_call(model, p, (x,)))(params)
    ref = torch.func.jacrev(lambda p: functional_call(model, p, (x,)))(params)
    assert_close(ours, ref)


# --------------------------------------------------------------------------- functorch 1.13


def _functorch() -> Any:
    """The ``functorch`` package where it is the transform library (torch < 2.1), else skip."""
    if TORCH_VERSION >= Version("2.1"):
        pytest.skip("functorch is a deprecated alias of torch.func from torch 2.1 on")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.0's functorch announces its deprecation
        return pytest.importorskip("functorch")


def test_functorch_operators(pos: torch.Tensor, x: torch.Tensor) -> None:
    ft = _functorch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        _assert_same_operators(ft, pos, x)


def test_functorch_make_functional_recipe(x: torch.Tensor) -> None:
    """``make_functional`` -> ``functional_call`` (``torch.nn.utils.stateless`` on torch 1.13)."""
    ft = _functorch()
    if TORCH2:
        from torch.func import functional_call
    else:
        from torch.nn.utils.stateless import functional_call

    model = torch.nn.Linear(4, 2).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fmodel, params = ft.make_functional(model)
        ref = ft.jacrev(fmodel)(params, x)
    names = [name for name, _ in model.named_parameters()]
    ours = ta.jacrev(lambda p: functional_call(model, dict(zip(names, p)), (x,)))(params)
    assert_close(ours, ref)


# --------------------------------------------------------------------------- autograd.functional


def test_autograd_functional(pos: torch.Tensor, x: torch.Tensor) -> None:
    import torch.autograd.functional as AF

    v = torch.ones_like(x)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    t = torch.ones_like(pos)
    assert_close(ta.jacrev(field)(x), AF.jacobian(field, x))
    assert_close(ta.jacrev(field)(x), AF.jacobian(field, x, vectorize=True))
    assert_close(ta.hessian(energy)(pos), AF.hessian(energy, pos))
    out, vjp_fn = ta.vjp(field, x)
    assert_close((out, vjp_fn(w)[0]), AF.vjp(field, x, w))
    assert_close(ta.jvp(field, (x,), (v,)), AF.jvp(field, x, v))
    out, (hv,) = ta.hvp(energy, (pos,), (t,))
    assert_close((out, hv), AF.hvp(energy, pos, t))
    assert_close((out, hv), AF.vhp(energy, pos, t))  # the Hessian is symmetric


def test_autograd_functional_tuple_inputs(pos: torch.Tensor) -> None:
    """Tuple ``inputs`` -> ``argnums=(0, 1)``: the same nesting, tuple of tuples."""
    import torch.autograd.functional as AF

    s = torch.tensor(2.0, dtype=torch.float64)
    assert_close(ta.jacrev(scaled, argnums=(0, 1))(pos, s), AF.jacobian(scaled, (pos, s)))
    assert_close(ta.hessian(scaled, argnums=(0, 1))(pos, s), AF.hessian(scaled, (pos, s)))


def test_autograd_functional_create_graph(pos: torch.Tensor) -> None:
    """``create_graph=True`` -> an input that requires grad: the result is differentiable."""
    import torch.autograd.functional as AF

    p = pos.clone().requires_grad_(True)
    ours = torch.autograd.grad(ta.hessian(energy)(p).sum(), p)[0]
    ref = torch.autograd.grad(AF.hessian(energy, p, create_graph=True).sum(), p)[0]
    assert_close(ours, ref)


# --------------------------------------------------------------------------- tad_mctc.autograd 0.7


def _mctc() -> Any:
    mctc = pytest.importorskip(
        "tad_mctc.autograd", reason="tad-mctc is not installed (the migration extra)"
    )
    import tad_mctc

    if Version(tad_mctc.__version__) >= Version("0.8"):
        pytest.skip(f"the table is for tad-mctc 0.7, found {tad_mctc.__version__}")
    return mctc


def test_mctc_jacrev_and_vmap(pos: torch.Tensor, x: torch.Tensor) -> None:
    mctc = _mctc()
    assert_close(ta.jacrev(field)(x), mctc.jacrev(field)(x))
    assert_close(ta.jacrev(energy)(pos), mctc.jacrev(energy)(pos))
    batch = torch.stack([pos, 1.1 * pos])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch < 2: its loop vmap warns
        assert_close(ta.vmap(energy)(batch), mctc.vmap(energy)(batch))


def test_mctc_bjacrev(pos: torch.Tensor) -> None:
    """``bjacrev(f)`` batches every argument: ``ta.vmap(ta.jacrev(f))``."""
    mctc = _mctc()
    batch = torch.stack([pos, 1.1 * pos, 0.9 * pos])
    strengths = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = mctc.bjacrev(energy)(batch)
        ref2 = mctc.bjacrev(scaled, argnums=1)(batch, strengths)
    assert_close(ta.vmap(ta.jacrev(energy))(batch), ref)
    assert_close(ta.vmap(ta.jacrev(scaled, argnums=1))(batch, strengths), ref2)


def test_mctc_jac(pos: torch.Tensor) -> None:
    """``jac(a, b)`` -> ``ta.graph_jacobian(a, b)``, flattened over ``b`` for jac's shape."""
    mctc = _mctc()
    p = pos.clone().requires_grad_(True)
    forces = -torch.autograd.grad(energy(p), p, create_graph=True)[0]
    ref = mctc.jac(forces, p)
    ours = ta.graph_jacobian(forces, p)
    assert ours.shape == forces.shape + p.shape
    assert_close(ours.flatten(forces.dim()), ref)
    # create_graph: jac's default is "grad mode on"; ours is False, pass it
    ref = mctc.jac(forces, p, create_graph=True)
    ours = ta.graph_jacobian(forces, p, create_graph=True)
    assert ref.requires_grad and ours.requires_grad
    assert_close(
        torch.autograd.grad(ours.sum(), p, retain_graph=True)[0],
        torch.autograd.grad(ref.sum(), p, retain_graph=True)[0],
    )
    # an output without a graph: zeros in both
    const = torch.ones(2, dtype=torch.float64)
    assert_close(ta.graph_jacobian(const, p).flatten(1), mctc.jac(const, p))


def test_mctc_hessian(pos: torch.Tensor) -> None:
    """``hessian(f, inputs, argnums)`` -> ``ta.hessian(f, argnums)(*inputs)``."""
    mctc = _mctc()
    s = torch.tensor(2.0, dtype=torch.float64)
    assert_close(ta.hessian(energy)(pos), mctc.hessian(energy, (pos,), argnums=0).detach())
    assert_close(
        ta.hessian(scaled, argnums=0)(pos, s), mctc.hessian(scaled, (pos, s), argnums=0).detach()
    )
    # a non-scalar f: tad_mctc differentiates f(...).sum()
    ref = mctc.hessian(field, (pos.new_tensor([0.3, -0.7, 1.2, 0.4]),), argnums=0).detach()
    x = pos.new_tensor([0.3, -0.7, 1.2, 0.4])
    assert_close(ta.hessian(lambda x: field(x).sum())(x), ref)
    # is_batched=True raises NotImplementedError in tad_mctc 0.7; ours: vmap of the Hessian
    batch = torch.stack([pos, 1.1 * pos])
    with pytest.raises(NotImplementedError):
        mctc.hessian(energy, (batch,), argnums=0, is_batched=True)
    ours = ta.vmap(ta.hessian(energy))(batch)
    assert_close(ours[1], mctc.hessian(energy, (batch[1],), argnums=0).detach())


def test_mctc_hessian_create_graph(pos: torch.Tensor) -> None:
    """tad_mctc's Hessian carries a graph (create_graph=True); ours when the input requires grad."""
    mctc = _mctc()
    p = pos.clone().requires_grad_(True)
    ref = mctc.hessian(energy, (p,), argnums=0)
    ours = ta.hessian(energy)(p)
    assert_close(torch.autograd.grad(ours.sum(), p)[0], torch.autograd.grad(ref.sum(), p)[0])


@needs_torch2
def test_mctc_hess_fn_rev(pos: torch.Tensor) -> None:
    """``hess_fn_rev(f, argnums)`` (reverse over reverse) -> ``ta.hessian(f, argnums)``."""
    mctc = _mctc()
    s = torch.tensor(2.0, dtype=torch.float64)
    assert_close(ta.hessian(energy)(pos), mctc.hess_fn_rev(energy)(pos))
    assert_close(
        ta.hessian(scaled, argnums=(0, 1))(pos, s), mctc.hess_fn_rev(scaled, (0, 1))(pos, s)
    )


def test_mctc_jacrev_compat(pos: torch.Tensor) -> None:
    """``jacrev_compat(f, argnums)`` (create_graph=True) -> ``ta.jacrev(f, argnums)``."""
    mctc = _mctc()
    from tad_mctc.autograd.compat import jacrev_compat

    s = torch.tensor(2.0, dtype=torch.float64)
    assert_close(ta.jacrev(scaled)(pos, s), jacrev_compat(scaled)(pos, s).detach())
    assert_close(ta.jacrev(scaled, 1)(pos, s), jacrev_compat(scaled, 1)(pos, s).detach())
    p = pos.clone().requires_grad_(True)  # a differentiable result: an input that requires grad
    assert_close(
        torch.autograd.grad(ta.jacrev(energy)(p).sum(), p)[0],
        torch.autograd.grad(jacrev_compat(energy)(p).sum(), p)[0],
    )
    assert mctc is not None


def test_mctc_vmap_compat(pos: torch.Tensor) -> None:
    """``vmap_compat(f, in_dims, out_dims)`` (a loop; every argument batched) -> ``ta.vmap``."""
    _mctc()
    from tad_mctc.autograd.compat import vmap_compat

    batch = torch.stack([pos, 1.1 * pos])
    strengths = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.warns(DeprecationWarning):
        ref = vmap_compat(scaled)(batch, strengths)
    assert_close(ta.vmap(scaled)(batch, strengths), ref)
    assert_close(ta.vmap(scaled, backend="autograd")(batch, strengths), ref)  # a loop too


def test_mctc_dgradcheck_recipe(pos: torch.Tensor) -> None:
    """``dgradcheck``/``dgradgradcheck``: torch's checks, then ``detach_()`` the inputs."""
    mctc = _mctc()
    p = pos.clone().requires_grad_(True)
    assert mctc.dgradcheck(energy, p)
    assert not p.requires_grad
    p = pos.clone().requires_grad_(True)
    assert mctc.dgradgradcheck(energy, p)
    # the recipe in docs/migrating_tad_mctc.rst
    q = pos.clone().requires_grad_(True)
    try:
        assert torch.autograd.gradcheck(energy, q, fast_mode=True)
        assert torch.autograd.gradgradcheck(energy, q, fast_mode=True)
    finally:
        q.detach_()
    assert not q.requires_grad


@needs_torch2  # tad_mctc answers False on torch < 2; ours answer there too
def test_mctc_tensor_kinds(pos: torch.Tensor) -> None:
    """``is_functorch_tensor`` -> ``is_transformed``; our ``is_batched`` looks through layers."""
    mctc = _mctc()
    seen: list = []

    def probe(p: torch.Tensor) -> torch.Tensor:
        seen.append(
            (
                (mctc.is_functorch_tensor(p), ta.is_transformed(p)),
                (mctc.is_batched(p), mctc.is_gradtracking(p)),
                (ta.is_batched(p), ta.is_transformed(p) and not ta.is_batched(p)),
            )
        )
        return energy(p)

    batch = torch.stack([pos, 1.1 * pos])
    probe(pos)
    ta.fvmap(probe)(batch)
    ta.fjacrev(probe)(pos)
    ta.fvmap(ta.fjacrev(probe))(batch)
    plain, vmapped, jacked, both = seen
    for (mctc_any, ours_any), _, _ in seen:
        assert mctc_any == ours_any  # is_functorch_tensor == is_transformed, always
    # plain, vmap alone, jacrev alone: is_batched and is_gradtracking agree with the recipe
    for _, mctc_kinds, ours_kinds in (plain, vmapped, jacked):
        assert mctc_kinds == ours_kinds
    # vmap(jacrev(f)): the first layer tracks grad over a batched tensor; ours see the batch
    assert both[1] == (False, True)
    assert both[2] == (True, False)
