"""Greedy colourings of sparsity patterns, the heart of sparse derivatives (CONTRACT §10).

A Jacobian ``J`` with a known pattern can be computed from a few products
with 0/1 *seed* matrices instead of one product per row or column, when
rows (or columns) that never share a non-zero are summed together:

* **column** colouring (forward mode, ``J S``): two columns get different
  colours whenever some row has an entry in both (a *distance-2* colouring
  of the columns in the row/column bipartite graph), so every non-zero
  ``J[r, c]`` is alone in its row among the columns of its colour;
* **row** colouring (reverse mode, ``S^T J``): the same for rows, i.e. a
  column colouring of the transposed pattern;
* **symmetric** colouring (Hessians, ``H S``): a *star* colouring of the
  pattern's adjacency graph -- adjacent vertices get different colours and
  every path on four vertices uses at least three colours.  Then for every
  entry ``(i, j)`` either ``j`` is the only column of its colour in row ``i``
  or ``i`` is the only column of its colour in row ``j``, and the symmetry
  ``H[i, j] = H[j, i]`` recovers it directly (Coleman and Moré's
  "symmetrically orthogonal" partition).  A banded pattern of half-bandwidth
  ``b`` needs ``2 b + 1`` column colours; star colourings need fewer from
  ``b = 2`` on.

Both algorithms are sequential greedy colourings, each vertex taking the
smallest colour its already coloured neighbourhood allows, in one of
:data:`ORDERS`: ``"largest_first"`` (default; vertices by decreasing degree,
which used as few or fewer colours than the natural order on every pattern of
the test suite and the benchmarks) or ``"natural"``.  The column colouring
costs one pass over the entries (each row keeps the set of colours it holds
as a bit mask); the star colouring costs ``sum over v of sum over the
neighbours w of v of deg(w)``, and first merges *indistinguishable* vertices
(identical closed neighbourhoods, e.g. the three coordinates of an atom in a
pair-potential Hessian), which divides that cost by the group size squared
and keeps the colouring a star colouring (each group gets one block of
consecutive colours).

Examples
--------
>>> import torch
>>> band = torch.ones(6, 6).tril(1).triu(-1).bool()        # tridiagonal
>>> colouring(band).tolist()                              # distance-2: 3 colours
[0, 1, 2, 0, 1, 2]
>>> penta = torch.ones(8, 8).tril(2).triu(-2).bool()       # half-bandwidth 2
>>> int(colouring(penta).max()) + 1, int(colouring(penta, kind="symmetric").max()) + 1
(5, 4)
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from .sparse_patterns import Pattern, as_pattern

__all__ = ["colouring", "colouring_lower_bound", "KINDS", "ORDERS"]

#: The kinds of colouring: of the columns (forward mode), the rows (reverse mode), or a
#: symmetric (star) colouring of a square pattern (Hessians).
KINDS = ("column", "row", "symmetric")
#: The vertex orders of the greedy colourings.
ORDERS = ("largest_first", "natural")


def _check(kind: Any, order: Any) -> None:
    if kind not in KINDS:
        raise ValueError(f"colouring: kind must be one of {KINDS}, got {kind!r}")
    if order not in ORDERS:
        raise ValueError(f"colouring: order must be one of {ORDERS}, got {order!r}")


def colouring(pattern: Any, *, kind: str = "column", order: str = "largest_first") -> torch.Tensor:
    """Colour the columns, rows or (symmetrically) the vertices of a sparsity pattern.

    Parameters
    ----------
    pattern : torch.Tensor or sequence of (int, int)
        A bool tensor of shape ``(rows, columns)``, a torch sparse tensor, or
        index pairs (an ``(nnz, 2)`` integer tensor or a sequence of
        ``(row, column)`` pairs), as for :func:`tad_autograd.sparse_jacobian`.
    kind : {"column", "row", "symmetric"}, optional
        ``"column"`` (default): columns sharing a row get different colours
        (for forward mode).  ``"row"``: rows sharing a column get different
        colours (reverse mode).  ``"symmetric"``: a star colouring of the
        square pattern made symmetric (``pattern | pattern.T``), for Hessians.
    order : {"largest_first", "natural"}, optional
        The order in which the greedy algorithm colours: by decreasing degree
        (default) or by index.

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
        pattern for ``"symmetric"``.

    Examples
    --------
    An arrow-head pattern: a dense first row and column and a diagonal.

    >>> import torch, tad_autograd as ta
    >>> arrow = torch.eye(5, dtype=torch.bool)
    >>> arrow[0, :] = arrow[:, 0] = True
    >>> ta.colouring(arrow).tolist()                 # the dense row: every column differs
    [0, 1, 2, 3, 4]
    >>> ta.colouring(arrow, kind="symmetric").tolist()   # a star: two colours suffice
    [0, 1, 1, 1, 1]
    """
    _check(kind, order)
    p = as_pattern(pattern, "pattern")
    if kind == "row":
        p = p.transpose()
    if kind == "symmetric":
        m, n = p.size()
        if p.shape is not None and m != n:
            raise ValueError(
                f"colouring: kind='symmetric' needs a square pattern, got shape {p.shape}"
            )
        return torch.tensor(star_colouring(p.symmetrised(), order), dtype=torch.int64)
    return torch.tensor(column_colouring(p, order), dtype=torch.int64)


def colouring_lower_bound(pattern: Any, *, kind: str = "column") -> int:
    """A lower bound on the number of colours any valid colouring of ``pattern`` needs.

    For ``"column"`` the largest number of entries in a row (they must all
    differ), for ``"row"`` the largest number in a column.  For
    ``"symmetric"`` the size of a clique of the symmetrised pattern's
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
    if kind == "symmetric":
        return _greedy_clique(p.symmetrised())
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


