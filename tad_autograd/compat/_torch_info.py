"""Facts about the installed torch, computed once and without heavy imports.

This is the one place in the package that imports a ``Version`` class.
Recent torch releases import their vendored copy of ``packaging``
(``torch._vendor.packaging``) during ``import torch``, so taking ``Version``
from there costs nothing, while importing the top-level ``packaging.version``
costs several milliseconds.  Older releases (torch 1.13, 2.0) have no vendored
copy; there the ``packaging`` distribution (a dependency of this package)
supplies it.  Everything that compares versions takes ``Version`` from here:
two different ``Version`` classes do not compare with each other.

Examples
--------
>>> from tad_autograd.compat._torch_info import TORCH_VERSION, Version
>>> TORCH_VERSION >= Version("1.13")
True
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from typing import Any, Callable, Dict, List, Tuple, TypeVar

import torch

try:
    from torch._vendor.packaging.version import Version
except ImportError:  # older torch (1.13, 2.0): no vendored packaging
    from packaging.version import Version  # type: ignore[assignment, no-redef, unused-ignore]

__all__ = [
    "TORCH_VERSION",
    "Version",
    "cache",
    "constant_while_compiling",
    "raise_when_run",
    "inference_mode_enabled",
    "is_compiling",
    "module_exists",
    "function_transforms",
    "transforms_active",
    "differentiating_levels",
]

_MISSING = object()
_C = TypeVar("_C", bound=Callable[..., Any])


def cache(fn: _C) -> _C:
    """``functools.cache`` for functions of hashable positional arguments, which dynamo
    traces: it ignores a ``functools`` cache (and warns that it does), but follows a dict.

    Examples
    --------
    >>> calls = []
    >>> square = cache(lambda n: calls.append(n) or n * n)
    >>> square(3), square(3), calls
    (9, 9, [3])
    """
    results: Dict[Tuple[Any, ...], Any] = {}

    @functools.wraps(fn)
    def cached(*args: Any) -> Any:
        result = results.get(args, _MISSING)
        if result is _MISSING:
            result = results[args] = fn(*args)
        return result

    return cached  # type: ignore[return-value]


#: The installed torch release, without local build tags (``2.13.0+cpu`` -> ``2.13.0``).
TORCH_VERSION: Version = Version(Version(torch.__version__.split("+")[0]).base_version)


@cache
def module_exists(name: str) -> bool:
    """Tell whether module ``name`` could be imported, without importing it.

    Parameters
    ----------
    name : str
        A top-level module name such as ``"functorch"``.

    Returns
    -------
    bool
        ``True`` when an import system finder knows the module.

    Examples
    --------
    >>> module_exists("torch")
    True
    >>> module_exists("no_such_module_xyz")
    False
    """
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@cache
def function_transforms() -> Any:
    """The function-transform library of this torch: :mod:`torch.func` (torch >= 2.0),
    else the ``functorch`` package (torch 1.13); imported on first use.

    Examples
    --------
    >>> function_transforms().vmap(torch.sum)(torch.ones(2, 3))
    tensor([3., 3.])
    """
    try:
        import torch.func

        return torch.func
    except ImportError:  # torch 1.13
        import functorch

        return functorch


_ARE_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)


def transforms_active() -> bool:
    """Whether a function transform (``vmap``, ``grad``, ...) is running around this call.

    Examples
    --------
    >>> transforms_active()
    False
    """
    return bool(_ARE_TRANSFORMS_ACTIVE()) if _ARE_TRANSFORMS_ACTIVE is not None else False


def differentiating_levels(forward_only: bool = False) -> int:
    """How many ``grad`` and ``jvp`` transforms (only ``jvp`` ones: ``forward_only``) run
    around this call: what the call computes is differentiated again by each (torch 1.13's
    functorch is not asked: 0).

    Examples
    --------
    >>> differentiating_levels()
    0
    """
    functorch_c = getattr(torch._C, "_functorch", None)
    kinds = getattr(functorch_c, "TransformType", None)
    if kinds is None or not transforms_active():
        return 0
    differentiating = (kinds.Jvp,) if forward_only else (kinds.Grad, kinds.Jvp)
    return sum(1 for i in _interpreters(functorch_c) if i.key() in differentiating)


def _interpreters(functorch_c: Any) -> List[Any]:
    """The transforms running, from torch's interpreter stack (torch 2.0 shows only its top:
    it is popped, read and restored)."""
    stack = getattr(functorch_c, "get_interpreter_stack", None)
    if stack is not None:
        return list(stack() or ())
    from torch._functorch.pyfunctorch import temporarily_pop_interpreter_stack

    found: List[Any] = []
    with contextlib.ExitStack() as popped:
        while True:
            top = functorch_c.peek_interpreter_stack()
            if top is None:
                return found
            found.append(top)
            popped.enter_context(temporarily_pop_interpreter_stack())


def _dynamo_is_compiling() -> bool:
    # torch 2.0 to 2.2: dynamo's own flag, once dynamo is imported (it is not by ``import torch``)
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and bool(dynamo.is_compiling())


#: ``is_compiling()``: whether dynamo (``torch.compile``) is tracing the calling code.
#: ``torch.compiler.is_compiling`` where torch has it (2.3 and newer), dynamo's flag before;
#: dynamo folds either to a constant while it traces, so it costs nothing in compiled code.
is_compiling: Callable[[], bool] = (
    getattr(getattr(torch, "compiler", None), "is_compiling", None) or _dynamo_is_compiling
)

_F = TypeVar("_F", bound=Callable[..., Any])


def constant_while_compiling(fn: _F) -> _F:
    """Mark ``fn`` so that dynamo takes its result as a constant while it traces.

    For reads of Python state dynamo cannot trace (a :class:`contextvars.ContextVar`,
    the inference-mode flag): instead of a graph break, the compiled code keeps the
    value seen when it was compiled.  Eager calls are unaffected.  This is what
    ``torch.compiler.assume_constant_result`` does (it sets the attribute below);
    it is used where dynamo is imported already, and the attribute set directly
    otherwise, since importing dynamo would slow down ``import tad_autograd``.
    """
    dynamo = sys.modules.get("torch._dynamo")
    mark = getattr(dynamo, "assume_constant_result", None)
    if mark is not None:
        return mark(fn)  # type: ignore[no-any-return]
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def raise_when_run(error: BaseException) -> None:
    """Raise ``error``; while dynamo traces, when the compiled code runs.

    Dynamo does not compile a ``raise`` it meets while tracing: it gives up the
    frame and runs it eagerly, where the code that raised takes its eager path.
    This function is marked as ``torch.compiler.disable`` marks one (the attribute
    below, set directly so as not to import dynamo): dynamo calls it instead of
    tracing it, so the error reaches the caller of the compiled function.
    """
    raise error


raise_when_run._torchdynamo_disable = True  # type: ignore[attr-defined]


@constant_while_compiling
def _inference_mode_when_compiled() -> bool:
    return torch.is_inference_mode_enabled()


def inference_mode_enabled() -> bool:
    """``torch.is_inference_mode_enabled()``, also while dynamo traces (which cannot trace
    it: there the state when the call was compiled).

    Examples
    --------
    >>> inference_mode_enabled()
    False
    """
    if is_compiling():
        return bool(_inference_mode_when_compiled())
    return torch.is_inference_mode_enabled()
