"""Forward-mode results in the dtypes of the outputs they belong to.

torch's forward mode computes the tangent of an op on a 0-dim tensor and a
Python number (``0.5 * x``, ``x + 1.0``) with the number as a float64 tensor,
so a float32 function of a 0-dim input gets float64 tangents, and with them
float64 Jacobian blocks, from :func:`torch.func.jvp`/:func:`torch.func.jacfwd`
on every torch and from the dual numbers of torch 1.13 and 2.0.  The same
function with a 1-element input, or in reverse mode, stays in float32.  The
library gives every floating-point tangent (and ``jacfwd`` block) the dtype of
its output, whichever backend computed it.

Examples
--------
>>> import torch
>>> out, tangent = tangents_like_outputs((torch.zeros(()), torch.ones((), dtype=torch.float64)))
>>> tangent.dtype
torch.float32
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional

import torch

from ..compat._pytree import tree_flatten, tree_unflatten
from ._operand_checks import split_aux

__all__ = [
    "tangents_like_outputs",
    "like_output",
    "OutputDtypes",
    "blocks_like_outputs",
]


def _mismatched(value: Any, dtype: torch.dtype) -> bool:
    if not isinstance(value, torch.Tensor) or value.dtype == dtype:
        return False
    return (value.is_floating_point() and dtype.is_floating_point) or (
        value.is_complex() and dtype.is_complex
    )


def like_output(outputs: Any, tangents: Any) -> Any:
    """``tangents`` (shaped like ``outputs``) with each floating leaf in its output's dtype.

    Examples
    --------
    >>> import torch
    >>> like_output(torch.zeros(1), torch.ones(1, dtype=torch.float64)).dtype
    torch.float32
    """
    if isinstance(outputs, torch.Tensor) and isinstance(tangents, torch.Tensor):
        return tangents.to(outputs.dtype) if _mismatched(tangents, outputs.dtype) else tangents
    out_leaves = tree_flatten(outputs)[0]
    t_leaves, spec = tree_flatten(tangents)
    if len(out_leaves) != len(t_leaves):
        return tangents
    if not any(_mismatched(t, o.dtype) for o, t in zip(out_leaves, t_leaves)):
        return tangents
    fixed = [t.to(o.dtype) if _mismatched(t, o.dtype) else t for o, t in zip(out_leaves, t_leaves)]
    return tree_unflatten(fixed, spec)


def tangents_like_outputs(result: Any) -> Any:
    """A ``jvp`` result ``(output, tangent[, aux])`` with :func:`like_output` tangents.

    Examples
    --------
    >>> import torch
    >>> tangents_like_outputs((torch.zeros(1), torch.ones(1)))[1]
    tensor([1.])
    """
    tangent = like_output(result[0], result[1])
    if tangent is result[1]:
        return result
    return (result[0], tangent) + tuple(result[2:])


#: Per thread: the output dtypes each :class:`OutputDtypes` note holds while its call runs.
_NOTES = threading.local()


class OutputDtypes:
    """The dtypes of a function's outputs, noted by the function and read by its ``jacfwd``.

    One note per built ``jacfwd``, handed explicitly to both sides:
    :meth:`recording` wraps the function so that every call notes its output
    dtypes, and :meth:`fixing` wraps the Jacobian function so that its result
    is cast to them (:func:`blocks_like_outputs`).  Notes are kept per thread
    (in a thread-local made at import: ``torch.compile`` cannot trace making
    one) and only while the call runs; nested calls (the function calling its
    own ``jacfwd``) note and read in stack order.

    Examples
    --------
    >>> import torch
    >>> note = OutputDtypes()
    >>> recorded = note.recording(torch.sin, False)
    >>> jac = note.fixing(lambda x: recorded(x)[..., None].double(), False)
    >>> jac(torch.zeros(1)).dtype
    torch.float32
    """

    __slots__ = ()

    def recording(self, func: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
        """``func``, noting the dtypes of its output leaves on every call."""

        def recording(*args: Any) -> Any:
            result = func(*args)
            output = split_aux(result, "jacfwd")[0] if has_aux else result
            notes = getattr(_NOTES, "notes", None)
            if notes is None:
                notes = _NOTES.notes = {}
            if isinstance(output, torch.Tensor):
                notes[self] = [output.dtype]
            else:
                notes[self] = [getattr(o, "dtype", None) for o in tree_flatten(output)[0]]
            return result

        recording.__wrapped__ = func  # type: ignore[attr-defined]
        return recording

    def fixing(self, jacobian_fn: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
        """``jacobian_fn`` (a ``jacfwd`` of a :meth:`recording` function), its blocks
        in their outputs' dtypes."""

        def fixed(*args: Any) -> Any:
            notes = getattr(_NOTES, "notes", None)
            if notes is not None:
                notes.pop(self, None)
            result = jacobian_fn(*args)
            notes = getattr(_NOTES, "notes", None)
            dtypes = notes.pop(self, None) if notes is not None else None
            return blocks_like_outputs(result, has_aux, dtypes)

        return fixed


def blocks_like_outputs(
    result: Any, has_aux: bool, dtypes: Optional[List[Optional[torch.dtype]]]
) -> Any:
    """A ``jacfwd`` result with every block in the dtype of its output (``dtypes``).

    The blocks of output ``k`` are the ``k``-th run of ``n_in`` leaves of the
    Jacobian, whose structure is the outputs' with each leaf replaced by the
    inputs'.  Without dtypes (the function never ran), ``result`` as it is.

    Examples
    --------
    >>> import torch
    >>> blocks_like_outputs(torch.ones(1, 1, dtype=torch.float64), False, [torch.float32]).dtype
    torch.float32
    """
    if not dtypes:
        return result
    jacobian = result[0] if has_aux else result
    if isinstance(jacobian, torch.Tensor):
        dtype = dtypes[0]
        if len(dtypes) != 1 or dtype is None or not _mismatched(jacobian, dtype):
            return result
        fixed: Any = jacobian.to(dtype)
    else:
        leaves, spec = tree_flatten(jacobian)
        n_in = len(leaves) // len(dtypes)
        if n_in * len(dtypes) != len(leaves):
            return result
        out = [dtypes[k // n_in] if n_in else None for k in range(len(leaves))]
        if not any(d is not None and _mismatched(b, d) for b, d in zip(leaves, out)):
            return result
        fixed = tree_unflatten(
            [b.to(d) if d is not None and _mismatched(b, d) else b for b, d in zip(leaves, out)],
            spec,
        )
    return (fixed, result[1]) if has_aux else fixed
