"""Minimal pytree helpers used by the test kit.

The kit deliberately does not rely on ``torch.utils._pytree`` (private, and its
API differs between torch 1.13 and current releases).  Containers are tuples,
lists, dicts and namedtuples, exactly the containers ``torch.func`` accepts;
everything else (``torch.Size`` included) is a leaf.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch

__all__ = ["flatten", "unflatten", "tree_map", "render_path", "spec_repr", "broadcast_prefix"]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def flatten(tree: Any) -> Tuple[List[Any], Any, List[Tuple[Any, ...]]]:
    """Flatten ``tree`` into ``(leaves, spec, paths)``.

    ``spec`` is a hashable, comparable description of the structure; ``paths``
    gives, for each leaf, the tuple of keys leading to it.
    """
    leaves: List[Any] = []
    paths: List[Tuple[Any, ...]] = []

    def rec(node: Any, path: Tuple[Any, ...]) -> Any:
        if isinstance(node, torch.Size):
            leaves.append(node)
            paths.append(path)
            return ("leaf",)
        if _is_namedtuple(node):
            return (
                "namedtuple",
                type(node),
                tuple(rec(v, path + (f".{f}",)) for f, v in zip(node._fields, node)),
            )
        if isinstance(node, tuple):
            return ("tuple", tuple(rec(v, path + (i,)) for i, v in enumerate(node)))
        if isinstance(node, list):
            return ("list", tuple(rec(v, path + (i,)) for i, v in enumerate(node)))
        if isinstance(node, dict):
            keys = tuple(node.keys())
            return ("dict", keys, tuple(rec(node[k], path + (k,)) for k in keys))
        leaves.append(node)
        paths.append(path)
        return ("leaf",)

    spec = rec(tree, ())
    return leaves, spec, paths


def unflatten(spec: Any, leaves: List[Any]) -> Any:
    """Inverse of :func:`flatten`."""
    it = iter(leaves)

    def rec(s: Any) -> Any:
        kind = s[0]
        if kind == "leaf":
            return next(it)
        if kind == "tuple":
            return tuple(rec(c) for c in s[1])
        if kind == "list":
            return [rec(c) for c in s[1]]
        if kind == "dict":
            return {k: rec(c) for k, c in zip(s[1], s[2])}
        if kind == "namedtuple":
            return s[1](*(rec(c) for c in s[2]))
        raise AssertionError(kind)

    return rec(spec)


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    leaves, spec, _ = flatten(tree)
    return unflatten(spec, [fn(x) for x in leaves])


def render_path(path: Tuple[Any, ...]) -> str:
    """``(0, 'a')`` -> ``"[0]['a']"``; the empty path is ``"<root>"``."""
    if not path:
        return "<root>"
    out = []
    for p in path:
        if isinstance(p, str) and p.startswith("."):
            out.append(p)
        else:
            out.append(f"[{p!r}]")
    return "".join(out)


def spec_repr(spec: Any) -> str:
    """Readable rendering of a structure spec (``T`` marks a leaf)."""
    kind = spec[0]
    if kind == "leaf":
        return "T"
    if kind == "tuple":
        inner = ", ".join(spec_repr(c) for c in spec[1])
        return f"({inner},)" if len(spec[1]) == 1 else f"({inner})"
    if kind == "list":
        return "[" + ", ".join(spec_repr(c) for c in spec[1]) + "]"
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {spec_repr(c)}" for k, c in zip(spec[1], spec[2])) + "}"
    if kind == "namedtuple":
        name: str = spec[1].__name__
        return name + "(" + ", ".join(spec_repr(c) for c in spec[2]) + ")"
    raise AssertionError(kind)


def broadcast_prefix(prefix: Any, tree: Any) -> List[Any]:
    """Broadcast a prefix tree (e.g. ``in_dims``) to the leaves of ``tree``.

    A non-container value in ``prefix`` applies to every leaf below it.
    Raises ``ValueError`` when the structures do not match.
    """
    out: List[Any] = []

    def rec(p: Any, node: Any) -> None:
        if isinstance(p, (tuple, list, dict)):
            if isinstance(p, dict):
                if not isinstance(node, dict) or set(p) != set(node):
                    raise ValueError(f"prefix {p!r} does not match {type(node).__name__}")
                for k in node:
                    rec(p[k], node[k])
                return
            if not isinstance(node, (tuple, list)) or len(p) != len(node):
                raise ValueError(f"prefix {p!r} does not match {type(node).__name__}")
            for pc, nc in zip(p, node):
                rec(pc, nc)
            return
        n = len(flatten(node)[0])
        out.extend([p] * n)

    rec(prefix, tree)
    return out
