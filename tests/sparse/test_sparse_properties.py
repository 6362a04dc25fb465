"""Property tests of the colourings and decompressions on hypothesis-generated patterns.

Validity is checked by brute force, from the definitions, independently of
the library's algorithms: a column colouring must give the columns of every
row distinct colours; a star colouring must be proper with no two-coloured
path on four vertices; an acyclic colouring must be proper with every pair of
colours inducing a forest.  Decompression must return the matrix's entries
exactly (direct) or to rounding (substitution), and the end-to-end operators
must match closed-form derivatives.
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import pytest
import torch
from _sparse_models import DT
from hypothesis import given
from hypothesis import strategies as st

import tad_autograd as ta
from benchmarks.problems_sparse import stencil
from tad_autograd.sparse._decompression import direct_plan, substitution_plan
from tad_autograd.sparse.colouring import KINDS
from tad_autograd.sparse.patterns import as_pattern


@st.composite
def patterns(draw, square: bool = False, max_size: int = 9) -> torch.Tensor:
    m = draw(st.integers(1, max_size))
    n = m if square else draw(st.integers(1, max_size))
    density = draw(st.sampled_from([0.1, 0.3, 0.6, 1.0]))
    bits = draw(st.lists(st.floats(0, 1), min_size=m * n, max_size=m * n))
    pattern = torch.tensor(bits, dtype=torch.float64).reshape(m, n) < density
    if square:
        pattern = pattern | pattern.T
    return pattern


orders = st.sampled_from(["best", "largest_first", "natural", "smallest_last", "dsatur"])
symmetric_orders = st.sampled_from(["best", "largest_first", "natural", "smallest_last"])


def _column_colouring_ok(pattern: torch.Tensor, colours: List[int]) -> bool:
    for row in pattern:
        used = [colours[j] for j in row.nonzero().flatten().tolist()]
        if len(used) != len(set(used)):
            return False
    return True


def _adjacency(sym: torch.Tensor) -> List[List[int]]:
    n = sym.shape[0]
    return [[j for j in range(n) if j != i and bool(sym[i, j])] for i in range(n)]


def _proper(adj: List[List[int]], colours: List[int]) -> bool:
    return all(colours[i] != colours[j] for i, nb in enumerate(adj) for j in nb)


def _star_ok(sym: torch.Tensor, colours: List[int]) -> bool:
    adj = _adjacency(sym)
    if not _proper(adj, colours):
        return False
    for a, nb in enumerate(adj):  # every path a-b-c-d on four distinct vertices
        for b in nb:
            for c in adj[b]:
                for d in adj[c]:
                    if len({a, b, c, d}) == 4 and colours[a] == colours[c]:
                        if colours[b] == colours[d]:
                            return False
    return True


def _acyclic_ok(sym: torch.Tensor, colours: List[int]) -> bool:
    adj = _adjacency(sym)
    if not _proper(adj, colours):
        return False
    for pair in itertools.combinations(sorted(set(colours)), 2):
        vertices = [v for v in range(len(adj)) if colours[v] in pair]
        edges = sum(1 for v in vertices for w in adj[v] if colours[w] in pair) // 2
        seen, components = set(), 0
        for v in vertices:  # a forest has |E| = |V| - (number of components)
            if v in seen:
                continue
            components += 1
            stack = [v]
            while stack:
                u = stack.pop()
                if u not in seen:
                    seen.add(u)
                    stack.extend(w for w in adj[u] if colours[w] in pair)
        if edges != len(vertices) - components:
            return False
    return True


@given(patterns(), orders)
def test_column_and_row_colourings_are_valid(pattern: torch.Tensor, order: str) -> None:
    columns = ta.colouring(pattern, kind="column", order=order).tolist()
    rows = ta.colouring(pattern, kind="row", order=order).tolist()
    assert len(columns) == pattern.shape[1] and len(rows) == pattern.shape[0]
    assert _column_colouring_ok(pattern, columns)
    assert _column_colouring_ok(pattern.T, rows)
    assert max(columns) + 1 >= ta.colouring_lower_bound(pattern)
    assert max(rows) + 1 >= ta.colouring_lower_bound(pattern, kind="row")


@given(patterns(square=True), symmetric_orders)
def test_symmetric_colourings_are_valid(pattern: torch.Tensor, order: str) -> None:
    star = ta.colouring(pattern, kind="star", order=order).tolist()
    acyclic = ta.colouring(pattern, kind="symmetric", order=order).tolist()
    assert _star_ok(pattern, star)
    assert _acyclic_ok(pattern, acyclic)
    bound = ta.colouring_lower_bound(pattern, kind="symmetric")
    assert max(star) + 1 >= bound and max(acyclic) + 1 >= bound


def _seed(colours: List[int], n: int) -> torch.Tensor:
    seed = torch.zeros(n, max(colours) + 1, dtype=DT)
    seed[torch.arange(n), torch.tensor(colours)] = 1
    return seed


@given(patterns(), st.integers(0, 2**31 - 1))
def test_direct_decompression_is_exact(pattern: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(pattern.shape, generator=g, dtype=DT) * pattern
    p = as_pattern(pattern)
    expected = matrix[p.rows, p.cols]
    columns = ta.colouring(pattern, kind="column").tolist()
    forward = direct_plan(p, columns, "column", "colour_minor")
    assert torch.equal(forward(matrix @ _seed(columns, pattern.shape[1])), expected)
    rows = ta.colouring(pattern, kind="row").tolist()
    reverse = direct_plan(p, rows, "row", "colour_major")
    assert torch.equal(reverse(_seed(rows, pattern.shape[0]).T @ matrix), expected)


@given(patterns(square=True), st.integers(0, 2**31 - 1))
def test_symmetric_decompression(pattern: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    upper = torch.randn(pattern.shape, generator=g, dtype=DT).triu()
    matrix = (upper + upper.T) * pattern
    p = as_pattern(pattern)
    expected = matrix[p.rows, p.cols]
    n = pattern.shape[0]
    star = ta.colouring(pattern, kind="star").tolist()
    got = direct_plan(p, star, "star", "colour_major")(_seed(star, n).T @ matrix)
    assert torch.equal(got, expected)
    acyclic = ta.colouring(pattern, kind="symmetric").tolist()
    got = substitution_plan(p, acyclic)(_seed(acyclic, n).T @ matrix)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@given(pattern=patterns(), seed=st.integers(0, 2**31 - 1))
def test_sparse_jacobian_of_generated_patterns(mode: str, pattern: torch.Tensor, seed: int) -> None:
    """f(x) = (A * P) @ tanh(x): J = (A * P) * (1 - tanh(x)^2), in closed form."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(pattern.shape, generator=g, dtype=DT) * pattern
    x = torch.randn(pattern.shape[1], generator=g, dtype=DT)
    result = ta.sparse_jacobian(lambda t: a @ torch.tanh(t), pattern, mode=mode)(x)
    expected = a * (1 - torch.tanh(x) ** 2)[None, :]
    torch.testing.assert_close(result.to_dense(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["symmetric", "star"])
@given(pattern=patterns(square=True), seed=st.integers(0, 2**31 - 1))
def test_sparse_hessian_of_generated_patterns(kind: str, pattern: torch.Tensor, seed: int) -> None:
    """E(x) = x^T (A * P) x / 2 + sum(x^4) / 12: H = A * P + diag(x^2), in closed form."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.randn(pattern.shape, generator=g, dtype=DT).triu()
    a = (upper + upper.T) * pattern
    x = torch.randn(pattern.shape[0], generator=g, dtype=DT)
    pattern = pattern | torch.eye(pattern.shape[0], dtype=torch.bool)

    def energy(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * t @ a @ t + (t**4).sum() / 12

    result = ta.sparse_hessian(energy, pattern, kind=kind)(x)
    expected = a + torch.diag(x**2)
    torch.testing.assert_close(result.to_dense(), expected, rtol=1e-12, atol=1e-12)


def test_banded_symmetric_colourings_beat_column_colourings() -> None:
    """Half-bandwidth b: columns 2b + 1 = star 2b + 1 > acyclic b + 1 (the lower bound)."""
    n = 40
    i = torch.arange(n)
    for b in (1, 2, 3, 5):
        pattern = (i[:, None] - i[None, :]).abs() <= b
        counts = {k: int(ta.colouring(pattern, kind=k).max()) + 1 for k in KINDS}
        assert counts == {
            "column": 2 * b + 1,
            "row": 2 * b + 1,
            "star": 2 * b + 1,
            "symmetric": b + 1,
        }
        assert ta.colouring_lower_bound(pattern) == 2 * b + 1
        assert ta.colouring_lower_bound(pattern, kind="symmetric") == b + 1


def test_best_order_keeps_the_colouring_with_fewer_colours() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        pattern = torch.rand(40, 40, generator=g) < 0.1
        for kind in KINDS:
            orders = ["natural", "largest_first", "smallest_last"]
            if kind in ("column", "row"):
                orders.append("dsatur")
            counts = [int(ta.colouring(pattern, kind=kind, order=o).max()) + 1 for o in orders]
            best = int(ta.colouring(pattern, kind=kind).max()) + 1
            greedy = counts[:2] if kind in ("symmetric", "star") else counts[:2] + counts[3:]
            assert ta.colouring_lower_bound(pattern, kind=kind) <= best <= min(greedy)


def test_dsatur_is_refused_for_symmetric_colourings() -> None:
    with pytest.raises(ValueError, match="order='dsatur' applies to column and row"):
        ta.colouring(torch.eye(3, dtype=torch.bool), kind="star", order="dsatur")


@pytest.mark.parametrize(
    "shape",
    [(4, 4), (5, 5), (7, 9), (3, 12), (8, 8), (16, 16), (32, 32), (64, 64)]
    + [(3, 3, 3), (4, 4, 4), (5, 5, 5), (4, 6, 9), (8, 8, 8), (12, 12, 12)],
)
def test_stencils_reach_the_lower_bound(shape: Tuple[int, ...]) -> None:
    """Five colours for the 2-D five-point Laplacian, seven for the 3-D seven-point one.

    Each stencil's points are pairwise within distance 2 of each other, so no column
    (or row) colouring has fewer; ``(i + 2 j) mod 5`` and ``(i + 2 j + 3 k) mod 7`` have
    that many, and the default order must find such a colouring on every grid size.
    """
    pattern = stencil(shape, periodic=False)
    bound = 2 * len(shape) + 1
    for kind in ("column", "row"):
        colours = ta.colouring(pattern, kind=kind)
        assert ta.colouring_lower_bound(pattern, kind=kind) == bound
        assert int(colours.max()) + 1 == bound
        dense = torch.zeros(pattern.max(0).values.add(1).tolist(), dtype=torch.bool)
        dense[pattern[:, 0], pattern[:, 1]] = True
        assert _column_colouring_ok(dense if kind == "column" else dense.T, colours.tolist())


@pytest.mark.parametrize("shape", [(4, 4), (10, 10), (8, 8, 8)])
def test_periodic_stencils_stay_within_the_greedy_counts(shape: Tuple[int, ...]) -> None:
    pattern = stencil(shape, periodic=True)
    best = int(ta.colouring(pattern).max()) + 1
    greedy = [int(ta.colouring(pattern, order=o).max()) + 1 for o in ("natural", "largest_first")]
    assert 2 * len(shape) + 1 <= best <= min(greedy)
    if shape == (10, 10):  # 5 divides both sides: the lattice colouring wraps around
        assert best == 5


def test_block_diagonal_and_arrow_head_colour_counts() -> None:
    blocks = torch.block_diag(*[torch.ones(4, 4, dtype=torch.bool)] * 6)
    assert int(ta.colouring(blocks).max()) + 1 == 4 == ta.colouring_lower_bound(blocks)
    arrow = torch.eye(9, dtype=torch.bool)
    arrow[0, :] = arrow[:, 0] = True
    assert int(ta.colouring(arrow).max()) + 1 == 9
    assert ta.colouring(arrow, kind="star").tolist() == [0] + [1] * 8
    assert int(ta.colouring(arrow, kind="symmetric").max()) + 1 == 2
