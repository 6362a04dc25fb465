"""Fuzzing :func:`~tad_autograd.graph_jacobian`: recorded graphs of fuzz programs.

A fuzz case's program runs once under ordinary autograd (every feature:
``.item()``, data-dependent branches, in-place updates, random draws, custom
Functions, views); :func:`check_graph_jacobian` then differentiates the
recorded outputs with :func:`~tad_autograd.graph_jacobian` in the case's
calling context, with its ``chunk_size``, and compares with the row loop of
:func:`torch.autograd.grad` on the same graph
(:func:`~tad_autograd.testing.operators.ref_rows`).

Examples
--------
>>> from hypothesis import given, settings
>>> from tad_autograd.testing._fuzz.case import fuzz_cases
>>> @settings(max_examples=3, deadline=None, database=None)
... @given(fuzz_cases("jacrev"))
... def check(case):
...     check_graph_jacobian(case)
>>> check()
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, List

import torch

from ... import graph_jacobian
from ..operators import ref_rows
from ..reference import flat_function
from .case import FuzzCase

__all__ = ["check_graph_jacobian"]

_CONTEXTS: Dict[str, Any] = {
    "plain": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "enable_grad": torch.enable_grad,
    "inference_mode": torch.inference_mode,  # the graph was recorded outside it
}


def check_graph_jacobian(case: FuzzCase, create_graph: bool = False) -> None:
    """``graph_jacobian`` of the case's recorded outputs equals the row loop on them."""
    prog = case.program
    prog.reset()
    flat_func, flat_in, _ = flat_function(prog, case.args, case.argnums)
    with torch.enable_grad():
        leaves = [t.detach().clone().requires_grad_(True) for t in flat_in]
        nonleaf = case.input_kind in ("nonleaf", "view")
        inputs: List[torch.Tensor] = [x * 1 for x in leaves] if nonleaf else leaves
        outputs = list(flat_func(*inputs))
    expected = ref_rows(outputs, inputs)
    context: ContextManager[Any] = _CONTEXTS[case.context]()
    with context:
        actual = graph_jacobian(
            tuple(outputs), tuple(inputs), create_graph=create_graph, chunk_size=case.chunk_size
        )
    for i, (got_row, want_row) in enumerate(zip(actual, expected)):
        for j, (got, want) in enumerate(zip(got_row, want_row)):
            if create_graph and want.requires_grad:
                assert got.requires_grad, f"block ({i}, {j}) lost its graph\n{case!r}"
            torch.testing.assert_close(
                got.detach(),
                want.detach(),
                msg=lambda m: f"graph_jacobian block ({i}, {j}): {m}\n{case!r}",  # noqa: B023
            )
