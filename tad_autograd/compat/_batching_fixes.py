"""Correct batching rules for ops that torch batches wrongly, installed into torch itself.

Where torch's own batching rule for an op gives wrong values, a table entry
(:mod:`~tad_autograd.compat.batching_defects`) makes automatic mode stay clear
of vectorising through the op, which costs a watch over every op of the
user's function.  Where the rule can be corrected at its source instead, this
module registers a right one on torch's batched dispatch key (``FuncTorchBatched``)
through ``torch.library.Library``: every path is then right, the explicit
``func`` and ``functorch`` backends and a user's own :mod:`torch.func` calls
included, and the table entry no longer applies (:data:`CORRECTED`).

Requirements:

* Installed once, at import: registering costs about a millisecond, and the
  table of what remains wrong (``ACTIVE_DEFECTS``) is read on hot paths, so it
  must not change after import.
* A rule runs only where torch runs the batched kernel (inside ``vmap``); an
  unbatched call reaches torch's own kernel as before.
* A rule computes at the next transform level down, as torch's own rules do: it
  unwraps the operands batched at the current ``vmap`` level, runs torch's
  unbatched kernel with the batch as a leading dimension of every operand
  (with the batched key excluded, so that the kernel dispatches to the next
  level), and wraps the result.  So it composes with nested ``vmap``, ``grad``
  and ``jacrev``, and dynamo and AOT autograd trace through it.
* Only where the installed torch offers the means from Python (the helpers of
  ``torch._C._functorch`` used below: torch 1.13, 2.0 and 2.13 all do); where
  not, the table entry stays and automatic mode keeps avoiding the op.

The corrected ops:

``cdist``
    torch's batching rule of ``aten::_cdist_backward`` (the backward of
    :func:`torch.cdist`, which ``vmap`` over a vector-Jacobian product runs)
    gives wrong values when only the incoming gradient is batched, which is
    what ``jacrev`` does: it leaves the points and the distances unbatched for
    a kernel that reads them as if they were batched like the gradient.  The
    rule here expands every operand to the batch, which the kernel computes
    right.

Examples
--------
>>> import torch
>>> from tad_autograd.compat._torch_info import function_transforms
>>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
>>> jac = function_transforms().jacrev(lambda a: torch.cdist(a, y, p=1))(x)
>>> rows = [torch.autograd.grad(torch.cdist(x.requires_grad_(), y, p=1).flatten()[i], x)[0]
...         for i in range(20)]
>>> bool(torch.allclose(jac.reshape(20, 5, 3), torch.stack(rows))) or "cdist" not in CORRECTED
True
"""

from __future__ import annotations

import warnings
from typing import Any, FrozenSet, Optional, Tuple

import torch

#: torch's functorch helpers (untyped in part), torch's untyped Python callables used here
_functorch: Any = getattr(torch._C, "_functorch", None)
_broadcast_shapes: Any = torch.broadcast_shapes
_Library: Any = torch.library.Library

__all__ = ["CORRECTED", "cdist_backward_batched"]

_CDIST_BACKWARD = torch.ops.aten._cdist_backward.default


def _unwrapped(tensor: torch.Tensor, level: int) -> Tuple[torch.Tensor, bool]:
    """``tensor``'s value one level down, its batch (if batched at ``level``) moved to the front."""
    if _functorch.is_batchedtensor(tensor) and _functorch.maybe_get_level(tensor) == level:
        return _functorch.get_unwrapped(tensor).movedim(_functorch.maybe_get_bdim(tensor), 0), True
    return tensor, False


