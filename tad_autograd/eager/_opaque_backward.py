"""Custom ``autograd.Function`` backward passes that cannot be differentiated.

A custom Function's backward is Python code.  When it computes outside
autograd -- under ``@once_differentiable`` (which runs it under
``torch.no_grad()``), with NumPy, ``.item()``, ``.tolist()``, ``float()``,
``.detach()``, ``.data``, a tensor's storage, a backward pass of its own
without ``create_graph``, its own ``torch.no_grad()`` block, or with a
detached alias of an input its forward kept (``ctx.x = x.detach()``) -- the
gradient it returns carries no graph, or only part of one.  Differentiating that gradient again
(a Hessian, an ``hvp``, a Jacobian of forces) then silently misses terms:
plain autograd returns such wrong second derivatives whether the Function's
result enters the function linearly or not.

While a backward pass that builds a graph runs (``create_graph=True``),
:func:`custom_backwards_guarded` wraps each custom node of the graph (one
wrapper per node, shared with the watch of vectorised passes:
:mod:`tad_autograd.eager._node_wrappers`).  When
such a node's backward runs with an incoming gradient, a saved tensor or a
tangent that carries a derivative, the wrapper watches it: the Function's
backward is ``@once_differentiable``, or it called one of the operations
above, or it ran an operation with grad mode off, or it returned a gradient
without a graph.  Then every gradient it returns is replaced by one whose own
backward raises a :class:`RuntimeError` naming the Function (and a lost
tangent raises at once).  First derivatives are unchanged and cost nothing
extra: the watch only runs in backward passes that build a graph through the
node.

Under function transforms, :func:`opaque_backwards_refused` makes a
transform's derivative apply each custom Function as a twin whose backward
(and ``jvp``) raise the same error where an outer transform differentiates
them again.

Examples
--------
>>> import torch
>>> from torch.autograd.function import FunctionCtx, once_differentiable
>>> class Cube(torch.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     @once_differentiable
...     def backward(ctx, g):
...         (x,) = ctx.saved_tensors
...         return g * 3 * x ** 2
>>> x = torch.ones(1, requires_grad=True)
>>> y = (Cube.apply(x) * x).sum()  # the Function's result enters non-linearly
>>> with custom_backwards_guarded([y], active=True):
...     (g,) = torch.autograd.grad(y, x, create_graph=True)
>>> g.detach()
tensor([4.])
>>> torch.autograd.grad(g.sum(), x)
Traceback (most recent call last):
...
RuntimeError: Cube: the backward of this custom autograd.Function ...
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch._C import _functorch
from torch.autograd.function import FunctionCtx, once_differentiable

from ..compat._dual import level_active, unpack_dual
from ..compat._pytree import tree_flatten
from ..compat._torch_info import differentiating_levels, is_compiling
from ..compat._transform_failures import OpWatch, custom_function_call, function_twin
from ._grad_modes import GradModeOffWatch, builds_no_graph
from ._graph import graph_facts
from ._node_wrappers import function_name, nodes_wrapped

__all__ = [
    "custom_backwards_guarded",
    "opaque_backward_message",
    "opaque_backwards_refused",
]

#: The code of the wrapper ``@once_differentiable`` puts around a backward.
_ONCE_DIFFERENTIABLE_CODE = once_differentiable(lambda ctx: None).__code__

#: Names of the operations whose results leave autograd: a backward calling one is opaque
#: (the method, the ``torch.`` function and the ``aten`` op of each share its name).
_LEAVE_AUTOGRAD = frozenset(
    {
        "detach",
        "detach_",
        "detach.default",
        "numpy",
        "item",
        "tolist",
        "__array__",
        "new_tensor",
        "tensor",
    }
)

#: Calls that copy a tensor's values out of autograd and have no name of their own: the
#: ``.data`` getter, ``float()`` and ``complex()`` of a tensor, its storage.
_LEAVE_AUTOGRAD_CALLS = frozenset(
    f
    for f in (
        torch.Tensor.data.__get__,  # type: ignore[attr-defined]
        torch.Tensor.__float__,
        torch.Tensor.__complex__,
        getattr(torch.Tensor, "untyped_storage", None),
        getattr(torch.Tensor, "storage", None),
        getattr(torch.Tensor, "_typed_storage", None),
    )
    if f is not None
)

#: The Python ``Function.apply`` (torch >= 2.0): ops below it are a nested Function's forward.
_FUNCTION_APPLY_CODE = getattr(
    getattr(torch.autograd.Function.apply, "__func__", None), "__code__", None
)


def opaque_backward_message(function_name: str) -> str:
    """The error for a derivative through the backward of custom Function ``function_name``.

    Examples
    --------
    >>> opaque_backward_message("Cube").split(":")[0]
    'Cube'
    """
    return (
        f"{function_name}: the backward of this custom autograd.Function computes outside "
        "autograd (@once_differentiable, NumPy, .item(), .tolist(), float(), .detach(), "
        ".data, a backward pass without create_graph or torch.no_grad()), so a derivative "
        "of its derivative would silently miss terms; write its backward with "
        "differentiable torch operations (or give the Function a jvp and take the "
        "derivative in forward mode) to differentiate through it twice"
    )


@contextlib.contextmanager
def custom_backwards_guarded(
    outputs: Sequence[torch.Tensor], active: bool, custom_nodes: Optional[List[Any]] = None
) -> Iterator[None]:
    """During backward passes that build a graph: no silent second derivatives through Python.

    With ``active``, each custom ``autograd.Function`` node of the graph of
    ``outputs`` is watched while the block runs (see the module docstring).
    ``custom_nodes``: the custom nodes of the graph, if a
    :func:`~tad_autograd.eager._graph.graph_facts` walk already found them.

    Examples
    --------
    >>> import torch
    >>> class Detached(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x ** 2
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g * 2 * x.detach()
    >>> x = torch.ones(1, requires_grad=True)
    >>> y = Detached.apply(x).sin().sum()
    >>> with custom_backwards_guarded([y], active=True):
    ...     (g,) = torch.autograd.grad(y, x, create_graph=True)
    >>> torch.autograd.grad(g.sum(), x)
    Traceback (most recent call last):
    ...
    RuntimeError: Detached: the backward of this custom autograd.Function ...
    """
    if not active:
        yield
        return
    nodes = custom_nodes if custom_nodes is not None else graph_facts(outputs, set())[1]
    with nodes_wrapped(nodes, "guards", _guarded_apply):
        yield


def _once_differentiable(node: Any) -> bool:
    cls = getattr(node, "_forward_cls", None)
    backward = getattr(cls, "backward", None)
    return getattr(backward, "__code__", None) is _ONCE_DIFFERENTIABLE_CODE


def _guarded_apply(node: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    def apply(*grad_outputs: Any) -> Any:
        if not torch.is_grad_enabled():  # a backward pass that builds no graph
            return original(*grad_outputs)
        try:
            saved = tuple(node.saved_tensors)
        except RuntimeError:  # already freed: the Function's backward will say so
            saved = ()
        kept = tree_flatten(list(vars(node).values()))[0]  # what the forward kept on ctx
        incoming = [t for t in (*grad_outputs, *saved, *kept) if isinstance(t, torch.Tensor)]
        tangents_in = level_active() and any(unpack_dual(t)[1] is not None for t in incoming)
        anchors = [t for t in incoming if t.requires_grad]
        if not anchors and not tangents_in:  # its gradient is a constant: nothing to miss
            return original(*grad_outputs)
        if _once_differentiable(node) or _detached_alias(incoming):
            opaque = True
            result = original(*grad_outputs)
        else:
            watch = _LeavesAutograd()
            with watch:
                result = original(*grad_outputs)
            opaque = watch.seen
        if not opaque:
            return result
        message = opaque_backward_message(function_name(node))
        if tangents_in:
            raise RuntimeError(message)
        # every gradient it returns now refuses to be differentiated; the refusing node
        # gets the graph's own tensors as inputs too, so that a later backward pass
        # towards the inputs runs through it (and raises) instead of around it
        refuse = torch._C._functions.DelayedError(message, 1 + len(anchors))
        single = not isinstance(result, tuple)
        refused = tuple(
            refuse(g.detach().requires_grad_(True), *anchors)[0]
            if isinstance(g, torch.Tensor)
            else g
            for g in ((result,) if single else result)
        )
        return refused[0] if single else refused

    return apply


def _detached_alias(tensors: List[torch.Tensor]) -> bool:
    """Whether one of ``tensors`` is a detached alias of another that requires grad (its
    forward kept ``x.detach()`` or ``x.data``): the backward computes with it outside
    autograd.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> _detached_alias([x, x.detach()]), _detached_alias([x, x.detach().clone()])
    (True, False)
    """
    differentiable = {t.data_ptr() for t in tensors if t.requires_grad}
    return any(
        not t.requires_grad and t.is_floating_point() and t.data_ptr() in differentiable
        for t in tensors
        if t.numel()
    )


#: The code of the watched backward's wrapper: frame walks stop there.
_WATCHED_APPLY_CODE = next(
    c for c in _guarded_apply.__code__.co_consts if getattr(c, "co_name", None) == "apply"
)


class _LeavesAutograd(GradModeOffWatch):
    """Notes whether the code it runs leaves autograd (``seen``): an op that copies out of
    autograd, or one with grad mode off outside a nested custom Function's forward.

    ``grad_mode_counts=False``: the code starts with grad mode off (a function transform
    run under the caller's ``torch.no_grad()`` records regardless), so grad mode tells
    nothing there."""

    def __init__(self, grad_mode_counts: bool = True) -> None:
        super().__init__()
        self._grad_mode_counts = grad_mode_counts

    def notes(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        name = getattr(func, "__name__", None)
        if name in _LEAVE_AUTOGRAD or func in _LEAVE_AUTOGRAD_CALLS:
            # leaving autograd with a tensor that carries a derivative (not a constant: a
            # mask, a number, a tensor made from Python numbers)
            data = args[1:2] if name == "new_tensor" else args[:1]
            return any(isinstance(a, torch.Tensor) and _carries_derivative(a) for a in data)
        if builds_no_graph(func, args, kwargs):  # its gradients carry no graph
            return True
        return (
            self._grad_mode_counts
            and not torch.is_grad_enabled()
            and not _inside_a_function_forward()
        )


def _carries_derivative(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` requires grad at some level of function-transform wrappers.

    A custom Function's ``jvp`` rule, run by a ``jvp`` transform inside a ``grad`` one
    (``jacrev(jacfwd(f))``), sees the ``jvp``'s wrappers, which require no grad, around the
    ``grad``'s, which do.

    Examples
    --------
    >>> import torch
    >>> _carries_derivative(torch.ones(1)), _carries_derivative(torch.ones(1).requires_grad_())
    (False, True)
    """
    while not tensor.requires_grad:
        if not _functorch.is_functorch_wrapped_tensor(tensor):
            return False
        tensor = _functorch.get_unwrapped(tensor)
    return True


def _inside_a_function_forward() -> bool:
    """Whether the op being watched runs in the forward of a custom Function (grad mode off
    there by torch itself), called by the watched backward."""
    frame: Any = sys._getframe(1)
    while frame is not None and frame.f_code is not _WATCHED_APPLY_CODE:
        code = frame.f_code
        if code is _FUNCTION_APPLY_CODE:
            return True
        if code.co_name == "forward" and isinstance(frame.f_locals.get("ctx"), FunctionCtx):
            return True  # an old-style forward(ctx, ...) (torch 1.13 has no Python apply)
        frame = frame.f_back
    return False


#: torch.func pushes an outer ``jvp``'s tangents through a custom Function's ``jvp`` rule
#: as if what the rule reads were constants (``jacfwd(jacfwd(f))``: 10.1 off for a cube).
_FORWARD_OVER_FORWARD = (
    "{name}: forward mode over forward mode through this custom autograd.Function's jvp "
    "(jacfwd of jacfwd, jvp of jacfwd) gives wrong values in torch.func's function "
    "transforms; take the outer derivative in reverse mode (jacrev of jacfwd, hessian), or "
    "use automatic mode or backend='autograd'"
)


def _refused_unless_differentiable(
    name: str, rule: Callable[..., Any], own_levels: int
) -> Callable[..., Any]:
    """Custom Function ``name``'s ``backward`` or ``jvp`` ``rule``, raising where it computes
    outside autograd while a transform differentiates its result again: while more ``grad``
    and ``jvp`` transforms run than the ``own_levels`` the rule runs for."""
    opaque = getattr(rule, "__code__", None) is _ONCE_DIFFERENTIABLE_CODE

    def refusing(ctx: Any, *args: Any) -> Any:
        if own_levels and differentiating_levels() <= own_levels:  # a first derivative
            return rule(ctx, *args)
        if own_levels and differentiating_levels(forward_only=True) > own_levels:
            raise RuntimeError(_FORWARD_OVER_FORWARD.format(name=name))
        if opaque:
            raise RuntimeError(opaque_backward_message(name))
        watch = _LeavesAutograd(grad_mode_counts=torch.is_grad_enabled())
        with watch:
            result = rule(ctx, *args)
        if watch.seen:
            raise RuntimeError(opaque_backward_message(name))
        return result

    return refusing


def _refusing_twin(cls: Any) -> Any:
    """A subclass of custom Function ``cls`` whose backward (and ``jvp``) raise where they
    compute outside autograd."""

    def rules() -> Dict[str, Any]:
        # a backward runs after its own transform ended: the twin is made only where another
        # differentiates it; a jvp runs inside its own one
        name = cls.__name__
        refusing = {"backward": _refused_unless_differentiable(name, cls.backward, 0)}
        if cls.jvp is not torch.autograd.Function.jvp:
            refusing["jvp"] = _refused_unless_differentiable(name, cls.jvp, 1)
        return refusing

    return function_twin(cls, "refusing", rules)


class _OpaqueBackwardsRefused(OpWatch):
    """Swaps each custom Function the watched code applies inside a function transform for
    its refusing twin."""

    def run(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if func is custom_function_call() and args and isinstance(args[0], type):
            args = (_refusing_twin(args[0]), *args[1:])
        return func(*args, **kwargs)


def opaque_backwards_refused(derivative: Callable[..., Any]) -> Callable[..., Any]:
    """``derivative`` (a function transform's derivative of a function), raising the
    :func:`opaque_backward_message` error where an outer ``grad`` or ``jvp`` transform
    differentiates it again through a custom Function whose backward (or ``jvp``)
    computes outside autograd; a first derivative runs unwatched.

    Examples
    --------
    A differentiable function is differentiated again as written (see
    ``tests/contract/test_opaque_backward.py`` for the refusals):

    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> transforms = function_transforms()
    >>> gradient = opaque_backwards_refused(transforms.grad(lambda x: (x**3).sum()))
    >>> gradient(torch.ones(1))
    tensor([3.])
    >>> transforms.jacrev(gradient)(torch.ones(1))
    tensor([[6.]])
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        if is_compiling() or not differentiating_levels():
            return derivative(*args, **kwargs)
        with _OpaqueBackwardsRefused():
            return derivative(*args, **kwargs)

    run.__wrapped__ = derivative  # type: ignore[attr-defined]
    return run
