"""grad, grad_and_value, vjp, jvp, linearize, jacfwd, jacobian, hvp.

Written once, run on every backend and automatic mode, each against an
independent reference: a row loop of ``torch.autograd.grad`` on the eager
function (``reference_jacobian``/``reference_hessian``) and central finite
differences in float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_tree_close, reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.compat._dual import dual_level, forward_ad_ready, make_dual

DT = torch.float64


def _energy(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * x.roll(1)).sum() + (x**4).sum() / 4


def _field(x: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, 12, dtype=x.dtype).reshape(4, 3)
    return torch.tanh(w @ x) * x.sum()


def _finite_difference_jvp(f, x: torch.Tensor, t: torch.Tensor, eps: float = 1e-6):
    return (f(x + eps * t) - f(x - eps * t)) / (2 * eps)


# -- grad / grad_and_value ---------------------------------------------------------------


def test_grad_matches_the_row_loop(backend) -> None:
    x = torch.randn(5, dtype=DT)
    assert_tree_close(ta.grad(_energy, backend=backend)(x), reference_jacobian(_energy, x))


@pytest.mark.parametrize("argnums", [1, -2, (0, 1), (1, 0)])
def test_grad_argnums(backend, argnums) -> None:
    x, y = torch.randn(3, dtype=DT), torch.randn(3, dtype=DT)

    def f(x, y):
        return (x.exp() * y.sin()).sum()

    g = ta.grad(f, argnums, backend=backend)(x, y)
    gx = reference_jacobian(lambda x: f(x, y), x)
    gy = reference_jacobian(lambda y: f(x, y), y)
    expected = {1: gy, -2: gx, (0, 1): (gx, gy), (1, 0): (gy, gx)}[argnums]
    assert_tree_close(g, expected)


def test_grad_of_a_pytree_and_aux(backend) -> None:
    params = {"a": torch.randn(2, dtype=DT), "b": torch.randn(3, dtype=DT)}

    def f(p):
        e = (p["a"] ** 2).sum() + p["b"].sin().sum()
        return e, {"e": e.detach() * 2}

    g, aux = ta.grad(f, has_aux=True, backend=backend)(params)
    assert_tree_close(g, {"a": 2 * params["a"], "b": params["b"].cos()})
    assert_tree_close(aux, {"e": 2 * f(params)[0]})


def test_grad_and_value(backend) -> None:
    x = torch.randn(4, dtype=DT)
    g, v = ta.grad_and_value(_energy, backend=backend)(x)
    assert_tree_close((g, v), (reference_jacobian(_energy, x), _energy(x)))
    g2, (v2, aux) = ta.grad_and_value(
        lambda x: (_energy(x), x.sum()), has_aux=True, backend=backend
    )(x)
    assert_tree_close((g2, v2, aux), (g, v, x.sum()))


def test_grad_refuses_a_non_scalar_output(backend) -> None:
    with pytest.raises(RuntimeError):
        ta.grad(torch.sin, backend=backend)(torch.randn(3, dtype=DT))
    with pytest.raises(RuntimeError):
        ta.grad_and_value(torch.sin, backend=backend)(torch.randn(3, dtype=DT))


# -- vjp / jvp / linearize ---------------------------------------------------------------


def test_vjp_matches_the_row_loop(backend) -> None:
    x = torch.randn(3, dtype=DT)
    out, vjp_fn = ta.vjp(_field, x, backend=backend)
    ct = torch.randn(4, dtype=DT)
    assert_tree_close(out, _field(x))
    expected = ct @ reference_jacobian(_field, x)
    assert_tree_close(vjp_fn(ct), (expected,))
    assert_tree_close(vjp_fn(2 * ct), (2 * expected,))  # callable again


def test_vjp_of_several_primals_and_outputs_with_aux(backend) -> None:
    x, y = torch.randn(3, dtype=DT), torch.randn(3, dtype=DT)

    def f(x, y):
        return (x * y, (x - y).exp().sum()), y.cos()

    (o1, o2), vjp_fn, aux = ta.vjp(f, x, y, has_aux=True, backend=backend)
    c1, c2 = torch.randn(3, dtype=DT), torch.tensor(0.7, dtype=DT)
    gx, gy = vjp_fn((c1, c2))
    assert_tree_close(gx, c1 * y + c2 * (x - y).exp())
    assert_tree_close(gy, c1 * x - c2 * (x - y).exp())
    assert_tree_close(aux, y.cos())


def test_jvp_matches_the_row_loop_and_finite_differences(backend) -> None:
    x, t = torch.randn(3, dtype=DT), torch.randn(3, dtype=DT)
    out, jv = ta.jvp(_field, (x,), (t,), backend=backend)
    assert_tree_close(out, _field(x))
    assert_tree_close(jv, reference_jacobian(_field, x) @ t)
    torch.testing.assert_close(jv, _finite_difference_jvp(_field, x, t), rtol=1e-6, atol=1e-8)


def test_jvp_of_several_primals_with_aux(backend) -> None:
    x, y = torch.randn(2, dtype=DT), torch.randn(2, dtype=DT)
    tx, ty = torch.randn(2, dtype=DT), torch.randn(2, dtype=DT)

    def f(x, y):
        return x * y.exp(), {"s": x.sum()}

    out, jv, aux = ta.jvp(f, (x, y), (tx, ty), has_aux=True, backend=backend)
    assert_tree_close(out, x * y.exp())
    assert_tree_close(jv, tx * y.exp() + x * y.exp() * ty)
    assert_tree_close(aux, {"s": x.sum()})


def test_linearize(backend) -> None:
    x = torch.randn(3, dtype=DT)
    out, jvp_fn = ta.linearize(_field, x, backend=backend)
    assert_tree_close(out, _field(x))
    jac = reference_jacobian(_field, x)
    for _ in range(2):
        t = torch.randn(3, dtype=DT)
        assert_tree_close(jvp_fn(t), jac @ t)


_Y = torch.linspace(-1, 1, 8, dtype=DT).reshape(4, 2)

_X6 = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.2, 1.1], dtype=DT)
_ROWS = torch.linspace(-1, 1, 6, dtype=DT).reshape(2, 3)

#: Ops whose backward formula the eager forward mode's double-vjp trick cannot differentiate
#: right: logcumsumexp's takes the log of the cotangent (singular at zero), cdist's has no
#: derivative, sinc's, std's and norm's divide and then mask (0/0 in the masked branch), and
#: normalisation layers without a weight drop the bias in their double backward (zeros).
_AWKWARD_BACKWARDS = {
    "logcumsumexp": (lambda x: torch.logcumsumexp(x, 0), _X6.reshape(3, 2)),
    "cdist": (lambda x: torch.cdist(x, _Y), _X6.reshape(3, 2)),
    "sinc at 0": (lambda x: torch.sinc(x).sum() + 2 * x, torch.tensor([0.0, 0.5, 1.0], dtype=DT)),
    "std of equal values": (lambda x: torch.std(x) + x, torch.ones(3, dtype=DT)),
    "3-norm at 0": (lambda x: torch.linalg.vector_norm(x, 3) + x, torch.zeros(3, dtype=DT)),
    "batch_norm bias": (
        lambda b: F.batch_norm(_ROWS, None, None, None, b, training=True),
        torch.tensor([0.1, 0.2, 0.3], dtype=DT),
    ),
    "layer_norm bias": (
        lambda b: F.layer_norm(_ROWS, (3,), None, b),
        torch.tensor([0.1, 0.2, 0.3], dtype=DT),
    ),
}


def _has_forward_formula(f, x: torch.Tensor) -> bool:
    """Whether torch's own dual numbers get through ``f``: transform backends need that."""
    forward_ad_ready()
    try:
        with dual_level():
            f(make_dual(x, torch.ones_like(x)))
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.parametrize("name", sorted(_AWKWARD_BACKWARDS))
def test_forward_mode_through_awkward_backward_formulas(backend, name) -> None:
    f, x = _AWKWARD_BACKWARDS[name]
    t = torch.randn(x.shape, dtype=DT)
    jac = reference_jacobian(f, x).reshape(-1, x.numel())
    forward_formula = _has_forward_formula(f, x)
    if backend not in (None, "autograd") and not forward_formula:
        with pytest.raises((RuntimeError, NotImplementedError)):
            ta.jvp(f, (x,), (t,), backend=backend)
        return
    _, jv = ta.jvp(f, (x,), (t,), backend=backend)
    torch.testing.assert_close(jv.reshape(-1), jac @ t.reshape(-1))
    if name not in ("3-norm at 0",):  # the norm is not differentiable there: no differences
        torch.testing.assert_close(jv, _finite_difference_jvp(f, x, t), rtol=1e-6, atol=1e-6)
    assert_tree_close(ta.linearize(f, x, backend=backend)[1](t).reshape(-1), jac @ t.reshape(-1))
    # six inputs: automatic mode takes the columns from one recorded pass, vectorised
    # (never a transform that could refuse the function, so never a fallback)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ta.BackendFallbackWarning)
        assert_tree_close(ta.jacfwd(f, backend=backend)(x).reshape(jac.shape), jac)


