"""Ops whose forward-mode formula torch gets wrong: forward mode never inherits it (§3, §4).

``scatter_reduce(..., "prod")`` loses its tangent and ``cholesky_inverse``'s
tangent is off by 4-20 % on torch 1.13.1 to 2.13 (``BATCHING_DEFECTS``, stage
``"tangent"``).  The autograd backend and automatic mode give the independent
reference (a row loop of ``torch.autograd.grad``, itself checked against
central finite differences) through every forward-mode operator; automatic
mode may warn where it leaves a transform.  An explicitly chosen transform
backend keeps torch's behaviour, as for batching defects: it gives what
torch's own dual numbers give (the user chose torch.func), never anything else.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Iterator, Optional

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from _helpers import reference_hessian, reference_jacobian

import tad_autograd as ta
from tad_autograd.compat._dual import forward_ad_ready
from tad_autograd.compat.batching_defects import defects_for
from tad_autograd.dispatch._registry import REGISTRY

# torch 1.13 warns that scatter_reduce is in beta, once per process
pytestmark = pytest.mark.filterwarnings("ignore:scatter_reduce.*beta:UserWarning")

F64 = torch.float64
_IDX_SMALL = torch.tensor([0, 0])
_IDX_LARGE = torch.tensor([0, 1, 0, 1])


def _scatter_prod_small(v: torch.Tensor) -> torch.Tensor:
    return v[:2].clone().scatter_reduce(0, _IDX_SMALL, v[2:], "prod")


def _scatter_prod_large(v: torch.Tensor) -> torch.Tensor:
    return torch.scatter_reduce(v[:2], 0, _IDX_LARGE, v[2:], reduce="prod", include_self=False)


def _cholesky_inverse_small(v: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_inverse(torch.tril(v.reshape(2, 2)) + 3 * torch.eye(2, dtype=v.dtype))


def _cholesky_inverse_large(v: torch.Tensor) -> torch.Tensor:
    factor = torch.triu(v.reshape(3, 3)) + 2 * torch.eye(3, dtype=v.dtype)
    return factor.cholesky_inverse(upper=True)


#: name -> (f, table op, input): 4 inputs (eager columns) and 6 or 9 (vectorised columns).
CASES: Dict[str, Any] = {
    "scatter_reduce_prod_4": (_scatter_prod_small, "scatter_reduce.prod", 4),
    "scatter_reduce_prod_6": (_scatter_prod_large, "scatter_reduce.prod", 6),
    "cholesky_inverse_4": (_cholesky_inverse_small, "cholesky_inverse", 4),
    "cholesky_inverse_9": (_cholesky_inverse_large, "cholesky_inverse", 9),
}
OPERATORS = ("jvp", "jacfwd", "jacfwd_different", "linearize", "jacobian_forward")


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Any:
    f, op, n = CASES[request.param]
    x = torch.linspace(-0.6, 0.9, n, dtype=F64) + 0.1 * torch.arange(n, dtype=F64) ** 1.5
    return f, op, x


def _tangent(x: torch.Tensor) -> torch.Tensor:
    return torch.linspace(-1, 1.3, x.numel(), dtype=x.dtype).reshape(x.shape)


def _finite_differences(f: Callable[..., Any], x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    columns = []
    for j in range(x.numel()):
        e = torch.zeros_like(x).reshape(-1)
        e[j] = eps
        e = e.reshape(x.shape)
        columns.append((f(x + e) - f(x - e)) / (2 * eps))
    return torch.stack(columns, dim=-1).reshape(f(x).shape + x.shape)


def _dual_jacobian(f: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
    """torch's own forward mode, no library: one dual-number pass per column."""
    forward_ad_ready()  # torch's first dual number warns of its own torch.jit.script use
    columns = []
    for t in torch.eye(x.numel(), dtype=x.dtype):
        with fwAD.dual_level():
            out = fwAD.unpack_dual(f(fwAD.make_dual(x, t.reshape(x.shape))))
            tangent = out.tangent
            columns.append(torch.zeros_like(out.primal) if tangent is None else tangent.clone())
    return torch.stack(columns, dim=-1)


