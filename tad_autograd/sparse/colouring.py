"""Greedy colourings of sparsity patterns, the heart of sparse derivatives.

A Jacobian ``J`` with a known pattern can be computed from a few products
with 0/1 *seed* matrices instead of one product per row or column, when
rows (or columns) that never share a non-zero are summed together:

* **column** colouring (forward mode, ``J S``): two columns get different
  colours whenever some row has an entry in both (a *distance-2* colouring
  of the columns in the row/column bipartite graph), so every non-zero
  ``J[r, c]`` is alone in its row among the columns of its colour;
* **row** colouring (reverse mode, ``S^T J``): the same for rows, i.e. a
  column colouring of the transposed pattern;
* **symmetric** colourings of a square pattern made symmetric (Hessians,
  ``H S``), which use ``H[i, j] = H[j, i]`` to need fewer colours:

  - ``"star"``: adjacent vertices differ and every path on four vertices
    uses at least three colours.  Then for every entry ``(i, j)`` either
    ``j`` is the only column of its colour in row ``i`` or ``i`` is the only
    column of its colour in row ``j``, and the entry is read directly
    (Coleman and Moré's "symmetrically orthogonal" partition).
  - ``"symmetric"``: an *acyclic* colouring -- adjacent vertices differ and
    every cycle uses at least three colours, so any two colours induce a
    forest.  The entries of each two-coloured tree are solved for from its
    leaves up (substitution).  It needs the fewest colours: ``b + 1`` for a
    band of half-width ``b``, where a column colouring, and even every star
    colouring, needs ``2 b + 1`` (the star chromatic number of a long band is
    ``2 b + 1``: a band contains paths whose two-colourings must repeat).

All three algorithms are sequential greedy colourings, each vertex taking the
smallest colour its already coloured neighbourhood allows, in one of
:data:`ORDERS`: ``"natural"`` (by index), ``"largest_first"`` (by
decreasing degree), ``"smallest_last"`` (repeatedly set aside a vertex of
least degree among those left, colour in reverse), ``"dsatur"`` (column and
row colourings only: next the vertex whose neighbours hold the most distinct
colours), or ``"best"`` (default): the fewest colours of them all, the
first on a tie.  For column and row colourings whose distance-2 graph is
small enough to walk (:data:`~tad_autograd.sparse._greedy_colouring.SEARCH_WORK`
steps), ``"best"`` also searches, in DSATUR order with bounded backtracking,
for a colouring with as many colours as :func:`colouring_lower_bound`: that
finds the lattice colourings of stencils, 5 colours for the 2-D five-point
Laplacian (``(i + 2 j) mod 5``) and 7 for the 3-D seven-point one, where
every greedy order needs 6-12 (see the table in the documentation's sparse
page).  No order wins everywhere: DSATUR alone reaches 5 on the 2-D stencil
but 10-11 on the 3-D one; smallest-last colours the Lennard-Jones Hessians
with the fewest star and acyclic colours; the natural order follows space
where atoms are numbered outwards from the centre.  The column colouring
costs one pass over the entries (each row keeps the set of colours it holds
as a bit mask); the symmetric ones cost ``sum over v of sum over the
neighbours w of v of deg(w)``, and first merge *indistinguishable* vertices
(identical closed neighbourhoods, e.g. the three coordinates of an atom in a
pair-potential Hessian), which divides that cost by the group size squared
and keeps the colouring star or acyclic (each group gets one block of
consecutive colours).

Examples
--------
>>> import torch
>>> band = torch.ones(6, 6).tril(1).triu(-1).bool()        # tridiagonal
>>> colouring(band).tolist()                              # distance-2: 3 colours
[0, 1, 2, 0, 1, 2]
>>> penta = torch.ones(8, 8).tril(2).triu(-2).bool()       # half-bandwidth 2
>>> [int(colouring(penta, kind=k).max()) + 1 for k in ("column", "star", "symmetric")]
[5, 5, 3]
"""

from __future__ import annotations

from typing import Any

import torch

from ._greedy_colouring import (
    ORDERS,
    SEARCH_BUDGET,
    SEARCH_WORK,
    acyclic_colouring,
    column_colouring,
    distance2_graph,
    distance2_work,
    dsatur,
    greedy,
    greedy_clique,
    smallest_last,
    star_colouring,
)
from .patterns import Pattern, as_pattern

__all__ = ["colouring", "colouring_lower_bound", "colour_count", "KINDS", "ORDERS"]

#: The kinds of colouring: of the columns (forward mode), the rows (reverse mode), an
#: acyclic ("symmetric") or a star colouring of a square pattern (Hessians).
KINDS = ("column", "row", "symmetric", "star")


def _check(kind: Any, order: Any) -> None:
    if kind not in KINDS:
        raise ValueError(f"colouring: kind must be one of {KINDS}, got {kind!r}")
    if order not in ORDERS:
        raise ValueError(f"colouring: order must be one of {ORDERS}, got {order!r}")


