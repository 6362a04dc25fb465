"""Fuzzing ``linearize`` when the primal changes in place after it returned.

:func:`check_linearize_calls`: ``linearize`` of a
:class:`~tad_autograd.testing._fuzz.calls.CalledProgram` (random programs
included), then the primal mutated in place (one of :data:`MUTATIONS`), then one
to three products: each is the Jacobian at the *original* point, with the
draws of the returned output, and ``f`` ran once however many products.

Examples
--------
>>> import torch
>>> x = torch.ones(3)
>>> _mutate(x, "mul_")
>>> x
tensor([-2., -2., -2.])
"""

from __future__ import annotations

import warnings
from typing import Any, List, Optional

import torch
from hypothesis import strategies as st

from ...errors import BackendFallbackWarning
from ..operators import direct_ops, ref_jacrev, transform_backends
from .calls import CALLS, CalledProgram, called_programs
from .support import Backends, assert_close_in_dtype, backends_and_auto, call_quietly, describe

__all__ = ["MUTATIONS", "LinearizeCase", "linearize_cases", "check_linearize_calls"]

#: In-place updates of the primal after ``linearize`` returned.
MUTATIONS = ("add_", "mul_", "zero_", "copy_")


class LinearizeCase:
    def __init__(self, program: CalledProgram, mutation: str, products: int, seed: int) -> None:
        self.program, self.mutation, self.products, self.seed = program, mutation, products, seed

    def __repr__(self) -> str:
        return (
            f"LinearizeCase(out, jvp_fn = linearize(f, x) from seed {self.seed}; then "
            f"x.{self.mutation}(...) in place; then {self.products} products jvp_fn(t_k),\n"
            f"  {self.program!r})"
        )


@st.composite
def linearize_cases(draw: st.DrawFn) -> LinearizeCase:
    """A :class:`CalledProgram` (maybe random), an in-place mutation and 1-3 products."""
    return LinearizeCase(
        draw(called_programs()),
        draw(st.sampled_from(MUTATIONS)),
        draw(st.integers(1, CALLS)),
        draw(st.integers(0, 2**16)),
    )


def _mutate(x: torch.Tensor, how: str) -> None:
    with torch.no_grad():
        if how == "add_":
            x.add_(0.5)
        elif how == "mul_":
            x.mul_(-2.0)
        elif how == "zero_":
            x.zero_()
        else:
            x.copy_(torch.linspace(-1, 1, x.numel(), dtype=x.dtype))


def _direct_linearize_raises(p: CalledProgram) -> bool:
    direct = direct_ops()
    if direct is None or not hasattr(direct.mod, "linearize"):
        return True
    with torch.random.fork_rng(devices=[]):
        _, error = call_quietly(
            lambda x: direct.mod.linearize(p.f, x)[1](p.tangents[0]), p.x.clone()
        )
    del p.calls[:]
    return error is not None


def check_linearize_calls(case: LinearizeCase, backends: Backends = None) -> None:
    """Products at the original point, with the output's draws; ``f`` run once.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(linearize_cases(), lambda c: "random" not in c.program.features)
    >>> check_linearize_calls(case, backends=["autograd"])
    """
    import tad_autograd as ta

    p = case.program
    transforms = set(transform_backends())
    torch.manual_seed(case.seed)
    box: List[torch.Tensor] = []

    def g(z: torch.Tensor) -> torch.Tensor:
        box.append(p.f(z))
        return box[-1]

    jac = ref_jacrev(g)(p.x).detach()
    want_out = box[0].detach()
    wants = [jac @ t for t in p.tangents[: case.products]]
    direct_refuses = _direct_linearize_raises(p)
    for backend in backends_and_auto(backends):
        what = f"linearize(backend={backend!r})\n{case!r}"
        x = p.x.clone()
        torch.manual_seed(case.seed)
        del p.calls[:]
        products: List[Any] = []
        error: Optional[BaseException] = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackendFallbackWarning)
            try:
                out, jvp_fn = ta.linearize(p.f, x, backend=backend)
                after_linearize = len(p.calls)
                _mutate(x, case.mutation)
                products = [jvp_fn(t) for t in p.tangents[: case.products]]
            except Exception as exc:  # judged below
                error = exc
        if error is not None:
            assert backend in transforms and (p.untransformable or direct_refuses), (
                f"{what}: raised {describe(error)}"
            )
            continue
        assert_close_in_dtype(
            out, want_out, p.dtype, f"{what}: output (vs the reference from the seed)"
        )
        for k, (got, want) in enumerate(zip(products, wants)):
            assert_close_in_dtype(
                got,
                want,
                p.dtype,
                f"{what}: product {k + 1} is not J(original x, the output's draws) @ t",
            )
        n = len(p.calls)
        if backend in transforms:
            assert n == after_linearize, (
                f"{what}: the products ran f {n - after_linearize} more times"
            )
        else:
            assert n == 1, f"{what}: f ran {n} times for one linearize and {case.products} products"
