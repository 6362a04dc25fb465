"""graph_jacobian: the Jacobian of tensors that already carry a graph.

Every value is compared with an independent reference, a loop of
``torch.autograd.grad`` with one-hot ``grad_outputs`` over the output elements.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import torch
from _helpers import assert_tree_close

import tad_autograd as ta
import tad_autograd.eager._jacobian as eager
from tad_autograd.compat._pytree import tree_flatten, tree_unflatten
from tad_autograd.compat.batching_defects import defective_nodes

DT = torch.float64


def row_loop(outputs: Any, inputs: Any) -> Any:
    """d outputs / d inputs by one backward pass per output element, one-hot cotangents."""
    out_leaves, out_spec = tree_flatten(outputs)
    in_leaves, in_spec = tree_flatten(inputs)
    per_output = []
    for o in out_leaves:
        blocks: List[List[torch.Tensor]] = [[] for _ in in_leaves]
        for k in range(o.numel()):
            onehot = torch.zeros(o.numel(), dtype=o.dtype).index_fill_(0, torch.tensor(k), 1)
            grads = (
                torch.autograd.grad(
                    o, in_leaves, onehot.view(o.shape), retain_graph=True, allow_unused=True
                )
                if o.requires_grad
                else [None] * len(in_leaves)
            )
            for b, g, x in zip(blocks, grads, in_leaves):
                b.append(torch.zeros_like(x) if g is None else g)
        per_output.append(
            tree_unflatten(
                [
                    torch.stack(b).reshape(o.shape + x.shape)
                    if b
                    else torch.zeros(o.shape + x.shape, dtype=x.dtype)
                    for b, x in zip(blocks, in_leaves)
                ],
                in_spec,
            )
        )
    return tree_unflatten(per_output, out_spec)


def leaf(*shape: int, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype).requires_grad_(True)


class CountCalls:
    """Counts the calls of a function it wraps (to see which path ran)."""

    def __init__(self, func: Any) -> None:
        self.func, self.calls = func, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.func(*args, **kwargs)


@pytest.fixture
def vectorised(monkeypatch: pytest.MonkeyPatch) -> CountCalls:
    counter = CountCalls(eager.vectorised_rows)
    monkeypatch.setattr(eager, "vectorised_rows", counter)
    return counter


# -- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "out_shape, in_shape", [((), ()), ((), (3,)), ((3,), ()), ((3, 2), (2, 4)), ((2, 3, 2), (5,))]
)
def test_tensor_matches_row_loop(out_shape, in_shape, dtype) -> None:
    x = leaf(*in_shape, dtype=dtype)
    w = torch.randn(out_shape + in_shape, dtype=dtype)
    y = (w * x.sin()).reshape(out_shape + (-1,)).sum(-1) if in_shape else w * x.exp()
    jac = ta.graph_jacobian(y, x)
    assert isinstance(jac, torch.Tensor)
    assert jac.shape == out_shape + in_shape and jac.dtype == dtype
    assert not jac.requires_grad
    assert_tree_close(jac, row_loop(y, x))


def test_vectorised_by_the_engine(vectorised: CountCalls) -> None:
    x = leaf(6)
    y = torch.tanh(torch.outer(x, x)).sum(0)
    assert_tree_close(ta.graph_jacobian(y, x), row_loop(y, x))
    assert vectorised.calls == 1


def test_pytrees_nest_outputs_then_inputs() -> None:
    a, b = leaf(3), leaf(2, 2)
    outputs = (a * b.sum(), {"e": (a**2).sum(), "m": b @ b})
    inputs = {"a": a, "b": b}
    jac = ta.graph_jacobian(outputs, inputs)
    assert isinstance(jac, tuple) and set(jac[0]) == {"a", "b"}
    assert jac[0]["b"].shape == (3, 2, 2) and jac[1]["m"]["a"].shape == (2, 2, 3)
    assert_tree_close(jac, row_loop(outputs, inputs))
    one = ta.graph_jacobian([a.exp()], (a,))
    assert isinstance(one, list) and isinstance(one[0], tuple)
    assert_tree_close(one, row_loop([a.exp()], (a,)))


def test_non_leaf_inputs() -> None:
    x = leaf(4)
    u = x * 2 + 1  # a non-leaf in the middle of the graph
    y = torch.stack([u.prod(), (u**3).sum(), u.sin().sum()]).repeat(2)
    assert_tree_close(ta.graph_jacobian(y, u), row_loop(y, u))
    assert_tree_close(ta.graph_jacobian(y, (u, x)), row_loop(y, (u, x)))


def test_unreached_input_and_constant_output_give_zeros() -> None:
    x, z = leaf(5), leaf(2, dtype=torch.float32)
    y = x.cos() * 3
    jac = ta.graph_jacobian((y, torch.ones(2, dtype=DT)), (x, z))
    assert jac[0][1].shape == (5, 2) and jac[0][1].dtype == torch.float32
    assert not jac[0][1].any() and not jac[1][0].any() and not jac[1][1].any()
    assert_tree_close(jac, row_loop((y, torch.ones(2, dtype=DT)), (x, z)))


def test_empty_output() -> None:
    x = leaf(3)
    jac = ta.graph_jacobian(x[:0] * 2, x)
    assert jac.shape == (0, 3)


def test_complex_input_real_output() -> None:
    z = torch.randn(3, dtype=torch.complex128).requires_grad_(True)
    y = torch.cat([z.abs(), z.real * z.imag])
    assert_tree_close(ta.graph_jacobian(y, z), row_loop(y, z))


# -- the defect table and custom Functions ------------------------------------------------------


def _cdist_jacobian(vectorised: CountCalls) -> None:
    x, y = leaf(5, 3), leaf(4, 3)
    d = torch.cdist(x, y, p=1)
    jac = ta.graph_jacobian(d, (x, y))
    assert_tree_close(jac, row_loop(d, (x, y)))
    # vectorised where the batched cdist backward is right (corrected at import), else rows
    assert (vectorised.calls == 0) == ("CdistBackward0" in defective_nodes())
    assert_tree_close(ta.graph_jacobian(d, (x, y), chunk_size=3), jac)


def test_cdist_agrees_with_the_row_loop(vectorised: CountCalls) -> None:
    _cdist_jacobian(vectorised)


@pytest.mark.usefixtures("torch_cdist_rule")
def test_cdist_agrees_with_the_row_loop_under_torchs_own_rule(vectorised: CountCalls) -> None:
    _cdist_jacobian(vectorised)


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


def test_custom_function_in_the_graph(vectorised: CountCalls) -> None:
    x = leaf(6)
    y = Cube.apply(x.sin()) * x.sum()
    assert_tree_close(ta.graph_jacobian(y, x), row_loop(y, x))
    assert vectorised.calls == 1  # its backward is watched as it runs batched, not looped
    h = ta.graph_jacobian(y, x, create_graph=True)
    (dh,) = torch.autograd.grad(h.sum(), x)
    expected = torch.autograd.functional.hessian(
        lambda t: ((t.sin() ** 3) * t.sum()).sum(), x.detach()
    ).sum(0)
    assert_tree_close(dh, expected)


def test_opaque_custom_backward_refuses_second_derivative() -> None:
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x)
            return x**2

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            (x,) = ctx.saved_tensors
            return g * 2 * x.detach()

    x = leaf(3)
    jac = ta.graph_jacobian(Square.apply(x).sin(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="Square"):
        torch.autograd.grad(jac.sum(), x)


# -- create_graph, retain_graph, chunk_size -----------------------------------------------------


def energy(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * x.roll(1)).sum() + (x**2).prod() ** 0.5


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_create_graph_gives_a_differentiable_result(chunk_size) -> None:
    x = leaf(5)
    (forces,) = torch.autograd.grad(energy(x), x, create_graph=True)
    hess = ta.graph_jacobian(forces, x, create_graph=True, chunk_size=chunk_size)
    assert hess.requires_grad
    expected = torch.autograd.functional.hessian(energy, x.detach())
    assert_tree_close(hess, expected)
    # and again: d/dx of sum_ij H_ij against the Hessian of sum(forces)
    (third,) = torch.autograd.grad(hess.sum(), x)
    ref = torch.autograd.functional.hessian(
        lambda t: torch.autograd.grad(energy(t), t, create_graph=True)[0].sum(), x.detach()
    )
    assert_tree_close(third, ref.sum(0))


def test_create_graph_several_outputs() -> None:
    x = leaf(3)
    outs = (x.exp(), (x**3).sum())
    jac = ta.graph_jacobian(outs, x, create_graph=True)
    assert jac[0].requires_grad and jac[1].requires_grad
    (g,) = torch.autograd.grad(jac[1].sum(), x)
    assert_tree_close(g, 6 * x.detach())


@pytest.mark.parametrize("n", [3, 12])  # the loop of backward passes, and the batched passes
def test_chunk_sizes_agree(n: int) -> None:
    x = leaf(n)
    y = (x.unsqueeze(0) * x.unsqueeze(1)).tanh().sum(1)
    jacs = [ta.graph_jacobian(y, x, chunk_size=c) for c in (1, 2, 5, None)]
    for jac in jacs[1:]:
        assert_tree_close(jac, jacs[0])
    assert_tree_close(jacs[0], row_loop(y, x))


@pytest.mark.parametrize("n", [2, 9])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_retain_graph_false_frees_the_graph(n: int, chunk_size) -> None:
    x = leaf(n)
    y = x.exp() * x.sum()
    expected = row_loop(y, x)
    jac = ta.graph_jacobian(y, x, retain_graph=False, chunk_size=chunk_size)
    assert_tree_close(jac, expected)
    with pytest.raises(RuntimeError):
        ta.graph_jacobian(y, x)


def test_retain_graph_false_several_outputs() -> None:
    x = leaf(3)
    outs = (x.exp(), torch.ones(1, dtype=DT), x.sin() * x)
    expected = row_loop(outs, x)
    assert_tree_close(ta.graph_jacobian(outs, x, retain_graph=False), expected)
    with pytest.raises(RuntimeError):
        ta.graph_jacobian(outs[2], x)


def test_retain_graph_true_keeps_it() -> None:
    x = leaf(7)
    y = x.exp() * x.sum()
    first = ta.graph_jacobian(y, x)
    assert_tree_close(ta.graph_jacobian(y, x), first)
    y.sum().backward()  # the graph is still there


# -- calling contexts ---------------------------------------------------------------------------


def test_no_grad_still_differentiates() -> None:
    x = leaf(6)
    y = x.sin() * x.sum()
    head = y[:2]
    expected = row_loop(y, x)
    with torch.no_grad():
        jac = ta.graph_jacobian(y, x)
        assert_tree_close(jac, expected)
        small = ta.graph_jacobian(head, x)  # the loop of backward passes
        assert_tree_close(small, expected[:2])
        differentiable = ta.graph_jacobian(y, x, create_graph=True)
    assert differentiable.requires_grad
    assert_tree_close(differentiable, expected)


def test_inference_mode() -> None:
    x = leaf(6)
    y = x.sin() * x.sum()
    expected = row_loop(y, x)
    with torch.inference_mode():
        jac = ta.graph_jacobian(y, x)  # the graph was recorded outside: differentiable
        assert_tree_close(jac, expected)
        assert not jac.is_inference()
        inside = x.sin() * 2  # records no graph
        with pytest.raises(RuntimeError, match="inference_mode"):
            ta.graph_jacobian(inside, x)


# -- bad input: the exception types jacrev raises for the same mistake --------------------------


def jacrev_error(func: Any, *args: Any, **kwargs: Any) -> type:
    with pytest.raises(Exception) as info:
        ta.jacrev(func, **kwargs)(*args)
    return info.type


def test_integer_and_non_tensor_outputs_raise() -> None:
    x = leaf(3)
    expected = jacrev_error(lambda t: (t * 2).long(), x.detach())
    with pytest.raises(expected, match="outputs"):
        ta.graph_jacobian((x * 2).long(), x)
    with pytest.raises(expected, match="outputs"):
        ta.graph_jacobian((x * 2) > 0, x)
    expected = jacrev_error(lambda t: (t, 1.0), x.detach())
    with pytest.raises(expected, match="outputs"):
        ta.graph_jacobian((x * 2, 1.0), x)
    with pytest.raises(expected, match="outputs"):
        ta.graph_jacobian(None, x)
    expected = jacrev_error(lambda t: t.to(torch.complex128), x.detach())
    with pytest.raises(expected, match="outputs"):
        ta.graph_jacobian(x.to(torch.complex128), x)


def test_bad_inputs_raise() -> None:
    x = leaf(3)
    y = x * 2
    expected = jacrev_error(lambda t, s: t * s, x.detach(), 2.0, argnums=1)
    with pytest.raises(expected, match="inputs"):
        ta.graph_jacobian(y, (x, 2.0))
    expected = jacrev_error(lambda t: t * 2, torch.ones(3, dtype=torch.long))
    with pytest.raises(expected, match="input 0"):
        ta.graph_jacobian(y, torch.ones(3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="does not require grad"):
        ta.graph_jacobian(y, x.detach())
    with pytest.raises(RuntimeError, match="inputs"):
        ta.graph_jacobian(y, ())


@pytest.mark.parametrize("chunk_size", [0, -2, 1.5, "2", True])
def test_bad_chunk_size_raises_as_jacrev(chunk_size) -> None:
    x = leaf(3)
    with pytest.raises(Exception) as info:
        ta.jacrev(torch.sin, chunk_size=chunk_size)(x)
    with pytest.raises(info.type, match="chunk_size"):
        ta.graph_jacobian(x.sin(), x, chunk_size=chunk_size)


@pytest.mark.parametrize("flag", ["create_graph", "retain_graph"])
def test_flags_must_be_bools(flag: str) -> None:
    x = leaf(3)
    with pytest.raises(TypeError, match=flag):
        ta.graph_jacobian(x.sin(), x, **{flag: None})


@pytest.mark.parametrize("retain_graph", [True, False])
def test_empty_outputs_with_a_graph(retain_graph: bool) -> None:
    x = leaf(3)
    outs = (x[:0] * 2, x[:0].exp())
    jac = ta.graph_jacobian(outs, x, create_graph=True, retain_graph=retain_graph)
    assert jac[0].shape == (0, 3) and jac[1].shape == (0, 3)


def test_create_graph_through_group_norm_matches_the_row_loop() -> None:
    """torch's batched backward passes that build a graph get group_norm wrong."""
    x = torch.linspace(-1.0, 1.5, 8, dtype=torch.float64).reshape(4, 2).requires_grad_(True)
    y = torch.nn.functional.group_norm(x.reshape(1, 4, 2), 2)
    rows = [
        torch.autograd.grad(y.reshape(-1)[i], x, retain_graph=True, create_graph=True)[0]
        for i in range(y.numel())
    ]
    reference = torch.stack(rows).reshape(y.shape + x.shape)
    jacobian = ta.graph_jacobian(y, x, create_graph=True)
    torch.testing.assert_close(jacobian, reference)
    (ours,) = torch.autograd.grad((jacobian**2).sum(), x, retain_graph=True)
    (theirs,) = torch.autograd.grad((reference**2).sum(), x)
    torch.testing.assert_close(ours, theirs)