@pytest.mark.parametrize(
    "primals, tangents",
    [
        ("not a tuple", "not a tuple"),
        ((torch.zeros(2),), (torch.zeros(3),)),
        ((torch.zeros(2),), (torch.zeros(2), torch.zeros(2))),
        ((torch.zeros(2),), (torch.zeros(2, dtype=DT),)),
    ],
    ids=["not-tuples", "shape", "structure", "dtype"],
)
def test_jvp_and_hvp_refuse_mismatched_operands(backend, primals, tangents) -> None:
    if primals == "not a tuple":
        primals, tangents = torch.zeros(2), torch.zeros(2)
    with pytest.raises(RuntimeError):
        ta.jvp(torch.sin, primals, tangents, backend=backend)
    with pytest.raises(RuntimeError):
        ta.hvp(lambda x: x.sum(), primals, tangents, backend=backend)


# -- jacfwd / jacobian -------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
def test_jacfwd_matches_the_row_loop(backend, chunk_size) -> None:
    x = torch.randn(3, dtype=DT)
    jac = ta.jacfwd(_field, chunk_size=chunk_size, backend=backend)(x)
    assert_tree_close(jac, reference_jacobian(_field, x))


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_jacfwd_of_a_scalar_in_chunks(backend, chunk_size) -> None:
    # a chunk of one column of a scalar output: functorch 1.13's vmap fails on batches of one
    x = torch.tensor([0.94, 0.42, -0.3], dtype=DT)
    jac = ta.jacfwd(lambda v: (v @ v).sum(), chunk_size=chunk_size, backend=backend)(x)
    assert_tree_close(jac, 2 * x)


