"""Every operator under ``torch.compile``: the same numbers as eager, or a clear error.

For each backend (and automatic mode) and each compile backend, one compiled
function runs every operator on tiny tensors; each result is compared with
the same call run eagerly and with an independent reference (closed-form
derivatives of ``sin(x) * x``, or ``torch.autograd.grad`` rows).  ``EXPECTED``
is the table of cells that must raise instead: a ``RuntimeError`` naming the
backend and the one that works.  Dynamo is reset around every test, and no
compile error is suppressed.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from _helpers import OldStyleExp, make_new_style_exp, reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION, Version
from tad_autograd.compat.batching_defects import corrected

pytestmark = [
    pytest.mark.skipif(
        TORCH_VERSION < Version("2.1"),
        reason="torch.compile of function transforms needs torch >= 2.1",
    ),
    # dynamo looks up .grad of the non-leaf tensors it meets, and hides torch's warning
    # about that with a filter that an "error" filter overrides: dynamo's, not ours
    pytest.mark.filterwarnings(
        "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
    ),
]

X = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
V = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
BATCH = torch.tensor([[0.3, -0.2], [-0.7, 0.5], [1.1, 0.9]], dtype=torch.float64)


def f(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * x


def f_sum(x: torch.Tensor) -> torch.Tensor:
    return (torch.sin(x) * x).sum()


def df(x: torch.Tensor) -> torch.Tensor:
    """d/dx sin(x) x, elementwise."""
    return torch.cos(x) * x + torch.sin(x)


def d2f(x: torch.Tensor) -> torch.Tensor:
    """d²/dx² sin(x) x, elementwise."""
    return 2 * torch.cos(x) - torch.sin(x) * x


def _apply_fn(pair: Tuple[Any, Callable[..., Any]], *tangents: Any) -> Tuple[Any, Any]:
    output, fn = pair
    return output, fn(*tangents)


def operators(backend: Any) -> Dict[str, Callable[[torch.Tensor], Any]]:
    """Each operator once, on ``backend`` (``None``: automatic); the products' functions are
    applied inside the call, so inside the compiled function."""
    kw = {"backend": backend}
    return {
        "jacrev": lambda x: ta.jacrev(f, **kw)(x),
        "jacfwd": lambda x: ta.jacfwd(f, **kw)(x),
        "jacobian": lambda x: ta.jacobian(f, **kw)(x),
        "grad": lambda x: ta.grad(f_sum, **kw)(x),
        "grad_and_value": lambda x: ta.grad_and_value(f_sum, **kw)(x),
        "vjp": lambda x: _apply_fn(ta.vjp(f, x, **kw), V),
        "jvp": lambda x: ta.jvp(f, (x,), (V,), **kw),
        "linearize": lambda x: _apply_fn(ta.linearize(f, x, **kw), V),
        "hessian": lambda x: ta.hessian(f_sum, **kw)(x),
        "hvp": lambda x: ta.hvp(f_sum, (x,), (V,), **kw),
        "vmap": lambda x: ta.vmap(f, **kw)(x[:, None] * BATCH[0]),
    }


def references(x: torch.Tensor) -> Dict[str, Any]:
    """Closed forms, and ``torch.autograd.grad`` rows of the eager function."""
    jac = torch.diag(df(x))
    hess = torch.diag(d2f(x))
    return {
        "jacrev": jac,
        "jacfwd": jac,
        "jacobian": reference_jacobian(f, x),
        "grad": df(x),
        "grad_and_value": (df(x), f_sum(x)),
        "vjp": (f(x), (V * df(x),)),
        "jvp": (f(x), V * df(x)),
        "linearize": (f(x), V * df(x)),
        "hessian": reference_hessian(f_sum, x),
        "hvp": (f_sum(x), (hess @ V,)),
        "vmap": f(x[:, None] * BATCH[0]),
    }


OPERATORS = tuple(operators(None))
BACKENDS = (None,) + tuple(ta.available_backends())

#: The cells that raise under torch.compile (any compile backend): operator -> backends.
#: Plain autograd differentiates twice through the graph dynamo compiled, which has no
#: second derivative under AOTAutograd (torch gives zeros or raises): refused up front.
#: Every other cell gives eager's numbers.
EXPECTED: Dict[Tuple[str, Any], str] = {
    ("hessian", "autograd"): "error",
    ("hvp", "autograd"): "error",
}


def _expect(op: str, backend: Any) -> str:
    return EXPECTED.get((op, backend), "same as eager")


@pytest.fixture(autouse=True)
def _reset_dynamo() -> Any:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _run_all(ops: Dict[str, Callable[[torch.Tensor], Any]]) -> Callable[[torch.Tensor], Any]:
    def all_operators(x: torch.Tensor) -> Dict[str, Any]:
        return {name: op(x) for name, op in ops.items()}

    return all_operators


def _check_cells(backend: Any, compile_backend: str, names: Tuple[str, ...]) -> None:
    ops = {n: op for n, op in operators(backend).items() if n in names}
    eager = _run_all(ops)(X)
    # automatic mode and "func": one graph, as torch.func's transforms give (fullgraph=True
    # raises at any graph break); plain autograd breaks the graph at each backward pass
    fullgraph = backend in (None, "func")
    compiled = torch.compile(_run_all(ops), backend=compile_backend, fullgraph=fullgraph)(X)
    ref = references(X)
    for name in names:
        label = f"{name} on {backend or 'automatic'} under {compile_backend}"
        torch.testing.assert_close(compiled[name], eager[name], msg=lambda m, n=label: f"{n}: {m}")
        torch.testing.assert_close(compiled[name], ref[name], msg=lambda m, n=label: f"{n}: {m}")


#: Every backend (and automatic mode) under both light compile backends.
PAIRS = [(b, c) for b in BACKENDS for c in ("eager", "aot_eager")]


@pytest.mark.parametrize(("backend", "compile_backend"), PAIRS, ids=lambda v: v or "automatic")
def test_same_as_eager(backend: Any, compile_backend: str) -> None:
    names = tuple(n for n in OPERATORS if _expect(n, backend) == "same as eager")
    _check_cells(backend, compile_backend, names)


# inductor's own start-up and lowering use torch APIs that newer torch deprecates: not ours
_INDUCTOR_WARNINGS = (
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    "ignore:`torch._prims_common.check` is deprecated:FutureWarning",
)


@pytest.mark.filterwarnings(_INDUCTOR_WARNINGS[0])
@pytest.mark.filterwarnings(_INDUCTOR_WARNINGS[1])
def test_inductor_automatic() -> None:
    """Every operator at least once through inductor, in automatic mode."""
    _check_cells(None, "inductor", OPERATORS)


@pytest.mark.filterwarnings(_INDUCTOR_WARNINGS[0])
@pytest.mark.filterwarnings(_INDUCTOR_WARNINGS[1])
@pytest.mark.parametrize("backend", ["func", "autograd"])
def test_inductor_backends(backend: str) -> None:
    _check_cells(backend, "inductor", ("jacrev", "vjp", "hvp" if backend == "func" else "jvp"))


@pytest.mark.filterwarnings(_INDUCTOR_WARNINGS[0])
@pytest.mark.filterwarnings(_INDUCTOR_WARNINGS[1])
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", [None, "func"], ids=lambda v: v or "automatic")
def test_inductor_hvp_of_a_pair_energy(backend: Any) -> None:
    """inductor compiles torch.func's forward-over-reverse hvp of a Lennard-Jones energy to
    wrong numbers (torch 2.13): the library's compiled hvp gives the Hessian's product."""
    from tad_autograd.report import cluster, lennard_jones

    pos = cluster(6)
    v = torch.linspace(-1, 1, pos.numel(), dtype=torch.float64).reshape(pos.shape)
    hess = torch.autograd.functional.hessian(lennard_jones, pos).reshape(pos.numel(), -1)
    expected = (hess @ v.reshape(-1)).reshape(pos.shape)

    def product(p: torch.Tensor) -> torch.Tensor:
        return ta.hvp(lennard_jones, (p,), (v,), backend=backend)[1][0]

    compiled = torch.compile(product, backend="inductor", fullgraph=True)(pos)
    torch.testing.assert_close(compiled, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("cell", sorted(EXPECTED), ids=lambda c: "-".join(map(str, c)))
def test_clear_error(cell: Tuple[str, Any], compile_backend: str) -> None:
    op, backend = cell
    assert ta.hessian(f_sum, backend=backend)(X) is not None  # eager: fine
    with pytest.raises(RuntimeError, match=rf"backend '{backend}' cannot compute {op}") as info:
        torch.compile(operators(backend)[op], backend=compile_backend)(X)
    assert "backend='func'" in str(info.value)


def test_nested_autograd_is_refused() -> None:
    """A derivative of a derivative on plain autograd is second order too."""

    def second(x: torch.Tensor) -> torch.Tensor:
        return ta.jacrev(ta.grad(f_sum, backend="autograd"), backend="autograd")(x)

    torch.testing.assert_close(second(X), torch.diag(d2f(X)))
    with pytest.raises(RuntimeError, match="backend 'autograd' cannot compute grad inside"):
        torch.compile(second, backend="aot_eager")(X)


def test_automatic_hessian_is_not_zero_under_aot_eager() -> None:
    """torch.autograd.functional.hessian gives zeros here; automatic mode must not."""
    hess = torch.compile(lambda x: ta.hessian(f_sum)(x), backend="aot_eager")(X)
    torch.testing.assert_close(hess, torch.diag(d2f(X)))


def test_use_backend_block_around_the_compiled_call() -> None:
    with ta.use_backend("autograd"):
        with pytest.raises(RuntimeError, match="backend 'autograd' cannot compute hessian"):
            torch.compile(lambda x: ta.hessian(f_sum)(x), backend="eager")(X)


def _exp_times_x(function: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: (function.apply(x) * x).sum()


# dynamo makes an instance of a custom Function while it traces it: dynamo's warning, not ours
_FUNCTION_INSTANCE_WARNING = "ignore:.*should not be instantiated:DeprecationWarning"


@pytest.mark.filterwarnings(_FUNCTION_INSTANCE_WARNING)
@pytest.mark.parametrize("kind", ["old-style", "setup_context"])
@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
def test_custom_function(kind: str, compile_backend: str) -> None:
    """Functions without forward-mode rules (old-style: no torch.func support at all) in
    automatic mode: first and second derivatives, hvp and forward mode included, as eager."""
    function = OldStyleExp if kind == "old-style" else make_new_style_exp()
    g = _exp_times_x(function)

    def first_and_second(x: torch.Tensor) -> Any:
        return (
            ta.grad(g)(x),
            ta.jacrev(lambda y: function.apply(y) * y)(x),
            ta.hessian(g)(x),
            ta.hvp(g, (x,), (V,))[1][0],
            ta.jvp(lambda y: function.apply(y) * y, (x,), (V,))[1],
        )

    eager = first_and_second(X)
    compiled = torch.compile(first_and_second, backend=compile_backend)(X)
    e = X.exp()
    closed = (
        e * X + e,
        torch.diag(e * X + e),
        torch.diag(e * X + 2 * e),
        (e * X + 2 * e) * V,
        (e * X + e) * V,
    )
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled, closed)


_PAIRS_FROM = torch.tensor(
    [[0.3, -1.2, 0.5], [1.1, 0.4, -0.7], [-0.9, 0.2, 1.3], [0.6, 0.8, -0.1]], dtype=torch.float64
)
_POINTS = torch.linspace(-1.0, 1.3, 15, dtype=torch.float64)


def _cdist_l1(a: torch.Tensor) -> torch.Tensor:
    """cdist with p=1: torch's own batched backward of it is wrong on every torch of the matrix."""
    return torch.cdist(a.view(5, 3), _PAIRS_FROM, p=1).reshape(-1)


