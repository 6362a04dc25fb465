"""Walks over an eager forward graph: what the Jacobian's rows depend on.

The eager strategies run the user's function under ordinary autograd and then
differentiate its outputs.  Two questions about the recorded graph decide how:

* does it reach a leaf requiring grad other than the differentiated inputs
  (a captured parameter, or an input of an enclosing Jacobian)?  Then the
  Jacobian must itself be differentiable (``create_graph=True``), as it is
  under :mod:`torch.func`;
* does it contain an op whose batched derivative torch computes wrongly
  (:mod:`tad_autograd.compat.batching_defects`)?  Then its rows must not be
  vectorised; and which custom ``autograd.Function`` nodes must be watched
  while they are (:func:`batching_hazards`).

The stand-in leaves an eager Jacobian creates for its inputs are marked when
that Jacobian returns (:func:`retire`): a finished Jacobian's stand-ins are
nobody's parameters, so a Jacobian of a Jacobian carries no graph where
:mod:`torch.func`'s carries none.
"""

from __future__ import annotations

from typing import (
    Any,
    Callable,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Sequence,
    Set,
    Tuple,
)

import torch
from torch.autograd.function import BackwardCFunction

from ..compat._dual import level_active, unpack_dual
from ..compat._transform_failures import REVERSE_STAGES, DefectWatch
from ..compat.batching_defects import defective_nodes

__all__ = [
    "reaches_other_leaves",
    "graphs_dropped",
    "retire",
    "defective_ops_in",
    "batching_hazards",
    "BatchingHazards",
    "graph_facts",
    "has_custom_functions",
    "reaches_inputs",
    "custom_functions_without_jvp",
    "mark_stand_in_leaf",
    "nodes",
    "ACCUMULATE_GRAD",
]

#: The graph node of a leaf tensor that requires grad.
ACCUMULATE_GRAD = torch._C._functions.AccumulateGrad  # type: ignore[attr-defined]

#: Attribute set on the stand-in leaves of a finished eager Jacobian.
_RETIRED = "_tad_autograd_retired"
#: Attribute of a stand-in that is a view of its leaf (a dual number): the leaf.
_LEAF = "_tad_autograd_stand_in_leaf"


def mark_stand_in_leaf(stand_in: torch.Tensor, leaf: torch.Tensor) -> None:
    """Note that the non-leaf ``stand_in`` was made from our own ``leaf`` (retired with it).

    Examples
    --------
    >>> import torch
    >>> leaf = torch.zeros(1, requires_grad=True)
    >>> view = leaf.view_as(leaf)
    >>> mark_stand_in_leaf(view, leaf)
    >>> retire([view])
    >>> reaches_other_leaves([view * 2], set())
    False
    """
    setattr(stand_in, _LEAF, leaf)


def retire(stand_ins: Iterable[torch.Tensor]) -> None:
    """Mark the stand-in leaves of a finished Jacobian: no later graph walk counts them.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> retire([x])
    >>> reaches_other_leaves([x * 2], set())
    False
    """
    for x in stand_ins:
        if x.is_leaf:
            setattr(x, _RETIRED, True)
        else:
            leaf = getattr(x, _LEAF, None)
            if leaf is not None:
                setattr(leaf, _RETIRED, True)


def reaches_other_leaves(outputs: Sequence[torch.Tensor], ours: Set[int]) -> bool:
    """Whether the graph of ``outputs`` reaches a live leaf requiring grad besides ``ours``.

    ``ours`` holds the ``id`` of the caller's own stand-in leaves.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> w = torch.ones(2, requires_grad=True)
    >>> reaches_other_leaves([x * w], {id(x)})
    True
    >>> reaches_other_leaves([x * 2], {id(x)})
    False
    """
    for node in nodes(outputs):
        if type(node) is ACCUMULATE_GRAD and _other_leaf(node.variable, ours):
            return True
    return False


def graphs_dropped(results: List[Any], ours: Set[int]) -> List[Any]:
    """``results`` of a derivative, each without its graph where that reaches only this
    call's stand-ins ``ours``: :mod:`torch.func` returns such a result without one, and a
    gradient of it with respect to a captured parameter would find no path.

    A result carrying a forward-mode tangent keeps its graph (forward over reverse).

    Examples
    --------
    >>> import torch
    >>> x, w = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    >>> [t.requires_grad for t in graphs_dropped([x * 2, x * w, None], {id(x)})[:2]]
    [False, True]
    """
    dual = level_active()
    return [
        r.detach()
        if isinstance(r, torch.Tensor)
        and r.grad_fn is not None
        and not (dual and unpack_dual(r)[1] is not None)
        and not reaches_other_leaves([r], ours)
        else r
        for r in results
    ]


def _other_leaf(leaf: torch.Tensor, ours: Set[int]) -> bool:
    """Whether ``leaf`` (requiring grad) is neither ours nor a finished Jacobian's stand-in."""
    return id(leaf) not in ours and not getattr(leaf, _RETIRED, False)


def reaches_inputs(output: torch.Tensor, inputs: Sequence[torch.Tensor]) -> bool:
    """Whether the graph of ``output`` reaches one of ``inputs`` (tensors that require grad).

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> w = torch.ones(2, requires_grad=True)
    >>> reaches_inputs(w * 2, [x]), reaches_inputs(x * w, [x])
    (False, True)
    """
    if output.grad_fn is None:
        return any(output is x for x in inputs)
    leaves = {id(x) for x in inputs if x.grad_fn is None}
    nodes = {x.grad_fn for x in inputs if x.grad_fn is not None}

    def test(node: Any) -> bool:
        if type(node) is ACCUMULATE_GRAD:
            return id(node.variable) in leaves
        return node in nodes

    return _holds([output], test)


