"""The public test kit can fail, and its pytest plugin works.

* a deliberately wrong backend ("scaled": the autograd backend with every
  Jacobian entry times 1 + 1e-6) is caught by ``assert_backends_agree`` and by
  the property checks, run directly and through hypothesis;
* the ``autograd_backend`` fixture and the ``autograd_backends`` marker run
  the expected tests (checked with pytester).
"""

from __future__ import annotations

import collections
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings

import tad_autograd as ta
from tad_autograd.backends.autograd import AutogradBackend
from tad_autograd.compat._pytree import tree_flatten, tree_unflatten
from tad_autograd.dispatch._registry import unregister_backend
from tad_autograd.testing import (
    AUTO,
    assert_backends_agree,
    assert_trees_close,
    reference_jacobian,
    reference_vmap,
)
from tad_autograd.testing import properties as P
from tad_autograd.testing.strategies import Program, VmapCall, programs, vmap_calls

pytest_plugins = ["pytester"]

# A failing hypothesis test makes hypothesis' pytest plugin import libcst,
# which emits a third-party DeprecationWarning under ``filterwarnings =
# error``; import it once here, outside the tests' warning filters.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover
        pass

SCALE = 1 + 1e-6
FAST = settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


def _scale_leaves(tree):
    if isinstance(tree, tuple):
        return tuple(_scale_leaves(t) for t in tree)
    if isinstance(tree, list):
        return [_scale_leaves(t) for t in tree]
    if isinstance(tree, dict):
        return {k: _scale_leaves(v) for k, v in tree.items()}
    return tree * SCALE


class ScaledBackend(AutogradBackend):
    """Deliberately wrong: every Jacobian entry is off by a relative 1e-6."""

    name = "scaled"

    def jacrev(self, func, argnums, *, has_aux, chunk_size):
        inner = super().jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)

        def wrong(*args):
            out = inner(*args)
            if has_aux:
                return _scale_leaves(out[0]), out[1]
            return _scale_leaves(out)

        return wrong


class RaisingBackend(AutogradBackend):
    name = "raising"

    def jacrev(self, func, argnums, *, has_aux, chunk_size):
        def boom(*args):
            raise ValueError("this backend always fails")

        return boom


@pytest.fixture
def scaled_backend():
    ta.register_backend(ScaledBackend(), priority=1)
    try:
        yield "scaled"
    finally:
        unregister_backend("scaled")


@pytest.fixture
def raising_backend():
    ta.register_backend(RaisingBackend(), priority=1)
    try:
        yield "raising"
    finally:
        unregister_backend("raising")


@pytest.fixture
def forget_hypothesis_failures(request):
    """Tests below make hypothesis fail on purpose inside ``pytest.raises``;
    keep hypothesis' pytest plugin from writing a patch file for them."""
    yield
    if getattr(request.node, "_hypothesis_failing_examples", None):
        request.node._hypothesis_failing_examples = None


def x64(*shape):
    return torch.linspace(-1, 1, max(1, torch.Size(shape).numel()), dtype=torch.float64).reshape(
        shape
    )


# --------------------------------------------------------------------- agree
def test_scaled_backend_is_registered_and_wrong(scaled_backend):
    assert "scaled" in ta.available_backends()
    x = x64(3)
    got = ta.jacrev(torch.sin, backend="scaled")(x)
    assert torch.allclose(got, torch.diag(torch.cos(x)) * SCALE, rtol=0, atol=1e-15)


def test_assert_backends_agree_names_wrong_backend(scaled_backend):
    def f(x, y):
        return {"s": (x.sin() * y).sum(), "t": x * y}

    with pytest.raises(AssertionError) as info:
        assert_backends_agree(f, x64(3), x64(3) + 2, argnums=(0, -1))
    msg = str(info.value)
    assert "'scaled'" in msg
    assert "leaf ['s'][0]" in msg and "leaf ['t'][1]" in msg
    assert "largest abs diff" in msg and "largest rel diff" in msg
    assert "1.000e-06" in msg  # the relative error of the scaled backend
    # the correct backends are not blamed
    for line in msg.splitlines():
        if line.strip().startswith("backend ") and "vs reference" in line:
            assert "'scaled'" in line


