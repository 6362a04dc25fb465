"""Pytree helpers on top of :mod:`torch.utils._pytree`, the same on torch 1.13 and later.

Only tuples, lists, dicts (and namedtuples, through torch) are containers,
as in :mod:`torch.func`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch.utils import _pytree

__all__ = [
    "tree_flatten",
    "tree_unflatten",
    "flatten",
    "unflatten",
    "broadcast_prefix",
    "IncompatibleStructure",
]


#: torch's specs of a bare tensor and of flat tuples of n tensors, built once.
_LEAF_SPEC = _pytree.tree_flatten(torch.zeros(()))[1]
_TUPLE_SPECS: Dict[int, Any] = {}


def tree_flatten(tree: Any) -> Tuple[List[Any], Any]:
    """:func:`torch.utils._pytree.tree_flatten`, fast for a tensor or a flat tuple of tensors.

    The specs are torch's own, so they work with torch's functions too.

    Examples
    --------
    >>> import torch
    >>> leaves, spec = tree_flatten((torch.zeros(1), torch.ones(1)))
    >>> len(leaves), spec == _pytree.tree_flatten((1, 2))[1]
    (2, True)
    >>> tree_unflatten(*tree_flatten({"a": (1, [2])}))
    {'a': (1, [2])}
    """
    if isinstance(tree, torch.Tensor):
        return [tree], _LEAF_SPEC
    if type(tree) is tuple and all(isinstance(t, torch.Tensor) for t in tree):
        spec = _TUPLE_SPECS.get(len(tree))
        if spec is None:
            spec = _TUPLE_SPECS[len(tree)] = _pytree.tree_flatten(tree)[1]
        return list(tree), spec
    return _pytree.tree_flatten(tree)


def tree_unflatten(leaves: List[Any], spec: Any) -> Any:
    """:func:`torch.utils._pytree.tree_unflatten`, fast for specs cached by :func:`tree_flatten`."""
    if spec is _LEAF_SPEC and len(leaves) == 1:
        return leaves[0]
    if spec is _TUPLE_SPECS.get(len(leaves)):
        return tuple(leaves)
    return _pytree.tree_unflatten(leaves, spec)


def flatten(tree: Any) -> Tuple[List[Any], Any]:
    """:func:`tree_flatten` with a fast path for a bare tensor (spec ``None``).

    Examples
    --------
    >>> import torch
    >>> flatten(torch.zeros(1))[1] is None
    True
    >>> unflatten(*flatten((1, [2])))
    (1, [2])
    """
    if isinstance(tree, torch.Tensor):
        return [tree], None
    return tree_flatten(tree)


def unflatten(leaves: List[Any], spec: Any) -> Any:
    """Inverse of :func:`flatten`."""
    if spec is None:
        return leaves[0]
    return tree_unflatten(leaves, spec)


class IncompatibleStructure(ValueError):
    """A prefix tree (``in_dims``, ``out_dims``) does not match its tree."""


def broadcast_prefix(prefix: Any, tree: Any) -> List[Any]:
    """Expand ``prefix`` to one entry per leaf of ``tree``.

    ``prefix`` matches ``tree`` as a prefix: where ``prefix`` has a leaf
    (anything but a tuple, list or dict), that value applies to every leaf
    of the corresponding subtree.

    Parameters
    ----------
    prefix : Any
        A tree whose containers mirror the top of ``tree``.
    tree : Any
        The full tree.

    Returns
    -------
    list
        One prefix value per leaf of ``tree``, in flattening order.

    Raises
    ------
    IncompatibleStructure
        Where a container of ``prefix`` has a different type, length or keys
        than the matching node of ``tree``.

    Examples
    --------
    >>> broadcast_prefix((0, None), (1, [2, 3]))
    [0, None, None]
    """
    out: List[Any] = []
    _broadcast(prefix, tree, out)
    return out


def _broadcast(prefix: Any, tree: Any, out: List[Any]) -> None:
    if isinstance(prefix, (tuple, list)):
        if (
            not isinstance(tree, (tuple, list))
            or isinstance(tree, tuple) != isinstance(prefix, tuple)
            or len(tree) != len(prefix)
        ):
            raise IncompatibleStructure(prefix, tree)
        for p, t in zip(prefix, tree):
            _broadcast(p, t, out)
    elif isinstance(prefix, dict):
        if not isinstance(tree, dict) or set(tree) != set(prefix):
            raise IncompatibleStructure(prefix, tree)
        for key in tree:  # torch flattens dicts in insertion order
            _broadcast(prefix[key], tree[key], out)
    else:
        out.extend([prefix] * len(tree_flatten(tree)[0]))