# ----------------------------------------------------------------------------- algorithms


def _lists(index: torch.Tensor, other: torch.Tensor, count: int) -> List[List[int]]:
    """Per value of the sorted ``index``, the list of ``other`` values (CSR rows as lists)."""
    bounds = torch.bincount(index, minlength=count).cumsum(0).tolist() if index.numel() else []
    flat = other.tolist()
    out, start = [], 0
    for end in bounds or [0] * count:
        out.append(flat[start:end])
        start = end
    return out


def _order(degrees: torch.Tensor, order: str) -> List[int]:
    if order == "natural":
        return list(range(degrees.numel()))
    return torch.sort(degrees, descending=True, stable=True).indices.tolist()


def column_colouring(p: Pattern, order: str = "largest_first") -> List[int]:
    """Greedy distance-2 colouring of the columns of ``p``: columns sharing a row differ.

    Each row keeps the colours of its coloured columns as a bit mask; a
    column takes the lowest colour free in all its rows.  One pass over the
    entries.

    Examples
    --------
    >>> import torch
    >>> column_colouring(as_pattern(torch.ones(2, 3, dtype=torch.bool)))
    [0, 1, 2]
    """
    m, n = p.size()
    t = p.transpose()  # sorted by column
    rows_of = _lists(t.rows, t.cols, n)
    row_len = torch.bincount(p.rows, minlength=m) if p.nnz else torch.zeros(m, dtype=torch.int64)
    # degree proxy of largest-first: entries of the rows a column touches (an upper bound of
    # its distance-2 degree, computed in one pass)
    degree = torch.zeros(n, dtype=torch.int64).index_add_(0, p.cols, row_len[p.rows])
    masks = [0] * m
    colour = [0] * n
    for j in _order(degree, order):
        rows = rows_of[j]
        used = 0
        for r in rows:
            used |= masks[r]
        c = (~used & (used + 1)).bit_length() - 1  # the lowest clear bit
        colour[j] = c
        bit = 1 << c
        for r in rows:
            masks[r] |= bit
    return colour


class _Graph:
    """The adjacency graph of a symmetric pattern, with indistinguishable vertices merged.

    ``groups[g]`` lists the vertices of group ``g`` (identical closed
    neighbourhoods: a clique whose members have the same neighbours);
    ``adj[g]`` the groups adjacent to ``g``.
    """

    def __init__(self, p: Pattern) -> None:
        n = p.size()[0]
        off = p.rows != p.cols
        full = _lists(p.rows[off], p.cols[off], n)
        index: Dict[Tuple[int, ...], int] = {}
        group = []
        self.groups: List[List[int]] = []
        for v, nb in enumerate(full):
            g = index.setdefault(tuple(sorted(nb + [v])), len(self.groups))
            if g == len(self.groups):
                self.groups.append([])
            self.groups[g].append(v)
            group.append(g)
        if len(self.groups) == n:
            self.adj = full
        else:
            self.adj = [sorted({group[w] for w in full[m[0]]}) for m in self.groups]

    def order(self, order: str) -> List[int]:
        return _order(torch.tensor([len(a) for a in self.adj], dtype=torch.int64), order)

    def expand(self, coarse: List[int]) -> List[int]:
        """Colours of the vertices from colours of the groups: a block of colours per group."""
        width: Dict[int, int] = {}
        for g, c in enumerate(coarse):
            width[c] = max(width.get(c, 0), len(self.groups[g]))
        offset, total = {}, 0
        for c in sorted(width):
            offset[c], total = total, total + width[c]
        colour = [0] * sum(len(m) for m in self.groups)
        for g, members in enumerate(self.groups):
            for k, v in enumerate(members):
                colour[v] = offset[coarse[g]] + k
        return colour


def star_colouring(p: Pattern, order: str = "largest_first") -> List[int]:
    """Greedy star colouring of the adjacency graph of the symmetric pattern ``p``.

    A vertex ``v`` may not take a colour that would make a path on four
    vertices two-coloured: the colours of its neighbours (distance 1); if two
    neighbours ``w``, ``x`` share a colour, the colours of every other
    neighbour of ``w`` and ``x`` (``v`` would be inside such a path); and for
    each neighbour ``w`` and each neighbour ``x`` of ``w`` that already has
    another neighbour of ``w``'s colour, ``x``'s colour (``v`` would end one).
    Vertices with identical closed neighbourhoods are coloured as one vertex,
    whose members then take a block of consecutive colours (no two-coloured
    path can pass through two members of one block).

    Examples
    --------
    >>> import torch
    >>> path = torch.ones(5, 5).tril(1).triu(-1).bool()
    >>> star_colouring(as_pattern(path).symmetrised())
    [0, 1, 2, 0, 1]
    """
    graph = _Graph(p)
    return graph.expand(_star(graph.adj, graph.order(order)))