def test_assert_backends_agree_default_is_all_available(scaled_backend):
    with pytest.raises(AssertionError, match="scaled"):
        assert_backends_agree(torch.sin, x64(2))
    # float32: 1e-6 relative error is within the contract's rtol=1e-5
    assert_backends_agree(torch.sin, x64(2).float())
    # explicit tolerance catches it in float32 too
    with pytest.raises(AssertionError, match="scaled"):
        assert_backends_agree(torch.sin, x64(2).float(), rtol=1e-7, atol=0)


def test_assert_backends_agree_passes_for_correct_backends():
    agreement = assert_backends_agree(lambda x: (x.exp(), x.sum()), x64(2, 2))
    assert agreement.reference == ta.available_backends()[0]
    assert set(agreement.results) == set(ta.available_backends())
    assert not agreement.errors


@pytest.mark.parametrize("transform", ["jacrev", "hessian"])
def test_assert_backends_agree_transforms(transform):
    assert_backends_agree(
        lambda x: (x.sin() ** 2).sum(),
        x64(3),
        transform=transform,
        backends=list(ta.available_backends()) + [AUTO],
    )


def test_assert_backends_agree_vmap_kwargs():
    def f(x, *, scale):
        return x.sum(0) * scale

    agreement = assert_backends_agree(
        f,
        x64(2, 3),
        transform="vmap",
        in_dims=1,
        out_dims=0,
        call_kwargs={"scale": torch.tensor(2.0, dtype=torch.float64)},
    )
    expected = x64(2, 3).sum(0) * 2
    assert_trees_close(agreement.results[agreement.reference], expected)


def test_assert_backends_agree_reports_raising_backend(raising_backend):
    with pytest.raises(AssertionError) as info:
        assert_backends_agree(torch.sin, x64(2))
    msg = str(info.value)
    assert "backend 'raising' raised ValueError: this backend always fails" in msg
    assert isinstance(info.value.__cause__, ValueError)
    agreement = assert_backends_agree(torch.sin, x64(2), errors="ignore")
    assert set(agreement.errors) == {"raising"}
    with pytest.raises(AssertionError, match="every backend raised"):
        assert_backends_agree(torch.sin, x64(2), backends=["raising"], errors="ignore")


def test_assert_backends_agree_bad_arguments():
    with pytest.raises(ValueError, match="errors"):
        assert_backends_agree(torch.sin, x64(2), errors="maybe")
    with pytest.raises(AssertionError, match="transform must be"):
        assert_backends_agree(torch.sin, x64(2), transform="jacfwd")
    with pytest.raises(ValueError, match="empty"):
        assert_backends_agree(torch.sin, x64(2), backends=[])


def test_assert_trees_close_reports():
    a = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"structure differs: \(T,\) vs \[T\]"):
        assert_trees_close((a,), [a])
    with pytest.raises(AssertionError, match="dtype torch.float32 vs torch.float64"):
        assert_trees_close({"k": a.float()}, {"k": a})
    with pytest.raises(AssertionError, match=r"shape \(2, 2\) vs \(4,\)"):
        assert_trees_close(a, a.reshape(4))
    b = a.clone()
    b[1, 0] = 1e-3
    with pytest.raises(
        AssertionError,
        match=r"leaf \[1\]: values differ at 1 of 4 elements; "
        r"largest abs diff 1.000e-03 at index \(1, 0\)",
    ):
        assert_trees_close((a, b), (a, a))
    nan = torch.tensor([float("nan"), 1.0])
    assert_trees_close(nan, nan.clone())
    with pytest.raises(AssertionError):
        assert_trees_close(nan, torch.tensor([0.0, 1.0]))


def test_assert_trees_close_paths_and_dtypes():
    pair = collections.namedtuple("pair", "x y")
    a = pair(torch.zeros(2), {"k": torch.ones(3, dtype=torch.int64)})
    b = pair(torch.zeros(2), {"k": torch.tensor([1, 2, 1])})
    with pytest.raises(
        AssertionError,
        match=r"leaf \.y\['k'\]: values differ at 1 of 3 elements; "
        r"largest abs diff 1.000e\+00 at index \(1,\) \(1 vs 2\)",
    ):
        assert_trees_close(a, b)
    with pytest.raises(AssertionError, match=r"structure differs: pair\(T, \{'k': T\}\) vs"):
        assert_trees_close(a, (a.x, a.y))
    x = torch.ones(3, dtype=torch.float64)  # float64: |a - b| <= 1e-12 + 1e-10 * |b|
    assert_trees_close(x * (1 + 5e-11), x)
    with pytest.raises(AssertionError, match=r"allowed: \|a - b\| <= 1e-12 \+ 1e-10 \* \|b\|"):
        assert_trees_close(x * (1 + 5e-10), x)
    z = torch.ones(2, dtype=torch.complex128)
    assert_trees_close(z, z.clone())
    with pytest.raises(AssertionError, match="values differ at 2 of 2 elements"):
        assert_trees_close(z * 1j, z)


