"""Fuzzing operators under ``torch.compile`` (torch >= 2.1).

A :class:`CompileCase` is a small random program (one tensor argument, one
tensor output, no custom Functions), one operator of :data:`COMPILED_OPERATORS`
and one compile backend of :data:`COMPILE_BACKENDS` (``eager``,
``aot_eager``).  :func:`check_compile_case` compiles
``lambda *args: op(program, backend=b)(*args)`` for one backend ``b`` drawn
from the available ones and automatic mode, and calls it twice:

* automatic mode returns, both times, the row-loop reference's value (and
  the eager operator's, where that runs);
* an explicit backend returns that value or raises a ``RuntimeError`` (a
  clear error, e.g. dynamo's ``Unsupported``): never a different number,
  from the reference or from the eager operator.

Compiling is slow: the property runs few examples.

Examples
--------
>>> COMPILE_SUPPORTED in (True, False)
True
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Optional

import torch
from hypothesis import strategies as st

from ..operators import REFERENCE, LibraryOps, build_operator
from ..strategies import programs
from .products import build_product
from .support import Backends, assert_close_in_dtype

__all__ = [
    "COMPILE_SUPPORTED",
    "COMPILE_BACKENDS",
    "COMPILED_OPERATORS",
    "CompileCase",
    "compile_cases",
    "check_compile_case",
]

_m = re.match(r"(\d+)\.(\d+)", torch.__version__)
#: ``torch.compile`` of the library's operators is in scope from torch 2.1.
COMPILE_SUPPORTED = _m is not None and (int(_m.group(1)), int(_m.group(2))) >= (2, 1)
COMPILE_BACKENDS = ("eager", "aot_eager")
COMPILED_OPERATORS = ("jacrev", "hessian", "jacfwd", "grad", "vjp", "jvp")


class CompileCase:
    def __init__(
        self,
        program: Any,
        op: str,
        compile_backend: str,
        tangents: Any,
        cot: Any,
        backend: Optional[str],
    ):
        self.program, self.op, self.compile_backend = program, op, compile_backend
        self.backend = backend
        self.tangents, self.cotangents = tangents, cot

    def __repr__(self) -> str:
        return (
            f"CompileCase(op={self.op!r}, library backend={self.backend!r}, "
            f"torch.compile(backend={self.compile_backend!r}),\n"
            f"  tangents={self.tangents!r},\n  cotangents={self.cotangents!r},\n"
            f"  program={self.program!r})"
        )


@st.composite
def compile_cases(draw: st.DrawFn) -> CompileCase:
    """Random :class:`CompileCase` objects (one library backend or automatic mode each)."""
    import tad_autograd as ta

    prog = draw(
        programs(
            max_args=1,
            max_ops=3,
            max_ndim=2,
            pytree_inputs=False,
            pytree_outputs=False,
            passthrough_args=False,
            new_style_functions=False,
            argnums=False,
        )
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = prog.args[0]
    with torch.no_grad():
        out = prog(*prog.args)

    def uniform(like: torch.Tensor) -> torch.Tensor:
        return (torch.rand(like.shape, generator=gen, dtype=torch.float64) * 2 - 1).to(like.dtype)

    return CompileCase(
        prog,
        draw(st.sampled_from(COMPILED_OPERATORS)),
        draw(st.sampled_from(COMPILE_BACKENDS)),
        (uniform(x),),
        uniform(out),
        draw(st.sampled_from(list(ta.available_backends()) + [None])),
    )


def _build(ns: Any, case: CompileCase) -> Any:
    if case.op in ("jacrev", "hessian"):
        return build_operator(ns, case.op, case.program, argnums=0)
    return build_product(
        ns,
        case.op,
        case.program,
        argnums=0,
        tangents=case.tangents,
        cotangents=case.cotangents,
    )


def check_compile_case(case: CompileCase, backends: Backends = None) -> None:
    """Compiled ``op(program)`` equals the reference, or (explicit backends) raises clearly.

    ``backends``: default, the case's own backend (``None``: automatic mode).
    """

    if not COMPILE_SUPPORTED:  # pragma: no cover - torch < 2.1
        return
    if backends is None:
        backends = [case.backend]
    prog = case.program
    x = prog.args[0]
    want = _build(REFERENCE, case)(x.clone())
    for backend in backends:
        what = f"torch.compile({case.op}(backend={backend!r}))\n{case!r}"
        op = _build(LibraryOps(backend), case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                eager = op(x.clone())
            except Exception:  # noqa: BLE001 - eager failures are the plain fuzzer's to judge
                eager = None

        def compiled_fn(*args: Any, op: Any = op) -> Any:
            return op(*args)

        torch._dynamo.reset()
        compiled = torch.compile(compiled_fn, backend=case.compile_backend)
        for k in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    got = compiled(x.clone())
                except Exception as exc:  # judged here
                    assert backend is not None and isinstance(exc, RuntimeError), (
                        f"{what}: call {k + 1} raised {type(exc).__name__}: {exc}"
                    )
                    break
            assert_close_in_dtype(
                got, want, prog.dtype, f"{what}: call {k + 1} vs the row-loop reference"
            )
            if eager is not None:
                assert_close_in_dtype(
                    got, eager, prog.dtype, f"{what}: call {k + 1} vs eager {case.op}"
                )
    torch._dynamo.reset()
