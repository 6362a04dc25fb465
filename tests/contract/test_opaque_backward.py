"""Second derivatives through a custom Function whose backward leaves autograd.

Plain autograd silently drops the Function's terms from such Hessians (zeros
for ``sin(Cube(x))``, a quarter of the truth for ``Cube(x) * x``); every
second-order operator must raise a ``RuntimeError`` naming the Function
instead, however the Function's result enters the function.  Functions whose
backward is differentiable, or uses its saved tensors only through
comparisons, keep their exact second derivatives.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pytest
import torch
from torch.autograd.function import once_differentiable

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION
from tad_autograd.dispatch._registry import REGISTRY

F64 = torch.float64


def _cube(backward: Callable[[Any, torch.Tensor], torch.Tensor], name: str) -> Any:
    """An old-style Function computing ``x ** 3`` with the given backward."""

    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x**3

    return type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def _once(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return g * 3 * x**2


def _numpy(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return g * torch.from_numpy(3 * np.square(x.detach().numpy()))


def _detach(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return g * 3 * x.detach() ** 2


def _no_grad(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    with torch.no_grad():
        slope = 3 * x**2
    return g * slope


def _torch_detach(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return g * 3 * torch.detach(x) ** 2


def _copy(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    with warnings.catch_warnings():  # torch recommends detach().clone(): the same copy
        warnings.simplefilter("ignore", UserWarning)
        return g * 3 * x.new_tensor(x) ** 2


def _data(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return g * 3 * x.data**2


def _float(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    with warnings.catch_warnings():  # torch warns of a scalar from a tensor requiring grad
        warnings.simplefilter("ignore", UserWarning)
        return g * 3 * torch.stack([float(v) * v for v in x])


def _storage(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    copy = torch.empty_like(x)
    storage = getattr(x, "untyped_storage", x.storage)  # torch 1.13: storage()
    getattr(copy, storage.__name__)().copy_(storage())
    return g * 3 * copy**2


def _recomputed(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    """A recompute-style backward whose own backward pass builds no graph."""
    (x,) = ctx.saved_tensors
    with torch.enable_grad():
        y = (x**3).sum()
        (slope,) = torch.autograd.grad(y, x)
    return g * slope


def _kept_alias_forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
    ctx.save_for_backward(x)
    ctx.kept = [x.detach()]  # a detached alias, inside a list
    return x**3


def _differentiable(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return g * 3 * x**2


OPAQUE: Dict[str, Any] = {
    "once_differentiable": _cube(once_differentiable(_once), "OnceCube"),
    "numpy": _cube(_numpy, "NumpyCube"),
    "detach": _cube(_detach, "DetachCube"),
    "no_grad": _cube(_no_grad, "NoGradCube"),
    "torch.detach": _cube(_torch_detach, "TorchDetachCube"),
    "new_tensor": _cube(_copy, "CopyCube"),
    ".data": _cube(_data, "DataCube"),
    "float()": _cube(_float, "FloatCube"),
    "storage": _cube(_storage, "StorageCube"),
    "backward pass without create_graph": _cube(_recomputed, "RecomputedCube"),
    "detached alias kept by the forward": type(
        "AliasCube",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(_kept_alias_forward),
            "backward": staticmethod(lambda ctx, g: g * 3 * ctx.kept[0] ** 2),
        },
    ),
    "ctx attribute": type(
        "AttributeCube",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(lambda ctx, x: (setattr(ctx, "x", x), x**3)[1]),
            "backward": staticmethod(once_differentiable(lambda ctx, g: g * 3 * ctx.x**2)),
        },
    ),
}
EXACT = _cube(_differentiable, "ExactCube")

# how the Function's result enters the scalar, and that scalar's true second derivative
USES: Dict[str, Any] = {
    "linear": (lambda c, z: c(z).sum(), lambda z: torch.diag(6 * z)),
    "times input": (lambda c, z: (c(z) * z).sum(), lambda z: torch.diag(12 * z**2)),
    "sin": (
        lambda c, z: c(z).sin().sum(),
        lambda z: torch.diag(-9 * z**4 * (z**3).sin() + 6 * z * (z**3).cos()),
    ),
}

X = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
E0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)


def _second_order(f: Callable[..., Any], kw: Dict[str, Any]) -> Dict[str, Callable[[], Any]]:
    """Every second-order operator and composition, returning H (or H @ e0 / e0^T H)."""
    return {
        "hessian": lambda: ta.hessian(f, **kw)(X),
        "hvp": lambda: ta.hvp(f, (X,), (E0,), **kw)[1][0],
        "jacrev(jacrev)": lambda: ta.jacrev(ta.jacrev(f, **kw), **kw)(X),
        "jacfwd(jacrev)": lambda: ta.jacfwd(ta.jacrev(f, **kw), **kw)(X),
        "jacobian(grad)": lambda: ta.jacobian(ta.grad(f, **kw), **kw)(X),
        "jvp(grad)": lambda: ta.jvp(ta.grad(f, **kw), (X,), (E0,), **kw)[1],
        "vjp(grad)": lambda: ta.vjp(ta.grad(f, **kw), X, **kw)[1](E0)[0],
        "linearize(grad)": lambda: ta.linearize(ta.grad(f, **kw), X, **kw)[1](E0),
        "vmap(hessian)": lambda: ta.vmap(ta.hessian(f, **kw), **kw)(X[None])[0],
    }


def _is_transform(backend: Optional[str]) -> bool:
    return backend is not None and REGISTRY.get(backend).is_transform


@pytest.mark.parametrize("use", sorted(USES))
@pytest.mark.parametrize("kind", sorted(OPAQUE))
def test_second_order_through_an_opaque_backward_raises(
    backend: Optional[str], kind: str, use: str
) -> None:
    function = OPAQUE[kind]
    scalar, _ = USES[use]

    def f(z: torch.Tensor) -> torch.Tensor:
        return scalar(function.apply, z)

    for name, second in _second_order(f, {"backend": backend}).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            # torch.func refuses an old-style Function; the others name it
            match = None if _is_transform(backend) else function.__name__
            with pytest.raises(RuntimeError, match=match):
                second()
                pytest.fail(f"{name} returned a value")


@pytest.mark.parametrize("use", sorted(USES))
def test_first_derivatives_through_an_opaque_backward_stay_exact(
    backend: Optional[str], use: str
) -> None:
    if _is_transform(backend):
        pytest.skip("torch.func refuses old-style Functions")
    scalar, _ = USES[use]
    for function in OPAQUE.values():

        def f(z: torch.Tensor, function: Any = function) -> torch.Tensor:
            return scalar(function.apply, z)

        def g(z: torch.Tensor) -> torch.Tensor:
            return scalar(lambda t: t**3, z)

        x = X.clone().requires_grad_(True)
        (reference,) = torch.autograd.grad(g(x), x)
        torch.testing.assert_close(ta.grad(f, backend=backend)(X), reference)
        torch.testing.assert_close(ta.jacrev(f, backend=backend)(X), reference)


@pytest.mark.parametrize("use", sorted(USES))
def test_second_order_through_a_differentiable_backward_is_exact(
    backend: Optional[str], use: str
) -> None:
    if _is_transform(backend):
        pytest.skip("torch.func refuses old-style Functions")
    scalar, truth = USES[use]

    def f(z: torch.Tensor) -> torch.Tensor:
        return scalar(EXACT.apply, z)

    hessian = truth(X)
    expected = {"hvp": hessian[0], "jvp(grad)": hessian[0], "vjp(grad)": hessian[0]}
    expected["linearize(grad)"] = hessian[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        for name, second in _second_order(f, {"backend": backend}).items():
            got = second()
            torch.testing.assert_close(got, expected.get(name, hessian), msg=name)


class _Step(torch.autograd.Function):
    """``relu(x) ** 2`` whose backward uses its input only through a comparison."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0) ** 2

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * 2 * x * (x > 0)


