"""Backends agree with independent references: gradcheck / autograd.functional, a Python loop."""

import pytest
import torch
from hypothesis import given

import tad_autograd as ta
from tad_autograd.testing import properties as P
from tad_autograd.testing.strategies import programs, vmap_calls

BACKENDS = ta.available_backends()


@pytest.mark.parametrize("backend", BACKENDS + ("auto",))
@given(programs(dtypes=[torch.float64]))
def test_jacrev_matches_gradcheck(backend, program):
    P.check_jacrev_matches_gradcheck(program, backend=None if backend == "auto" else backend)


@pytest.mark.parametrize("backend", BACKENDS + ("auto",))
@given(vmap_calls())
def test_vmap_matches_loop(backend, call):
    P.check_vmap_matches_loop(call, backend=None if backend == "auto" else backend)