def cdist_backward_batched(
    grad: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, p: float, cdist: torch.Tensor
) -> torch.Tensor:
    """``aten::_cdist_backward`` on operands batched by ``vmap``: the registered kernel.

    Each operand batched at the current level is unwrapped with its batch moved
    to the front; every operand (batched or not) is expanded to the batch and to
    the broadcast batch shape of ``x1`` and ``x2``, so that torch's unbatched
    kernel sees one more leading batch dimension on all of them alike.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> x, y = torch.randn(3, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    >>> d, g = torch.cdist(x, y), torch.randn(5, 3, 4, dtype=torch.float64)
    >>> op = torch.ops.aten._cdist_backward
    >>> rows = function_transforms().vmap(lambda gi: op(gi, x, y, 2.0, d))(g)
    >>> loop = torch.stack([op(gi, x, y, 2.0, d) for gi in g])
    >>> bool(torch.allclose(rows, loop)) or "cdist" not in CORRECTED
    True
    """
    level = _functorch.current_level()
    (g, g_batched), (a, a_batched), (b, b_batched), (d, d_batched) = (
        _unwrapped(t, level) for t in (grad, x1, x2, cdist)
    )
    # torch's batched kernels run with the batched key excluded (so that the ops they
    # call dispatch to the next level down); it is not excluded when this one is called
    _functorch.tls_set_vmap_excluded(True)
    try:
        if not (g_batched or a_batched or b_batched or d_batched):  # batched further out
            return _CDIST_BACKWARD(grad, x1, x2, p, cdist)  # type: ignore[no-any-return]
        size = next(
            t.shape[0]
            for t, batched in ((g, g_batched), (a, a_batched), (b, b_batched), (d, d_batched))
            if batched
        )
        a_shape = a.shape[1:] if a_batched else a.shape
        b_shape = b.shape[1:] if b_batched else b.shape
        batch = (size, *_broadcast_shapes(a_shape[:-2], b_shape[:-2]))

        def expanded(t: torch.Tensor, batched: bool, tail: Tuple[int, ...]) -> torch.Tensor:
            # the vmap batch first, then the operand's own batch dimensions padded on the
            # left to the broadcast ones (a plain expand would align the vmap batch with them)
            own = t.shape[1:] if batched else t.shape
            lead = t if batched else t.unsqueeze(0)
            padded = lead.reshape(
                lead.shape[0], *([1] * (len(batch) - 1 + len(tail) - len(own))), *own
            )
            return padded.expand(*batch, *tail).contiguous()

        pairs = (a_shape[-2], b_shape[-2])
        result = _CDIST_BACKWARD(
            expanded(g, g_batched, pairs),
            expanded(a, a_batched, tuple(a_shape[-2:])),
            expanded(b, b_batched, tuple(b_shape[-2:])),
            p,
            expanded(d, d_batched, pairs),
        )
    finally:
        _functorch.tls_set_vmap_excluded(False)
    return _functorch._add_batch_dim(result, 0, level)  # type: ignore[no-any-return]


#: The ``torch.library.Library`` holding the registered rules (kept alive: the
#: registrations last as long as it does).
_LIBRARY: Optional[Any] = None


def _install() -> FrozenSet[str]:
    """Register the rules where this torch allows it; the table names of the ops corrected."""
    global _LIBRARY
    needed = (
        "current_level",
        "is_batchedtensor",
        "maybe_get_level",
        "maybe_get_bdim",
        "get_unwrapped",
        "tls_set_vmap_excluded",
        "_add_batch_dim",
    )
    if _functorch is None or not all(hasattr(_functorch, n) for n in needed):
        return frozenset()
    library = _Library("aten", "IMPL")
    with warnings.catch_warnings():
        # torch warns that the registration overrides its own kernel: that is the point
        warnings.simplefilter("ignore")
        library.impl("_cdist_backward", cdist_backward_batched, "FuncTorchBatched")
    _LIBRARY = library
    return frozenset({"cdist"})


def _uninstall() -> None:
    """Remove the registered rules: torch's own come back (for tests of what automatic mode
    does on a torch that batches an op wrongly).  :func:`_install` registers them again."""
    global _LIBRARY
    library, _LIBRARY = _LIBRARY, None
    if library is None:
        return
    destroy = getattr(library, "_destroy", None)
    if destroy is not None:  # torch >= 2.1
        destroy()
    else:  # torch 1.13, 2.0: what garbage collection of the library does, now
        library.__del__()
        library._op_impls = set()


#: The table names (``BatchingDefect.op``) of the ops whose batching this package
#: corrected in the installed torch.
CORRECTED: FrozenSet[str] = _install()