def test_a_backward_using_a_mask_is_not_refused(backend: Optional[str]) -> None:
    if _is_transform(backend):
        pytest.skip("torch.func refuses old-style Functions")
    hessian = ta.hessian(lambda z: _Step.apply(z).sum(), backend=backend)(X)
    torch.testing.assert_close(hessian, torch.diag(2.0 * (X > 0)).to(F64))


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return x @ w.T

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:  # type: ignore[override]
        x, w = ctx.saved_tensors
        return g @ w, g.T @ x


class _Slope(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(g, x)
        return g * 3 * x**2

    @staticmethod
    def backward(ctx: Any, h: torch.Tensor) -> Any:  # type: ignore[override]
        g, x = ctx.saved_tensors
        return h * 3 * x**2, h * g * 6 * x


class _NestedCube(torch.autograd.Function):
    """A backward that calls another custom Function (whose forward runs under no_grad)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _Slope.apply(g, x)


_W1 = torch.linspace(-1.0, 1.0, 12, dtype=F64).reshape(4, 3)
_W2 = torch.linspace(0.5, -0.5, 8, dtype=F64).reshape(2, 4)


def _constants_backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
    """A differentiable backward that also reads constants out of autograd: a number made a
    tensor, a Python float of a constant, a detached mask."""
    (x,) = ctx.saved_tensors
    three = x.new_tensor(3.0) * float(torch.ones(()))
    mask = (x > -10).to(x.dtype).detach()
    return g * three * x**2 * mask + 0 * torch.tensor(ctx.scale.tolist())


_ConstantsCube = type(
    "ConstantsCube",
    (torch.autograd.Function,),
    {
        "forward": staticmethod(
            lambda ctx, x: (ctx.save_for_backward(x), setattr(ctx, "scale", torch.ones(1))) and x**3
        ),
        "backward": staticmethod(_constants_backward),
    },
)


DIFFERENTIABLE: Dict[str, Any] = {
    "constants out of autograd": (
        lambda z: (_ConstantsCube.apply(z) * z).sum(),
        lambda z: (z**4).sum(),
    ),
    "mask only": (lambda z: _Relu.apply(z).sum(), lambda z: z.clamp(min=0).sum()),
    "frozen layers": (
        lambda z: _Linear.apply(torch.tanh(_Linear.apply(z[None], _W1)), _W2).sum(),
        lambda z: (torch.tanh(z[None] @ _W1.T) @ _W2.T).sum(),
    ),
    "nested Function": (lambda z: _NestedCube.apply(z).sin().sum(), lambda z: (z**3).sin().sum()),
}


@pytest.mark.parametrize("case", sorted(DIFFERENTIABLE))
def test_differentiable_backwards_are_not_refused(backend: Optional[str], case: str) -> None:
    """Linear, mask-only and nested-Function backwards: exact, as plain autograd."""
    if _is_transform(backend):
        pytest.skip("torch.func refuses old-style Functions")
    f, twin = DIFFERENTIABLE[case]
    reference = torch.autograd.functional.hessian(twin, X)
    torch.testing.assert_close(ta.hessian(f, backend=backend)(X), reference)
    torch.testing.assert_close(ta.hvp(f, (X,), (E0,), backend=backend)[1][0], reference[0])


# -- new-style Functions (setup_context): every backend, function transforms included ---------

needs_torch2 = pytest.mark.skipif(
    TORCH_VERSION.major < 2, reason="new-style autograd.Function needs torch >= 2.0"
)


def _new_style_cube(name: str, backward: Any, jvp: Any = None) -> Any:
    """A new-style Function computing ``x ** 3`` with the given backward (and jvp)."""

    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    rules: Dict[str, Any] = {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda x: x**3),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    }
    if jvp is not None:
        rules["jvp"] = staticmethod(jvp)
    return type(name, (torch.autograd.Function,), rules)


NEW_STYLE_OPAQUE: Dict[str, Any] = {
    "once_differentiable": _new_style_cube("NewOnceCube", once_differentiable(_once)),
    "detach": _new_style_cube("NewDetachCube", _detach),
    "no_grad": _new_style_cube("NewNoGradCube", _no_grad),
    ".data": _new_style_cube("NewDataCube", _data),
}


def _times_input(function: Any) -> Tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The "times input" use of ``function`` (``(function(z) * z).sum()``) and its exact
    Hessian at ``X``."""
    scalar, hessian = USES["times input"]
    return (lambda z: scalar(function.apply, z)), hessian(X)


@needs_torch2
@pytest.mark.parametrize("kind", sorted(NEW_STYLE_OPAQUE))
def test_second_order_through_a_new_style_opaque_backward_raises(
    backend: Optional[str], kind: str
) -> None:
    """On every backend: torch.func itself returns a quarter of the truth here.  A transform
    backend's forward mode refuses a Function without ``jvp`` with torch's own error."""
    function = NEW_STYLE_OPAQUE[kind]
    f, _ = _times_input(function)

    for name, second in _second_order(f, {"backend": backend}).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            with pytest.raises((RuntimeError, NotImplementedError)) as info:
                second()
                pytest.fail(f"{name} returned a value")
        refused_forward = _is_transform(backend) and info.type is NotImplementedError
        assert refused_forward or function.__name__ in str(info.value), (name, info.value)
        # first derivatives stay exact
        torch.testing.assert_close(ta.grad(f, backend=backend)(X), 4 * X**3)


def _opaque_jvp(ctx: Any, t: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return t * 3 * x.detach() ** 2


@needs_torch2
def test_second_order_through_an_opaque_jvp(backend: Optional[str]) -> None:
    """Forward over forward and reverse over forward differentiate the jvp rule: raise
    (where the torch tells every transform running) or are exact; forward over reverse and
    reverse over reverse never differentiate it: exact."""
    function = _new_style_cube("OpaqueJvpCube", _differentiable, _opaque_jvp)
    f, exact = _times_input(function)
    kw = {"backend": backend}
    torch.testing.assert_close(ta.jacfwd(ta.jacrev(f, **kw), **kw)(X), exact)
    torch.testing.assert_close(ta.hessian(f, **kw)(X), exact)
    differentiating_the_rule = {
        "jacfwd(jacfwd)": lambda: ta.jacfwd(ta.jacfwd(f, **kw), **kw)(X),
        "jacrev(jacfwd)": lambda: ta.jacrev(ta.jacfwd(f, **kw), **kw)(X),
    }
    for name, second in differentiating_the_rule.items():
        try:
            got = second()
        except RuntimeError as error:
            assert function.__name__ in str(error), name
            assert _is_transform(backend) or backend is None, name
        else:
            torch.testing.assert_close(got, exact, msg=name)


@needs_torch2
def test_forward_over_forward_through_a_correct_jvp(backend: Optional[str]) -> None:
    """torch.func's ``jacfwd(jacfwd)`` through a custom Function's right ``jvp`` is wrong
    (10.1 off here): the transform backends raise naming the Function, automatic mode and
    the autograd backend are exact; ``jacrev(jacfwd)`` and ``jacfwd(jacrev)`` are exact."""
    function = _new_style_cube("RightJvpCube", _differentiable, _differentiable)
    f, exact = _times_input(function)
    kw = {"backend": backend}
    torch.testing.assert_close(ta.jacrev(ta.jacfwd(f, **kw), **kw)(X), exact)
    torch.testing.assert_close(ta.jacfwd(ta.jacrev(f, **kw), **kw)(X), exact)
    if _is_transform(backend):
        with pytest.raises(RuntimeError, match="RightJvpCube: forward mode over forward mode"):
            ta.jacfwd(ta.jacfwd(f, **kw), **kw)(X)
    else:
        torch.testing.assert_close(ta.jacfwd(ta.jacfwd(f, **kw), **kw)(X), exact)