def test_jacfwd_structure_argnums_and_aux(backend) -> None:
    x, y = torch.randn(2, dtype=DT), torch.randn(3, dtype=DT)

    def f(x, y):
        return {"o": torch.outer(x, y.sin())}, x.sum()

    jac, aux = ta.jacfwd(f, (1, 0), has_aux=True, backend=backend)(x, y)
    expected = ta.jacrev(f, (1, 0), has_aux=True, backend="autograd")(x, y)
    assert_tree_close((jac, aux), expected)
    assert jac["o"][0].shape == (2, 3, 3) and jac["o"][1].shape == (2, 3, 2)


def test_jacfwd_randomness(backend) -> None:
    x = torch.randn(3, dtype=DT)

    def noisy(x):
        return x * torch.rand(3, dtype=DT)

    with pytest.raises(RuntimeError):
        ta.jacfwd(noisy, backend=backend)(x)
    jac = ta.jacfwd(noisy, randomness="same", backend=backend)(x)
    assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))) == 0


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_jacobian_modes(backend, mode) -> None:
    grid = torch.linspace(0, 1, 40, dtype=DT)

    def tall(p):
        return p[0] * torch.exp(-p[1] * grid) + p[2]

    p = torch.tensor([1.0, 2.0, 0.5], dtype=DT)
    jac = ta.jacobian(tall, mode=mode, backend=backend)
    for _ in range(2):  # the second call of "auto" runs forward mode
        assert_tree_close(jac(p), reference_jacobian(tall, p))
    if mode == "auto":
        assert jac.mode_for(p) == "forward"


def test_jacobian_auto_keeps_reverse_for_wide_functions(backend) -> None:
    jac = ta.jacobian(_energy, backend=backend)
    x = torch.randn(6, dtype=DT)
    jac(x)
    assert jac.mode_for(x) == "reverse"
    assert_tree_close(jac(x), reference_jacobian(_energy, x))


def test_jacobian_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        ta.jacobian(torch.sin, mode="sideways")


# -- hvp ----------------------------------------------------------------------------------


def test_hvp_matches_the_reference_hessian(backend) -> None:
    x, v = torch.randn(4, dtype=DT), torch.randn(4, dtype=DT)
    value, (hv,) = ta.hvp(_energy, (x,), (v,), backend=backend)
    assert_tree_close(value, _energy(x))
    assert_tree_close(hv, reference_hessian(_energy, x) @ v)


