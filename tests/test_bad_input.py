"""Bad input and no side effects after it (§6).

One table, :data:`CASES`, lists every mistake of §5 and a few more.  Each case
runs through every transform it applies to (``jacrev``, ``hessian``,
``fjacrev`` or ``vmap``, ``fvmap``), on every backend and in automatic mode,
with the backend chosen three ways (``backend=`` argument, ``use_backend``
block, ``set_backend``), with plain inputs and with inputs that require grad
and carry a ``.grad``, with grad mode on and off.  Each must raise

* exactly the exception type the case names (so the same type in every
  backend, and the type :mod:`torch.func` raises where it raises one), and
* a message that names the parameter, the value given and what is allowed
  (every ``needle`` of the case occurs in it, case-insensitively; a needle
  given as a tuple is satisfied by any of its alternatives).

After each failure the caller's state is as before: the backend setting, the
grad mode, the global RNG state, no functorch transform level left active (an
ordinary ``torch.func``/``functorch`` ``jacrev`` and a ``tad_autograd`` one
still give the right answer), and each input tensor's ``requires_grad``,
``.grad``, values and version counter.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type, Union

import pytest
import torch

import tad_autograd as ta
from tad_autograd.backends.base import Availability, Backend
from tad_autograd.compat._rng import RngStates
from tad_autograd.compat._torch_info import TORCH_VERSION, Version
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.dispatch._settings import ENV_VAR
from tad_autograd.eager._grad_modes import inference_mode_derivatives
from tad_autograd.errors import BackendUnavailableError, UnknownBackendError

ALL_BACKENDS = REGISTRY.names()
TRANSFORM_BACKENDS = tuple(b for b in ALL_BACKENDS if REGISTRY.get(b).is_transform)

Needle = Union[str, Tuple[str, ...]]

JAC = ("jacrev", "hessian", "fjacrev")
JAC_ONLY = ("jacrev", "fjacrev")  # has_aux exists only there
VMAP = ("vmap", "fvmap")
TRANSFORM_ONLY = {"fjacrev", "fvmap"}


def _x() -> torch.Tensor:
    return torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def _X() -> torch.Tensor:
    return torch.arange(12, dtype=torch.float64).reshape(4, 3) / 7


def _X2() -> torch.Tensor:
    """A batch of two: automatic mode loops over it instead of transforming."""
    return _X()[:2]


_GENERATOR = torch.Generator().manual_seed(0)


def _Y() -> torch.Tensor:
    return torch.arange(15, dtype=torch.float64).reshape(5, 3) / 7


def _sq(t: torch.Tensor) -> torch.Tensor:
    return t**2


def _energy(t: torch.Tensor) -> torch.Tensor:
    return (t**3).sum()


def _mul(a: Any, b: Any) -> Any:
    return a * b


@dataclass(frozen=True)
class Case:
    """One mistake.

    ``call(transform, kw)`` builds the transformed function with
    ``transform`` (e.g. ``ta.jacrev``) and the backend keyword arguments
    ``kw`` (``{"backend": name}`` or ``{}``), and calls it on ``args``.
    """

    id: str
    transforms: Tuple[str, ...]
    call: Callable[[Callable[..., Any], Dict[str, Any], Tuple[Any, ...]], Any]
    args: Callable[[], Tuple[Any, ...]]
    exc: Type[BaseException]
    needles: Tuple[Needle, ...]
    #: another type for some transforms (torch.func's there)
    exc_for: Optional[Dict[str, Type[BaseException]]] = None

    def __str__(self) -> str:
        return self.id


def _jac(func: Callable[..., Any], *targs: Any, **tkw: Any) -> Callable[..., Any]:
    """A jacrev/hessian/fjacrev-family call: ``T(func, *targs, **tkw, **kw)(*args)``."""

    def call(T: Callable[..., Any], kw: Dict[str, Any], args: Tuple[Any, ...]) -> Any:
        return T(func, *targs, **tkw, **kw)(*args)

    return call


_vm = _jac  # the vmap family is called the same way


def _one(t: Callable[[], Any]) -> Callable[[], Tuple[Any, ...]]:
    return lambda: (t(),)


def _in_inference_mode(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(T: Callable[..., Any], kw: Dict[str, Any], args: Tuple[Any, ...]) -> Any:
        fn = T(func, **kw)
        with torch.inference_mode():
            return fn(*args)

    return call


def _raises(t: torch.Tensor) -> torch.Tensor:
    y = torch.sin(t)
    raise ValueError(f"my own error (y has shape {tuple(y.shape)})")


def _random_op(t: torch.Tensor) -> torch.Tensor:
    return t + torch.rand(())


# Every mistake: (id, transforms, call, args, exception type, needles).
# Needles: the parameter, the value given, what is allowed.
CASES: List[Case] = [
    # ---- argnums
    Case(
        "argnums-out-of-range",
        JAC,
        _jac(_sq, 2),
        _one(_x),
        RuntimeError,
        ("argnum", "2", "1 positional input"),
    ),
    Case(
        "argnums-negative-out-of-range",
        JAC,
        _jac(_sq, -2),
        _one(_x),
        RuntimeError,
        ("argnum", "-2", "1 positional input"),
    ),
    Case(
        "argnums-tuple-out-of-range",
        JAC,
        _jac(_mul, (0, 5)),
        lambda: (_x(), _x()),
        RuntimeError,
        ("argnum", "5", "2 positional input"),
    ),
    Case(
        "argnums-duplicate-after-normalising",
        JAC,
        _jac(_mul, (0, -2)),
        lambda: (_x(), _x()),
        RuntimeError,
        ("argnums", "(0, -2)", "unique"),
    ),
    Case(
        "argnums-float",
        JAC,
        _jac(_sq, 1.5),
        _one(_x),
        RuntimeError,
        ("argnums", "float", "int or Tuple[int"),
    ),
    Case(
        "argnums-str",
        JAC,
        _jac(_sq, "a"),
        _one(_x),
        RuntimeError,
        ("argnums", "str", "int or Tuple[int"),
    ),
    Case(
        "argnums-list",
        JAC,
        _jac(_sq, [0]),
        _one(_x),
        RuntimeError,
        ("argnums", "list", "int or Tuple[int"),
    ),
    Case(
        "argnums-bool",
        JAC,
        _jac(_sq, True),
        _one(_x),
        RuntimeError,
        ("argnums", "bool", "int or Tuple[int"),
    ),
    Case(
        "argnums-tuple-with-float",
        JAC,
        _jac(_mul, (0, 1.5)),
        lambda: (_x(), _x()),
        RuntimeError,
        ("argnums", "1.5", "int or Tuple[int"),
    ),
    Case(
        "argnums-duplicate",
        JAC,
        _jac(_mul, (0, 0)),
        lambda: (_x(), _x()),
        RuntimeError,
        ("argnums", "(0, 0)", "unique"),
    ),
    Case(
        "argnums-empty", JAC, _jac(_sq, ()), _one(_x), RuntimeError, ("argnums", "()", "non-empty")
    ),
    # ---- the differentiated argument is not a floating-point tensor (pytree)
    Case(
        "input-int-tensor",
        JAC,
        _jac(_sq),
        _one(lambda: torch.arange(3)),
        RuntimeError,
        ("argnums", "int64", "floating point"),
        {"hessian": ValueError},  # torch.func.hessian is jacfwd of jacrev: jacfwd's type
    ),
    Case(
        "input-bool-tensor",
        JAC,
        _jac(lambda t: t.double()),
        _one(lambda: torch.ones(3, dtype=torch.bool)),
        RuntimeError,
        ("argnums", "bool", "floating point"),
        {"hessian": ValueError},  # torch.func.hessian is jacfwd of jacrev: jacfwd's type
    ),
    Case(
        "input-complex-tensor",
        JAC,
        _jac(_sq),
        _one(lambda: torch.ones(3, dtype=torch.complex128)),
        RuntimeError,
        ("argnums", "complex128", "floating point"),
    ),
    Case(
        "input-python-float",
        JAC,
        _jac(_sq),
        lambda: (1.5,),
        ValueError,
        ("argnums", "float", "tensor"),
    ),
    Case(
        "input-python-int", JAC, _jac(_sq), lambda: (2,), ValueError, ("argnums", "int", "tensor")
    ),
    Case(
        "input-list-with-int",
        JAC,
        _jac(lambda seq: seq[0] * 2),
        lambda: ([_x(), 1],),
        ValueError,
        ("argnums", "int", "tensor"),
    ),
    Case(
        "input-dict-with-int-tensor",
        JAC,
        _jac(lambda d: d["a"] * 2),
        lambda: ({"a": _x(), "b": torch.arange(2)},),
        RuntimeError,
        ("argnums", "int64", "floating point"),
        {"hessian": ValueError},  # torch.func.hessian is jacfwd of jacrev: jacfwd's type
    ),
    # where torch.func returns zeros inside inference_mode, every backend raises instead
    *(
        []
        if inference_mode_derivatives()
        else [
            Case(
                "input-in-inference-mode",
                JAC,
                _in_inference_mode(_sq),
                _one(_x),
                RuntimeError,
                ("inference_mode", "no_grad"),
            )
        ]
    ),
    # ---- the function returns a non-tensor
    *[
        Case(
            f"returns-{dtype}-tensor",
            JAC,
            _jac(lambda t, dtype=dtype: (t > 0).to(dtype)),
            _one(_x),
            RuntimeError,
            ("output", str(dtype).replace("torch.", ""), "floating"),
        )
        for dtype in (torch.int64, torch.bool)
    ],
    Case(
        "returns-complex-tensor",
        JAC,
        _jac(lambda t: t.to(torch.complex128)),
        _one(_x),
        RuntimeError,
        ("output", "complex", "real"),
    ),
    Case(
        "returns-float",
        JAC,
        _jac(lambda t: 1.0),
        _one(_x),
        RuntimeError,
        (("return", "output"), "float", "tensor"),
    ),
    Case(
        "returns-none",
        JAC,
        _jac(lambda t: None),
        _one(_x),
        RuntimeError,
        (("return", "output"), "None", "tensor"),
    ),
    Case(
        "returns-str",
        JAC,
        _jac(lambda t: "energy"),
        _one(_x),
        RuntimeError,
        (("return", "output"), "str", "tensor"),
    ),
    Case(
        "returns-tuple-with-int",
        JAC,
        _jac(lambda t: (t * 2, 1)),
        _one(_x),
        RuntimeError,
        (("return", "output"), "int", "tensor"),
    ),
    Case(
        "has_aux-returns-no-tuple",
        JAC_ONLY,
        _jac(_sq, has_aux=True),
        _one(_x),
        RuntimeError,
        ("has_aux", "tensor", "(output, aux)"),
    ),
    Case(
        "has_aux-not-bool",
        JAC_ONLY,
        _jac(_sq, has_aux=1),
        _one(_x),
        TypeError,
        ("has_aux", "1", "bool"),
    ),
    Case("func-not-callable", JAC, _jac(3), _one(_x), TypeError, ("func", "int", "callable")),
    # ---- chunk_size
    *[
        Case(
            f"{fam}-chunk_size-{label}",
            trs,
            call(_energy if fam == "jac" else _sq, chunk_size=value),
            _one(_x if fam == "jac" else _X),
            exc,
            ("chunk_size", shown, allowed),
        )
        for fam, trs, call in (("jac", JAC, _jac), ("vmap", VMAP, _vm))
        for label, value, exc, shown, allowed in (
            ("0", 0, ValueError, "0", ("positive", "greater than 0")),
            ("-1", -1, ValueError, "-1", ("positive", "greater than 0")),
            ("1.5", 1.5, TypeError, "1.5", "positive int"),
            ("str", "2", TypeError, "'2'", "positive int"),
            ("bool", True, TypeError, "True", "positive int"),
        )
    ],
    # ---- randomness
    Case(
        "randomness-bogus",
        VMAP,
        _vm(_sq, randomness="bogus"),
        _one(_X),
        RuntimeError,
        ("randomness", "bogus", "'same'"),
    ),
    Case(
        "randomness-None",
        VMAP,
        _vm(_sq, randomness=None),
        _one(_X),
        RuntimeError,
        ("randomness", "None", "'same'"),
    ),
    Case(
        "random-op-from-explicit-generator-with-randomness-error",
        VMAP,
        _vm(lambda t: t + torch.rand((), dtype=t.dtype, generator=_GENERATOR)),
        _one(_X2),
        RuntimeError,
        ("randomness", "error", "'same'"),
    ),
    Case(
        "random-op-with-randomness-error",
        VMAP,
        _vm(_random_op),
        _one(_X),
        RuntimeError,
        ("randomness", "error", "'same'"),
    ),
    # ---- in_dims not matching the arguments
    Case(
        "in_dims-too-many-entries",
        VMAP,
        _vm(_sq, in_dims=(0, 0)),
        _one(_X),
        ValueError,
        ("in_dims", "(0, 0)", "structure"),
    ),
    Case(
        "in_dims-too-few-entries",
        VMAP,
        _vm(_mul, in_dims=(0,)),
        lambda: (_X(), _X()),
        ValueError,
        ("in_dims", "(0,)", "structure"),
    ),
    Case(
        "in_dims-nested-mismatch",
        VMAP,
        _vm(_sq, in_dims=((0, 0),)),
        _one(_X),
        ValueError,
        ("in_dims", "((0, 0),)", "structure"),
    ),
    Case(
        "in_dims-list",
        VMAP,
        _vm(_sq, in_dims=[0]),
        _one(_X),
        ValueError,
        ("in_dims", "list", "tuple"),
    ),
    Case(
        "in_dims-float",
        VMAP,
        _vm(_sq, in_dims=1.5),
        _one(_X),
        ValueError,
        ("in_dims", "float", "int"),
    ),
    Case(
        "in_dims-str", VMAP, _vm(_sq, in_dims="a"), _one(_X), ValueError, ("in_dims", "str", "int")
    ),
    Case(
        "in_dims-entry-float",
        VMAP,
        _vm(_mul, in_dims=(0, 1.5)),
        lambda: (_X(), _X()),
        ValueError,
        ("in_dim", "1.5", ("integer", "int")),
    ),
    Case(
        "in_dims-out-of-range",
        VMAP,
        _vm(_sq, in_dims=5),
        _one(_X),
        ValueError,
        ("in_dim", "5", "-2 <= in_dim < 2"),
    ),
    Case(
        "in_dims-negative-out-of-range",
        VMAP,
        _vm(_sq, in_dims=-3),
        _one(_X),
        ValueError,
        ("in_dim", "-3", "-2 <= in_dim < 2"),
    ),
    Case(
        "in_dims-on-0d-tensor",
        VMAP,
        _vm(_sq),
        _one(lambda: torch.tensor(1.0)),
        ValueError,
        ("in_dim", "0", "dimensionality 0"),
    ),
    Case(
        "in_dims-int-for-non-tensor",
        VMAP,
        _vm(_mul, in_dims=(0, 0)),
        lambda: (_X(), 2.0),
        ValueError,
        ("in_dim", "float", "None"),
    ),
    Case(
        "in_dims-int-for-only-non-tensor",
        VMAP,
        _vm(_sq),
        lambda: (2.0,),
        ValueError,
        ("in_dim", "float", "None"),
    ),
    Case(
        "mismatched-batch-sizes",
        VMAP,
        _vm(lambda a, b: a + b),
        lambda: (_X(), _Y()),
        ValueError,
        (("in_dims", "mapped dimension"), "[4, 5]", "same size"),
    ),
    Case(
        "no-batched-argument",
        VMAP,
        _vm(_mul, in_dims=(None, None)),
        lambda: (_X(), _X()),
        ValueError,
        ("in_dims", "(None, None)", "at least one"),
    ),
    Case(
        "in_dims-None",
        VMAP,
        _vm(_sq, in_dims=None),
        _one(_X),
        ValueError,
        ("in_dims", "None", "int"),
    ),
    Case(
        "no-arguments",
        VMAP,
        _vm(lambda: _x()),
        lambda: (),
        ValueError,
        ("inputs", "no inputs", ("unsupported", "add inputs")),
    ),
    # ---- out_dims
    Case(
        "out_dims-out-of-range",
        VMAP,
        _vm(_sq, out_dims=5),
        _one(_X),
        IndexError,
        ("out_dims", "5", "[-2, 1]"),
    ),
    Case(
        "out_dims-float",
        VMAP,
        _vm(_sq, out_dims=1.5),
        _one(_X),
        ValueError,
        ("out_dims", "1.5", "int"),
    ),
    Case(
        "out_dims-too-many-entries",
        VMAP,
        _vm(_sq, out_dims=(0, 0)),
        _one(_X),
        ValueError,
        ("out_dims", "(0, 0)", "structure"),
    ),
    Case(
        "out_dims-None-for-a-batched-output",
        VMAP,
        _vm(_sq, out_dims=None),
        _one(_X2),
        ValueError,
        # functorch 1.13 rejects out_dims=None as such ("must be an int ...")
        ("out_dim", "None", ("BatchedTensor", "must be an int")),
    ),
    Case(
        "out_dims-list-for-a-tuple-output",
        VMAP,
        _vm(lambda t: (t, t * 2), out_dims=[0, 0]),
        _one(_X2),
        ValueError,
        ("out_dims", "[0, 0]", "structure"),
    ),
    # ---- vmap of a function returning a non-tensor
    Case(
        "vmap-returns-float",
        VMAP,
        _vm(lambda t: 1.0),
        _one(_X),
        ValueError,
        ("return", "float", "tensor"),
    ),
    Case(
        "vmap-returns-none",
        VMAP,
        _vm(lambda t: None),
        _one(_X),
        ValueError,
        ("return", "None", "tensor"),
    ),
    Case(
        "vmap-returns-str",
        VMAP,
        _vm(lambda t: "energy"),
        _one(_X),
        ValueError,
        ("return", "str", "tensor"),
    ),
    Case(
        "vmap-returns-tuple-with-int",
        VMAP,
        _vm(lambda t: (t, 1)),
        _one(_X),
        ValueError,
        ("return", "int", "tensor"),
    ),
    Case("vmap-func-not-callable", VMAP, _vm(3), _one(_X), TypeError, ("func", "int", "callable")),
    # ---- not a mistake of the call: the user's own error propagates unchanged, and
    # leaves nothing behind either (also from inside a nested transform)
    Case(
        "func-raises-its-own-error",
        JAC + VMAP,
        _jac(_raises),
        _one(_X),
        ValueError,
        ("my own error",),
    ),
    Case(
        "nested-func-raises-its-own-error",
        ("jacrev", "hessian", "vmap"),
        lambda T, kw, args: T(ta.vmap(ta.jacrev(_raises, **kw), **kw), **kw)(*args),
        lambda: (torch.ones(2, 4, 3, dtype=torch.float64),),
        ValueError,
        ("my own error",),
    ),
]

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"

TRANSFORMS: Dict[str, Callable[..., Any]] = {
    "jacrev": ta.jacrev,
    "hessian": ta.hessian,
    "fjacrev": ta.fjacrev,
    "vmap": ta.vmap,
    "fvmap": ta.fvmap,
}


# --------------------------------------------------------------------------- state checks


def _functorch_level_inactive() -> None:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None:
        assert not active(), "a functorch transform is still active"
    level = getattr(getattr(torch._C, "_functorch", None), "maybe_current_level", None)
    if level is not None:
        assert level() is None, f"a functorch transform level ({level()}) is left dangling"


def _plain_jacrev() -> Callable[..., Any]:
    """An ordinary jacrev from torch (torch.func on >= 2.0, functorch on 1.13)."""
    if TORCH_VERSION >= Version("2.0"):
        from torch.func import jacrev
    else:
        from functorch import jacrev
    return jacrev


def _leaves(args: Any) -> List[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (list, tuple)):
        return [t for a in args for t in _leaves(a)]
    if isinstance(args, dict):
        return [t for a in args.values() for t in _leaves(a)]
    return []


class _Snapshot:
    """What the caller owns, taken before a call."""

    def __init__(self, args: Tuple[Any, ...], setting: str) -> None:
        self.setting = setting
        self.grad_mode = torch.is_grad_enabled()
        self.rng = RngStates(t.device for t in _leaves(args))
        self.tensors = [
            (
                t,
                t.requires_grad,
                None if t.grad is None else t.grad.clone(),
                t.detach().clone(),
                t._version,
            )
            for t in _leaves(args)
        ]

    def check(self, backend: Optional[str]) -> None:
        assert ta.get_backend() == self.setting, "the backend setting changed"
        assert torch.is_grad_enabled() == self.grad_mode, "the grad mode changed"
        assert not self.rng.changed(), "a global RNG state changed"
        _functorch_level_inactive()
        for i, (t, requires_grad, grad, value, version) in enumerate(self.tensors):
            assert t.requires_grad == requires_grad, f"input leaf {i}: requires_grad changed"
            if grad is None:
                assert t.grad is None, f"input leaf {i}: .grad appeared"
            else:
                assert t.grad is not None and torch.equal(t.grad, grad), (
                    f"input leaf {i}: .grad changed"
                )
            assert torch.equal(t.detach(), value), f"input leaf {i}: values changed"
            assert t._version == version, f"input leaf {i}: version counter changed"
        # No dangling level: ordinary transforms still work and are right.
        x = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
        expected = torch.diag(torch.cos(x))
        assert torch.allclose(_plain_jacrev()(torch.sin)(x), expected)
        assert torch.allclose(ta.jacrev(torch.sin, backend=backend)(x), expected)
        assert torch.allclose(ta.jacrev(torch.sin)(x), expected)
        _functorch_level_inactive()


# --------------------------------------------------------------------------- the table, run


def _prepare(args: Tuple[Any, ...], requires_grad: bool) -> Tuple[Any, ...]:
    """With ``requires_grad``, floating-point leaves require grad and carry a ``.grad``."""
    if requires_grad:
        for t in _leaves(args):
            if t.is_floating_point():
                t.requires_grad_(True)
                t.grad = torch.full_like(t, 0.25)
    return args


MODES = ("argument", "use_backend-requires_grad", "set_backend-requires_grad-no_grad")


def _message(error: BaseException) -> str:
    return "\n".join([str(error), *getattr(error, "__notes__", ())])


def _check_message(case: Case, transform: str, error: BaseException) -> None:
    message = _message(error).lower()
    missing = []
    for needle in case.needles:
        alternatives = (needle,) if isinstance(needle, str) else needle
        if not any(a.lower() in message for a in alternatives):
            missing.append(needle)
    assert not missing, (
        f"{transform}: the {type(error).__name__} message lacks {missing} "
        f"(it should name the parameter, the value given and what is allowed):\n{_message(error)}"
    )


def _run_case(case: Case, transform: str, backend: Optional[str], mode: str) -> None:
    T = TRANSFORMS[transform]
    kw = {} if backend is None else {"backend": backend}
    setting = "auto"
    block: Any = contextlib.nullcontext()
    grad_ctx: Any = contextlib.nullcontext()
    if mode.startswith("use_backend"):
        kw = {}
        block = ta.use_backend(backend or "auto")
        setting = backend or "auto"
    elif mode.startswith("set_backend"):
        kw = {}
        ta.set_backend(backend)
        setting = backend or "auto"
    if mode.endswith("no_grad"):
        grad_ctx = torch.no_grad()
    args = _prepare(case.args(), requires_grad="requires_grad" in mode)
    with block, grad_ctx:
        snapshot = _Snapshot(args, setting)
        with pytest.raises(Exception) as info:
            case.call(T, kw, args)
        error = info.value
        expected = (case.exc_for or {}).get(transform, case.exc)
        assert type(error) is expected, (
            f"{transform} on backend {backend or 'auto'}: expected {expected.__name__}, got "
            f"{type(error).__name__}: {_message(error)}"
        )
        snapshot.check(backend)
    assert ta.get_backend() == (setting if mode.startswith("set_backend") else "auto")
    _check_message(case, transform, error)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(case: Case, backend: Optional[str], mode: str) -> None:
    """jacrev / hessian / vmap on every backend: same exception type, informative message.

    ``backend`` is ``None`` for automatic mode (the conftest fixture): there the
    mistake must propagate unchanged (no fallback, no ``BackendFallbackWarning``),
    and fjacrev / fvmap run too.
    """
    for transform in case.transforms:
        if backend is None or transform not in TRANSFORM_ONLY:
            _run_case(case, transform, backend, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c for c in CASES if TRANSFORM_ONLY & set(c.transforms)], ids=str)
def test_bad_input_transform_only(case: Case, transform_backend: str, mode: str) -> None:
    """fjacrev / fvmap on every transform backend."""
    for transform in case.transforms:
        if transform in TRANSFORM_ONLY:
            _run_case(case, transform, transform_backend, mode)


# --------------------------------------------------------------------------- backends


class _UnavailableBackend(Backend):
    """A registered backend that can never run."""

    name = "unavailable_for_tests"
    is_transform = True

    def availability(
        self, torch_version: Any = TORCH_VERSION, module_exists: Any = None
    ) -> Availability:
        return Availability(
            False, "it needs the quantum accelerator", "install a quantum accelerator"
        )

    def jacrev(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never runs
        raise AssertionError("an unavailable backend ran")

    vmap = jacrev


@pytest.fixture
def unavailable_backend() -> Iterator[str]:
    REGISTRY.register(_UnavailableBackend(), priority=1000)
    try:
        yield _UnavailableBackend.name
    finally:
        REGISTRY.unregister(_UnavailableBackend.name)


def _choose(
    where: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[], Any]], Any]:
    """Run ``thunk`` with backend ``name`` chosen in ``where``; return what to call."""

    def run(thunk: Callable[[Any], Any]) -> Any:
        if where == "argument":
            return thunk({"backend": name})
        if where == "use_backend":
            with ta.use_backend(name):
                return thunk({})  # pragma: no cover - use_backend raises on entry
        if where == "set_backend":
            ta.set_backend(name)
            return thunk({})  # pragma: no cover
        monkeypatch.setenv(ENV_VAR, name)
        return thunk({})

    return run


WHERE = ("argument", "use_backend", "set_backend", "environment")

# For each transform: a valid function and arguments.
VALID: Dict[str, Tuple[Callable[..., Any], Tuple[Any, ...]]] = {
    "jacrev": (_sq, (torch.ones(3),)),
    "hessian": (_energy, (torch.ones(3),)),
    "fjacrev": (_sq, (torch.ones(3),)),
    "vmap": (_sq, (torch.ones(4, 3),)),
    "fvmap": (_sq, (torch.ones(4, 3),)),
}


def _assert_backend_message(
    error: BaseException, where: str, name: str, needles: Tuple[Needle, ...]
) -> None:
    message = _message(error)
    wanted: Tuple[Needle, ...] = (repr(name),) + needles
    if where == "environment":
        wanted += (ENV_VAR,)  # the user must learn where the bad name came from
    else:
        wanted += ("backend",)
    missing = [
        n for n in wanted if not any(a in message for a in ((n,) if isinstance(n, str) else n))
    ]
    assert not missing, f"the message lacks {missing}:\n{message}"


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("where", WHERE)
def test_unknown_backend(transform: str, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    func, args = VALID[transform]
    snapshot = _Snapshot(args, "auto")
    with pytest.raises(Exception) as info:
        _choose(where, "no_such_backend", monkeypatch)(
            lambda kw: TRANSFORMS[transform](func, **kw)(*args)
        )
    assert type(info.value) is UnknownBackendError
    assert isinstance(info.value, ValueError)
    monkeypatch.delenv(ENV_VAR, raising=False)
    snapshot.check(None)
    # lists the known names
    _assert_backend_message(
        info.value, where, "no_such_backend", ("'autograd'", "'func'", "'functorch'")
    )


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("where", WHERE)
def test_unavailable_backend(
    transform: str, where: str, unavailable_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    func, args = VALID[transform]
    snapshot = _Snapshot(args, "auto")
    with pytest.raises(Exception) as info:
        _choose(where, unavailable_backend, monkeypatch)(
            lambda kw: TRANSFORMS[transform](func, **kw)(*args)
        )
    assert type(info.value) is BackendUnavailableError
    assert isinstance(info.value, RuntimeError)
    monkeypatch.delenv(ENV_VAR, raising=False)
    snapshot.check(None)
    # says why and what would fix it
    _assert_backend_message(
        info.value,
        where,
        unavailable_backend,
        ("quantum accelerator", "install a quantum accelerator"),
    )


def test_unavailable_backend_is_skipped_automatically(unavailable_backend: str) -> None:
    """Registered with the highest priority but unavailable: automatic mode passes it by."""
    x = torch.tensor([0.1, 0.2], dtype=torch.float64)
    assert torch.allclose(ta.jacrev(torch.sin)(x), torch.diag(torch.cos(x)))
    assert unavailable_backend not in ta.available_backends()
    assert ta.explain(x).backend != unavailable_backend


@pytest.mark.parametrize("transform", ["fjacrev", "fvmap"])
@pytest.mark.parametrize("where", WHERE)
def test_transform_only_refuses_loop_backend(
    transform: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fjacrev/fvmap with the autograd loop chosen: BackendUnavailableError saying what to use."""
    func, args = VALID[transform]
    snapshot = _Snapshot(args, "auto")

    def thunk(kw: Dict[str, Any]) -> Any:
        return TRANSFORMS[transform](func, **kw)(*args)

    if where == "use_backend":
        with ta.use_backend("autograd"):
            with pytest.raises(Exception) as info:
                thunk({})
            assert ta.get_backend() == "autograd"
    elif where == "set_backend":
        ta.set_backend("autograd")
        with pytest.raises(Exception) as info:
            thunk({})
        assert ta.get_backend() == "autograd"
        ta.set_backend("auto")
    else:
        with pytest.raises(Exception) as info:
            _choose(where, "autograd", monkeypatch)(thunk)
        monkeypatch.delenv(ENV_VAR, raising=False)
    assert type(info.value) is BackendUnavailableError
    snapshot.check(None)
    message = _message(info.value)
    for needle in ("'autograd'", "function-transform", "jacrev/vmap"):
        assert needle in message, f"the message lacks {needle!r}:\n{message}"