def _no_grad_block(x: torch.Tensor) -> torch.Tensor:
    """Reverse mode (automatic mode's answer) treats ``s`` as a constant: J = s I."""
    with torch.no_grad():
        s = (x * x).sum()
    return x * s


#: Calls automatic mode must not compile to torch.func's numbers: a Jacobian vectorised
#: through cdist's batched backward, a vmap over a vjp function through it, and forward
#: mode through the function's own no_grad block (dual numbers pass it, reverse mode not).
WATCHED: Dict[str, Tuple[Callable[[torch.Tensor], Any], Callable[..., Any], torch.Tensor]] = {
    "jacrev-cdist": (lambda a: ta.jacrev(_cdist_l1)(a), _cdist_l1, _POINTS),
    "vmap-vjp-cdist": (
        lambda a: ta.vmap(ta.vjp(_cdist_l1, a)[1])(torch.eye(20, dtype=a.dtype))[0],
        _cdist_l1,
        _POINTS,
    ),
    "jacfwd-no_grad": (lambda x: ta.jacfwd(_no_grad_block)(x), _no_grad_block, X),
    "jvp-no_grad": (lambda x: ta.jvp(_no_grad_block, (x,), (V,))[1], _no_grad_block, X),
}


@pytest.mark.parametrize("name", sorted(WATCHED))
def test_automatic_mode_watches_what_eager_watches(name: str) -> None:
    """Eager's numbers (torch.autograd.grad rows of the eager function), through plain
    autograd with a graph break where the backend's transform would be wrong."""
    call, func, x = WATCHED[name]
    expected = reference_jacobian(func, x)
    if name.startswith("jvp"):
        expected = expected @ V
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)  # eager's vmap retry
        torch.testing.assert_close(call(x), expected)
    # one graph: forward mode takes reverse mode's product, a Jacobian through cdist its rows
    # one by one; a vmap of the vjp function leaves the transform for plain autograd's loop
    fullgraph = name != "vmap-vjp-cdist"
    compiled = torch.compile(call, backend="eager", fullgraph=fullgraph)
    torch.testing.assert_close(compiled(x), expected)


@pytest.mark.skipif(
    "cdist" not in corrected(), reason="this torch keeps its own cdist batching rule"
)
@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("caller", ["torch.func", "func", "automatic"])
def test_corrected_cdist_rule_compiles_to_one_graph(caller: str, compile_backend: str) -> None:
    """The batching rule registered for cdist's backward traces into one graph (AOT autograd
    runs it), with the row loop's numbers."""
    if caller == "torch.func":
        call = torch.func.jacrev(_cdist_l1)
    else:
        call = ta.jacrev(_cdist_l1, backend=None if caller == "automatic" else caller)
    compiled = torch.compile(call, backend=compile_backend, fullgraph=True)
    torch.testing.assert_close(compiled(_POINTS), reference_jacobian(_cdist_l1, _POINTS))
