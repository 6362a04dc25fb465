"""One mistake, one exception type: every backend and automatic mode against torch.func.

Each row of :data:`ROWS` makes one user mistake.  On every backend and in
automatic mode it must raise the same exception type: the one
:mod:`torch.func` raises for the same mistake (``functorch`` on torch 1.13),
computed here where it has the operator, else the type the row states
(torch.func's on current releases; the library's own choice where torch.func
has no such parameter or does not refuse).  The message names the parameter (the row's
``needle``).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Type

import pytest
import torch

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION, Version

DT = torch.float64
HAS_FUNC = TORCH_VERSION >= Version("2.0")


def _x() -> torch.Tensor:
    return torch.tensor([0.5, -1.0, 2.0], dtype=DT)


def _X() -> torch.Tensor:
    return torch.arange(12, dtype=DT).reshape(4, 3) / 7


def _vec(x):
    return x.sin() * x


def _pair(x, y):
    return (x * y).sin().sum()


def _scalar(x):
    return (x**3).sum()


class _NoReference(Exception):
    """The installed torch.func (or functorch) has no such operator."""


def _tf() -> Any:
    """torch.func, or on torch 1.13 functorch: the reference of that version."""
    if HAS_FUNC:
        import torch.func

        return torch.func
    import functorch

    return functorch


@dataclass
class Row:
    name: str
    ours: Callable[[Optional[str]], Any]
    #: the same mistake made to torch.func (None: torch.func has no such parameter)
    theirs: Optional[Callable[[], Any]]
    #: the type where torch.func cannot be asked, or does not refuse
    stated: Type[BaseException]
    needle: str
    #: the library's type differs from torch.func's on purpose (see the operators page)
    deliberate: bool = False


def _their(name: str, *needed: str) -> Any:
    """``name`` of the reference, which must take the parameters ``needed``."""
    op = getattr(_tf(), name, None)
    if op is None or any(p not in inspect.signature(op).parameters for p in needed):
        raise _NoReference  # e.g. functorch 1.13: no linearize, no chunk_size
    return op


def _lin(backend, *tangents):
    return ta.linearize(_vec, _x(), backend=backend)[1](*tangents)


def _their_lin(*tangents):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _their("linearize")(_vec, _x())[1](*tangents)


def _vjp_fn(backend, *cotangents):
    return ta.vjp(_vec, _x(), backend=backend)[1](*cotangents)


def _their_vjp_fn(*cotangents):
    return _tf().vjp(_vec, _x())[1](*cotangents)


def _jac_rows():
    rows = []
    for op in ("jacrev", "jacfwd", "grad", "hessian"):
        f = _pair

        def ours(b, op=op, f=f, argnums=None, args=None):
            return getattr(ta, op)(f, argnums, backend=b)(*args)

        def theirs(op=op, f=f, argnums=None, args=None):
            return getattr(_tf(), op)(f, argnums)(*args)

        for label, argnums, args, needle in [
            ("argnums out of range", 2, (_x(), _x()), "argnum"),
            ("argnums duplicated", (0, -2), (_x(), _x()), "argnum"),
            ("argnums a float", 1.0, (_x(), _x()), "argnum"),
            ("argnums a list", [0, 1], (_x(), _x()), "argnum"),
            ("integer input", 0, (torch.tensor([1, 2, 3]), _x()), "dtype"),
            ("complex input", 0, (_x() * 1j, _x()), "dtype"),
        ]:
            stated = (
                ValueError
                if label == "integer input" and op in ("jacfwd", "hessian")
                else RuntimeError
            )
            rows.append(
                Row(
                    f"{op}: {label}",
                    lambda b, o=ours, a=argnums, s=args: o(b, argnums=a, args=s),
                    lambda t=theirs, a=argnums, s=args: t(argnums=a, args=s),
                    stated,
                    needle,
                )
            )
    return rows


ROWS = [
    Row(
        "vjp_fn: a float cotangent",
        lambda b: _vjp_fn(b, 1.0),
        lambda: _their_vjp_fn(1.0),
        TypeError,
        "cotangent",
    ),
    Row(
        "vjp_fn: cotangent of another shape",
        lambda b: _vjp_fn(b, torch.ones(4, dtype=DT)),
        lambda: _their_vjp_fn(torch.ones(4, dtype=DT)),
        RuntimeError,
        "shape",
    ),
    Row(
        "vjp_fn: cotangent of another structure",
        lambda b: _vjp_fn(b, (torch.ones(3, dtype=DT),)),
        lambda: _their_vjp_fn((torch.ones(3, dtype=DT),)),
        RuntimeError,
        "structure",
    ),
    Row(
        "jvp_fn: a float tangent",
        lambda b: _lin(b, 1.0),
        lambda: _their_lin(1.0),
        RuntimeError,
        "tangent",
        deliberate=True,
    ),
    Row(
        "jvp_fn: tangent of another shape",
        lambda b: _lin(b, torch.ones(4, dtype=DT)),
        lambda: _their_lin(torch.ones(4, dtype=DT)),
        RuntimeError,
        "shape",
    ),
    Row(
        "jvp_fn: tangent of another dtype",
        lambda b: _lin(b, torch.ones(3)),
        lambda: _their_lin(torch.ones(3)),
        RuntimeError,
        "dtype",
    ),
    Row(
        "jvp_fn: two tangents for one primal",
        lambda b: _lin(b, _x(), _x()),
        lambda: _their_lin(_x(), _x()),
        RuntimeError,
        "structure",
    ),
    Row(
        "jvp: tangent of another shape",
        lambda b: ta.jvp(_vec, (_x(),), (torch.ones(4, dtype=DT),), backend=b),
        lambda: _tf().jvp(_vec, (_x(),), (torch.ones(4, dtype=DT),)),
        RuntimeError,
        "shape",
    ),
    Row(
        "jvp: tangent of another dtype",
        lambda b: ta.jvp(_vec, (_x(),), (torch.ones(3),), backend=b),
        lambda: _tf().jvp(_vec, (_x(),), (torch.ones(3),)),
        RuntimeError,
        "dtype",
    ),
    Row(
        "jvp: tangents of another structure",
        lambda b: ta.jvp(_vec, (_x(),), (_x(), _x()), backend=b),
        lambda: _tf().jvp(_vec, (_x(),), (_x(), _x())),
        RuntimeError,
        "structure",
    ),
    Row(
        "jvp: a float tangent",
        lambda b: ta.jvp(_vec, (_x(),), (1.0,), backend=b),
        lambda: _tf().jvp(_vec, (_x(),), (1.0,)),
        RuntimeError,
        "tangent",
    ),
    *_jac_rows(),
    Row(
        "jacrev: integer output",
        lambda b: ta.jacrev(lambda x: (x * 2).long(), backend=b)(_x()),
        None,
        RuntimeError,
        "dtype",
    ),
    Row(
        "jacfwd: integer output",
        lambda b: ta.jacfwd(lambda x: (x * 2).long(), backend=b)(_x()),
        None,
        RuntimeError,
        "dtype",
    ),
    Row(
        "vjp: integer output",
        lambda b: ta.vjp(lambda x: (x * 2).long(), _x(), backend=b),
        None,
        RuntimeError,
        "dtype",
    ),
    Row(
        "jvp: integer output",
        lambda b: ta.jvp(lambda x: (x * 2).long(), (_x(),), (_x(),), backend=b),
        None,
        RuntimeError,
        "dtype",
    ),
    Row(
        "grad: non-scalar output",
        lambda b: ta.grad(_vec, backend=b)(_x()),
        lambda: _tf().grad(_vec)(_x()),
        RuntimeError,
        "scalar",
    ),
    Row(
        "vmap: in_dims a list",
        lambda b: ta.vmap(_pair, in_dims=[0, 0], backend=b)(_X(), _X()),
        lambda: _tf().vmap(_pair, in_dims=[0, 0])(_X(), _X()),
        ValueError,
        "in_dims",
    ),
    Row(
        "vmap: in_dims too short",
        lambda b: ta.vmap(_pair, in_dims=(0,), backend=b)(_X(), _X()),
        lambda: _tf().vmap(_pair, in_dims=(0,))(_X(), _X()),
        ValueError,
        "in_dims",
    ),
    Row(
        "vmap: batch sizes differ",
        lambda b: ta.vmap(_pair, backend=b)(_X(), _X()[:3]),
        lambda: _tf().vmap(_pair)(_X(), _X()[:3]),
        ValueError,
        "size",
    ),
    Row(
        "vmap: no batched argument",
        lambda b: ta.vmap(_pair, in_dims=None, backend=b)(_X(), _X()),
        lambda: _tf().vmap(_pair, in_dims=None)(_X(), _X()),
        ValueError,
        "in_dims",
    ),
    Row(
        "vmap: out_dims=None for a batched output",
        lambda b: ta.vmap(_vec, out_dims=None, backend=b)(_X()),
        lambda: _tf().vmap(_vec, out_dims=None)(_X()),
        ValueError,
        "out_dim",
    ),
    Row(
        "vmap: randomness unknown",
        lambda b: ta.vmap(_vec, randomness="bogus", backend=b)(_X()),
        lambda: _tf().vmap(_vec, randomness="bogus")(_X()),
        RuntimeError,
        "randomness",
    ),
    Row(
        "vmap: chunk_size 0",
        lambda b: ta.vmap(_vec, chunk_size=0, backend=b)(_X()),
        lambda: _their("vmap", "chunk_size")(_vec, chunk_size=0)(_X()),
        ValueError,
        "chunk_size",
    ),
    Row(
        "jacrev: chunk_size 0",
        lambda b: ta.jacrev(_vec, chunk_size=0, backend=b)(_x()),
        lambda: _their("jacrev", "chunk_size")(_vec, chunk_size=0)(_x()),
        ValueError,
        "chunk_size",
    ),
    Row(
        "jacrev: chunk_size a float",
        lambda b: ta.jacrev(_vec, chunk_size=1.5, backend=b)(_x()),
        lambda: _their("jacrev", "chunk_size")(_vec, chunk_size=1.5)(_x()),
        TypeError,
        "chunk_size",
    ),
    Row(
        "jacfwd: randomness unknown",
        lambda b: ta.jacfwd(_vec, randomness="bogus", backend=b)(_x()),
        lambda: _tf().jacfwd(_vec, randomness="bogus")(_x()),
        RuntimeError,
        "randomness",
    ),
    Row(
        "jacobian: mode unknown",
        lambda b: ta.jacobian(_vec, mode="sideways", backend=b)(_x()),
        None,
        ValueError,
        "mode",
    ),
    Row(
        "hvp: tangents of another structure",
        lambda b: ta.hvp(_scalar, (_x(),), (_x(), _x()), backend=b),
        lambda: _tf().jvp(_tf().grad(_scalar), (_x(),), (_x(), _x())),
        RuntimeError,
        "structure",
    ),
]


def _expected(row: Row) -> Type[BaseException]:
    if row.deliberate or row.theirs is None:
        return row.stated
    try:
        row.theirs()
    except _NoReference:
        return row.stated
    except Exception as error:  # torch.func's type for this mistake
        return type(error)
    return row.stated  # torch.func accepts it (e.g. returns zeros): the library refuses


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_one_mistake_one_exception_type(backend, row) -> None:
    expected = _expected(row)
    with pytest.raises(Exception) as info:
        row.ours(backend)
    assert type(info.value) is expected, (
        f"{row.name}: {type(info.value).__name__} ({info.value}), torch.func's type is "
        f"{expected.__name__}"
    )
    assert row.needle.lower() in str(info.value).lower(), str(info.value)


@pytest.mark.skipif(not HAS_FUNC, reason="torch.func needs torch >= 2.0")
@pytest.mark.parametrize("row", [r for r in ROWS if r.theirs is not None], ids=lambda r: r.name)
def test_the_stated_types_are_torch_funcs(row) -> None:
    """The types stated for older torch are what torch.func raises now (or a noted choice)."""
    if row.deliberate:
        pytest.skip("the library's type differs from torch.func's on purpose")
    assert _expected(row) is row.stated
