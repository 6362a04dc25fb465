"""Differentiable stand-ins for the inputs of an eager derivative, and the checks around them.

Every eager operator (:mod:`tad_autograd.eager._jacobian`,
:mod:`tad_autograd.eager._products`, :mod:`tad_autograd.eager._forward_mode`) runs
the user's function on *stand-ins*: a view of an input that requires grad
(so results stay differentiable with respect to it), a detached leaf of any
other, and for a forward-mode dual number a dual view of a fresh leaf (so its
tangent flows through the backward pass).  ``argnums`` and the outputs are
checked with :func:`torch.func.jacrev`'s exception types.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..compat._dual import level_active, make_dual, unpack_dual
from ._graph import mark_stand_in_leaf
from ._operand_checks import check_output_dtypes, check_tensor_outputs

__all__ = [
    "check_argnums",
    "prepare_input",
    "stand_ins",
    "dual_tangent",
    "any_dual",
    "check_outputs",
    "check_graph_inputs",
]

ArgnumsT = Any


def check_argnums(argnums: ArgnumsT, nargs: int, name: str = "jacrev") -> Tuple[int, ...]:
    """The positions ``argnums`` names among ``nargs`` positional arguments, in its order.

    The one range and uniqueness check of ``argnums`` (its type is checked
    when a transform is built): ``RuntimeError``, as :func:`torch.func.jacrev`
    raises, also for two entries naming the same argument (``(0, -2)`` of two
    arguments).  ``name``: the operator, for the message.

    Examples
    --------
    >>> check_argnums(-1, 2)
    (1,)
    >>> check_argnums((0, -2), 2, "grad")
    Traceback (most recent call last):
    ...
    RuntimeError: grad: argnums elements must be unique, got argnums=(0, -2): 0 and -2 both ...
    """
    seen: Dict[int, int] = {}
    for n in (argnums,) if isinstance(argnums, int) else argnums:
        if not -nargs <= n < nargs:
            raise RuntimeError(
                f"{name}: argnums={argnums!r} is out of range: got argnum={n}, but only "
                f"{nargs} positional inputs (allowed: {-nargs} <= argnum < {nargs})"
            )
        p = n % nargs
        if p in seen:
            raise RuntimeError(
                f"{name}: argnums elements must be unique, got argnums={argnums!r}: "
                f"{seen[p]} and {n} both name positional input {p} of {nargs}"
            )
        seen[p] = n
    return tuple(seen)


def prepare_input(x: Any, position: int) -> torch.Tensor:
    """A differentiable stand-in for input leaf ``x`` (call with grad mode on).

    A tensor that already requires grad is viewed, so the Jacobian stays
    differentiable with respect to it; any other floating-point tensor is
    detached and made to require grad.

    Examples
    --------
    >>> import torch
    >>> prepare_input(torch.zeros(2), 0).requires_grad
    True
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"argnums: the argument at position {position} must be a floating-point "
            f"tensor or a pytree of them, got {type(x)}"
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise RuntimeError(
            "only Tensors of floating point or complex dtype can require gradients "
            f"(argument at position {position} has dtype {x.dtype})"
        )
    if x.requires_grad:
        return x.view_as(x)
    tangent = dual_tangent(x)
    if tangent is not None:  # a forward-mode dual number: keep its tangent
        leaf = unpack_dual(x)[0].detach().requires_grad_(True)
        stand_in = make_dual(leaf, tangent)
        mark_stand_in_leaf(stand_in, leaf)
        return stand_in
    return x.detach().requires_grad_(True)


def stand_ins(leaves: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], bool]:
    """Differentiable stand-ins of ``leaves`` (grad mode on), and whether any requires grad.

    Examples
    --------
    >>> import torch
    >>> [x.requires_grad for x in stand_ins([torch.zeros(1)])[0]]
    [True]
    """
    return [prepare_input(x, i) for i, x in enumerate(leaves)], any(x.requires_grad for x in leaves)


