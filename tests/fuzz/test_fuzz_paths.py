"""Differential fuzzer of the paths between and around the operators.

* second-order operators through custom Functions whose backward cannot be
  differentiated (``@once_differentiable``, NumPy, ``.detach()``), used
  non-linearly: a ``RuntimeError`` naming the Function, or the true value;
* counted calls of the function on every operator, backend and automatic
  mode, first and later calls, remembered fallbacks included;
* random draws through every cached choice (``jacobian(mode="auto")`` on
  tall and wide shapes, remembered fallbacks), three calls from known seeds;
* ``linearize`` products after the primal changed in place, with random draws;
* ``torch.compile`` (``eager``, ``aot_eager``) of the operators (torch >= 2.1);
* complex inputs, against ``torch.func`` and an independent reference.

Examples per property: the number given to ``fuzz_settings`` in the ``ci``
profile, 1000 with ``TAD_AUTOGRAD_HYPOTHESIS_PROFILE=thorough``.
"""

import pytest
from hypothesis import given

from tad_autograd.testing._fuzz.calls import (
    check_counted_calls,
    check_random_calls,
    counted_cases,
    random_cases,
)
from tad_autograd.testing._fuzz.compiled import (
    COMPILE_SUPPORTED,
    check_compile_case,
    compile_cases,
)
from tad_autograd.testing._fuzz.complex_inputs import check_complex_case, complex_cases
from tad_autograd.testing._fuzz.linearize import check_linearize_calls, linearize_cases
from tad_autograd.testing._fuzz.opaque import check_opaque_case, opaque_cases
from tad_autograd.testing._fuzz.programs import fuzz_settings


@fuzz_settings(20)
@given(case=opaque_cases())
def test_fuzz_opaque_backward_second_order(case):
    check_opaque_case(case)


@fuzz_settings(60)
@given(case=counted_cases())
def test_fuzz_counted_calls(case):
    check_counted_calls(case)


@fuzz_settings(15)
@given(case=random_cases())
def test_fuzz_random_calls_through_cached_choices(case):
    check_random_calls(case)


@fuzz_settings(15)
@given(case=linearize_cases())
def test_fuzz_linearize_after_mutation(case):
    check_linearize_calls(case)


@fuzz_settings(25)
@given(case=complex_cases())
def test_fuzz_complex_inputs(case):
    check_complex_case(case)


@pytest.mark.skipif(
    not COMPILE_SUPPORTED, reason="torch.compile of the operators needs torch >= 2.1"
)
@fuzz_settings(3)
@given(case=compile_cases())
def test_fuzz_compile(case):
    check_compile_case(case)
