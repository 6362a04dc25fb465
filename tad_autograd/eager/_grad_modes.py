"""The calling contexts every eager operator handles alike.

Inside :func:`torch.no_grad` a derivative is still computed, as under
:mod:`torch.func`; inside :func:`torch.inference_mode` it is computed where
the installed :mod:`torch.func` computes it (without a graph), and refused
with a clear ``RuntimeError`` where that returns zeros.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Tuple, TypeVar

import torch

from ..compat._pytree import tree_flatten, tree_unflatten
from ..compat._torch_info import cache
from ..compat._transform_failures import OpWatch

__all__ = [
    "inference_mode_derivatives",
    "outside_inference_mode",
    "plain_tensors",
    "GradModeOffWatch",
    "ReverseOnlyWatch",
    "builds_no_graph",
]

T = TypeVar("T")


@cache
def inference_mode_derivatives() -> bool:
    """Whether the installed :mod:`torch.func` differentiates inside ``torch.inference_mode()``.

    Decided once by trying it: some releases return zeros there (functorch
    on torch 1.13, torch 2.0), newer ones the derivative.

    Examples
    --------
    >>> isinstance(inference_mode_derivatives(), bool)
    True
    """
    try:
        from torch.func import grad
    except ImportError:  # torch 1.13: functorch returns zeros there
        return False
    with torch.inference_mode():
        try:
            value = grad(lambda x: (x * x).sum())(torch.ones(1))
        except RuntimeError:
            return False
    return bool(value.item() == 2.0)


def plain_tensors(tree: Any) -> Any:
    """``tree`` with every inference tensor replaced by an ordinary copy.

    Examples
    --------
    >>> import torch
    >>> with torch.inference_mode():
    ...     x = torch.ones(2)
    >>> plain_tensors((x, 1))[0].is_inference()
    False
    """
    leaves, spec = tree_flatten(tree)
    with torch.inference_mode(False):
        plain = [
            t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t for t in leaves
        ]
    return tree_unflatten(plain, spec)


def outside_inference_mode(name: str, call: Callable[..., T], *trees: Any) -> T:
    """``call(*trees)`` run outside inference mode, with grad mode off; or a ``RuntimeError``.

    Called when :func:`torch.is_inference_mode_enabled` is true.  Where the
    installed torch differentiates there (:func:`inference_mode_derivatives`),
    the derivative is computed on ordinary copies of the inputs and carries
    no graph; elsewhere the call is refused rather than returning zeros.

    Examples
    --------
    >>> import torch
    >>> with torch.inference_mode():
    ...     x = torch.ones(2)
    ...     try:
    ...         y = outside_inference_mode("demo", lambda t: t * 2, x)
    ...     except RuntimeError:  # torch 1.13 / 2.0
    ...         y = x * 2
    >>> y.tolist()
    [2.0, 2.0]
    """
    if not inference_mode_derivatives():
        raise RuntimeError(
            f"{name}: cannot differentiate inside torch.inference_mode() with torch "
            f"{torch.__version__} (its function transforms silently return zeros there); "
            "use torch.no_grad() instead"
        )
    with torch.inference_mode(False), torch.no_grad():
        return call(*(plain_tensors(t) for t in trees))


class GradModeOffWatch(OpWatch):
    """A torch function mode that notes (``seen``) whether the code it runs called an op
    with grad mode off; subclasses widen what they note with :meth:`notes`.

    Examples
    --------
    >>> import torch
    >>> with GradModeOffWatch() as watch, torch.no_grad():
    ...     _ = torch.ones(1).sin()
    >>> watch.seen
    True
    """

    def run(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if not self.seen and self.notes(func, args, kwargs):
            self.seen = True
        return func(*args, **kwargs)

    def notes(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        """Whether this call of ``func`` is what this watch looks for."""
        return not torch.is_grad_enabled()


class ReverseOnlyWatch(GradModeOffWatch):
    """A :class:`GradModeOffWatch` that also notes what a backward pass sees and dual
    numbers do not: a tensor hook registered, a backward pass that records no graph
    (``torch.autograd.grad`` or ``backward`` without ``create_graph``).

    Dual numbers pass through all three where reverse mode stops or changes the
    gradient, so a forward-mode product taken with dual numbers under this watch
    is reverse mode's only where it saw none of them (:attr:`seen` false).

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(1, requires_grad=True)
    >>> with ReverseOnlyWatch() as watch:
    ...     _ = torch.autograd.grad((x * x).sum(), x)
    >>> watch.seen
    True
    """

    def notes(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        if not torch.is_grad_enabled() or func in _HOOKS:
            return True
        return builds_no_graph(func, args, kwargs)


def builds_no_graph(func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
    """Whether calling ``func(*args, **kwargs)`` is a backward pass that records no graph
    (``torch.autograd.grad``, ``backward`` or ``Tensor.backward`` without ``create_graph``).

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(1, requires_grad=True)
    >>> builds_no_graph(torch.autograd.grad, (x, x), {}), builds_no_graph(torch.sin, (x,), {})
    (True, False)
    >>> builds_no_graph(torch.autograd.grad, (x, x), {"create_graph": True})
    False
    """
    backward = _BACKWARD_PASSES.get(func)
    if backward is None:
        return False
    try:
        bound = backward.bind(*args, **kwargs)
    except TypeError:  # torch reports the call's own mistake
        return False
    return not bound.arguments.get("create_graph")


#: Hook registrations a backward pass runs and dual numbers ignore.
_HOOKS = frozenset({torch.Tensor.register_hook})

#: Backward passes (by their signature) that record no graph unless ``create_graph``.
_BACKWARD_PASSES = {
    f: inspect.signature(f)
    for f in (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)
}
