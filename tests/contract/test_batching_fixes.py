"""Batching rules corrected at their source: cdist's batched backward.

torch's batching rule of ``aten::_cdist_backward`` gives wrong values when only the
gradient is batched (``jacrev``, ``vmap`` over a vjp function); the package registers
a right rule in the installed torch where it can (``corrected()``), so every path is
right: the transform backends, automatic mode and torch's own transforms.  Automatic
mode is right on every torch either way (without the rule it does not vectorise
through cdist).  References: a row loop of ``torch.autograd.grad`` on the eager
function and float64 central finite differences.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

import pytest
import torch
from _helpers import reference_jacobian

import tad_autograd as ta
from tad_autograd.compat._torch_info import function_transforms
from tad_autograd.compat._transform_failures import REVERSE_STAGES, DefectWatch
from tad_autograd.compat.batching_defects import ACTIVE_DEFECTS, corrected, defects_for

FIXED = "cdist" in corrected()
needs_rule = pytest.mark.skipif(not FIXED, reason="this torch keeps its own cdist batching rule")

PS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, math.inf]
#: (x shape, y shape): plain, a batch dimension on either operand, on both
SHAPES = [((5, 3), (4, 3)), ((2, 5, 3), (4, 3)), ((5, 3), (2, 4, 3)), ((2, 3, 2), (2, 4, 2))]


def finite_differences(func: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Any:
    """d func / d x by central differences in float64 (step 1e-6)."""
    eps = 1e-6
    flat = x.detach().reshape(-1)
    columns = []
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        plus = func((flat + step).reshape(x.shape))
        minus = func((flat - step).reshape(x.shape))
        columns.append(((plus - minus) / (2 * eps)).reshape(-1))
    out_shape = func(x).shape
    return torch.stack(columns, dim=-1).reshape(*out_shape, *x.shape)


def _points(shape: Tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _skip_unless_right(backend: Optional[str]) -> None:
    if backend is not None and backend != "autograd" and not FIXED:
        pytest.skip("the transform backends give torch's own (wrong) cdist rows on this torch")


def test_table_follows_the_rule() -> None:
    """Where the rule is installed, the cdist entry is out of the active table and backward
    passes need no watch (a ``vmap`` of a forward still does where an entry says so, as
    on torch 1.13 and 2.0); where not, the entry stays."""
    listed = any(d.op == "cdist" for d in defects_for())
    active = any(d.op == "cdist" for d in ACTIVE_DEFECTS)
    assert active == (listed and not FIXED)
    if FIXED:
        assert not any(d.stage == "derivative" for d in ACTIVE_DEFECTS)
        assert not DefectWatch.needed("derivative")
        forward = any(d.stage == "forward" for d in ACTIVE_DEFECTS)
        assert DefectWatch.needed(REVERSE_STAGES) == forward


@pytest.mark.parametrize("p", PS, ids=str)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_jacrev_of_cdist(backend: Optional[str], p: float, shapes: Any) -> None:
    """The Jacobian in the points ``x`` and in the points ``y``: the row loop and finite
    differences."""
    _skip_unless_right(backend)
    x, y = _points(shapes[0], 1), _points(shapes[1], 2)
    for f, at in ((lambda a: torch.cdist(a, y, p=p), x), (lambda b: torch.cdist(x, b, p=p), y)):
        jac = ta.jacrev(f, backend=backend)(at)
        torch.testing.assert_close(jac, reference_jacobian(f, at))
        torch.testing.assert_close(jac, finite_differences(f, at), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [1.0, 2.0, 0.5], ids=str)
def test_vmap_of_jacrev_of_cdist(backend: Optional[str], p: float) -> None:
    """Two levels of batching (the rule runs under an outer vmap), with chunks."""
    _skip_unless_right(backend)
    x, y = _points((3, 4, 2), 3), _points((5, 2), 4)

    def f(a: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a, y, p=p)

    jacs = ta.vmap(ta.jacrev(f, backend=backend, chunk_size=3), backend=backend)(x)
    torch.testing.assert_close(jacs, torch.stack([reference_jacobian(f, xi) for xi in x]))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0], ids=str)
def test_vmap_over_a_vjp_function_through_cdist(backend: Optional[str], p: float) -> None:
    """The rows of a Jacobian as users take them, ``vmap(vjp_fn)(identity)``, in both points.

    (A Hessian through cdist has no reference: torch implements no derivative of cdist's
    backward.)"""
    _skip_unless_right(backend)
    x, y = _points((5, 3), 6), _points((4, 3), 7)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a, b, p=p).reshape(-1)

    _, vjp_fn = ta.vjp(f, x, y, backend=backend)
    rows_x, rows_y = ta.vmap(vjp_fn, backend=backend)(torch.eye(20, dtype=torch.float64))
    torch.testing.assert_close(rows_x, reference_jacobian(lambda a: f(a, y), x))
    torch.testing.assert_close(rows_y, reference_jacobian(lambda b: f(x, b), y))


@needs_rule
@pytest.mark.parametrize("p", PS, ids=str)
@pytest.mark.parametrize(
    "batched", ["g", "x1", "x2", "d", "g x1", "g x2", "x1 x2 d", "g x1 x2 d"], ids=str
)
def test_rule_against_the_unbatched_kernel(p: float, batched: str) -> None:
    """The kernel under vmap, any operands batched (at dimension 1), against a loop of the
    unbatched kernel, also under a second vmap."""
    op = torch.ops.aten._cdist_backward
    size = 3
    x1, x2 = _points((5, 3), 7), _points((4, 3), 8)
    d = torch.cdist(x1, x2, p=p)
    g = _points((5, 4), 9)
    args = [g, x1, x2, d]
    names = ["g", "x1", "x2", "d"]
    in_dims = []
    for i, name in enumerate(names):
        if name in batched.split():
            args[i] = torch.stack([args[i] * (1 + 0.1 * k) for k in range(size)], dim=1)
            in_dims.append(1)
        else:
            in_dims.append(None)

    def kernel(g: Any, x1: Any, x2: Any, d: Any) -> torch.Tensor:
        return op(g.contiguous(), x1.contiguous(), x2.contiguous(), p, d.contiguous())

    def loop(*operands: torch.Tensor) -> torch.Tensor:
        rows = []
        for k in range(size):
            picked = [o.select(1, k) if dim is not None else o for o, dim in zip(operands, in_dims)]
            rows.append(kernel(*picked))
        return torch.stack(rows)

    vmap = function_transforms().vmap
    torch.testing.assert_close(vmap(kernel, in_dims=tuple(in_dims))(*args), loop(*args))
    outer = [torch.stack([a, 2 * a]) for a in args]
    nested = vmap(vmap(kernel, in_dims=tuple(in_dims)))(*outer)
    torch.testing.assert_close(nested, torch.stack([loop(*[a[j] for a in outer]) for j in (0, 1)]))


@needs_rule
def test_users_own_torch_func_calls_are_right() -> None:
    """The rule is torch's now: ``jacrev`` and ``vmap(jacrev)`` of the transform library
    itself agree with the row loop."""
    transforms = function_transforms()
    x, y = _points((5, 3), 10), _points((4, 3), 11)

    def f(a: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a, y, p=1)

    torch.testing.assert_close(transforms.jacrev(f)(x), reference_jacobian(f, x))

    xs = torch.stack([x, 2 * x])
    torch.testing.assert_close(
        transforms.vmap(transforms.jacrev(f))(xs),
        torch.stack([reference_jacobian(f, a) for a in xs]),
    )


def test_explain_names_the_corrected_ops() -> None:
    text = str(ta.explain(verbose=True))
    assert ("corrected in it at import" in text and "cdist." in text) == FIXED


@pytest.mark.parametrize("batch", [1, 2, 3], ids=str)
@pytest.mark.parametrize("p", [1.0, 2.0], ids=str)
@pytest.mark.parametrize(
    "shapes",
    [((5, 3), (2, 4, 3)), ((2, 1, 5, 3), (4, 3)), ((5, 3), (2, 3, 4, 3))],
    ids=["x2 batched", "x1 broadcast", "x2 two batch dims"],
)
def test_per_sample_gradients_with_broadcast_batch_dimensions(
    backend: Optional[str], p: float, batch: int, shapes: Any
) -> None:
    """``vmap(grad)`` over samples of x1 whose rank is below x2's (the operands' batch
    dimensions broadcast): the vmap batch must not be taken for a broadcast dimension."""
    _skip_unless_right(backend)
    x_shape, y_shape = shapes
    xs = _points((batch, *x_shape), 11)
    y = _points(y_shape, 12)
    weights = _points(torch.broadcast_shapes(x_shape[:-2], y_shape[:-2]) + (5, 4), 13)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return (torch.cdist(x, y, p=p) * weights).sum()

    kw = {"backend": backend}
    got = ta.vmap(ta.grad(energy, **kw), **kw)(xs)
    for k in range(batch):
        torch.testing.assert_close(got[k], reference_jacobian(energy, xs[k]))