def colouring(pattern: Any, *, kind: str = "column", order: str = "best") -> torch.Tensor:
    """Colour the columns, rows or (symmetrically) the vertices of a sparsity pattern.

    Parameters
    ----------
    pattern : torch.Tensor, sequence of (int, int), numpy.ndarray or scipy.sparse matrix
        A bool tensor of shape ``(rows, columns)``, a torch sparse tensor,
        index pairs (an ``(nnz, 2)`` integer tensor or a sequence of
        ``(row, column)`` pairs), a NumPy mask or a SciPy sparse matrix, as
        for :func:`tad_autograd.sparse_jacobian`.
    kind : {"column", "row", "symmetric", "star"}, optional
        ``"column"`` (default): columns sharing a row get different colours
        (for forward mode).  ``"row"``: rows sharing a column get different
        colours (reverse mode).  ``"symmetric"``: an acyclic colouring of the
        square pattern made symmetric (``pattern | pattern.T``), for Hessians
        decompressed by substitution; ``"star"``: a star colouring of it, for
        Hessians read directly.
    order : {"best", "natural", "largest_first", "smallest_last", "dsatur"}, optional
        The order in which the greedy algorithm colours (see the module
        docstring); ``"dsatur"`` for ``"column"`` and ``"row"`` only.
        Default ``"best"``: the colouring with the fewest colours of them
        all, and of a bounded search for the lower bound's count.

    Returns
    -------
    torch.Tensor
        int64, one colour per column (``"column"``, ``"symmetric"``) or row
        (``"row"``), numbered from 0; the number of colours is ``max + 1``.
        Columns or rows without entries get colour 0.  For index pairs, the
        length is the largest index + 1.

    Raises
    ------
    ValueError
        Unknown ``kind`` or ``order``; a malformed pattern; a non-square
        pattern for ``"symmetric"``; ``order="dsatur"`` for ``"symmetric"``
        or ``"star"``.

    Examples
    --------
    An arrow-head pattern: a dense first row and column and a diagonal.

    >>> import torch, tad_autograd as ta
    >>> arrow = torch.eye(5, dtype=torch.bool)
    >>> arrow[0, :] = arrow[:, 0] = True
    >>> ta.colouring(arrow).tolist()                 # the dense row: every column differs
    [0, 1, 2, 3, 4]
    >>> ta.colouring(arrow, kind="star").tolist()   # a star graph: two colours suffice
    [0, 1, 1, 1, 1]

    The five-point Laplacian on a 6 x 6 grid: 5 colours, the lower bound (each
    stencil's 5 points share a row of the pattern), where greedy orders need 7:

    >>> path = ((torch.arange(6)[:, None] - torch.arange(6)).abs() <= 1).double()
    >>> laplacian = torch.kron(path, torch.eye(6)) + torch.kron(torch.eye(6), path) > 0
    >>> [int(ta.colouring(laplacian, order=o).max()) + 1 for o in ("natural", "best")]
    [7, 5]
    >>> ta.colouring_lower_bound(laplacian)
    5
    """
    _check(kind, order)
    p = as_pattern(pattern, "pattern")
    if order == "best":
        return _best(p, kind)
    if kind == "row":
        p = p.transpose()
    if kind in ("symmetric", "star"):
        m, n = p.size()
        if p.shape is not None and m != n:
            raise ValueError(
                f"colouring: kind={kind!r} needs a square pattern, got shape {p.shape}"
            )
        algorithm = acyclic_colouring if kind == "symmetric" else star_colouring
        return torch.tensor(algorithm(p.symmetrised(), order), dtype=torch.int64)
    return torch.tensor(column_colouring(p, order), dtype=torch.int64)


def _best(p: Pattern, kind: str) -> torch.Tensor:
    """``order="best"``: the fewest colours of the greedy orders (natural, largest-first,
    smallest-last) and, for column and row colourings, of DSATUR and a bounded search
    for as many colours as the lower bound (the first of them on a tie)."""
    candidates = [colouring(p, kind=kind, order=o) for o in ("natural", "largest_first")]
    if kind in ("symmetric", "star"):
        candidates.append(colouring(p, kind=kind, order="smallest_last"))
    else:
        q = p if kind == "column" else p.transpose()
        if distance2_work(q) <= SEARCH_WORK:
            adj = distance2_graph(q)
            candidates.append(torch.tensor(greedy(adj, smallest_last(adj)), dtype=torch.int64))
            candidates.append(torch.tensor(dsatur(adj), dtype=torch.int64))
            bound = colouring_lower_bound(p, kind=kind)
            if min(colour_count(c) for c in candidates) > bound:
                found = dsatur(adj, k=bound, budget=SEARCH_BUDGET + 4 * len(adj))
                if found is not None:
                    candidates.append(torch.tensor(found, dtype=torch.int64))
    counts = [colour_count(c) for c in candidates]
    return candidates[counts.index(min(counts))]


def colouring_lower_bound(pattern: Any, *, kind: str = "column") -> int:
    """A lower bound on the number of colours any valid colouring of ``pattern`` needs.

    For ``"column"`` the largest number of entries in a row (they must all
    differ), for ``"row"`` the largest number in a column.  For
    ``"symmetric"`` and ``"star"`` the size of a clique of the symmetrised pattern's
    adjacency graph, found greedily (every star colouring is a proper
    colouring, so a clique's vertices all differ); a bound, not necessarily
    the largest clique.  0 for an empty pattern.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> band = torch.ones(6, 6).tril(1).triu(-1).bool()
    >>> ta.colouring_lower_bound(band), ta.colouring_lower_bound(band, kind="symmetric")
    (3, 2)
    """
    _check(kind, "natural")
    p = as_pattern(pattern, "pattern")
    if p.nnz == 0:
        return 0
    if kind in ("symmetric", "star"):
        return greedy_clique(p.symmetrised())
    index = p.rows if kind == "column" else p.cols
    return int(torch.bincount(index).max())


def colour_count(colours: torch.Tensor) -> int:
    """The number of colours of a colouring (0 for an empty one).

    Examples
    --------
    >>> colour_count(torch.tensor([0, 2, 1])), colour_count(torch.tensor([], dtype=torch.long))
    (3, 0)
    """
    return int(colours.max()) + 1 if colours.numel() else 0