@settings(max_examples=10, derandomize=True, database=None, deadline=None)
@given(vmap_calls())
def test_vmap_call_reference_is_the_reference_loop(call):
    """``VmapCall.reference`` and ``reference_vmap`` are one loop, over ``sample_args``."""
    expected = reference_vmap(call.func, call.in_dims, call.out_dims)(*call.args, **call.kwargs)
    assert_trees_close(call.reference(), expected, rtol=0, atol=0)
    stacked = tree_flatten(call.reference(out_dims=0))[0]
    for b in range(call.batch_size):
        sample = tree_flatten(call.func(*call.sample_args(b), **call.kwargs))[0]
        assert_trees_close([t[b] for t in stacked], sample, rtol=0, atol=0)


def test_references():
    x = x64(2, 3)
    jac = reference_jacobian(lambda d, k: {"y": d["a"] * k}, {"a": x}, 3)
    assert_trees_close(jac["y"]["a"], 3 * torch.eye(6, dtype=torch.float64).reshape(2, 3, 2, 3))
    out = reference_vmap(lambda t: t.sum(), in_dims=1)(x)
    assert_trees_close(out, x.sum(0))


# --------------------------------------------------------------- properties
def _minimal_program(**kw) -> Program:
    return find(
        programs(dtypes=[torch.float64], **kw),
        lambda p: any(t.numel() > 1 for t in p.args if isinstance(t, torch.Tensor)),
        settings=settings(database=None, derandomize=True),
    )


def test_property_body_fails_on_scaled_backend_directly(scaled_backend):
    program = _minimal_program()
    P.check_jacrev_backends_agree(program, backends=("autograd",))
    with pytest.raises(AssertionError, match="'scaled'"):
        P.check_jacrev_backends_agree(program)


def test_property_fails_on_scaled_backend_through_hypothesis(
    scaled_backend, forget_hypothesis_failures
):
    @FAST
    @given(programs(dtypes=[torch.float64]))
    def prop(program):
        P.check_jacrev_backends_agree(program)

    with pytest.raises(AssertionError) as info:
        prop()
    assert "backend 'scaled' vs reference" in str(info.value)


def test_hessian_property_fails_on_scaled_backend(scaled_backend, forget_hypothesis_failures):
    @FAST
    @given(programs(dtypes=[torch.float64], max_args=1, max_ops=3, max_side=2))
    def prop(program):
        P.check_hessian_backends_agree(program, backends=("autograd", "scaled"))

    with pytest.raises(AssertionError, match="scaled"):
        prop()


def test_properties_pass_without_the_wrong_backend():
    @FAST
    @given(programs(dtypes=[torch.float64]))
    def prop(program):
        P.check_jacrev_backends_agree(program)

    prop()


# --------------------------------------------------------------- strategies
@settings(max_examples=30, derandomize=True, database=None, deadline=None)
@given(programs(old_style_functions=True))
def test_programs_are_well_formed(program):
    out = program(*program.args)
    leaves, spec = tree_flatten(out)
    assert tree_unflatten([t.shape for t in leaves], spec) == program.output_shapes
    assert tree_unflatten([t.dim() for t in leaves], spec) == program.output_ndims
    for t in leaves:
        assert t.dtype == program.dtype and torch.isfinite(t).all()
        assert float(t.abs().max()) <= 16 if t.numel() else True
    assert "def f(" in repr(program) and "return" in repr(program)
    pos = program.argnums if isinstance(program.argnums, tuple) else (program.argnums,)
    assert all(p % program.num_args in program.tensor_argnums for p in pos)
    if "OldStyleSin" in repr(program):
        assert program.has_old_style_function