def _star(adj: Sequence[List[int]], order: List[int]) -> List[int]:
    n = len(adj)
    colour = [-1] * n
    # counts[x][a]: how many coloured neighbours of x have colour a
    counts: List[Dict[int, int]] = [{} for _ in range(n)]
    for v in order:
        nb = adj[v]
        forbidden = set()
        seen: Dict[int, int] = {}
        repeated = set()
        for w in nb:
            cw = colour[w]
            if cw >= 0:
                forbidden.add(cw)
                if cw in seen:
                    repeated.add(cw)
                seen[cw] = w
        for w in nb:
            cw = colour[w]
            if cw < 0:
                continue
            inside = cw in repeated  # v between two neighbours of colour cw
            for x in adj[w]:
                cx = colour[x]
                if cx < 0 or x == v:
                    continue
                if inside or counts[x].get(cw, 0) >= 2:
                    forbidden.add(cx)
        c = 0
        while c in forbidden:
            c += 1
        colour[v] = c
        for x in nb:
            cx = counts[x]
            cx[c] = cx.get(c, 0) + 1
    return [max(c, 0) for c in colour]


def acyclic_colouring(p: Pattern, order: str = "largest_first") -> List[int]:
    """Greedy acyclic colouring of the adjacency graph of the symmetric pattern ``p``.

    Adjacent vertices differ, and every cycle uses at least three colours:
    the vertices of any two colours induce a forest.  A vertex may not take
    the colours of its neighbours, nor a colour ``a`` when two of its
    neighbours lie in one tree of the forest of ``a`` and their own colour
    (joining them would close a cycle).  The trees are kept in a union-find
    structure over *(vertex, other colour)* keys.  Indistinguishable vertices
    are coloured as one, as in :func:`star_colouring`.

    Examples
    --------
    >>> import torch
    >>> path = torch.ones(5, 5).tril(1).triu(-1).bool()
    >>> acyclic_colouring(as_pattern(path).symmetrised(), "natural")
    [0, 1, 0, 1, 0]
    """
    graph = _Graph(p)
    return graph.expand(_acyclic(graph.adj, graph.order(order)))


class UnionFind:
    """Union-find over hashable keys (a key never seen is its own root).

    Examples
    --------
    >>> uf = UnionFind()
    >>> uf.union(1, 2); uf.union(3, 2)
    True
    True
    >>> uf.find(1) == uf.find(3), uf.find(1) == uf.find(4)
    (True, False)
    """

    def __init__(self) -> None:
        self.parent: Dict[int, int] = {}

    def find(self, key: int) -> int:
        parent = self.parent
        root = key
        while True:
            up = parent.get(root, root)
            if up == root:
                break
            root = up
        while key != root:  # path compression
            up = parent.get(key, key)
            parent[key] = root
            key = up
        return root

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b``; False when they were joined already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[ra] = rb
        return True


def _acyclic(adj: Sequence[List[int]], order: List[int]) -> List[int]:
    n = len(adj)
    colour = [-1] * n
    # trees.find(v * n + a): the tree of v in the forest of the colours {colour[v], a}
    trees = UnionFind()
    for v in order:
        nb = adj[v]
        forbidden = {colour[w] for w in nb if colour[w] >= 0}
        reached: Dict[int, int] = {}  # tree -> the neighbour of v it was reached through
        for w in nb:
            cw = colour[w]
            if cw < 0:
                continue
            for x in adj[w]:
                cx = colour[x]
                if cx < 0 or x == v or cx in forbidden:
                    continue
                tree = trees.find(w * n + cx)
                through = reached.setdefault(tree, w)
                if through != w:  # two neighbours of v in one tree of {cw, cx}: a cycle
                    forbidden.add(cx)
        c = 0
        while c in forbidden:
            c += 1
        colour[v] = c
        for w in nb:
            cw = colour[w]
            if cw >= 0:
                trees.union(v * n + cw, w * n + c)
    return colour


def _greedy_clique(p: Pattern) -> int:
    """The size of a clique of ``p``'s adjacency graph, grown greedily from every vertex."""
    graph = _Graph(p)
    sets = [set(a) for a in graph.adj]
    size = [len(g) for g in graph.groups]
    best = 0
    for g, nb in enumerate(graph.adj):
        clique, weight = [g], size[g]
        for u in sorted(nb, key=lambda u: -len(graph.adj[u])):
            if all(u in sets[c] for c in clique):
                clique.append(u)
                weight += size[u]
        best = max(best, weight)
    return best
