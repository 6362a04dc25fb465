"""Sparse Jacobians and Hessians by colouring: :func:`sparse_jacobian`, :func:`sparse_hessian`.

Given which entries of a derivative may be non-zero (its *sparsity
pattern*), columns (or rows) that never share a row (column) are summed into
one *compressed* product, so a banded ``n x n`` Jacobian costs a handful of
products instead of ``n``.  Each operator colours the
pattern once, when it is built (:mod:`tad_autograd.sparse.colouring`), computes the
compressed products at each call with the library's own transforms --
:func:`~tad_autograd.jacfwd` for ``J S``, :func:`~tad_autograd.jacrev` for
``S^T J`` and ``S^T H`` -- on the chosen backend, and reads the entries back
(``tad_autograd.sparse._decompression``).

Results are coalesced ``torch.sparse_coo`` tensors of shape
``(out.numel(), in.numel())``: derivatives of tensors of any shape,
flattened to a matrix, which is what sparse linear algebra consumes
(``torch.sparse.mm``, ``.to_sparse_csr()``, SciPy).  COO rather than CSR
because it behaves alike on every supported torch and keeps the values
differentiable with respect to the inputs; its entries are the pattern's,
sorted row-major, so ``.indices()`` / ``.values()`` need no further sorting
and ``.to_sparse_csr()`` is cheap.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ..dispatch._checks import check_argnums_type, check_backend, check_chunk_size
from ._derivative import SparseDerivative
from ._user_colouring import as_colours
from .colouring import colour_count
from .colouring import colouring as colour_pattern
from .patterns import Pattern, as_pattern, describe_shape

__all__ = ["sparse_jacobian", "sparse_hessian", "SparseDerivative"]

_MODES = ("auto", "forward", "reverse")
_HESSIAN_KINDS = ("symmetric", "star", "column")


def _common(
    name: str, func: Any, argnums: Any, chunk_size: Any, check: Any, backend: Any
) -> Tuple[int, Optional[str]]:
    if not callable(func):
        raise TypeError(f"{name}: expected a callable `func`, got {type(func)}")
    check_argnums_type(argnums)
    if not isinstance(argnums, int):
        raise NotImplementedError(
            f"{name}: argnums must be an int (one tensor argument), got {argnums!r}; "
            "differentiate one argument at a time"
        )
    check_chunk_size(chunk_size, name)
    if not isinstance(check, bool):
        raise TypeError(f"{name}: check must be a bool, got {check!r}")
    return argnums, check_backend(backend)


def sparse_jacobian(
    func: Callable[..., Any],
    sparsity: Any,
    argnums: int = 0,
    *,
    mode: str = "auto",
    colouring: Any = None,
    chunk_size: Optional[int] = None,
    check: bool = False,
    backend: Optional[str] = None,
) -> SparseDerivative:
    """Sparse Jacobian of ``func`` from a known sparsity pattern, by colouring.

    Columns (forward mode) or rows (reverse mode) that share no entry of the
    pattern are computed together, so a call costs one product per colour
    (e.g. 3 for a tridiagonal Jacobian of any size) instead of one per
    input or output element.

    Parameters
    ----------
    func : callable
        Returns one floating-point tensor of any shape.
    sparsity : torch.Tensor, sequence of (int, int), numpy.ndarray or scipy.sparse matrix
        Which entries of the flattened Jacobian, shape ``(out.numel(),
        in.numel())``, may be non-zero: a bool tensor of that shape, a torch
        sparse tensor (its stored entries), index pairs (an ``(nnz, 2)``
        integer tensor or a sequence of ``(row, column)`` pairs), a bool or
        0/1 integer NumPy array of that shape, or a SciPy sparse matrix or
        array of any format (its stored entries).  Entries outside it are
        assumed zero (see ``check``).
    argnums : int, optional
        The positional argument to differentiate: one tensor (default 0).
    mode : {"auto", "forward", "reverse"}, optional
        ``"forward"``: column colouring, :func:`~tad_autograd.jacfwd` of
        ``c -> func(x + S c)``.  ``"reverse"``: row colouring,
        :func:`~tad_autograd.jacrev` of ``x -> S^T func(x)``.  ``"auto"``
        (default): the side with fewer colours, reverse on a tie.
    colouring : torch.Tensor, numpy.ndarray or list of int, optional
        One's own colouring, used as it is: a non-negative integer colour per
        column (``mode="forward"``) or per row (``mode="reverse"``; either
        mode must be named).  Checked when the operator is built: two columns
        (rows) sharing a row (column) of the pattern must differ, else
        ``ValueError`` names them.  Default: :func:`~tad_autograd.colouring`'s.
    chunk_size : int, optional
        Passed to the Jacobian of the compressed function.
    check : bool, optional
        Also compute the dense Jacobian (:func:`~tad_autograd.jacrev`) and
        raise ``ValueError`` if the sparse one differs, naming the non-zero
        entries outside the pattern (non-zero beside the largest entry of
        their own row or column, so a weak coupling is caught beside much
        larger rows).  For testing a pattern; costs a dense Jacobian.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    SparseDerivative
        A callable taking ``func``'s arguments and returning a coalesced
        ``torch.sparse_coo`` tensor of shape ``(out.numel(), in.numel())``
        holding the Jacobian's values on the pattern.  Its attributes tell
        the mode, the colours and their lower bound.

    Raises
    ------
    ValueError
        A malformed pattern (wrong dtype or rank: at once; a shape that does
        not match ``func``: at the call, naming both shapes); ``mode`` not one
        of the three; a ``colouring`` of the wrong length, with negative
        colours, or two columns (rows) sharing a row (column) and a colour,
        or given with ``mode="auto"``; ``check=True`` and a difference.
    NotImplementedError
        Tuple ``argnums``, a pytree argument or output.

    Examples
    --------
    The right-hand side of a discretised diffusion equation has a tridiagonal Jacobian:

    >>> import torch, tad_autograd as ta
    >>> def rhs(u):
    ...     padded = torch.nn.functional.pad(u, (1, 1))
    ...     return padded[:-2] - 2 * u + padded[2:] - u ** 3
    >>> n = 6
    >>> i = torch.arange(n)
    >>> band = (i[:, None] - i[None, :]).abs() <= 1
    >>> jac = ta.sparse_jacobian(rhs, band)
    >>> jac.n_colours, jac.mode
    (3, 'reverse')
    >>> u = torch.linspace(0, 1, n, dtype=torch.float64)
    >>> J = jac(u)
    >>> J.layout, J.shape, J._nnz()
    (torch.sparse_coo, torch.Size([6, 6]), 16)
    >>> torch.equal(J.to_dense(), ta.jacrev(rhs)(u))
    True

    One's own colouring, e.g. the cyclic one of a band, is used as it is:

    >>> own = ta.sparse_jacobian(rhs, band, mode="forward", colouring=i % 3)
    >>> own.colours.tolist(), own.n_colours
    ([0, 1, 2, 0, 1, 2], 3)
    >>> ta.sparse_jacobian(rhs, band, mode="forward", colouring=i % 2)
    Traceback (most recent call last):
    ...
    ValueError: sparse_jacobian: colouring: columns 0 and 2 share colour 0 but both have ...
    """
    argnums, name = _common("sparse_jacobian", func, argnums, chunk_size, check, backend)
    if mode not in _MODES:
        raise ValueError(f"sparse_jacobian: mode must be one of {_MODES}, got {mode!r}")
    pattern = as_pattern(sparsity)
    if colouring is not None:
        if mode == "auto":
            raise ValueError(
                "sparse_jacobian: with colouring=, name the mode: mode='forward' for a colour "
                "per column, mode='reverse' for a colour per row"
            )
        kind = "column" if mode == "forward" else "row"
        colours = as_colours(colouring, pattern, kind, "sparse_jacobian: colouring")
        return _jacobian(func, pattern, argnums, mode, colours, chunk_size, check, name, True)
    columns = colour_pattern(pattern, kind="column") if mode != "reverse" else None
    rows = colour_pattern(pattern, kind="row") if mode != "forward" else None
    if columns is not None and (rows is None or colour_count(columns) < colour_count(rows)):
        return _jacobian(func, pattern, argnums, "forward", columns, chunk_size, check, name)
    assert rows is not None
    return _jacobian(func, pattern, argnums, "reverse", rows, chunk_size, check, name)


def _jacobian(
    func: Callable[..., Any],
    pattern: Pattern,
    argnums: int,
    mode: str,
    colours: Any,
    chunk_size: Optional[int],
    check: bool,
    backend: Optional[str],
    given: bool = False,
) -> SparseDerivative:
    kind = "column" if mode == "forward" else "row"
    return SparseDerivative(
        "sparse_jacobian",
        func,
        pattern,
        argnums,
        mode,
        kind,
        colours,
        chunk_size,
        check,
        backend,
        given,
    )


def sparse_hessian(
    func: Callable[..., Any],
    sparsity: Any,
    argnums: int = 0,
    *,
    kind: str = "symmetric",
    colouring: Any = None,
    chunk_size: Optional[int] = None,
    check: bool = False,
    backend: Optional[str] = None,
) -> SparseDerivative:
    """Sparse Hessian of a scalar ``func`` from a known sparsity pattern, by colouring.

    The pattern is made symmetric (a Hessian is) and coloured once; each call
    computes ``S^T H`` -- one reverse-over-reverse product per colour, as
    :func:`~tad_autograd.hessian` computes one per element -- and recovers
    the entries.

    Parameters
    ----------
    func : callable
        Returns a tensor with one element (an energy).
    sparsity : torch.Tensor, sequence of (int, int), numpy.ndarray or scipy.sparse matrix
        As for :func:`sparse_jacobian`, of shape ``(in.numel(), in.numel())``;
        ``sparsity | sparsity.T`` is used.
    argnums : int, optional
        The positional argument to differentiate: one tensor (default 0).
    kind : {"symmetric", "star", "column"}, optional
        The colouring.  ``"symmetric"`` (default): an acyclic colouring, the
        fewest colours (``b + 1`` for a band of half-width ``b``), entries
        recovered by substitution along two-coloured trees (summed in float64;
        an entry's error is about epsilon times the entries on the smaller
        side of its tree, so a small entry between two entries 1e8 times
        larger keeps about 8 digits; prefer ``"star"`` where entries differ
        in scale by many orders).  ``"star"``: a star colouring,
        each entry read directly using the symmetry (``2 b + 1`` colours on a
        band, fewer than ``"column"`` on irregular patterns).  ``"column"``:
        the Jacobian's column colouring, no symmetry used.
    colouring : torch.Tensor, numpy.ndarray or list of int, optional
        One's own colouring of ``kind``, a non-negative integer colour per
        column, used as it is; checked when the operator is built (for
        ``"column"``: columns sharing a row differ; ``"star"``: every entry
        can be read from its row or its column; ``"symmetric"``: adjacent
        columns differ and no two colours close a cycle), else
        ``ValueError`` names the offending pair.
    chunk_size, check, backend
        As for :func:`sparse_jacobian` (``check`` compares with
        :func:`~tad_autograd.hessian`).

    Returns
    -------
    SparseDerivative
        Returns a coalesced ``torch.sparse_coo`` tensor of shape
        ``(in.numel(), in.numel())`` on the symmetrised pattern.

    Raises
    ------
    ValueError
        As for :func:`sparse_jacobian`; a non-square pattern; unknown
        ``kind``; a ``colouring`` that is not one of ``kind``.
    RuntimeError
        ``func`` does not return one element.

    Examples
    --------
    A chain of springs: each coordinate interacts with its neighbours only.

    >>> import torch, tad_autograd as ta
    >>> def energy(x):
    ...     return ((x[1:] - x[:-1] - 1.0) ** 4).sum()
    >>> n = 6
    >>> pairs = [(i, i + d) for i in range(n) for d in (0, 1) if i + d < n]
    >>> hess = ta.sparse_hessian(energy, pairs)
    >>> hess.n_colours, ta.sparse_hessian(energy, pairs, kind="column").n_colours
    (2, 3)
    >>> x = torch.arange(n, dtype=torch.float64) * 1.5
    >>> H = hess(x)
    >>> torch.allclose(H.to_dense(), ta.hessian(energy)(x))
    True
    """
    argnums, name = _common("sparse_hessian", func, argnums, chunk_size, check, backend)
    if kind not in _HESSIAN_KINDS:
        raise ValueError(f"sparse_hessian: kind must be one of {_HESSIAN_KINDS}, got {kind!r}")
    pattern = as_pattern(sparsity)
    if pattern.shape is not None and pattern.shape[0] != pattern.shape[1]:
        raise ValueError(
            f"sparse_hessian: sparsity must be square, (in.numel(), in.numel()); got shape "
            f"{describe_shape(pattern.shape)}"
        )
    pattern = pattern.symmetrised()
    if colouring is None:
        colours = colour_pattern(pattern, kind=kind)
    else:
        colours = as_colours(colouring, pattern, kind, "sparse_hessian: colouring")
    return SparseDerivative(
        "sparse_hessian",
        func,
        pattern,
        argnums,
        "hessian",
        kind,
        colours,
        chunk_size,
        check,
        name,
        colouring is not None,
    )