def as_returned(
    outputs: Sequence[torch.Tensor],
    keep: bool,
    inputs: Sequence[torch.Tensor],
    originals: Sequence[torch.Tensor],
) -> List[torch.Tensor]:
    """Outputs of an eager call as :mod:`torch.func` returns them.

    A stand-in (the function returned its input) comes back as the caller's
    ``originals`` entry; a tensor the call did not compute (a captured leaf, a
    constant) as itself; anything else with its graph only when ``keep``.

    Examples
    --------
    >>> import torch
    >>> x, w = torch.zeros(1), torch.ones(1, requires_grad=True)
    >>> (s,), _ = stand_ins([x])
    >>> out = as_returned([s, w, s * 2], False, [s], [x])
    >>> out[0] is x, out[1] is w, out[2].requires_grad
    (True, True, False)
    """
    result = []
    for o in outputs:
        original = next((orig for s, orig in zip(inputs, originals) if s is o), None)
        if original is not None:
            result.append(original)
        elif keep or o.grad_fn is None:
            result.append(o)
        else:
            result.append(o.detach())
    return result


def dual_tangent(x: torch.Tensor) -> Optional[torch.Tensor]:
    """The forward-mode tangent of ``x`` (a dual number of torch.autograd.forward_ad), or None.

    Free when no dual level is active.  A derivative of a dual input must be
    computed with ``create_graph=True``, so that the tangent flows through the
    backward pass (forward over reverse).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._dual import dual_level, forward_ad_ready, make_dual
    >>> forward_ad_ready()
    >>> dual_tangent(torch.zeros(1)) is None
    True
    >>> with dual_level():
    ...     dual_tangent(make_dual(torch.zeros(1), torch.ones(1)))
    tensor([1.])
    """
    if not level_active():
        return None
    return unpack_dual(x)[1]


def any_dual(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` carries a forward-mode tangent (free without a dual level)."""
    return level_active() and any(dual_tangent(x) is not None for x in tensors)


def check_outputs(
    leaves: Sequence[Any], name: str = "jacrev", operand: Optional[str] = None
) -> None:
    """Raise ``RuntimeError`` as :func:`torch.func.jacrev` does for outputs it cannot take.

    No tensors, a non-tensor, an integer or bool tensor, or a complex tensor.
    ``operand``: the parameter the outputs were given as (``graph_jacobian``'s
    ``outputs``), for the message; ``None``: they were returned by ``f``.

    Examples
    --------
    >>> import torch
    >>> check_outputs([torch.zeros(1)])
    >>> check_outputs([torch.zeros(1, dtype=torch.long)])
    Traceback (most recent call last):
    ...
    RuntimeError: jacrev(f, ...): All outputs of f must be floating-point or complex Tensors, ...
    >>> check_outputs([1.0], "graph_jacobian", "outputs")
    Traceback (most recent call last):
    ...
    RuntimeError: graph_jacobian: expected `outputs` to hold only tensors, got unsupported type ...
    """
    check_tensor_outputs(leaves, name, operand)
    check_output_dtypes(leaves, name, True, operand)


def check_graph_inputs(leaves: Sequence[Any], name: str) -> None:
    """The ``inputs`` of a Jacobian of recorded outputs: tensors that require grad.

    Raises what :func:`torch.func.jacrev` raises for the same mistake in its
    differentiated arguments (``ValueError`` for a non-tensor,
    ``RuntimeError`` for an integer or bool tensor) and, as
    :func:`torch.autograd.grad` does, ``RuntimeError`` for a tensor that does
    not require grad: no graph can lead to it.

    Examples
    --------
    >>> import torch
    >>> check_graph_inputs([torch.zeros(1, requires_grad=True)], "graph_jacobian")
    >>> check_graph_inputs([torch.zeros(1)], "graph_jacobian")
    Traceback (most recent call last):
    ...
    RuntimeError: graph_jacobian: input 0 (shape (1,)) does not require grad, ...
    """
    if len(leaves) == 0:
        raise RuntimeError(
            f"{name}: expected `inputs` to be a tensor or a non-empty pytree of tensors, "
            "got no tensors"
        )
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(
                f"{name}: every leaf of `inputs` must be a floating-point or complex tensor; "
                f"input {i} is {type(leaf)}"
            )
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise RuntimeError(
                f"{name}: input {i} has dtype {leaf.dtype}; only Tensors of floating point "
                "dtype can require gradients"
            )
        if not leaf.requires_grad:
            raise RuntimeError(
                f"{name}: input {i} (shape {tuple(leaf.shape)}) does not require grad, so no "
                "graph leads to it (torch.autograd.grad raises 'One of the differentiated "
                "Tensors does not require grad'); call requires_grad_() on it before computing "
                "the outputs"
            )
