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
* The **substitution** plan (acyclic colourings of Hessians) solves each
  two-coloured tree.  Vertex ``w`` of a tree reads ``t_w = B[w, c]``, ``c``
  the tree's other colour: the sum of the entries of the tree's edges at
  ``w``.  Removing the edge ``{u, v}`` splits the tree in two sides; on the
  side of ``u`` the alternating sum of ``t`` (sign ``(-1) ** depth``) leaves
  the edge's entry alone, every other edge of the side cancelling, and so
  does the side of ``v``.  Each entry is taken from the side whose ``|t|``
  add up to less, so it is a difference of values of that side only, never
  of larger entries elsewhere in the tree.  With the vertices of each tree in
  depth-first order a side is one contiguous range (a subtree) or two (the
  rest of its tree); every range is summed in float64 whatever the dtype, as
  the sum of two partial sums within aligned blocks (a table of
  ``log2(largest tree)`` cumulative sums per call), so the rounding error of
  a range's sum comes from the magnitudes in the range alone.  The error of
  an entry is then about epsilon times the sum of ``|t|`` over its smaller
  side: negligible where the entries of a tree share one scale, relative to
  the larger entries where a small one has large ones on both of its sides
  (``kind="star"`` reads every entry directly).
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

    terms: torch.Tensor  #: flat index into ``C`` of each vertex's ``t``, trees in depth-first order
    sign: torch.Tensor  #: float64 +-1 of each vertex: (-1) ** depth
    slot: torch.Tensor  #: each vertex's position in the work array (trees at aligned offsets)
    blank: torch.Tensor  #: float64 zeros: the work array's gaps
    reads: torch.Tensor  #: ``(6, E)``: per edge, the reads of its subtree's sum and the rest's
    flips: torch.Tensor  #: the order of each row of the table of range sums
    side_ends: torch.Tensor  #: ``(4, E)``: subtree start and end, tree start and end
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
        terms = sub.blank.index_copy(0, sub.slot, terms)
        # rows: first reads of the subtree, the rest before it, after it; then second reads
        table = _range_table(terms, sub.flips)
        reads = table.index_select(0, sub.reads.reshape(-1)).reshape(6, -1)
        below, rest = reads[0] + reads[3], (reads[1] + reads[4]) + (reads[2] + reads[5])
        weights = torch.cat([torch.zeros(1, dtype=f64, device=device), terms.abs().cumsum(0)])
        ends = weights.index_select(0, sub.side_ends.reshape(-1)).reshape(4, -1)
        weight, whole = ends[1] - ends[0], ends[3] - ends[2]
        edges = torch.where(weight <= whole - weight, below, -rest) * sub.edge_sign
        return torch.cat([direct, edges.to(flat.dtype)]).index_select(0, sub.order)


