"""Recovering a sparse derivative's entries from its compressed products.

Every plan here is built once per pattern and colouring (plain Python and
integer tensors) and applied at each call with a handful of tensor ops, so a
call costs no Python loop over entries.  The compressed product ``C`` comes
in one of two layouts: ``(k, n)`` with one row per colour (``S^T J`` of
reverse mode, and ``S^T H`` of Hessians), or ``(n, k)`` with one column per
colour (``J S`` of forward mode).  A plan reads ``B[v, c]`` -- vertex ``v``
of colour group ``c`` -- at ``C[c, v]`` or ``C[v, c]`` respectively.

* **Direct** plans (column, row and star colourings) gather one entry of
  ``C`` per entry of the pattern.
* The **substitution** plan (acyclic colourings of Hessians) solves for the
  entries of each two-coloured tree from its leaves up: the entry of the edge
  from ``d`` to its parent ``p`` is ``B[d, colour(p)]`` minus the entries of
  the edges from ``d`` to its children, that is an alternating sum of ``B``
  over the subtree of ``d``.  With the vertices of each tree in depth-first
  order, every subtree is a contiguous range, so all entries come from one
  prefix sum, computed in float64 whatever the dtype (each tree's sum is
  subtracted after it, so the prefix stays near zero between trees).
  Rounding errors of ``B`` add up along a tree: for an entry at the top of a
  tree of ``s`` vertices the error is up to ``s`` times that of one entry
  (about ``sqrt(s)`` times for random rounding).  Trees are rooted at a
  centre, which halves their depth.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .patterns import Pattern

__all__ = [
    "Decompression",
    "Substitution",
    "direct_plan",
    "substitution_plan",
    "InvalidColouring",
]


class InvalidColouring(ValueError):
    """A colouring that does not allow the decompression asked for (a bug, never user input)."""


class Substitution(NamedTuple):
    """The index tensors of the substitution plan (see the module docstring)."""

    terms: torch.Tensor  #: flat index into ``C`` of each term, trees in depth-first order
    sign: torch.Tensor  #: float64 +-1 of each term: (-1) ** depth
    slot: torch.Tensor  #: each term's position in the work array
    tree: torch.Tensor  #: each term's tree
    closers: torch.Tensor  #: each tree's closing position (minus the tree's sum)
    starts: torch.Tensor  #: per edge: prefix index of its subtree's first term
    ends: torch.Tensor  #: per edge: prefix index after its subtree's last term
    edge_sign: torch.Tensor  #: per edge: (-1) ** depth of its lower vertex
    order: torch.Tensor  #: from ``[direct values, edge values]`` to pattern order

    def to(self, device: torch.device) -> Substitution:
        return Substitution(*(t.to(device) for t in self))


class Decompression:
    """Turns a compressed product into the values of a pattern's entries, in pattern order.

    Parameters
    ----------
    direct : torch.Tensor
        int64 flat indices into ``C`` of the entries read directly (every
        entry for a direct plan, the diagonal for a substitution plan).
    substitution : Substitution, optional
        The rest of a substitution plan.
    """

    def __init__(self, direct: torch.Tensor, substitution: Optional[Substitution] = None) -> None:
        self._direct = direct
        self._sub = substitution
        self._on: Dict[torch.device, Tuple[torch.Tensor, Optional[Substitution]]] = {}

    def _tensors(self, device: torch.device) -> Tuple[torch.Tensor, Optional[Substitution]]:
        found = self._on.get(device)
        if found is None:
            sub = None if self._sub is None else self._sub.to(device)
            found = self._on[device] = (self._direct.to(device), sub)
        return found

    def __call__(self, compressed: torch.Tensor) -> torch.Tensor:
        """The values of the pattern's entries (a 1-D tensor of ``compressed``'s dtype)."""
        flat = compressed.reshape(-1)
        index, sub = self._tensors(flat.device)
        # index_select, not flat[index]: advanced indexing is ~500x slower on some CPU builds
        direct = flat.index_select(0, index)
        if sub is None:
            return direct
        f64, device = torch.float64, flat.device
        terms = flat.index_select(0, sub.terms).to(f64) * sub.sign
        sums = torch.zeros(sub.closers.numel(), dtype=f64, device=device)
        sums = sums.index_add(0, sub.tree, terms)
        work = torch.zeros(sub.slot.numel() + sub.closers.numel(), dtype=f64, device=device)
        work = work.index_copy(0, sub.slot, terms).index_copy(0, sub.closers, -sums)
        prefix = torch.cat([torch.zeros(1, dtype=f64, device=device), work.cumsum(0)])
        ends = prefix.index_select(0, sub.ends) - prefix.index_select(0, sub.starts)
        edges = (sub.edge_sign * ends).to(flat.dtype)
        return torch.cat([direct, edges]).index_select(0, sub.order)


def direct_plan(p: Pattern, colours: Sequence[int], kind: str, layout: str) -> Decompression:
    """The plan reading each entry of ``p`` directly from one entry of ``B``.

    ``kind``: ``"column"`` (``B = J S``: entry ``(r, c)`` at ``B[r, colour[c]]``),
    ``"row"`` (``B^T = S^T J``: at ``B[c, colour[r]]``) or ``"star"`` (``B = H S``
    of a symmetric ``p``: at ``B[r, colour[c]]`` when ``c`` is the only column of
    its colour in row ``r``, else at ``B[c, colour[r]]``).

    Raises :class:`InvalidColouring` when some entry cannot be read directly.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> p = as_pattern(torch.eye(2, dtype=torch.bool))
    >>> plan = direct_plan(p, [0, 0], "column", "colour_minor")
    >>> plan(torch.tensor([[3.0], [5.0]]))
    tensor([3., 5.])
    """
    col = torch.tensor(list(colours), dtype=torch.int64)
    k = int(col.max()) + 1 if col.numel() else 0
    rows, cols = p.rows, p.cols
    if kind == "row":
        rows, cols = cols, rows
    vc = torch.stack([rows, col[cols] if cols.numel() else cols], 1)
    unique = _alone(vc, k)
    if kind == "star":
        swapped = torch.stack([cols, col[rows] if rows.numel() else rows], 1)
        other = _alone(swapped, k)
        if not bool((unique | other).all()):
            raise InvalidColouring(
                "not a star colouring: an entry is recoverable from neither side"
            )
        vc = torch.where(unique[:, None], vc, swapped)
    elif not bool(unique.all()):
        raise InvalidColouring(f"not a {kind} colouring: two entries share a (vertex, colour)")
    n = p.size()[1] if kind == "row" else p.size()[0]
    v, c = vc[:, 0], vc[:, 1]
    return Decompression(c * n + v if layout == "colour_major" else v * k + c)


def _alone(vc: torch.Tensor, k: int) -> torch.Tensor:
    """For each (vertex, colour) row: whether no other row has the same pair."""
    if vc.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    _, inverse, counts = torch.unique(
        vc[:, 0] * max(k, 1) + vc[:, 1], return_inverse=True, return_counts=True
    )
    alone: torch.Tensor = counts[inverse].eq(1)
    return alone


def substitution_plan(p: Pattern, colours: Sequence[int]) -> Decompression:
    """The plan of a symmetric pattern ``p`` under an acyclic colouring (``C = S^T H``).

    Raises :class:`InvalidColouring` when two vertices of one colour are
    adjacent or the vertices of two colours contain a cycle.

    Examples
    --------
    A tridiagonal Hessian from two products, ``S^T H`` (colours 0, 1, 0):

    >>> import torch
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> h = torch.tensor([[2.0, -1.0, 0.0], [-1.0, 2.0, -3.0], [0.0, -3.0, 4.0]])
    >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> plan = substitution_plan(as_pattern(h != 0), [0, 1, 0])
    >>> plan(s.T @ h)
    tensor([ 2., -1., -1.,  2., -3., -3.,  4.])
    """
    n = p.size()[0]
    colour = list(colours)
    rows, cols = p.rows, p.cols
    on_diagonal = rows == cols
    low, high = torch.minimum(rows, cols), torch.maximum(rows, cols)
    # one id per edge {i, j}, shared by the entries (i, j) and (j, i)
    keys, entry_edge = torch.unique(
        (low * n + high)[~on_diagonal], sorted=True, return_inverse=True
    )
    edges = list(zip((keys // n).tolist(), (keys % n).tolist()))
    term_vc: List[Tuple[int, int]] = []
    term_sign: List[float] = []
    term_slot: List[int] = []
    term_tree: List[int] = []
    closer: List[int] = []
    edge_range = [(0, 0)] * len(edges)
    edge_sign = [0.0] * len(edges)
    for t, tree_edges in enumerate(_trees(edges, colour, n)):
        base = len(term_slot) + len(closer)
        for pos, (d, parent, e, depth, size) in enumerate(_preorder(tree_edges, edges)):
            sign = -1.0 if depth % 2 else 1.0
            term_vc.append((d, colour[parent]))
            term_sign.append(sign)
            term_slot.append(base + pos)
            term_tree.append(t)
            edge_range[e] = (base + pos, base + pos + size)
            edge_sign[e] = sign
        closer.append(len(term_slot) + len(closer))
    # values come out as [diagonal entries, edge values]; ``order`` puts them in pattern order
    diagonal = rows[on_diagonal]
    source = torch.empty(rows.numel(), dtype=torch.int64)
    source[on_diagonal] = torch.arange(diagonal.numel())
    source[~on_diagonal] = diagonal.numel() + entry_edge
    col = torch.tensor(colour, dtype=torch.int64)
    vc = torch.tensor(term_vc, dtype=torch.int64).reshape(-1, 2)
    span = torch.tensor(edge_range, dtype=torch.int64).reshape(-1, 2)
    sub = Substitution(
        terms=vc[:, 1] * n + vc[:, 0],
        sign=torch.tensor(term_sign, dtype=torch.float64),
        slot=torch.tensor(term_slot, dtype=torch.int64),
        tree=torch.tensor(term_tree, dtype=torch.int64),
        closers=torch.tensor(closer, dtype=torch.int64),
        starts=span[:, 0].contiguous(),
        ends=span[:, 1].contiguous(),
        edge_sign=torch.tensor(edge_sign, dtype=torch.float64),
        order=source,
    )
    return Decompression(col[diagonal] * n + diagonal if diagonal.numel() else diagonal, sub)


def _trees(edges: List[Tuple[int, int]], colour: List[int], n: int) -> List[List[int]]:
    """The edges of each two-coloured tree; raises when the colouring is not acyclic."""
    parent: Dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent.get(x, x)
        return root

    for i, j in edges:
        if colour[i] == colour[j]:
            raise InvalidColouring(f"adjacent vertices {i} and {j} share colour {colour[i]}")
        a, b = find(i * n + colour[j]), find(j * n + colour[i])
        if a == b:
            raise InvalidColouring(f"the edge ({i}, {j}) closes a two-coloured cycle")
        parent[a] = b
    groups: Dict[int, List[int]] = defaultdict(list)
    for e, (i, j) in enumerate(edges):
        groups[find(i * n + colour[j])].append(e)
    return list(groups.values())


def _preorder(
    tree_edges: List[int], edges: List[Tuple[int, int]]
) -> List[Tuple[int, int, int, int, int]]:
    """(vertex, parent, edge to the parent, depth, subtree size) of every non-root vertex.

    In depth-first preorder from a centre of the tree, so every subtree is a contiguous run.
    """
    if len(tree_edges) == 1:  # most trees of irregular patterns: one edge
        e = tree_edges[0]
        return [(edges[e][0], edges[e][1], e, 1, 1)]
    adj: Dict[int, List[Tuple[int, int]]] = defaultdict(list)
    for e in tree_edges:
        i, j = edges[e]
        adj[i].append((j, e))
        adj[j].append((i, e))
    root = _centre(adj)
    out: List[Tuple[int, int, int, int, int]] = []
    index: Dict[int, int] = {}
    stack = [(root, -1, -1, 0)]
    while stack:
        v, up, e, depth = stack.pop()
        if up >= 0:
            index[v] = len(out)
            out.append((v, up, e, depth, 1))
        stack.extend((w, v, f, depth + 1) for w, f in adj[v] if w != up)
    for pos in range(len(out) - 1, -1, -1):  # subtree sizes, children before parents
        up, size = out[pos][1], out[pos][4]
        if up in index:
            u = index[up]
            out[u] = out[u][:4] + (out[u][4] + size,)
    return out


def _centre(adj: Dict[int, List[Tuple[int, int]]]) -> int:
    """A centre of a tree: the last vertex left when leaves are peeled layer by layer."""
    degree = {v: len(nb) for v, nb in adj.items()}
    layer = deque(v for v, d in degree.items() if d <= 1)
    last = next(iter(adj))
    while layer:
        v = layer.popleft()
        last = v
        for w, _ in adj[v]:
            degree[w] -= 1
            if degree[w] == 1:
                layer.append(w)
    return last