def _operator(name: str, f: Callable[..., Any], x: torch.Tensor, backend: Optional[str]) -> Any:
    """The Jacobian (or ``J t`` for the products) by operator ``name`` on ``backend``."""
    kw: Dict[str, Any] = {} if backend is None else {"backend": backend}
    t = _tangent(x)
    if name == "jvp":
        return ta.jvp(f, (x,), (t,), **kw)[1]
    if name == "linearize":
        return ta.linearize(f, x, **kw)[1](t)
    if name == "jacfwd":
        return ta.jacfwd(f, **kw)(x)
    if name == "jacfwd_different":
        return ta.jacfwd(f, randomness="different", **kw)(x)
    return ta.jacobian(f, mode="forward", **kw)(x)


def _times(jac: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    if name not in ("jvp", "linearize"):
        return jac
    out_shape = jac.shape[: jac.dim() - x.dim()]
    return (jac.reshape(-1, x.numel()) @ _tangent(x).reshape(-1)).reshape(out_shape)


def _in_table(op: str) -> bool:
    return any(d.op == op and d.stage == "tangent" for d in defects_for())


@contextlib.contextmanager
def _may_warn(expected: bool) -> Iterator[None]:
    if expected:
        with pytest.warns(ta.BackendFallbackWarning, match="forward-mode derivative"):
            yield
    else:
        yield


def test_reference_agrees_with_finite_differences_and_torch_forward_mode_does_not(
    case: Any,
) -> None:
    """The reference is right, and each table entry is wrong in torch's own dual numbers."""
    f, op, x = case
    reference = reference_jacobian(f, x)
    torch.testing.assert_close(reference, _finite_differences(f, x), rtol=1e-6, atol=1e-7)
    if _in_table(op):
        assert (_dual_jacobian(f, x) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("name", OPERATORS)
def test_forward_mode_never_inherits_a_wrong_formula(
    backend: Optional[str], case: Any, name: str
) -> None:
    f, op, x = case
    transform = backend is not None and REGISTRY.get(backend).is_transform
    if transform and _in_table(op):
        # the user chose torch.func: torch's own forward mode, as for batching defects
        expected = _times(_dual_jacobian(f, x), x, name)
    else:
        expected = _times(reference_jacobian(f, x), x, name)
    with warnings.catch_warnings():
        # automatic mode takes forward-mode columns from a recorded pass: nothing to leave
        warnings.simplefilter("error", ta.BackendFallbackWarning)
        got = _operator(name, f, x, backend)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_vmap_of_jacfwd_in_automatic_mode(case: Any) -> None:
    """Inside a transform the automatic jacfwd watches for the table too (and falls back).

    Three samples: automatic ``vmap`` loops over two or fewer.
    """
    f, op, x = case
    batch = torch.stack([x, 0.9 * x + 0.05, 1.1 * x])
    with _may_warn(_in_table(op)):
        got = ta.vmap(ta.jacfwd(f))(batch)
    torch.testing.assert_close(got, torch.stack([reference_jacobian(f, b) for b in batch]))


@pytest.mark.parametrize("backend_name", ["autograd", None])
def test_jacobian_mode_auto_goes_reverse(case: Any, backend_name: Optional[str]) -> None:
    """Tall Jacobians go forward from the second call, except through a wrong formula."""
    f, op, x = case

    def tall(v: torch.Tensor) -> torch.Tensor:
        out = f(v).reshape(-1)
        return torch.cat([out, out**2, out.sin()])

    jac = ta.jacobian(tall, backend=backend_name)
    for _ in range(3):
        torch.testing.assert_close(jac(x), reference_jacobian(tall, x))


@pytest.mark.parametrize("backend_name", ["autograd", None])
def test_hvp_in_reverse_mode(case: Any, backend_name: Optional[str]) -> None:
    f, _, x = case

    def scalar(v: torch.Tensor) -> torch.Tensor:
        return (f(v) ** 2).sum()

    t = _tangent(x)
    _, (hv,) = ta.hvp(scalar, (x,), (t,), backend=backend_name)
    torch.testing.assert_close(hv, reference_hessian(scalar, x) @ t)