def _range_table(values: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The table of :func:`_range_reads`: partial sums of ``values`` within aligned blocks.

    ``values`` are zero-padded to ``2 ** m`` of them; row ``j`` of the table
    splits them into blocks of ``2 ** (j + 1)`` and holds, for a position left
    of its block's middle, the sum from it to the middle, right of the middle
    the sum from the middle to it -- each in the order of ``flips`` (the left
    halves reversed, so that one ``cumsum`` makes both).  Then ``values`` and
    one zero.  Every entry adds values of its own half-block only.
    """
    size = 1 << max(values.numel() - 1, 0).bit_length()
    padded = torch.cat([values, values.new_zeros(size - values.numel())])
    flipped = padded.index_select(0, flips)
    rows = [
        flipped[j * size : (j + 1) * size].reshape(-1, 1 << j).cumsum(-1).reshape(-1)
        for j in range(flips.numel() // max(size, 1))
    ]
    return torch.cat(rows + [padded, values.new_zeros(1)])


def _range_reads(
    starts: torch.Tensor, ends: torch.Tensor, length: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two reads per range of :func:`_range_table` over ``length`` values, and its ``flips``.

    The sum of ``values[starts[i]:ends[i]]`` is the sum of the entries
    ``reads[:, i]`` of the table (one of them zero when the range holds one
    value, both when it is empty).  Only the rows some range needs are built.

    Examples
    --------
    >>> values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    >>> reads, flips = _range_reads(torch.tensor([1, 0, 3, 2]), torch.tensor([4, 5, 4, 2]), 5)
    >>> _range_table(values, flips)[reads].sum(0)
    tensor([14., 31.,  8.,  0.])
    """
    size = 1 << max(length - 1, 0).bit_length()
    first, last = starts, ends - 1
    empty, single = ends <= starts, first == last
    differ = torch.where(empty | single, torch.zeros_like(first), first ^ last)
    # the row of a range: the highest bit where its first and last positions differ
    level = torch.tensor([max(d.bit_length() - 1, 0) for d in differ.tolist()], dtype=torch.int64)
    levels = int(level.max()) + 1 if bool(differ.gt(0).any()) else 0
    position = torch.arange(size, dtype=torch.int64)
    flips = []
    for j in range(levels):  # left halves of the blocks reversed; an involution
        half = 1 << j
        offset = position % (2 * half)
        left = offset < half
        flips.append(torch.where(left, position - offset + half - 1 - offset, position))
    flip = torch.cat(flips) if flips else position[:0]
    zero = (levels + 1) * size

    def at(level: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return flip.index_select(0, level * size + where) + level * size if levels else where

    a = torch.where(single, levels * size + first, at(level, first.clamp(0, size - 1)))
    b = torch.where(single, torch.full_like(last, zero), at(level, last.clamp(0, size - 1)))
    a = torch.where(empty, torch.full_like(a, zero), a)
    b = torch.where(empty, torch.full_like(b, zero), b)
    return torch.stack([a, b]), flip


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
    spans = [(0, 0, 0, 0)] * len(edges)  # per edge: subtree start, end; tree start, end
    edge_sign = [0.0] * len(edges)
    orders = [_preorder(tree_edges, edges) for tree_edges in _trees(edges, colour, n)]
    base = 0
    # largest first, each tree at a multiple of its size rounded up to a power of two: no
    # range then straddles a block larger than its tree, and the table needs fewer rows
    for order in sorted(orders, key=len, reverse=True):
        end = base + 1 + len(order)
        root, child = order[0][1], order[0][0]
        term_vc.append((root, colour[child]))
        term_sign.append(1.0)
        term_slot.append(base)
        for pos, (d, parent, e, depth, size) in enumerate(order, start=base + 1):
            sign = -1.0 if depth % 2 else 1.0
            term_vc.append((d, colour[parent]))
            term_sign.append(sign)
            term_slot.append(pos)
            spans[e] = (pos, pos + size, base, end)
            edge_sign[e] = sign
        base += 1 << len(order).bit_length()
    # values come out as [diagonal entries, edge values]; ``order`` puts them in pattern order
    diagonal = rows[on_diagonal]
    source = torch.empty(rows.numel(), dtype=torch.int64)
    source[on_diagonal] = torch.arange(diagonal.numel())
    source[~on_diagonal] = diagonal.numel() + entry_edge
    col = torch.tensor(colour, dtype=torch.int64)
    vc = torch.tensor(term_vc, dtype=torch.int64).reshape(-1, 2)
    side_ends = torch.tensor(spans, dtype=torch.int64).reshape(-1, 4).T.contiguous()
    side_ends = side_ends if len(edges) else torch.zeros(4, 0, dtype=torch.int64)
    # per edge: the subtree, then the rest of its tree before and after it
    reads, flips = _range_reads(
        torch.cat([side_ends[0], side_ends[2], side_ends[1]]),
        torch.cat([side_ends[1], side_ends[0], side_ends[3]]),
        base,
    )
    sub = Substitution(
        terms=vc[:, 1] * n + vc[:, 0],
        sign=torch.tensor(term_sign, dtype=torch.float64),
        slot=torch.tensor(term_slot, dtype=torch.int64),
        blank=torch.zeros(base, dtype=torch.float64),
        reads=reads.reshape(6, -1),
        flips=flips,
        side_ends=side_ends,
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
