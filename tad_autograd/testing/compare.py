"""Compare two pytrees of tensors with :func:`torch.testing.assert_close`, leaf by leaf.

:func:`assert_trees_close` is the test kit's comparator: torch's
``assert_close`` decides whether two leaves agree (with the tolerances of
:func:`default_tolerances` unless given), and the report names the leaf by its
path in the tree.

Examples
--------
>>> import torch
>>> tree_problems({"a": torch.ones(2)}, {"a": torch.ones(2)})
[]
>>> tree_problems((torch.ones(2),), [torch.ones(2)])
['structure differs: (T,) vs [T]']
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import torch

from ..compat._pytree import tree_flatten

__all__ = [
    "default_tolerances",
    "assert_trees_close",
    "tree_problems",
    "spec_repr",
    "leaf_paths",
]

_DEFAULT_TOLS = {
    torch.float64: (1e-10, 1e-12),
    torch.complex128: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.complex64: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-4),
    torch.bfloat16: (1e-2, 1e-3),
}


def default_tolerances(dtype: torch.dtype) -> Tuple[float, float]:
    """``(rtol, atol)`` used for ``dtype`` when none are given.

    float64: ``(1e-10, 1e-12)``; float32: ``(1e-5, 1e-6)`` (the relative
    agreement the library promises, :ref:`semantics-operators`, and a small
    atol for entries that should be zero); half types are looser.  Integer
    and bool tensors are compared exactly.

    Examples
    --------
    >>> import torch
    >>> default_tolerances(torch.float64)
    (1e-10, 1e-12)
    >>> default_tolerances(torch.int64)
    (0.0, 0.0)
    """
    return _DEFAULT_TOLS.get(dtype, (0.0, 0.0))


# --------------------------------------------------------------------------
# torch tree specs, rendered
# --------------------------------------------------------------------------
def _children(spec: Any) -> List[Any]:
    children = getattr(spec, "children", None)  # torch >= 2.6; children_specs before
    return list(children() if callable(children) else spec.children_specs)


def _is_leaf(spec: Any) -> bool:
    return spec.type is None and not _children(spec)


def _dict_keys(spec: Any) -> Optional[List[Any]]:
    """The keys of a dict-like container spec, else ``None``."""
    is_dict = isinstance(spec.type, type) and issubclass(spec.type, dict)
    keys = spec.context
    if is_dict and isinstance(keys, (list, tuple)) and len(keys) == len(_children(spec)):
        return list(keys)
    return None


def _keys(spec: Any) -> List[str]:
    """How each child of a container spec is reached: ``[0]``, ``['a']``, ``.field``."""
    dict_keys = _dict_keys(spec)
    if dict_keys is not None:
        return [f"[{k!r}]" for k in dict_keys]
    n = len(_children(spec))
    fields = getattr(spec.context, "_fields", None)  # namedtuples: the context is the class
    if fields is not None and len(fields) == n:
        return [f".{f}" for f in fields]
    return [f"[{i}]" for i in range(n)]


def leaf_paths(spec: Any) -> List[str]:
    """The path of each leaf of a torch tree spec, in flattening order.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._pytree import tree_flatten
    >>> leaf_paths(tree_flatten((torch.zeros(1), {"a": [torch.ones(1)]}))[1])
    ['[0]', "[1]['a'][0]"]
    >>> leaf_paths(tree_flatten(torch.zeros(1))[1])
    ['<root>']
    """
    if _is_leaf(spec):
        return ["<root>"]
    out: List[str] = []
    for key, child in zip(_keys(spec), _children(spec)):
        out += [key + p if p != "<root>" else key for p in leaf_paths(child)]
    return out


def spec_repr(spec: Any) -> str:
    """A readable rendering of a torch tree spec (``T`` marks a leaf).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._pytree import tree_flatten
    >>> spec_repr(tree_flatten(((1,), [2], {"a": 3}))[1])
    "((T,), [T], {'a': T})"
    """
    if _is_leaf(spec):
        return "T"
    children = [spec_repr(c) for c in _children(spec)]
    if spec.type is tuple:
        return f"({children[0]},)" if len(children) == 1 else "(" + ", ".join(children) + ")"
    if spec.type is list:
        return "[" + ", ".join(children) + "]"
    dict_keys = _dict_keys(spec)
    if dict_keys is not None:
        return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(dict_keys, children)) + "}"
    name = getattr(spec.context, "__name__", None) or getattr(spec.type, "__name__", "node")
    return f"{name}(" + ", ".join(children) + ")"


# --------------------------------------------------------------------------
# leaves and trees
# --------------------------------------------------------------------------
def _unravel(k: int, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    idx = []
    for size in reversed(shape):  # torch.unravel_index needs torch >= 2.2
        idx.append(k % size)
        k //= size
    return tuple(reversed(idx))


def _value_summary(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> str:
    """One line on the values of two leaves that ``assert_close`` found apart."""
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    x, y = a.detach().cpu().to(wide), b.detach().cpu().to(wide)
    bad = ~torch.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
    diff = (x - y).abs()  # NaN where one side is NaN, or both are the same infinity
    diff = torch.where(bad, diff.nan_to_num(math.inf, math.inf), diff.nan_to_num(0.0, math.inf))
    k = int(diff.reshape(-1).argmax())
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / y.abs())
    xv, yv = x.reshape(-1)[k].item(), y.reshape(-1)[k].item()
    if not a.is_complex() and not a.is_floating_point():
        xv, yv = int(a.reshape(-1)[k].item()), int(b.reshape(-1)[k].item())
    return (
        f"values differ at {int(bad.sum())} of {bad.numel()} elements; "
        f"largest abs diff {float(diff.reshape(-1)[k]):.3e} at index "
        f"{_unravel(k, tuple(diff.shape))} ({xv!r} vs {yv!r}); "
        f"largest rel diff {float(rel.max()):.3e}; "
        f"allowed: |a - b| <= {atol:g} + {rtol:g} * |b| ({b.dtype})"
    )


def _describe(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float, message: str) -> str:
    """The report of one failing ``assert_close``: what differs, on one line."""
    meta = [
        f"{what} {x} vs {y}"
        for what, x, y in (
            ("shape", tuple(a.shape), tuple(b.shape)),
            ("dtype", a.dtype, b.dtype),
            ("device", a.device, b.device),
        )
        if x != y
    ]
    if meta:
        return "; ".join(meta)
    if a.layout != torch.strided or b.layout != torch.strided:
        return " ".join(message.split())
    return _value_summary(a, b, rtol, atol)


def _leaf_problem(a: Any, b: Any, rtol: Optional[float], atol: Optional[float]) -> Optional[str]:
    """``None`` when the leaves agree, else a one-line description."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return f"type differs: {type(a).__name__} vs {type(b).__name__}"
        try:
            same = bool(a == b)
        except Exception:  # pragma: no cover - exotic leaves
            same = a is b
        return None if same else f"values differ: {a!r} vs {b!r}"
    if b.is_floating_point() or b.is_complex():
        d_rtol, d_atol = default_tolerances(b.dtype)
        rtol = d_rtol if rtol is None else rtol
        atol = d_atol if atol is None else atol
    else:  # integers and bools: exactly
        rtol = atol = 0.0
    try:
        torch.testing.assert_close(
            a.detach(),
            b.detach(),
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            msg=lambda m: _describe(a, b, rtol, atol, m),
        )
    except AssertionError as err:
        return str(err)
    return None


