"""Bad input to grad, grad_and_value, vjp, jvp, linearize, jacfwd, jacobian, hvp.

Each mistake raises the same exception type on every backend and in
automatic mode -- the type :mod:`torch.func` raises where it has the operator
(checked against it on the installed torch) -- and leaves the caller's
tensors as they were (§6).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Type

import pytest
import torch

import tad_autograd as ta

F64 = torch.float64


def _x() -> torch.Tensor:
    return torch.tensor([0.5, -1.0, 2.0], dtype=F64)


def _energy(x: torch.Tensor) -> torch.Tensor:
    return (x**2).sum()


Call = Callable[[Any, Dict[str, Any]], Any]

# (id, call(library, backend keyword), exception type, library has it as torch.func does)
CASES: Tuple[Tuple[str, Call, Type[BaseException], bool], ...] = (
    ("grad-non-scalar", lambda L, kw: L.grad(torch.sin, **kw)(_x()), RuntimeError, True),
    (
        "grad-int-output",
        lambda L, kw: L.grad(lambda x: x.sum().long(), **kw)(_x()),
        RuntimeError,
        False,
    ),
    ("grad-argnums-range", lambda L, kw: L.grad(_energy, 1, **kw)(_x()), RuntimeError, True),
    (
        "grad-int-input",
        lambda L, kw: L.grad(_energy, **kw)(torch.arange(3)),
        RuntimeError,
        True,
    ),
    (
        "grad_and_value-non-scalar",
        lambda L, kw: L.grad_and_value(torch.sin, **kw)(_x()),
        RuntimeError,
        True,
    ),
    (
        "grad-aux-not-a-tuple",
        lambda L, kw: L.grad(_energy, has_aux=True, **kw)(_x()),
        RuntimeError,
        True,
    ),
    (
        "jacfwd-int-input",
        lambda L, kw: L.jacfwd(torch.sin, **kw)(torch.arange(3)),
        ValueError,
        True,
    ),
    ("jvp-no-primals", lambda L, kw: L.jvp(torch.sin, (), (), **kw), RuntimeError, True),
    ("jacfwd-argnums-range", lambda L, kw: L.jacfwd(torch.sin, 3, **kw)(_x()), RuntimeError, True),
    (
        "jacfwd-randomness",
        lambda L, kw: L.jacfwd(torch.sin, randomness="sometimes", **kw)(_x()),
        RuntimeError,
        True,
    ),
    (
        "jacfwd-random-op-in-error-mode",
        lambda L, kw: L.jacfwd(lambda x: x * torch.rand(3, dtype=F64), **kw)(_x()),
        RuntimeError,
        True,
    ),
    (
        "jacfwd-int-output",
        lambda L, kw: L.jacfwd(lambda x: (x > 0).long(), **kw)(_x()),
        RuntimeError,
        False,
    ),
    (
        "jacfwd-chunk-size-zero",
        lambda L, kw: L.jacfwd(torch.sin, chunk_size=0, **kw),
        ValueError,
        False,
    ),
    (
        "jacobian-mode",
        lambda L, kw: L.jacobian(torch.sin, mode="both", **kw),
        ValueError,
        False,
    ),
    ("vjp-int-primal", lambda L, kw: L.vjp(torch.sin, torch.arange(3), **kw), RuntimeError, True),
    ("vjp-non-tensor-primal", lambda L, kw: L.vjp(torch.sin, 1.5, **kw), ValueError, True),
    (
        "vjp-cotangent-shape",
        lambda L, kw: L.vjp(torch.sin, _x(), **kw)[1](torch.ones(2, dtype=F64)),
        RuntimeError,
        True,
    ),
    (
        "vjp-cotangent-structure",
        lambda L, kw: L.vjp(torch.sin, _x(), **kw)[1]((_x(), _x())),
        RuntimeError,
        True,
    ),
    (
        "jvp-primals-not-tuple",
        lambda L, kw: L.jvp(torch.sin, _x(), _x(), **kw),
        RuntimeError,
        True,
    ),
    (
        "jvp-structure",
        lambda L, kw: L.jvp(torch.sin, (_x(),), (_x(), _x()), **kw),
        RuntimeError,
        True,
    ),
    (
        "jvp-shape",
        lambda L, kw: L.jvp(torch.sin, (_x(),), (torch.ones(2, dtype=F64),), **kw),
        RuntimeError,
        True,
    ),
    (
        "jvp-int-primal",
        lambda L, kw: L.jvp(torch.sin, (torch.arange(3),), (torch.arange(3),), **kw),
        ValueError,
        True,
    ),
    (
        "hvp-non-scalar",
        lambda L, kw: L.hvp(torch.sin, (_x(),), (_x(),), **kw),
        RuntimeError,
        False,
    ),
    (
        "has_aux-not-bool",
        lambda L, kw: L.jvp(torch.sin, (_x(),), (_x(),), has_aux=1, **kw),
        TypeError,
        False,
    ),
)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_operator_input(case, backend: Optional[str]) -> None:
    _, call, exc, _ = case
    x_before = _x()
    with pytest.raises(exc):
        call(ta, {"backend": backend})
    torch.testing.assert_close(_x(), x_before)


@pytest.mark.parametrize("case", [c for c in CASES if c[3]], ids=[c[0] for c in CASES if c[3]])
def test_torch_func_raises_the_same_type(case) -> None:
    """The table's types are torch.func's own (so every backend matches torch.func)."""
    func = pytest.importorskip("torch.func")
    _, call, exc, _ = case
    with pytest.raises(exc):
        call(func, {})


def test_jacfwd_of_a_complex_output_names_jacfwd(backend: Optional[str]) -> None:
    """On every backend and torch (functorch 1.13's own jacfwd computes it; torch.func raises)."""
    with pytest.raises(RuntimeError, match="^jacfwd"):
        ta.jacfwd(lambda x: x * 1j, backend=backend)(_x())