def graph_facts(outputs: Sequence[torch.Tensor], ours: Set[int]) -> Tuple[bool, List[Any]]:
    """One walk of the graph of ``outputs``: whether it reaches a live leaf requiring
    grad besides ``ours`` (:func:`reaches_other_leaves`), and its custom
    ``autograd.Function`` nodes.

    Examples
    --------
    A weight requiring grad is another leaf; ``exp`` is no custom Function:

    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> graph_facts([x.exp() * torch.ones(2, requires_grad=True)], {id(x)})
    (True, [])
    """
    custom: List[Any] = []
    reaches = False
    for node in nodes(outputs):
        if isinstance(node, _CUSTOM_FUNCTION):
            custom.append(node)
        elif not reaches and type(node) is ACCUMULATE_GRAD:
            reaches = _other_leaf(node.variable, ours)
    return reaches, custom


class BatchingHazards(NamedTuple):
    """What in a graph stands in the way of vectorising its backward pass (see
    :func:`batching_hazards`).

    Attributes
    ----------
    defective : frozenset of str
        Node class names of the installed torch's defective ops.
    custom : list
        The custom ``autograd.Function`` nodes: their Python backward runs
        outside any torch function mode, so it must be watched while a
        vectorised pass runs it.
    """

    defective: FrozenSet[str]
    custom: List[Any]


_NO_HAZARDS = BatchingHazards(frozenset(), [])


def batching_hazards(outputs: Sequence[torch.Tensor]) -> BatchingHazards:
    """The defective ops and the custom ``autograd.Function`` nodes of the graph of ``outputs``.

    Empty (and free) on a torch without known batching defects.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(3, 2, requires_grad=True)
    >>> batching_hazards([torch.cdist(x, x)]).defective  # doctest: +SKIP
    frozenset({'CdistBackward0'})
    >>> batching_hazards([x.sin()]).defective
    frozenset()
    """
    if not DefectWatch.needed(REVERSE_STAGES):
        return _NO_HAZARDS
    bad = defective_nodes()
    found = set()
    custom: List[Any] = []
    for node in nodes(outputs):
        if isinstance(node, _CUSTOM_FUNCTION):
            custom.append(node)
        elif type(node).__name__ in bad:
            found.add(type(node).__name__)
    return BatchingHazards(frozenset(found), custom)


def defective_ops_in(outputs: Sequence[torch.Tensor]) -> FrozenSet[str]:
    """The node names of ops in the graph of ``outputs`` whose batched derivative torch
    gets wrong (custom Functions aside: see :func:`batching_hazards`).

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(3, 2, requires_grad=True)
    >>> sorted(defective_ops_in([torch.cdist(x, x)]))  # doctest: +SKIP
    ['CdistBackward0']
    >>> defective_ops_in([x.sin()])
    frozenset()
    """
    return batching_hazards(outputs).defective


def has_custom_functions(outputs: Sequence[torch.Tensor]) -> bool:
    """Whether the graph of ``outputs`` holds a custom ``autograd.Function`` node.

    Its Python backward may compute outside autograd (NumPy, ``.item()``), so
    differentiating *through* that backward (the double-vjp trick) could
    silently miss terms; a plain backward pass through it is exact.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> has_custom_functions([x.sin()])
    False
    """
    return _holds(outputs, lambda node: isinstance(node, _CUSTOM_FUNCTION))


def custom_functions_without_jvp(outputs: Sequence[torch.Tensor]) -> bool:
    """Whether the graph of ``outputs`` holds a custom ``autograd.Function`` without ``jvp``.

    Dual numbers cannot pass through such a Function (old-style ones included):
    forward mode must take its products from the recorded graph instead.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> custom_functions_without_jvp([x.sin()])
    False
    """
    return _holds(outputs, _custom_without_jvp)


def _custom_without_jvp(node: Any) -> bool:
    if not isinstance(node, _CUSTOM_FUNCTION):
        return False
    cls = getattr(node, "_forward_cls", None)
    return cls is None or getattr(cls, "jvp", None) is _NO_JVP


def _holds(outputs: Sequence[torch.Tensor], test: Callable[[Any], bool]) -> bool:
    """Whether a node of the graph of ``outputs`` passes ``test``."""
    for node in nodes(outputs):
        if test(node):
            return True
    return False


def nodes(outputs: Sequence[torch.Tensor]) -> Iterator[Any]:
    """Each node of the graph of ``outputs`` once, depth first: the one walk every
    question of this module asks its graph through (stopping it early stops the walk).

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> [type(n).__name__ for n in nodes([(x * 2).sin()])]
    ['SinBackward0', 'MulBackward0', 'AccumulateGrad']
    """
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen: Set[Any] = set(stack)
    push, mark = stack.append, seen.add
    while stack:
        node = stack.pop()
        yield node
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in seen:
                mark(nxt)
                push(nxt)


#: ``jvp`` of a custom Function that does not define one (it raises).
_NO_JVP = getattr(torch.autograd.Function, "jvp", None)

#: The graph node class of every custom ``torch.autograd.Function``.
_CUSTOM_FUNCTION = BackwardCFunction