def tree_problems(
    actual: Any, expected: Any, rtol: Optional[float] = None, atol: Optional[float] = None
) -> List[str]:
    """One line per difference between two pytrees (empty when they agree).

    Leaves are compared with :func:`torch.testing.assert_close`; see
    :func:`assert_trees_close`.

    Examples
    --------
    >>> import torch
    >>> tree_problems({"a": torch.ones(2)}, {"a": torch.zeros(2)})  # doctest: +ELLIPSIS
    ["leaf ['a']: values differ at 2 of 2 elements; largest abs diff 1.000e+00 at index (0,) ..."]
    """
    la, sa = tree_flatten(actual)
    lb, sb = tree_flatten(expected)
    if sa != sb:
        return [f"structure differs: {spec_repr(sa)} vs {spec_repr(sb)}"]
    out = []
    for a, b, path in zip(la, lb, leaf_paths(sa)):
        msg = _leaf_problem(a, b, rtol, atol)
        if msg is not None:
            out.append(f"leaf {path}: {msg}")
    return out


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    actual_name: str = "actual",
    expected_name: str = "expected",
    context: str = "",
) -> None:
    """Assert two pytrees of tensors have the same structure, shapes, dtypes, devices and values.

    Each pair of tensor leaves goes through :func:`torch.testing.assert_close`
    (``equal_nan=True``): values are close when ``|a - b| <= atol + rtol * |b|``
    elementwise.  Default tolerances depend on the dtype, see
    :func:`default_tolerances`; integer and bool tensors are compared exactly.

    Raises
    ------
    AssertionError
        With one line per differing leaf, naming its path and the largest
        absolute and relative difference.

    Examples
    --------
    >>> import torch
    >>> assert_trees_close({"a": torch.ones(2)}, {"a": torch.ones(2)})
    >>> try:
    ...     assert_trees_close((torch.ones(2),), (torch.zeros(2),),
    ...                        actual_name="mine", expected_name="ref")
    ... except AssertionError as e:
    ...     print(str(e).splitlines()[0])
    mine and ref differ:
    """
    problems = tree_problems(actual, expected, rtol, atol)
    if problems:
        head = (
            f"{actual_name} and {expected_name} differ" + (f" ({context})" if context else "") + ":"
        )
        raise AssertionError("\n".join([head] + ["  " + p for p in problems]))
