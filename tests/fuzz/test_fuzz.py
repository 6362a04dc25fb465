"""Differential fuzzer: programs x operators x backends x contexts.

Every property runs every available backend and automatic mode on each
example, against the row-loop ``torch.autograd.grad`` reference, ``torch.func``
and (float64) finite differences.  Examples per property: the number given to
``fuzz_settings`` in the ``ci`` profile, 1000 with
``TAD_AUTOGRAD_HYPOTHESIS_PROFILE=thorough``.
"""

import pytest
import torch
from hypothesis import given

from tad_autograd.testing._fuzz.case import check_finite_differences, fuzz_cases
from tad_autograd.testing._fuzz.checks import check_case
from tad_autograd.testing._fuzz.graph import check_graph_jacobian
from tad_autograd.testing._fuzz.programs import OPERATORS, fuzz_settings
from tad_autograd.testing._fuzz.randomness import check_vmap_randomness
from tad_autograd.testing.strategies import programs, vmap_calls

CI_EXAMPLES = {
    "jacrev": 50,
    "jacrev_aux": 25,
    "hessian": 25,
    "jacrev_jacrev": 25,
    "vmap": 40,
    "vmap_jacrev": 25,
    "jacrev_vmap": 25,
    "vmap_hessian": 15,
}


def _make(op):
    @fuzz_settings(CI_EXAMPLES[op])
    @given(case=fuzz_cases(op, half=op in ("jacrev", "vmap", "vmap_jacrev")))
    def test(case):
        check_case(case)

    test.__name__ = f"test_fuzz_{op}"
    return test


for _op in OPERATORS:
    globals()[f"test_fuzz_{_op}"] = _make(_op)


@fuzz_settings(25)
@given(case=fuzz_cases("jacrev").filter(lambda c: c.program.dtype == torch.float64))
def test_reference_matches_finite_differences(case):
    check_finite_differences(case)


@pytest.mark.parametrize("randomness", ["error", "same", "different"])
@fuzz_settings(15)
@given(call=vmap_calls(programs(max_ops=3), with_kwargs=False, random_out_dims=False))
def test_fuzz_vmap_randomness(randomness, call):
    check_vmap_randomness(call, randomness)


@pytest.mark.parametrize("create_graph", [False, True])
@fuzz_settings(40)
@given(case=fuzz_cases("jacrev", half=True))
def test_fuzz_graph_jacobian(create_graph, case):
    check_graph_jacobian(case, create_graph)
