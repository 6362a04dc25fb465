"""Every available backend agrees with the others."""

from hypothesis import given
from hypothesis import strategies as st

from tad_autograd.testing import properties as P
from tad_autograd.testing.strategies import programs, vmap_calls

# small programs for the second-order transforms (the autograd backend loops
# over every output and input element twice)
small_programs = programs(max_args=2, max_ops=4, max_side=2)


@given(programs(), st.one_of(st.none(), st.integers(1, 5)))
def test_jacrev_backends_agree(program, chunk_size):
    P.check_jacrev_backends_agree(program, chunk_size=chunk_size)


@given(small_programs)
def test_hessian_backends_agree(program):
    P.check_hessian_backends_agree(program)


@given(small_programs)
def test_jacrev_jacrev_backends_agree(program):
    P.check_jacrev_jacrev_backends_agree(program)


@given(vmap_calls())
def test_vmap_backends_agree(call):
    P.check_vmap_backends_agree(call)


@given(vmap_calls(small_programs, with_kwargs=False, random_out_dims=False))
def test_vmap_jacrev_backends_agree(call):
    P.check_vmap_jacrev_backends_agree(call)


@given(vmap_calls(small_programs, with_kwargs=False))
def test_jacrev_vmap_backends_agree(call):
    P.check_jacrev_vmap_backends_agree(call)


@given(
    programs(old_style_functions=True, new_style_functions=False).filter(
        lambda p: p.has_old_style_function
    )
)
def test_old_style_function_jacrev(program):
    P.check_old_style_function(program, "jacrev")


@given(
    programs(
        old_style_functions=True,
        new_style_functions=False,
        pytree_inputs=False,
        passthrough_args=False,
    ).filter(lambda p: p.has_old_style_function)
)
def test_old_style_function_vmap(program):
    P.check_old_style_function(program, "vmap")
