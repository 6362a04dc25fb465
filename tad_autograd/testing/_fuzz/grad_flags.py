"""The fuzzer's judgement of ``requires_grad``: each result leaf as torch.func's, with
two measured, documented exceptions.

Examples
--------
>>> import torch
>>> requires_grad_of((torch.zeros(1, requires_grad=True), 1))
[True, None]
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch

from ...compat._pytree import tree_flatten
from ...compat._torch_info import TORCH_VERSION, Version

__all__ = ["requires_grad_of", "requires_grad_as_torch_func"]


def requires_grad_of(tree: Any) -> List[Any]:
    """``requires_grad`` per leaf of ``tree`` (``None`` for a leaf that is not a tensor)."""
    return [t.requires_grad if isinstance(t, torch.Tensor) else None for t in tree_flatten(tree)[0]]


def requires_grad_as_torch_func(case: Any, backend: Optional[str], lib: Any, direct: Any) -> bool:
    """Whether each leaf of the library's outcome ``lib`` requires grad as torch.func's does.

    ``lib`` and ``direct`` have the result as ``value`` and the tensors the
    operator was called with as ``inputs``.  Two differences are accepted, each
    where it is checked to hold: :func:`_view_flag_under_no_grad` and
    :func:`_only_zero_derivatives_lost`.

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace as Outcome
    >>> x = torch.ones(1, requires_grad=True)
    >>> ours = Outcome(value=torch.ones(1), inputs=[])
    >>> requires_grad_as_torch_func(None, None, ours, Outcome(value=x * 0, inputs=[]))
    True
    >>> requires_grad_as_torch_func(None, None, ours, Outcome(value=x * 2, inputs=[]))
    False
    """
    if requires_grad_of(lib.value) == requires_grad_of(direct.value):
        return True
    if case is not None and _view_flag_under_no_grad(case, backend):
        return True
    quiet = case is not None and case.context in ("no_grad", "inference_mode")
    if quiet and _custom_function_graph_under_no_grad(case, lib, direct):
        return True
    return _only_zero_derivatives_lost(lib, direct, quiet)


def _custom_function_graph_under_no_grad(case: Any, lib: Any, direct: Any) -> bool:
    """torch 2.0's torch.func lets a new-style custom Function record a graph under
    ``no_grad``; the library's results there carry none, as plain autograd's and later
    torch.func's (a flag torch.func sets and the library does not, never the reverse)."""
    if TORCH_VERSION >= Version("2.1") or "new_style_function" not in getattr(
        case.program, "features", ()
    ):
        return False
    mine, other = tree_flatten(lib.value)[0], tree_flatten(direct.value)[0]
    return len(mine) == len(other) and all(
        not (isinstance(a, torch.Tensor) and a.requires_grad)
        or (isinstance(b, torch.Tensor) and b.requires_grad)
        for a, b in zip(mine, other)
    )


def _only_zero_derivatives_lost(lib: Any, direct: Any, quiet: bool = False) -> bool:
    """Whether every leaf whose ``requires_grad`` differs from torch.func's is one that
    torch.func returns with a graph of zero derivative, and the library without one.

    torch.func's forward-mode formulas touch primals whose terms then vanish
    (``x / 2``'s tangent is ``t / 2 - 0 * (x / 2) / 2``), so a tangent that does not
    depend on anything requiring grad may still carry a graph; whether it does
    depends on each op's formula (``torch.func.linearize`` and ``torch.func.jvp``
    disagree on the same function).  The library's eager products carry a graph only
    where the result depends on something requiring grad.  Accepted only where
    differentiating torch.func's leaf gives zero (or nothing) for every tensor its
    graph reaches; a leaf that requires grad here but not in torch.func never is.

    Also accepted, under ``no_grad``/``inference_mode`` (``quiet``): a non-leaf
    argument that the function closes over and returns unchanged, which torch.func
    returns as itself and the eager paths detached (the library's leaf shares
    storage with the non-leaf argument it was called with, and has no graph).  Under
    ``no_grad`` they detach every output made during the call, and torch before
    2.1 has no way to tell a tensor made before the call from one made during it.
    """
    mine, other = tree_flatten(lib.value)[0], tree_flatten(direct.value)[0]
    if len(mine) != len(other):
        return False
    for a, b in zip(mine, other):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            continue
        if a.requires_grad == b.requires_grad:
            continue
        if a.requires_grad:
            return False
        returned_unchanged = (
            quiet
            and b.grad_fn is not None
            and a.grad_fn is None
            and any(b is x for x in direct.inputs)
            and any(x.grad_fn is not None and _same_storage(a, x) for x in lib.inputs)
        )
        if not returned_unchanged and not _zero_derivative(b):
            return False
    return True


def _zero_derivative(t: torch.Tensor) -> bool:
    """Whether ``t``'s derivative with respect to every leaf of its graph is zero, or its
    graph cannot be differentiated at all (a backward pass through it raises)."""
    leaves, seen, stack = [], set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
        stack.extend(n for n, _ in node.next_functions)
    if not leaves:
        return True
    try:
        with torch.enable_grad():
            grads = torch.autograd.grad(
                t, leaves, torch.ones_like(t), retain_graph=True, allow_unused=True
            )
    except RuntimeError:  # torch.func's graph itself cannot be differentiated (measured: a
        return True  # saved tensor it modified in place); its requires_grad promises nothing
    return all(g is None or not bool(g.ne(0).any()) for g in grads)


def _view_flag_under_no_grad(case: Any, backend: Optional[str]) -> bool:
    """Whether ``requires_grad`` parity is a known, documented difference for ``case``.

    Under ``no_grad`` (and ``inference_mode``) the loop ``vmap`` (the ``"autograd"``
    backend, and automatic mode for small batches) stacks each sample's outputs into a
    new tensor, which
    carries no ``requires_grad``; ``torch.func.vmap`` returns an output that is a view
    of an unbatched input requiring grad as such a view, and views made under
    ``no_grad`` keep their base's flag (the values agree; only the flag of a tensor
    without a graph differs).  On torch 1.13 the ``functorch`` backend copies too for a
    batch of one (it works around functorch's batch-of-one bug by doubling the batch), and
    every backend joins chunks by concatenation (torch.func too).
    """
    copies = ("autograd", None) if TORCH_VERSION.major >= 2 else ("autograd", None, "functorch")
    # chunks are joined by concatenation (a copy) in torch.func too; the reference runs unchunked
    copying = backend in copies or case.chunk_size is not None
    return case.op == "vmap" and case.context in ("no_grad", "inference_mode") and copying


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and a.data_ptr() == b.data_ptr()
