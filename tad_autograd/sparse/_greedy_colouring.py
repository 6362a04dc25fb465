"""The greedy colouring algorithms behind :func:`tad_autograd.colouring` (pure Python).

Plain lists and dicts, no tensors in the loops: a column colouring is one
pass over the pattern's entries, the symmetric (star and acyclic) ones about
``sum over v of sum over the neighbours w of v of deg(w)`` steps, on the graph
with indistinguishable vertices merged.  :mod:`tad_autograd.sparse.colouring`
documents what each colouring guarantees.
"""

from __future__ import annotations

import heapq
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from .patterns import Pattern

__all__ = [
    "column_colouring",
    "star_colouring",
    "acyclic_colouring",
    "greedy_clique",
    "UnionFind",
    "ORDERS",
    "SEARCH_WORK",
]

#: The vertex orders of the greedy colourings ("best": the one with the fewest colours).
ORDERS = ("best", "largest_first", "natural", "smallest_last", "dsatur")

#: ``order="best"`` adds DSATUR and the search for a colouring with as many colours as the
#: lower bound to the column and row colourings when the distance-2 graph costs at most
#: this many steps to walk (the sum over rows of their squared lengths).
SEARCH_WORK = 2_000_000

#: The colour assignments the search may try, plus 4 per column: enough to find the
#: lattice colourings of five- and seven-point stencils on every grid measured, about
#: 0.1-0.4 s when no such colouring exists.
SEARCH_BUDGET = 20_000


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

    In the static orders (``"natural"``, ``"largest_first"``) each row keeps
    the colours of its coloured columns as a bit mask; a column takes the
    lowest colour free in all its rows: one pass over the entries.
    ``"smallest_last"`` and ``"dsatur"`` walk the distance-2 graph
    (:func:`distance2_graph`).

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> column_colouring(as_pattern(torch.ones(2, 3, dtype=torch.bool)))
    [0, 1, 2]
    """
    m, n = p.size()
    if order in ("smallest_last", "dsatur"):
        adj = distance2_graph(p)
        if order == "dsatur":
            colours = dsatur(adj)
            assert colours is not None  # without a colour limit DSATUR always finishes
            return colours
        return greedy(adj, smallest_last(adj))
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


def distance2_graph(p: Pattern) -> List[List[int]]:
    """Per column of ``p``, the other columns sharing a row with it (sorted).

    Costs the sum over rows of their squared lengths (see :data:`SEARCH_WORK`).

    Examples
    --------
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> distance2_graph(as_pattern([(0, 0), (0, 1), (1, 1), (1, 2)]))
    [[1], [0, 2], [1]]
    """
    m, n = p.size()
    t = p.transpose()
    rows_of = _lists(t.rows, t.cols, n)
    cols_of = _lists(p.rows, p.cols, m)
    adj = []
    for j, rows in enumerate(rows_of):
        near: Set[int] = set()
        for r in rows:
            near.update(cols_of[r])
        near.discard(j)
        adj.append(sorted(near))
    return adj


def distance2_work(p: Pattern) -> int:
    """The steps :func:`distance2_graph` takes: the sum over rows of their squared lengths."""
    if not p.nnz:
        return 0
    return int((torch.bincount(p.rows).double() ** 2).sum())


def greedy(adj: Sequence[List[int]], order: Sequence[int]) -> List[int]:
    """Greedy colouring of a graph: each vertex, in ``order``, takes the lowest colour free."""
    colour = [-1] * len(adj)
    for v in order:
        used = {colour[w] for w in adj[v]}
        c = 0
        while c in used:
            c += 1
        colour[v] = c
    return colour


def smallest_last(adj: Sequence[List[int]]) -> List[int]:
    """The smallest-last order: repeatedly remove a vertex of least remaining degree, and
    colour in the reverse order of removal (each vertex then has at most its degeneracy
    of coloured neighbours)."""
    degree = [len(a) for a in adj]
    heap = [(d, v) for v, d in enumerate(degree)]
    heapq.heapify(heap)
    removed = [False] * len(adj)
    out = []
    while heap:
        d, v = heapq.heappop(heap)
        if removed[v] or d != degree[v]:
            continue
        removed[v] = True
        out.append(v)
        for w in adj[v]:
            if not removed[w]:
                degree[w] -= 1
                heapq.heappush(heap, (degree[w], w))
    out.reverse()
    return out


def dsatur(
    adj: Sequence[List[int]], k: Optional[int] = None, budget: int = 0
) -> Optional[List[int]]:
    """DSATUR (Brelaz): colour next the vertex seeing the most distinct colours (ties: the
    larger degree, then the smaller index), with the lowest colour free.

    With ``k``: a search for a colouring with at most ``k`` colours, backtracking on a
    vertex left without a free colour, trying each vertex's free colours in turn (a
    new colour only as the next unused one); ``None`` when none is found within
    ``budget`` colour assignments.  On stencils every step is forced once a stencil is
    coloured, so the search finds the lattice colouring without backtracking much.

    Examples
    --------
    >>> cycle5 = [[1, 4], [0, 2], [1, 3], [2, 4], [3, 0]]
    >>> dsatur(cycle5)
    [0, 1, 0, 1, 2]
    >>> dsatur(cycle5, k=2, budget=100) is None        # an odd cycle needs 3
    True
    """
    n = len(adj)
    colour = [-1] * n
    counts: List[Dict[int, int]] = [{} for _ in range(n)]
    degree = [len(a) for a in adj]
    heap = [(0, -degree[v], v) for v in range(n)]
    heapq.heapify(heap)

    def assign(v: int, c: int) -> bool:
        """Colour ``v``; False when some uncoloured neighbour has no colour left."""
        colour[v] = c
        alive = True
        for w in adj[v]:
            seen = counts[w]
            before = seen.get(c, 0)
            seen[c] = before + 1
            if before == 0 and colour[w] < 0:
                heapq.heappush(heap, (-len(seen), -degree[w], w))
                if k is not None and len(seen) >= k:
                    alive = False
        return alive

    def unassign(v: int) -> None:
        c, colour[v] = colour[v], -1
        for w in adj[v]:
            seen = counts[w]
            seen[c] -= 1
            if not seen[c]:
                del seen[c]
                if colour[w] < 0:
                    heapq.heappush(heap, (-len(seen), -degree[w], w))
        heapq.heappush(heap, (-len(counts[v]), -degree[v], v))

    def pick() -> int:
        while heap:
            s, _, v = heapq.heappop(heap)
            if colour[v] < 0 and -s == len(counts[v]):
                return v
        return -1

    if k is None:
        for _ in range(n):
            v = pick()
            seen = counts[v]
            c = 0
            while c in seen:
                c += 1
            assign(v, c)
        return colour
    # the search: a stack of (vertex, colours still to try, colours in use before it)
    stack: List[Tuple[int, List[int], int]] = []
    top, tries = 0, 0
    while True:
        v = pick()
        if v < 0:
            return colour
        stack.append((v, [c for c in range(min(k, top + 1)) if c not in counts[v]], top))
        while stack:
            v, options, top = stack[-1]
            if colour[v] >= 0:
                unassign(v)
            while options:
                c = options.pop(0)
                tries += 1
                if tries > budget:
                    return None
                if assign(v, c):
                    top = max(top, c + 1)
                    break
                unassign(v)
            else:
                stack.pop()
                continue
            break
        if not stack:
            return None


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
            self.adj = [
                sorted({group[w] for w in full[m[0]]} - {g}) for g, m in enumerate(self.groups)
            ]

    def order(self, order: str) -> List[int]:
        if order == "smallest_last":
            return smallest_last(self.adj)
        if order == "dsatur":
            raise ValueError(
                "colouring: order='dsatur' applies to column and row colourings; the star "
                "and acyclic colourings take a static order"
            )
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
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> path = torch.ones(5, 5).tril(1).triu(-1).bool()
    >>> star_colouring(as_pattern(path).symmetrised())
    [2, 0, 1, 0, 2]
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
        c = _smallest_free(forbidden)
        colour[v] = c
        for x in nb:
            around = counts[x]
            around[c] = around.get(c, 0) + 1
    return colour


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
    >>> from tad_autograd.sparse.patterns import as_pattern
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
        c = _smallest_free(forbidden)
        colour[v] = c
        for w in nb:
            cw = colour[w]
            if cw >= 0:
                trees.union(v * n + cw, w * n + c)
    return colour


def greedy_clique(p: Pattern) -> int:
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


def _smallest_free(forbidden: Set[int]) -> int:
    """The smallest colour (a non-negative integer) not in ``forbidden``."""
    c = 0
    while c in forbidden:
        c += 1
    return c