@pytest.mark.skipif(TORCH_VERSION >= Version("2.0"), reason="torch.func exists on torch >= 2.0")
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_func_backend_unavailable_on_old_torch(transform: str) -> None:
    func, args = VALID[transform]
    with pytest.raises(Exception) as info:
        TRANSFORMS[transform](func, backend="func")(*args)
    assert type(info.value) is BackendUnavailableError
    message = _message(info.value)
    for needle in ("'func'", "torch >= 2.0", str(TORCH_VERSION), "backend='autograd'"):
        assert needle in message, f"the message lacks {needle!r}:\n{message}"


# --------------------------------------------------------------------------- the checks bite


@pytest.mark.parametrize(
    "spoil",
    ["setting", "grad_mode", "rng", "requires_grad", "grad", "value", "version", "level"],
)
def test_snapshot_detects_side_effects(spoil: str) -> None:
    """The state checks above are not vacuous: each detects its own kind of change."""
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    x.grad = torch.zeros(3, dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    snapshot = _Snapshot((x, y), "auto")
    restore_grad_mode = False
    if spoil == "setting":
        ta.set_backend("autograd")
    elif spoil == "grad_mode":
        torch.set_grad_enabled(False)
        restore_grad_mode = True
    elif spoil == "rng":
        torch.rand(1)
    elif spoil == "requires_grad":
        y.requires_grad_(True)
    elif spoil == "grad":
        x.grad.add_(1.0)
    elif spoil == "value":
        y.copy_(torch.zeros(3))
    elif spoil == "version":
        y.mul_(1.0)
    elif spoil == "level":
        if getattr(torch._C, "_are_functorch_transforms_active", None) is None:
            pytest.skip("no way to ask torch whether a transform is active")
        captured: List[AssertionError] = []

        def inside(t: torch.Tensor) -> torch.Tensor:
            try:
                snapshot.check(None)
            except AssertionError as e:
                captured.append(e)
            return t

        ta.fvmap(inside)(torch.ones(2, 3))
        assert captured, "an active transform level went unnoticed"
        return
    try:
        with pytest.raises(AssertionError):
            snapshot.check(None)
    finally:
        if restore_grad_mode:
            torch.set_grad_enabled(True)
