"""Differential fuzzer of the derivative products.

``grad``, ``grad_and_value``, ``vjp``, ``jvp``, ``linearize``, ``jacfwd``,
``jacobian`` (each mode), ``hvp`` and ``jacfwd(jacrev)`` on hypothesis-generated programs with
hard features, on every available backend and automatic mode, in every
calling context and input kind, against the row loop of
``torch.autograd.grad`` (contracted with the tangents in forward mode),
``torch.func`` where it applies, and float64 finite differences of the
forward-mode reference.  Examples per property: the number given to
``fuzz_settings`` in the ``ci`` profile, 1000 with
``TAD_AUTOGRAD_HYPOTHESIS_PROFILE=thorough``.
"""

import torch
from hypothesis import given
from hypothesis import strategies as st

from tad_autograd.testing._fuzz.checks import check_case
from tad_autograd.testing._fuzz.product_case import (
    check_forward_finite_differences,
    product_cases,
)
from tad_autograd.testing._fuzz.products import FORWARD_OPERATORS, PRODUCT_OPERATORS
from tad_autograd.testing._fuzz.programs import fuzz_settings

CI_EXAMPLES = {
    "grad": 20,
    "grad_and_value": 15,
    "vjp": 25,
    "jvp": 30,
    "linearize": 15,
    "jacfwd": 30,
    "jacobian": 25,
    "hvp": 15,
    "jacfwd_jacrev": 12,
}


def _make(op):
    @fuzz_settings(CI_EXAMPLES[op])
    @given(case=product_cases(op))
    def test(case):
        check_case(case)

    test.__name__ = f"test_fuzz_{op}"
    return test


for _op in PRODUCT_OPERATORS:
    globals()[f"test_fuzz_{_op}"] = _make(_op)


@fuzz_settings(25)
@given(
    case=st.sampled_from(sorted(FORWARD_OPERATORS)).flatmap(
        lambda op: product_cases(op, dtypes=(torch.float64,))
    )
)
def test_forward_reference_matches_finite_differences(case):
    check_forward_finite_differences(case)
