"""Small pieces of the sparse operators: seed matrices, the COO result, the dense check.

Kept apart from :mod:`tad_autograd.sparse.api` so the public module reads as
the documentation; nothing here knows about backends or transforms.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

import torch

from .patterns import Pattern, describe_shape

__all__ = ["seed_matrix", "coo_result", "compare_with_dense"]


def seed_matrix(
    n: int,
    colours: torch.Tensor,
    present: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """The ``(n, k)`` 0/1 seed: ``S[v, colours[v]] = 1`` for every ``v`` in ``present``.

    Vertices without entries in the pattern stay out of every group (their
    derivatives are zero by the pattern's assumption, and leaving them out
    keeps the other entries exact even when that assumption is wrong).

    Examples
    --------
    >>> seed_matrix(3, torch.tensor([0, 1, 0]), torch.tensor([0, 1]), torch.float32, "cpu")
    tensor([[1., 0.],
            [0., 1.],
            [0., 0.]])
    """
    k = int(colours.max()) + 1 if colours.numel() else 0
    seed = torch.zeros(n, k, dtype=dtype, device=device)
    if present.numel():
        seed[present.to(device), colours[present].to(device)] = 1
    return seed


@functools.cache
def _coo_options() -> Tuple[Tuple[str, ...], bool]:
    """The keyword arguments of ``torch.sparse_coo_tensor`` this torch takes, and tested once.

    ``check_invariants`` (torch >= 2.0; without it torch >= 2.12 warns) and
    ``is_coalesced`` (newer torch: saves sorting indices that are already sorted).
    """
    idx, val = torch.zeros(2, 1, dtype=torch.int64), torch.zeros(1)
    for names in (("check_invariants", "is_coalesced"), ("check_invariants",), ()):
        kwargs: Dict[str, Any] = {"check_invariants": False, "is_coalesced": True}
        try:
            torch.sparse_coo_tensor(idx, val, (1, 1), **{k: kwargs[k] for k in names})
        except TypeError:  # an unknown keyword: this torch is older
            continue
        return names, "is_coalesced" in names
    return (), False  # pragma: no cover - the empty tuple always works


def coo_result(p: Pattern, values: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """A coalesced sparse COO tensor of ``shape`` holding ``values`` on the entries of ``p``.

    The entries of ``p`` are sorted row-major and unique, which is what a
    coalesced COO tensor holds; older torch sorts them once more.

    Examples
    --------
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> coo_result(as_pattern([(0, 1), (1, 0)]), torch.tensor([2.0, 3.0]), (2, 2)).to_dense()
    tensor([[0., 2.],
            [3., 0.]])
    """
    names, coalesced = _coo_options()
    kwargs: Dict[str, Any] = {"check_invariants": False, "is_coalesced": True}
    indices = torch.stack([p.rows, p.cols]).to(values.device)
    out = torch.sparse_coo_tensor(indices, values, shape, **{k: kwargs[k] for k in names})
    return out if coalesced else out.coalesce()


def compare_with_dense(
    sparse: torch.Tensor, dense: torch.Tensor, p: Pattern, name: str, what: str
) -> None:
    """``check=True``: raise ``ValueError`` unless ``sparse`` equals the dense derivative.

    An entry off the pattern is a missed one when it exceeds ``rtol`` (1e-10 in
    float64, 1e-5 otherwise) times the largest entry of its own row or of its
    own column, whichever is smaller, and it is above the level of rounding
    noise: 1e-13 (float64) or 8 epsilons, about 1e-6 (float32), times the
    largest entry of the matrix (never more than ``rtol`` times it).  So a missed entry is caught
    however small its row is beside the other rows.  The values on the pattern
    are compared by :func:`torch.testing.assert_close` (``rtol``, and ``atol``
    of ``rtol`` times the largest entry: substitution errors scale with whole
    trees of entries, not with one row).  The message counts the missed entries
    and names the first few.

    Examples
    --------
    >>> from tad_autograd.sparse.patterns import as_pattern
    >>> p = as_pattern([(0, 0), (1, 1)])
    >>> s = coo_result(p, torch.tensor([1e8, 1.0], dtype=torch.float64), (2, 2))
    >>> dense = torch.tensor([[1e8, 0.0], [1e-3, 1.0]], dtype=torch.float64)
    >>> compare_with_dense(s, dense, p, "sparse_jacobian", "Jacobian")  # 1e-3 is not 0 in row 1
    Traceback (most recent call last):
    ...
    ValueError: sparse_jacobian(check=True): 1 entry of the dense Jacobian outside the ...
    """
    dense = dense.detach()
    got = sparse.detach().to_dense()
    rtol = 1e-10 if dense.dtype == torch.float64 else 1e-5
    scale = float(dense.abs().max()) if dense.numel() else 0.0
    atol = rtol * scale
    outside = dense.clone()
    if p.nnz:
        outside[p.rows.to(dense.device), p.cols.to(dense.device)] = 0
    missed = _missed(outside.abs(), dense.abs(), rtol).nonzero()
    if missed.shape[0]:
        first = ", ".join(
            f"({int(r)}, {int(c)}) = {float(dense[r, c]):.3g}" for r, c in missed[:5].tolist()
        )
        raise ValueError(
            f"{name}(check=True): {missed.shape[0]} "
            f"entr{'y' if missed.shape[0] == 1 else 'ies'} of the dense {what} outside the "
            f"sparsity pattern {'is' if missed.shape[0] == 1 else 'are'} not zero: {first}"
            f"{', ...' if missed.shape[0] > 5 else ''}. The pattern misses entries; pass a "
            "larger one (e.g. from detect_sparsity at several points)"
        )
    try:
        torch.testing.assert_close(got, dense, rtol=rtol, atol=atol)
    except AssertionError as error:
        raise ValueError(
            f"{name}(check=True): the sparse {what} of shape {describe_shape(got.shape)} differs "
            f"from the dense one on the pattern:\n{error}"
        ) from None


def _missed(outside: torch.Tensor, magnitude: torch.Tensor, rtol: float) -> torch.Tensor:
    """Where ``outside`` (the off-pattern magnitudes) holds a missed entry, by row and column scale.

    ``magnitude`` is ``|dense|``; see :func:`compare_with_dense`.

    Examples
    --------
    >>> m = torch.tensor([[1e8, 0.0], [0.01, 1.0]], dtype=torch.float64)
    >>> _missed(m * torch.tensor([[0.0, 0.0], [1.0, 0.0]]), m, 1e-10)
    tensor([[False, False],
            [ True, False]])
    """
    if magnitude.numel() == 0:
        return outside > 0
    row = magnitude.amax(1, keepdim=True)
    col = magnitude.amax(0, keepdim=True)
    eps = torch.finfo(magnitude.dtype).eps if magnitude.is_floating_point() else 0.0
    floor = min(rtol, max(rtol * 1e-3, 8 * eps)) * float(magnitude.max())
    return (outside > rtol * torch.minimum(row, col)) & (outside > floor)