@settings(max_examples=30, derandomize=True, database=None, deadline=None)
@given(vmap_calls())
def test_vmap_calls_are_well_formed(call):
    assert isinstance(call, VmapCall)
    assert 1 <= call.batch_size <= 4
    assert "in_dims=" in repr(call)
    for b in range(call.batch_size):
        call.func(*call.sample_args(b), **call.kwargs)
    call.reference()


def test_new_style_functions_only_where_supported():
    from tad_autograd.testing import strategies

    assert strategies.NEW_STYLE_FUNCTIONS_SUPPORTED == (int(torch.__version__.split(".")[0]) >= 2)
    p = find(
        programs(),
        lambda p: p.has_new_style_function or not strategies.NEW_STYLE_FUNCTIONS_SUPPORTED,
        settings=settings(database=None, max_examples=2000),
    )
    if strategies.NEW_STYLE_FUNCTIONS_SUPPORTED:
        assert "NewStyleSiLU.apply" in repr(p)


# -------------------------------------------------------------------- plugin
PLUGIN_TESTS = textwrap.dedent(
    """
    import pytest
    import torch
    import tad_autograd as ta

    def test_every_backend(autograd_backend):
        assert autograd_backend in ta.available_backends()
        assert ta.get_backend() == autograd_backend
        assert torch.equal(ta.jacrev(torch.sin)(torch.zeros(2)), torch.eye(2))

    @pytest.mark.autograd_backends("autograd")
    def test_only_autograd(autograd_backend):
        assert autograd_backend == "autograd" == ta.get_backend()

    @pytest.mark.autograd_backends("autograd", "never-available")
    def test_with_unavailable(autograd_backend):
        assert autograd_backend == "autograd"

    def test_without_fixture():
        assert ta.get_backend() == "auto"
    """
)

UNAVAILABLE_CONFTEST = textwrap.dedent(
    """
    import tad_autograd as ta
    from tad_autograd.backends.autograd import AutogradBackend
    from tad_autograd.backends.base import Availability

    class Never(AutogradBackend):
        name = "never-available"
        def availability(self, *args, **kwargs):
            return Availability(False, "it never is", "nothing helps")

    def pytest_configure(config):
        ta.register_backend(Never(), priority=0)

    def pytest_unconfigure(config):
        from tad_autograd.dispatch._registry import unregister_backend
        unregister_backend("never-available")
    """
)


def _expected_outcome():
    n = len(ta.available_backends())
    return {"passed": n + 1 + 1 + 1, "skipped": 1}


def test_plugin_fixture_and_marker(pytester):
    pytester.makeconftest(UNAVAILABLE_CONFTEST)
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest("-p", "tad_autograd.testing.plugin", "-rs")
    result.assert_outcomes(**_expected_outcome())
    result.stdout.fnmatch_lines(["*backend 'never-available' is unavailable: it never is*"])
    ids = pytester.runpytest("-p", "tad_autograd.testing.plugin", "--collect-only", "-q")
    for name in ta.available_backends():
        ids.stdout.fnmatch_lines([f"*test_every_backend[[]{name}[]]*"])


def test_plugin_loaded_twice_is_harmless(pytester):
    # entry point (when installed) + -p + pytest_plugins in the conftest
    pytester.makeconftest(
        'pytest_plugins = ["tad_autograd.testing.plugin"]\n' + UNAVAILABLE_CONFTEST
    )
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest("-p", "tad_autograd.testing.plugin")
    result.assert_outcomes(**_expected_outcome())


def test_plugin_register_helper(pytester):
    pytester.makeconftest(
        UNAVAILABLE_CONFTEST
        + textwrap.dedent(
            """
        def pytest_addhooks(pluginmanager):
            from tad_autograd.testing import plugin
            plugin.register(pluginmanager)
            plugin.register(pluginmanager)
        """
        )
    )
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(**_expected_outcome())


def test_plugin_marker_unknown_backend(pytester):
    pytester.makepyfile(
        test_user=textwrap.dedent(
            """
        import pytest

        @pytest.mark.autograd_backends("no-such-backend")
        def test_x(autograd_backend):
            pass
        """
        )
    )
    result = pytester.runpytest("-p", "tad_autograd.testing.plugin")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*no-such-backend*"])


def test_plugin_registers_marker(pytester):
    result = pytester.runpytest("-p", "tad_autograd.testing.plugin", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.autograd_backends(*names)*"])
