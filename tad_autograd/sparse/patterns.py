"""Sparsity patterns: the accepted forms, their validation, one normal form.

A pattern says which entries of a matrix may be non-zero: the Jacobian of a
function, flattened to ``(out.numel(), in.numel())``, or the Hessian,
``(in.numel(), in.numel())``.  The public operators accept these forms:

* a **bool tensor** of shape ``(rows, columns)``: ``True`` where an entry may
  be non-zero;
* a **torch sparse tensor** (COO, CSR, CSC or BSR) of that shape: its
  *stored* entries, whatever their values (an explicitly stored zero is part
  of the pattern, so the result of a sparse derivative is a valid pattern for
  the next call);
* **index pairs**: an integer tensor of shape ``(nnz, 2)`` or a sequence of
  ``(row, column)`` pairs.  They carry no shape; the derivative's shape is
  taken from the function at the call (every index must fit in it);
* a **NumPy array** of shape ``(rows, columns)``, bool or integer with only
  0 and 1: a dense mask (index pairs from NumPy go through
  ``torch.from_numpy``);
* a **SciPy sparse matrix or array** of any format (``coo``, ``csr``,
  ``csc``, ``bsr``, ``lil``, ``dok``, ``dia``): its stored entries, explicit
  zeros included (for ``dia``: every in-bounds position of its stored
  diagonals, which ``tocoo()`` would thin out to the non-zeros).  SciPy is
  optional and never imported here: an object is one of its sparse matrices
  only if ``scipy.sparse`` was imported already, which creating one does.

:func:`as_pattern` turns each into a :class:`Pattern`: the unique entries
sorted row by row, on the CPU.  Mistakes raise ``ValueError`` (wrong shape,
dtype, rank, negative or fractional indices) or ``TypeError`` (an object that
is none of the three forms), naming what was given and what is allowed.

Examples
--------
>>> import torch
>>> p = as_pattern(torch.tensor([[True, False], [True, True]]))
>>> p.shape, p.rows.tolist(), p.cols.tolist()
((2, 2), [0, 1, 1], [0, 0, 1])
>>> as_pattern([(1, 0), (0, 2), (1, 0)]).pairs()
[(0, 2), (1, 0)]
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence, Tuple

import torch

__all__ = ["Pattern", "as_pattern", "describe_shape"]

Shape = Tuple[int, int]


def describe_shape(shape: Optional[Sequence[int]]) -> str:
    """``(3, 4)`` for a shape; ``"no shape (index pairs)"`` for ``None``.

    Examples
    --------
    >>> describe_shape((3, 4)), describe_shape(None)
    ('(3, 4)', 'no shape (index pairs)')
    """
    if shape is None:
        return "no shape (index pairs)"
    return str(tuple(int(s) for s in shape))


class Pattern:
    """A sparsity pattern in normal form: unique ``(row, column)`` entries sorted row-major.

    Parameters
    ----------
    rows, cols : torch.Tensor
        int64 CPU tensors of equal length.
    shape : tuple of int or None
        ``(rows, columns)``; ``None`` for index pairs, whose shape the call decides.

    Attributes
    ----------
    rows, cols : torch.Tensor
        The entries, sorted by row, then column; no duplicates.
    shape : tuple of int or None
        As given.
    min_shape : tuple of int
        The smallest shape holding every entry: ``(max row + 1, max column + 1)``.

    Examples
    --------
    >>> import torch
    >>> p = Pattern(torch.tensor([1, 0, 1]), torch.tensor([0, 1, 0]), (2, 3))
    >>> p.pairs(), p.nnz, p.min_shape
    ([(0, 1), (1, 0)], 2, (2, 2))
    >>> p.transpose().pairs(), p.transpose().shape
    ([(0, 1), (1, 0)], (3, 2))
    """

    __slots__ = ("rows", "cols", "shape", "min_shape")

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: Optional[Shape]) -> None:
        rows = rows.to(device="cpu", dtype=torch.int64).reshape(-1)
        cols = cols.to(device="cpu", dtype=torch.int64).reshape(-1)
        if rows.numel():
            width = int(cols.max()) + 1
            key = torch.unique(rows * width + cols)  # sorted, unique
            rows, cols = key // width, key % width
        self.rows = rows
        self.cols = cols
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.min_shape = (int(rows.max()) + 1, int(cols.max()) + 1) if rows.numel() else (0, 0)

    @property
    def nnz(self) -> int:
        """The number of entries."""
        return int(self.rows.numel())

    def pairs(self) -> List[Tuple[int, int]]:
        """The entries as a list of ``(row, column)`` pairs."""
        return list(zip(self.rows.tolist(), self.cols.tolist()))

    def size(self) -> Shape:
        """``shape`` where known, else ``min_shape``."""
        return self.shape if self.shape is not None else self.min_shape

    def transpose(self) -> Pattern:
        """The pattern of the transposed matrix."""
        shape = None if self.shape is None else (self.shape[1], self.shape[0])
        return Pattern(self.cols, self.rows, shape)

    def symmetrised(self) -> Pattern:
        """The union of the pattern and its transpose (a Hessian is symmetric)."""
        n = max(self.size())
        shape = None if self.shape is None else (n, n)
        return Pattern(torch.cat([self.rows, self.cols]), torch.cat([self.cols, self.rows]), shape)

    def to_dense(self, shape: Optional[Shape] = None) -> torch.Tensor:
        """A bool tensor of ``shape`` (default :meth:`size`), ``True`` on the entries."""
        m, n = shape if shape is not None else self.size()
        dense = torch.zeros(m, n, dtype=torch.bool)
        dense[self.rows, self.cols] = True
        return dense

    def check_fits(self, shape: Shape, what: str, name: str = "sparsity") -> None:
        """Raise ``ValueError`` naming both shapes unless the pattern is of ``shape``.

        A pattern without a shape (index pairs) must fit inside ``shape``.

        Examples
        --------
        >>> import torch
        >>> as_pattern(torch.ones(2, 3, dtype=torch.bool)).check_fits((3, 3), "the Jacobian")
        Traceback (most recent call last):
        ...
        ValueError: sparsity has shape (2, 3), but the Jacobian has shape (3, 3) ...
        """
        if self.shape is not None:
            if self.shape != tuple(shape):
                raise ValueError(
                    f"{name} has shape {describe_shape(self.shape)}, but {what} has shape "
                    f"{describe_shape(shape)} (rows = output elements, columns = input "
                    "elements, each flattened)"
                )
            return
        if self.min_shape[0] > shape[0] or self.min_shape[1] > shape[1]:
            raise ValueError(
                f"{name}: index pairs up to (row {self.min_shape[0] - 1}, column "
                f"{self.min_shape[1] - 1}) need a matrix of at least shape "
                f"{describe_shape(self.min_shape)}, but {what} has shape {describe_shape(shape)}"
            )

    def __repr__(self) -> str:
        return f"Pattern(nnz={self.nnz}, shape={describe_shape(self.shape)})"


_FORMS = (
    "a bool tensor of shape (rows, columns), a torch sparse tensor, an integer tensor of "
    "index pairs of shape (nnz, 2), a sequence of (row, column) pairs, a bool or 0/1 "
    "integer NumPy array of shape (rows, columns), or a SciPy sparse matrix or array"
)


def as_pattern(sparsity: Any, name: str = "sparsity") -> Pattern:
    """Validate ``sparsity`` and return its :class:`Pattern`.

    Parameters
    ----------
    sparsity : torch.Tensor, sequence of (int, int), numpy.ndarray or scipy.sparse matrix
        One of the forms of the module docstring.
    name : str, optional
        The parameter's name in error messages.

    Returns
    -------
    Pattern

    Raises
    ------
    ValueError
        A tensor or array of the wrong rank or dtype, a NumPy integer array
        holding values other than 0 and 1, index pairs that are not pairs of
        non-negative integers.
    TypeError
        Anything else.

    Examples
    --------
    >>> import torch
    >>> as_pattern(torch.eye(3, dtype=torch.bool).to_sparse()).pairs()
    [(0, 0), (1, 1), (2, 2)]
    >>> import numpy as np
    >>> as_pattern(np.array([[1, 0], [1, 1]])).pairs()
    [(0, 0), (1, 0), (1, 1)]
    >>> as_pattern(torch.ones(2, 2))
    Traceback (most recent call last):
    ...
    ValueError: sparsity: a dense pattern must be a bool tensor, got dtype torch.float32 ...
    """
    if isinstance(sparsity, Pattern):
        return sparsity
    if isinstance(sparsity, torch.Tensor):
        if sparsity.layout != torch.strided:
            return _from_sparse(sparsity, name)
        if sparsity.dtype == torch.bool:
            if sparsity.dim() != 2:
                raise ValueError(
                    f"{name}: a bool pattern must have 2 dimensions (rows = output elements, "
                    f"columns = input elements), got shape {describe_shape(sparsity.shape)}"
                )
            rows, cols = sparsity.detach().to("cpu").nonzero(as_tuple=True)
            return Pattern(rows, cols, (sparsity.shape[0], sparsity.shape[1]))
        if sparsity.dtype.is_floating_point or sparsity.dtype.is_complex:
            raise ValueError(
                f"{name}: a dense pattern must be a bool tensor, got dtype {sparsity.dtype} "
                f"(shape {describe_shape(sparsity.shape)}); use `{name} != 0` for a mask, or "
                f"pass {_FORMS}"
            )
        return _from_pairs(sparsity, name)
    if isinstance(sparsity, (list, tuple)):
        if not all(_is_int_pair(p) for p in sparsity):
            raise ValueError(
                f"{name}: a sequence must hold (row, column) pairs of ints, got {_head(sparsity)}"
            )
        pairs = torch.tensor(sparsity, dtype=torch.int64).reshape(-1, 2)
        return _from_pairs(pairs, name)
    if _is_scipy_sparse(sparsity):
        return _from_scipy(sparsity, name)
    if _is_numpy_array(sparsity):
        return _from_numpy(sparsity, name)
    raise TypeError(f"{name}: expected {_FORMS}; got {type(sparsity).__name__}")


def _is_int_pair(p: Any) -> bool:
    return (
        isinstance(p, (tuple, list))
        and len(p) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
    )


def _head(seq: Sequence[Any]) -> str:
    text = repr(list(seq[:3]))
    return text[:-1] + ", ...]" if len(seq) > 3 else text


def _from_pairs(pairs: torch.Tensor, name: str) -> Pattern:
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(
            f"{name}: integer index pairs must have shape (nnz, 2), got shape "
            f"{describe_shape(pairs.shape)} of dtype {pairs.dtype}; a dense pattern is a bool "
            "tensor"
        )
    pairs = pairs.detach().to("cpu", torch.int64)
    if pairs.numel() and int(pairs.min()) < 0:
        raise ValueError(
            f"{name}: index pairs must be non-negative, got minimum {int(pairs.min())}"
        )
    return Pattern(pairs[:, 0], pairs[:, 1], None)


def _from_sparse(sparsity: torch.Tensor, name: str) -> Pattern:
    if sparsity.dim() != 2:
        raise ValueError(
            f"{name}: a sparse pattern must have 2 dimensions, got shape "
            f"{describe_shape(sparsity.shape)} ({sparsity.layout})"
        )
    shape = (int(sparsity.shape[0]), int(sparsity.shape[1]))
    t = sparsity.detach()
    layout = t.layout
    if layout == torch.sparse_coo:
        idx = t._indices().to("cpu")
        return Pattern(idx[0], idx[1], shape)
    if layout in (torch.sparse_csr, getattr(torch, "sparse_bsr", None)):
        outer, inner = _expand(t.crow_indices()), t.col_indices().to("cpu", torch.int64)
        rows_first = True
    elif layout in (getattr(torch, "sparse_csc", None), getattr(torch, "sparse_bsc", None)):
        outer, inner = _expand(t.ccol_indices()), t.row_indices().to("cpu", torch.int64)
        rows_first = False
    else:
        raise TypeError(f"{name}: unsupported sparse layout {layout}; expected {_FORMS}")
    rows, cols = (outer, inner) if rows_first else (inner, outer)
    if layout in (torch.sparse_csr, getattr(torch, "sparse_csc", None)):
        return Pattern(rows, cols, shape)
    # block layouts: every element of every stored block is part of the pattern
    bh, bw = int(t.values().shape[-2]), int(t.values().shape[-1])
    dr = torch.arange(bh).repeat_interleave(bw)
    dc = torch.arange(bw).repeat(bh)
    return Pattern(
        (rows[:, None] * bh + dr[None, :]).reshape(-1),
        (cols[:, None] * bw + dc[None, :]).reshape(-1),
        shape,
    )


def _expand(pointers: torch.Tensor) -> torch.Tensor:
    """Compressed pointers (CSR's ``crow_indices``) to one outer index per stored entry."""
    pointers = pointers.to("cpu", torch.int64)
    counts = pointers[1:] - pointers[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


def _is_numpy_array(obj: Any) -> bool:
    """Whether ``obj`` is a NumPy array (never imports NumPy: an array means it is imported)."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _is_scipy_sparse(obj: Any) -> bool:
    """Whether ``obj`` is a SciPy sparse matrix or array (never imports SciPy, as above)."""
    scipy_sparse = sys.modules.get("scipy.sparse")
    return scipy_sparse is not None and bool(scipy_sparse.issparse(obj))


def _from_numpy(array: Any, name: str) -> Pattern:
    """A dense NumPy mask: bool, or integer holding only 0 and 1."""
    kind = array.dtype.kind  # "b" bool, "i"/"u" integers
    if array.ndim != 2:
        raise ValueError(
            f"{name}: a NumPy pattern must have 2 dimensions (rows = output elements, "
            f"columns = input elements), got shape {describe_shape(array.shape)}"
        )
    if kind not in "biu":
        raise ValueError(
            f"{name}: a NumPy pattern must be a bool or 0/1 integer array, got dtype "
            f"{array.dtype} (shape {describe_shape(array.shape)}); use `{name} != 0` for a mask"
        )
    if kind != "b" and array.size and not ((array == 0) | (array == 1)).all():
        raise ValueError(
            f"{name}: a NumPy integer array is read as a dense 0/1 mask of shape (rows, "
            f"columns), but this one of shape {describe_shape(array.shape)} holds values other "
            f"than 0 and 1; use `{name} != 0` for a mask, or torch.from_numpy({name}) for "
            "index pairs of shape (nnz, 2)"
        )
    rows, cols = array.nonzero()
    return Pattern(
        torch.as_tensor(rows, dtype=torch.int64),
        torch.as_tensor(cols, dtype=torch.int64),
        (int(array.shape[0]), int(array.shape[1])),
    )


def _from_scipy(matrix: Any, name: str) -> Pattern:
    """A SciPy sparse matrix or array of any format: its stored entries."""
    shape = tuple(int(s) for s in matrix.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{name}: a SciPy sparse pattern must have 2 dimensions, got shape "
            f"{describe_shape(shape)} ({matrix.format})"
        )
    if matrix.format == "dia":
        rows, cols = _dia_entries(matrix, shape)
        return Pattern(rows, cols, shape)
    coo = matrix.tocoo()  # keeps explicit zeros for every format but ``dia``
    return Pattern(
        torch.as_tensor(coo.row, dtype=torch.int64),
        torch.as_tensor(coo.col, dtype=torch.int64),
        shape,
    )


def _dia_entries(matrix: Any, shape: Shape) -> Tuple[torch.Tensor, torch.Tensor]:
    """The stored entries of a SciPy ``dia`` matrix: every in-bounds slot of its diagonals.

    ``data[k, j]`` holds the entry ``(j - offsets[k], j)``; slots whose row or
    column falls outside ``shape`` are padding, not entries.
    """
    offsets = torch.as_tensor(matrix.offsets, dtype=torch.int64).reshape(-1, 1)
    width = min(int(matrix.data.shape[1]), shape[1])
    cols = torch.arange(width, dtype=torch.int64).reshape(1, -1).expand(offsets.shape[0], -1)
    rows = cols - offsets
    inside = (rows >= 0) & (rows < shape[0])
    return rows[inside], cols[inside]