def test_hvp_of_two_primals(backend) -> None:
    x, y = torch.randn(2, dtype=DT), torch.randn(2, dtype=DT)
    vx, vy = torch.randn(2, dtype=DT), torch.randn(2, dtype=DT)

    def f(x, y):
        return (x**2 * y.exp()).sum()

    value, (hx, hy) = ta.hvp(f, (x, y), (vx, vy), backend=backend)
    assert_tree_close(hx, 2 * y.exp() * vx + 2 * x * y.exp() * vy)
    assert_tree_close(hy, 2 * x * y.exp() * vx + x**2 * y.exp() * vy)
    assert_tree_close(value, f(x, y))


@pytest.mark.parametrize("n_in", [2, 6])
def test_jacobian_auto_goes_reverse_where_forward_mode_fails(backend, n_in) -> None:
    """A tall function without forward-AD rules: the right Jacobian, no warning."""
    from _helpers import OldStyleExp

    from tad_autograd.dispatch._registry import REGISTRY

    if backend is not None and REGISTRY.get(backend).is_transform:
        pytest.skip("torch.func refuses the old-style Function in either mode")
    w = torch.linspace(-1, 1, 20 * n_in, dtype=DT).reshape(20, n_in)

    def tall(x):
        return OldStyleExp.apply(w @ x)

    x = torch.linspace(0.1, 0.5, n_in, dtype=DT)
    jac = ta.jacobian(tall, backend=backend)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ta.BackendFallbackWarning)
        for _ in range(3):
            assert_tree_close(jac(x), reference_jacobian(tall, x))


@pytest.mark.parametrize("argnums", [-1, (0, -1), (-1, -2)])
def test_negative_argnums_in_forward_mode(backend, argnums) -> None:
    """torch.func.jacfwd returns zeros for negative argnums; never here."""
    x, y = torch.randn(3, dtype=DT), torch.randn(6, dtype=DT)

    def f(x, y):
        return torch.cat([torch.sin(x) * y.sum()] * 4)

    expected = ta.jacrev(f, argnums, backend="autograd")(x, y)
    for chunk_size in (None, 2):
        jac = ta.jacfwd(f, argnums, chunk_size=chunk_size, backend=backend)
        assert_tree_close(jac(x, y), expected)
    auto = ta.jacobian(f, argnums, backend=backend)
    for _ in range(3):  # reverse, then forward from the second call
        assert_tree_close(auto(x, y), expected)


def test_jacfwd_same_randomness_across_chunks(backend) -> None:
    def f(x):
        return torch.nn.functional.dropout(x, 0.5, training=True) * x

    x = torch.arange(1.0, 7.0, dtype=DT)
    torch.manual_seed(0)
    whole = ta.jacfwd(f, randomness="same", backend=backend)(x)
    torch.manual_seed(0)
    chunked = ta.jacfwd(f, randomness="same", chunk_size=2, backend=backend)(x)
    assert_tree_close(chunked, whole)
    mask = torch.diagonal(whole) != 0  # one mask for every column: the diagonal is x or 0
    assert_tree_close(torch.diagonal(whole)[mask], 4 * x[mask])


def test_jacfwd_runs_the_function_once(backend) -> None:
    """In-place updates of captured state happen once, as under torch.func."""
    state = torch.zeros(3, dtype=DT)

    def f(x):
        state.add_(1.0)
        return x * state

    x = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    if backend in ("func", "functorch"):  # torch.func refuses to mutate captured tensors
        with pytest.raises(RuntimeError):
            ta.jacfwd(f, backend=backend)(x)
        return
    jac = ta.jacfwd(f, backend=backend)(x)
    assert_tree_close(jac, torch.eye(3, dtype=DT))
    assert_tree_close(state, torch.ones(3, dtype=DT))


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_jacfwd_of_an_empty_input(backend, chunk_size) -> None:
    jac = ta.jacfwd(lambda x: x * 2, chunk_size=chunk_size, backend=backend)(torch.ones(0))
    assert jac.shape == (0, 0)


def test_integer_outputs_raise_in_every_product(backend) -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    with pytest.raises(RuntimeError):
        ta.vjp(lambda x: (x * 2).long(), x, backend=backend)
    with pytest.raises(RuntimeError):
        ta.jvp(lambda x: (x * 2).long(), (x,), (x,), backend=backend)
    with pytest.raises(RuntimeError):
        ta.hvp(lambda x: (x * 2).sum().long(), (x,), (x,), backend=backend)
    with pytest.raises(RuntimeError):
        ta.linearize(lambda x: x > 1, x, backend=backend)


