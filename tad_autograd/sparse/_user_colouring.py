"""Colourings passed by the caller (``colouring=``): their form, then their validity.

A colouring given to :func:`~tad_autograd.sparse_jacobian` or
:func:`~tad_autograd.sparse_hessian` is used as it is (never recoloured), so it
is checked once, when the operator is built, against what its decompression
needs:

* ``"column"`` (forward mode, and Hessians with ``kind="column"``): no two
  columns sharing a row share a colour (*structurally orthogonal*);
* ``"row"`` (reverse mode): the same for rows sharing a column;
* ``"star"``: every entry ``(i, j)`` of the symmetric pattern is alone in its
  colour in row ``i`` or in row ``j``;
* ``"symmetric"``: adjacent vertices differ and no two colours close a cycle.

Each mistake raises ``ValueError`` naming the offending pair (or entry).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Tuple

import torch

from ._decompression import InvalidColouring, substitution_plan
from .patterns import Pattern

__all__ = ["as_colours"]


def _to_tensor(colours: Any, name: str) -> torch.Tensor:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(colours, numpy.ndarray):
        if colours.dtype.kind not in "iu":
            raise ValueError(
                f"{name}: expected integer colours, got a NumPy array of {colours.dtype}"
            )
        return torch.as_tensor(colours.astype("int64"))
    if isinstance(colours, torch.Tensor):
        if (
            colours.dtype.is_floating_point
            or colours.dtype.is_complex
            or colours.dtype == torch.bool
        ):
            raise ValueError(f"{name}: expected integer colours, got a tensor of {colours.dtype}")
        return colours.detach().to("cpu", torch.int64)
    if isinstance(colours, (list, tuple)):
        bad = [c for c in colours if not isinstance(c, int) or isinstance(c, bool)]
        if bad:
            raise ValueError(f"{name}: expected integer colours, got {bad[0]!r}")
        return torch.tensor(list(colours), dtype=torch.int64)
    raise TypeError(
        f"{name}: expected a colour per vertex as a tensor, a NumPy array or a list of ints; "
        f"got {type(colours).__name__}"
    )


def as_colours(colours: Any, p: Pattern, kind: str, name: str) -> torch.Tensor:
    """Validate a caller's colouring of ``p`` for ``kind``; return it as an int64 tensor.

    ``p`` is the pattern as the operator uses it (symmetrised for Hessians).
    The length must be the number of columns (``"row"``: rows) where the
    pattern has a shape, and at least the largest index + 1 for index pairs
    (the call checks the rest).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> band = as_pattern(torch.ones(4, 4).tril(1).triu(-1).bool())
    >>> as_colours([0, 1, 2, 0], band, "column", "colouring").tolist()
    [0, 1, 2, 0]
    >>> as_colours([0, 1, 0, 1], band, "column", "colouring")
    Traceback (most recent call last):
    ...
    ValueError: colouring: columns 0 and 2 share colour 0 but both have entries in row 1 ...
    """
    col = _to_tensor(colours, name)
    if col.dim() != 1:
        raise ValueError(
            f"{name}: expected one colour per vertex (1 dimension), got shape {tuple(col.shape)}"
        )
    axis = 0 if kind == "row" else 1
    what = "row" if kind == "row" else "column"
    if p.shape is not None and col.numel() != p.shape[axis]:
        raise ValueError(
            f"{name}: expected one colour per {what} of the pattern ({p.shape[axis]}), got "
            f"{col.numel()}"
        )
    if col.numel() < p.min_shape[axis]:
        raise ValueError(
            f"{name}: the pattern has {what}s up to {p.min_shape[axis] - 1}, so it needs at least "
            f"{p.min_shape[axis]} colours, one per {what}; got {col.numel()}"
        )
    if col.numel() and int(col.min()) < 0:
        raise ValueError(f"{name}: colours must be non-negative integers, got {int(col.min())}")
    if kind in ("column", "row"):
        _check_orthogonal(p if kind == "column" else p.transpose(), col, what, name)
    elif kind == "star":
        _check_star(p, col.tolist(), name)
    else:
        try:
            substitution_plan(p, col.tolist())
        except InvalidColouring as error:
            raise ValueError(f"{name}: not an acyclic colouring: {error}") from None
    return col


def _check_orthogonal(p: Pattern, col: torch.Tensor, what: str, name: str) -> None:
    """Columns of ``p`` sharing a row differ in colour (``what`` names them in messages)."""
    seen: Dict[Tuple[int, int], int] = {}
    colour = col.tolist()
    for r, c in zip(p.rows.tolist(), p.cols.tolist()):
        other = seen.setdefault((r, colour[c]), c)
        if other != c:
            across = "column" if what == "row" else "row"
            raise ValueError(
                f"{name}: {what}s {other} and {c} share colour {colour[c]} but both have entries "
                f"in {across} {r} (they must differ to be computed together)"
            )


def _check_star(p: Pattern, colour: List[int], name: str) -> None:
    """Every entry ``(i, j)`` is alone in its colour in row ``i`` or in row ``j``."""
    by_colour: Dict[Tuple[int, int], List[int]] = {}
    for r, c in zip(p.rows.tolist(), p.cols.tolist()):
        if r != c and colour[r] == colour[c]:
            raise ValueError(f"{name}: adjacent vertices {r} and {c} share colour {colour[r]}")
        by_colour.setdefault((r, colour[c]), []).append(c)
    for r, c in zip(p.rows.tolist(), p.cols.tolist()):
        here, there = by_colour[(r, colour[c])], by_colour[(c, colour[r])]
        if len(here) > 1 and len(there) > 1:
            c2 = next(x for x in here if x != c)
            r2 = next(x for x in there if x != r)
            raise ValueError(
                f"{name}: not a star colouring: entry ({r}, {c}) can be read from neither side "
                f"(columns {c} and {c2} share colour {colour[c]} in row {r}, columns {r} and "
                f"{r2} share colour {colour[r]} in row {c})"
            )
