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
    "recording_output_dtypes",
    "blocks_like_outputs",
    "in_output_dtypes",
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


_RECORD = threading.local()


def recording_output_dtypes(func: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """``func``, noting (per thread) the dtypes of its output leaves on every call.

    :func:`blocks_like_outputs` reads the note of the latest call, so it is
    read right after the transform that calls ``func`` returns; nested
    transforms note and read in stack order.

    Examples
    --------
    >>> import torch
    >>> _ = recording_output_dtypes(torch.sin, False)(torch.zeros(1))
    >>> blocks_like_outputs(torch.ones(1, 1, dtype=torch.float64), False).dtype
    torch.float32
    """

    def recording(*args: Any) -> Any:
        result = func(*args)
        output = split_aux(result, "jacfwd")[0] if has_aux else result
        if isinstance(output, torch.Tensor):
            _RECORD.dtypes = [output.dtype]
        else:
            _RECORD.dtypes = [getattr(o, "dtype", None) for o in tree_flatten(output)[0]]
        return result

    recording.__wrapped__ = func  # type: ignore[attr-defined]
    return recording


def blocks_like_outputs(result: Any, has_aux: bool) -> Any:
    """A ``jacfwd`` result with every block in the dtype of its output (as last noted).

    The blocks of output ``k`` are the ``k``-th run of ``n_in`` leaves of the
    Jacobian, whose structure is the outputs' with each leaf replaced by the
    inputs'.  Without a note (the function never ran), ``result`` as it is.
    """
    dtypes: Optional[List[Optional[torch.dtype]]] = getattr(_RECORD, "dtypes", None)
    _RECORD.dtypes = None
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


def in_output_dtypes(jacobian_fn: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """``jacobian_fn`` (a ``jacfwd`` of a :func:`recording_output_dtypes` function),
    its blocks in their outputs' dtypes.

    Examples
    --------
    >>> import torch
    >>> jac = in_output_dtypes(lambda x: recording_output_dtypes(torch.sin, False)(x)[..., None]
    ...                        .double(), False)
    >>> jac(torch.zeros(1)).dtype
    torch.float32
    """

    def fixed(*args: Any) -> Any:
        _RECORD.dtypes = None
        return blocks_like_outputs(jacobian_fn(*args), has_aux)

    return fixed