@pytest.mark.parametrize("shape", [(), (1,)])
def test_forward_mode_results_keep_the_outputs_dtype(backend, shape) -> None:
    # torch's forward mode computes 0.5 * x for a 0-dim float32 x with a float64 tangent
    x = torch.full(shape, -0.5)
    t = torch.ones(shape)

    def f(x):
        return 0.5 * torch.cos(x) + 1.0

    reference = reference_jacobian(f, x)
    out, jv = ta.jvp(f, (x,), (t,), backend=backend)
    assert (out.dtype, jv.dtype) == (torch.float32, torch.float32)
    torch.testing.assert_close(jv, (reference.reshape(1, 1) @ t.reshape(1)).reshape(shape))
    for jac in (
        ta.jacfwd(f, backend=backend)(x),
        ta.jacobian(f, mode="forward", backend=backend)(x),
    ):
        assert jac.dtype == torch.float32
        torch.testing.assert_close(jac, reference)
    jac_pair, aux = ta.jacfwd(lambda x: ((f(x), x.double()), x), has_aux=True, backend=backend)(x)
    assert [j.dtype for j in jac_pair] == [torch.float32, torch.float64]
    assert ta.linearize(f, x, backend=backend)[1](t).dtype == torch.float32
    assert ta.hvp(lambda x: f(x).sum(), (x,), (t,), backend=backend)[1][0].dtype == torch.float32
    complex_tangent = ta.jvp(lambda x: x * 1j, (x,), (t,), backend=backend)[1]
    assert complex_tangent.dtype == torch.complex64


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_jacfwd_passes_non_tensor_arguments_through(backend, chunk_size) -> None:
    # torch 2.0's jacfwd reads the dtype of every positional argument
    x = torch.tensor([0.3, 0.5], dtype=DT)

    def f(k, x, s):
        return (x / k).sin() * len(s)

    expected = reference_jacobian(lambda x: f(2, x, "ab"), x)
    jac = ta.jacfwd(f, argnums=1, chunk_size=chunk_size, backend=backend)(2, x, "ab")
    assert_tree_close(jac, expected)
    assert_tree_close(ta.jacobian(f, 1, mode="forward", backend=backend)(2, x, "ab"), expected)


def test_forward_mode_through_a_no_grad_block_is_the_same_on_every_call(backend) -> None:
    """Dual numbers pass through the function's own no_grad block, backward passes do not:
    the eager forward mode keeps one answer on every call, reverse mode's.  The transform
    backends give torch.func's (its forward mode differs from its reverse mode there)."""
    from tad_autograd.dispatch._registry import REGISTRY

    def f(x):
        with torch.no_grad():
            scale = x.sin()
        return scale * x

    x = torch.tensor([0.3, 0.7], dtype=torch.float64)
    t = torch.tensor([1.0, -2.0], dtype=torch.float64)
    if backend is not None and REGISTRY.get(backend).is_transform:
        pytest.skip("a transform backend gives torch.func's own forward mode")
    rows = reference_jacobian(f, x)
    products = [ta.jvp(f, (x,), (t,), backend=backend)[1] for _ in range(3)]
    for product in products:
        assert_tree_close(product, rows @ t)
    assert_tree_close(ta.jacfwd(f, backend=backend)(x), rows)
    assert_tree_close(ta.jacobian(f, mode="forward", backend=backend)(x), rows)
    assert_tree_close(ta.linearize(f, x, backend=backend)[1](t), rows @ t)


def test_jacfwd_block_of_an_output_independent_of_the_inputs_has_no_graph(backend) -> None:
    """As torch.func's forward mode: no tangent, so zeros without a graph (rows path too)."""
    from tad_autograd.testing.functions import NEW_STYLE_FUNCTIONS_SUPPORTED, NewStyleSiLU

    if not NEW_STYLE_FUNCTIONS_SUPPORTED:
        pytest.skip("new-style autograd.Function needs torch >= 2.0")
    silu = NewStyleSiLU
    x, w = (torch.tensor([0.3, 0.4], requires_grad=True) for _ in range(2))

    def f(x, w):
        return x.sin(), silu.apply(w)

    ours = ta.jacfwd(f, backend=backend)(x, w)
    theirs = torch.func.jacfwd(f)(x, w)
    assert [t.requires_grad for t in ours] == [t.requires_grad for t in theirs] == [True, False]
    assert_tree_close(ours, theirs)
