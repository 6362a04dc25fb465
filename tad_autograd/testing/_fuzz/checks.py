"""Checks of the differential fuzzer: every backend and automatic mode vs references.

:func:`check_case` runs one :class:`~tad_autograd.testing._fuzz.programs.FuzzCase` on
the independent reference (row loop of ``torch.autograd.grad``, Python-loop
``vmap``), on ``torch.func``/``functorch`` directly and on every available
backend plus automatic mode, in the case's calling context and with its kind
of inputs, and asserts what every backend returns and that the caller's state is untouched:

* automatic mode and ``"autograd"`` return the reference's answer (same
  structure, dtype, shape, device; float64 rtol 1e-10, float32 1e-5, half
  types loosely against a float32 reference);
* an explicit transform backend returns that answer, or raises where
  ``torch.func`` (``functorch`` on 1.13) raises on the same call;
* under ``inference_mode``: where ``torch.func`` on this torch returns the
  right derivative every backend does; elsewhere every backend raises a
  ``RuntimeError`` naming inference mode - never zeros;
* every result's ``requires_grad`` equals ``torch.func``'s where that is right;
* the call leaves the inputs' values, ``requires_grad``, ``.grad``, version
  counters, grad mode and the RNG state (beyond the function's own draws,
  once) as they were; only automatic mode may warn ``BackendFallbackWarning``.

Examples
--------
>>> from hypothesis import given, settings
>>> from tad_autograd.testing._fuzz.case import fuzz_cases
>>> @settings(max_examples=2, deadline=None, database=None)
... @given(fuzz_cases("jacrev", features=(), contexts=("plain",)))
... def test(case):
...     check_case(case, backends=["autograd"])
>>> test()
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch

from ...compat._pytree import tree_flatten
from ..compare import default_tolerances, spec_repr
from ..operators import REFERENCE, LibraryOps, build_operator, direct_ops, transform_backends
from ..reference import map_tensors
from .case import FuzzCase
from .grad_flags import requires_grad_as_torch_func, requires_grad_of
from .product_case import expects_random_error
from .products import PRODUCT_OPERATORS, build_product
from .run import prepare_inputs, run_operator
from .support import Backends, backends_and_auto, describe, leaf_message

__all__ = ["check_case", "inference_supported", "prepare_inputs"]


def _tols(dtype: torch.dtype) -> Tuple[float, float]:
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2, 1e-2
    return default_tolerances(dtype)


def _assert_matches(actual: Any, expected: Any, io_dtype: torch.dtype, what: str) -> None:
    a_leaves, a_spec = tree_flatten(actual)
    e_leaves, e_spec = tree_flatten(expected)
    assert a_spec == e_spec, (
        f"{what}: structure {spec_repr(a_spec)} != reference {spec_repr(e_spec)}"
    )
    rtol, atol = _tols(io_dtype)
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        if not isinstance(e, torch.Tensor):
            assert a == e, f"{what}: leaf {i}: {a!r} != {e!r}"
            continue
        assert isinstance(a, torch.Tensor), f"{what}: leaf {i} is {type(a).__name__}, not a tensor"
        want_dtype = io_dtype if io_dtype in (torch.float16, torch.bfloat16) else e.dtype
        assert (a.dtype, a.shape, a.device) == (want_dtype, e.shape, e.device), (
            f"{what}: leaf {i}: dtype/shape/device {(a.dtype, tuple(a.shape), a.device)} != "
            f"{(want_dtype, tuple(e.shape), e.device)}"
        )
        torch.testing.assert_close(
            a.detach().to(e.dtype),
            e,
            rtol=rtol,
            atol=atol,
            msg=functools.partial(leaf_message, f"{what}: leaf {i}"),
        )


def _matches(actual: Any, expected: Any, io_dtype: torch.dtype) -> bool:
    try:
        _assert_matches(actual, expected, io_dtype, "")
    except AssertionError:
        return False
    return True


@functools.cache
def inference_supported(op: str, mode: str = "auto") -> bool:
    """Does ``torch.func`` (``functorch`` on 1.13) return the right ``op`` under inference mode?

    Probed once per operator (and ``jacobian`` mode) on ``f(x, y) = sin(x * y)``.
    ``linearize`` is probed as ``jvp``: ``tad_autograd.linearize`` is ``jvp`` at each
    call on every backend, while :func:`torch.func.linearize` (a ``make_fx`` trace)
    returns zeros under inference mode on torch 2.13 and raises on 2.0 where its
    ``jvp`` is right.

    Examples
    --------
    >>> inference_supported("vmap")
    True
    """
    direct = direct_ops()
    if direct is None:  # pragma: no cover
        return False
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sin(a * b)

    def fn(ns: Any) -> Callable[..., Any]:
        if op in PRODUCT_OPERATORS:
            return build_product(
                ns,
                "jvp" if op == "linearize" else op,
                f,
                mode=mode,
                tangents=(torch.cos(x),),
                cotangents=torch.sin(x),
            )
        return build_operator(ns, op if op != "jacrev_aux" else "jacrev", f, argnums=0)

    expected = _detach(fn(REFERENCE)(x, x + 0.5))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own (e.g. jit deprecation on first jvp)
        try:
            got = fn(direct)(x, x + 0.5)
        except Exception:  # noqa: BLE001 - any failure: torch.func cannot do it here
            return False
    return _matches(got, expected, torch.float64)


def _inference_supported(case: FuzzCase) -> bool:
    return inference_supported(case.op, case.mode if case.op == "jacobian" else "auto")


def _detach(tree: Any) -> Any:
    return map_tensors(lambda t: t.detach(), tree)


def check_case(case: FuzzCase, backends: Backends = None) -> None:
    """Run ``case`` on every backend and automatic mode; assert results and untouched state.

    Parameters
    ----------
    case : FuzzCase
    backends : sequence of (str or None), optional
        Default: every available backend and ``None`` (automatic mode).

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing._fuzz.case import fuzz_cases
    >>> case = find(fuzz_cases("jacrev", contexts=("no_grad",)), lambda c: True)
    >>> check_case(case, backends=["autograd", None])
    """

    backends = backends_and_auto(backends)
    judged = _judged(case)
    for backend in backends:
        lib = _run_library(case, backend)
        judged.judge(case, backend, lib)


def _judged(case: FuzzCase) -> _Judged:
    prog = case.program
    half = prog.io_dtype in (torch.float16, torch.bfloat16)
    ref_prog = prog.with_io_dtype(torch.float32) if half else prog
    ref_args = ref_prog.cast_args(case.args, torch.float32) if half else case.args
    ref = run_operator(REFERENCE, case, ref_prog, ref_args, "plain", "enable_grad")
    if ref.error is not None:
        raise AssertionError(
            f"the reference itself failed: {describe(ref.error)}\n{case!r}"
        ) from ref.error
    direct_ns = direct_ops()
    direct = (
        run_operator(direct_ns, case, prog, case.args, case.input_kind, case.context)
        if direct_ns
        else None
    )
    return _Judged(case, ref, direct)


def _run_library(case: FuzzCase, backend: Optional[str]) -> Any:
    return run_operator(
        LibraryOps(backend, case.chunk_size),
        case,
        case.program,
        case.args,
        case.input_kind,
        case.context,
    )


class _Failure(AssertionError):
    """A failed check, with its kind (``"value"``, ``"rng"``, ``"requires_grad"``, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _check(ok: bool, kind: str, message: Callable[[], str]) -> None:
    if not ok:
        raise _Failure(kind, message())


class _Judged:
    """What a backend's outcome on a case is judged against: the reference and torch.func."""

    def __init__(self, case: FuzzCase, ref: Any, direct: Any) -> None:
        self.ref = ref
        self.expected = _detach(ref.value)
        self.io_dtype = case.program.io_dtype
        self.direct = direct
        self.direct_ok = (
            direct is not None
            and direct.error is None
            and _matches(direct.value, self.expected, self.io_dtype)
        )
        self.transforms = set(transform_backends())

    def matches(self, value: Any) -> bool:
        return _matches(value, self.expected, self.io_dtype)

    def rerun(self, case: FuzzCase, backend: Optional[str]) -> Any:
        return _run_library(case, backend)

    def requires_grad(self, lib: Any) -> Tuple[List[Any], List[Any]]:
        """``requires_grad`` per result leaf of ``lib``, and of torch.func's result."""
        want = requires_grad_of(self.direct.value) if self.direct is not None else []
        return requires_grad_of(lib.value), want

    def failure(self, case: FuzzCase, backend: Optional[str], lib: Any) -> Optional[str]:
        """The kind of the first check ``lib`` fails (``None``: it passes them all)."""
        try:
            self.judge(case, backend, lib)
        except _Failure as failure:
            return failure.kind
        return None

    @staticmethod
    def again(case: FuzzCase) -> _Judged:
        """The reference and torch.func's outcome for another case."""
        return _judged(case)

    def judge(self, case: FuzzCase, backend: Optional[str], lib: Any) -> None:
        """Raise :class:`_Failure` where ``lib`` (one backend's outcome) breaks the contract."""
        prog, ref, direct, expected = case.program, self.ref, self.direct, self.expected
        what = (
            f"{case.op}(backend={backend!r}) in context {case.context!r}, {case.input_kind} inputs"
        )
        report = f"\n{case!r}"
        _check(
            not lib.side_effects,
            "side effects",
            lambda: f"{what}: side effects {lib.side_effects}{report}",
        )
        _check(
            backend is None or not lib.fallback_warnings,
            "warned",
            lambda: f"{what}: explicit backend warned {lib.fallback_warnings}",
        )
        random = "random" in prog.features
        if random and lib.error is None:
            _check(
                torch.equal(lib.rng_after, ref.rng_after),
                "rng",
                lambda: (
                    f"{what}: RNG state differs from one run of the function's own draws{report}"
                ),
            )
        elif not random:
            _check(
                torch.equal(lib.rng_after, lib.rng_before),
                "rng",
                lambda: f"{what}: RNG state changed{report}",
            )
        if expects_random_error(case):  # jacfwd(randomness="error") of a random function
            # a RuntimeError, or for a transform backend torch.func's own exception type
            direct_type = type(direct.error) if direct is not None and direct.error else None
            ok = isinstance(lib.error, RuntimeError) or (
                backend in self.transforms
                and lib.error is not None
                and type(lib.error) is direct_type
            )
            _check(
                ok,
                "random error",
                lambda: (
                    f"{what}: the function draws random numbers "
                    f"under randomness='error'; expected a RuntimeError, got "
                    f"{describe(lib.error) if lib.error is not None else 'a value'}{report}"
                ),
            )
            return
        if case.context == "inference_mode" and not _inference_supported(case):
            err = lib.error
            _check(
                err is not None,
                "inference",
                lambda: (
                    f"{what}: torch.func cannot "
                    f"differentiate under inference_mode on torch {torch.__version__}; expected "
                    f"a RuntimeError, got a value (ref match: {self.matches(lib.value)}){report}"
                ),
            )
            _check(
                isinstance(err, RuntimeError) and "inference" in str(err).lower(),
                "inference",
                lambda: (
                    f"{what}: expected a RuntimeError naming inference "
                    f"mode, got {describe(err)}{report}"
                ),
            )
            return
        if lib.error is not None:
            if not (backend in self.transforms and not self.direct_ok):
                failure = _Failure(
                    "raised",
                    f"{what} raised, but the reference (and "
                    f"torch.func where it applies: "
                    f"{'ok' if self.direct_ok else 'n/a'}) computes it: "
                    f"{describe(lib.error)}{report}",
                )
                raise failure from lib.error
            return
        try:
            _assert_matches(
                lib.value, expected, self.io_dtype, f"{what} vs row-loop reference{report}"
            )
        except AssertionError as e:
            raise _Failure("value", str(e)) from None
        if self.direct_ok and direct is not None:
            got, want = requires_grad_of(lib.value), requires_grad_of(direct.value)
            _check(
                requires_grad_as_torch_func(case, backend, lib, direct),
                "requires_grad",
                lambda: (
                    f"{what}: requires_grad per result leaf {got} != torch.func's {want}{report}"
                ),
            )
