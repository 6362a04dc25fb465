"""``in_dims``/``out_dims`` handling shared by the backends that batch by hand.

The messages and exception types follow :func:`torch.func.vmap`, so a
mistake reads the same whichever backend runs the call.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..compat._pytree import IncompatibleStructure, broadcast_prefix, tree_flatten, tree_unflatten

__all__ = ["BatchedArgs", "flatten_args", "split_outputs", "join_outputs", "check_out_dim"]


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", repr(func))


class BatchedArgs:
    """Flattened arguments of a vmap call with their batch dimensions.

    Attributes
    ----------
    leaves : list
        The flattened positional arguments.
    dims : list of int or None
        The (non-negative) batch dimension of each leaf, ``None`` if unbatched.
    spec : TreeSpec
        How to rebuild the argument tuple.
    size : int
        The batch size.
    """

    __slots__ = ("leaves", "dims", "spec", "size")

    def __init__(self, leaves: List[Any], dims: List[Optional[int]], spec: Any, size: int):
        self.leaves = leaves
        self.dims = dims
        self.spec = spec
        self.size = size

    def sample(self, index: int) -> Tuple[Any, ...]:
        """The argument tuple of batch element ``index``."""
        args: Tuple[Any, ...] = tree_unflatten(
            [
                leaf if d is None else leaf.select(d, index)
                for leaf, d in zip(self.leaves, self.dims)
            ],
            self.spec,
        )
        return args

    def narrow(self, start: int, length: int) -> Tuple[Any, ...]:
        """The argument tuple of batch elements ``start`` to ``start + length``."""
        args: Tuple[Any, ...] = tree_unflatten(
            [
                leaf if d is None else leaf.narrow(d, start, length)
                for leaf, d in zip(self.leaves, self.dims)
            ],
            self.spec,
        )
        return args

    def placeholder(self) -> Tuple[Any, ...]:
        """Zero-filled arguments of one batch element (for batch size 0)."""
        leaves = []
        for leaf, d in zip(self.leaves, self.dims):
            if d is None:
                leaves.append(leaf)
            else:
                shape = leaf.shape[:d] + leaf.shape[d + 1 :]
                leaves.append(leaf.new_zeros(shape))
        args: Tuple[Any, ...] = tree_unflatten(leaves, self.spec)
        return args


def flatten_args(func: Callable[..., Any], in_dims: Any, args: Tuple[Any, ...]) -> BatchedArgs:
    """Check ``in_dims`` against ``args`` and flatten both.

    Parameters
    ----------
    func : callable
        The vmapped function (named in messages).
    in_dims : int, None or tuple
        As in :func:`torch.func.vmap`.
    args : tuple
        The positional arguments of the call.

    Returns
    -------
    BatchedArgs

    Raises
    ------
    ValueError
        For every mistake :func:`torch.func.vmap` rejects with ``ValueError``.
    TypeError
        For a bool ``in_dims``, which :func:`torch.func.vmap` rejects with ``TypeError``.

    Examples
    --------
    >>> import torch
    >>> flatten_args(len, (0, None), (torch.zeros(3, 2), 1.0)).size
    3
    """

    def head() -> str:  # built only for a message
        return f"vmap({_name(func)}, in_dims={in_dims}, ...)(<inputs>)"

    if isinstance(in_dims, bool):  # torch.func fails on it with a TypeError
        raise TypeError(
            f"{head()}: expected `in_dims` to be int or a (potentially nested) tuple "
            f"matching the structure of inputs, got the bool {in_dims!r}."
        )
    if not isinstance(in_dims, (int, tuple)):
        raise ValueError(
            f"{head()}: expected `in_dims` to be int or a (potentially nested) tuple "
            f"matching the structure of inputs, got: {type(in_dims)}."
        )
    if len(args) == 0:
        raise ValueError(
            f"vmap({_name(func)})(<inputs>): got no inputs. Maybe you forgot to add "
            "inputs, or you are trying to vmap over a function with no inputs. "
            "The latter is unsupported."
        )
    leaves, spec = tree_flatten(args)
    try:
        flat_dims = (
            broadcast_prefix(in_dims, args)
            if isinstance(in_dims, tuple)
            else [in_dims] * len(leaves)
        )
    except IncompatibleStructure:
        raise ValueError(
            f"{head()}: in_dims is not compatible with the structure of `inputs`. "
            f"in_dims is {in_dims!r} but inputs have the structure {spec}."
        ) from None
    dims: List[Optional[int]] = []
    size: Optional[int] = None
    sizes = []
    for leaf, d in zip(leaves, flat_dims):
        if d is None:
            dims.append(None)
            continue
        if isinstance(d, bool):  # torch.func fails on it with a TypeError
            raise TypeError(
                f"{head()}: in_dims must be int or None for every input, got the bool {d!r}."
            )
        if not isinstance(d, int):
            raise ValueError(
                f"{head()}: in_dims must be int or None for every input, got {d!r} of type "
                f"{type(d)}."
            )
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(
                f"{head()}: Got in_dim={d} for an input but the input is of type "
                f"{type(leaf)}. We cannot vmap over non-Tensor arguments, please use "
                "None as the respective in_dim"
            )
        ndim = leaf.dim()
        if not -ndim <= d < ndim:
            raise ValueError(
                f"{head()}: Got in_dim={d} for some input, but that input is a Tensor "
                f"of dimensionality {ndim} so expected in_dim to satisfy "
                f"-{ndim} <= in_dim < {ndim}."
            )
        d = d % ndim
        dims.append(d)
        sizes.append(leaf.shape[d])
    if not sizes:
        raise ValueError(
            f"{head()}: at least one of the inputs must be batched (in_dims={in_dims!r} maps "
            "none of them): Expected at least one Tensor to vmap over"
        )
    size = sizes[0]
    if any(s != size for s in sizes):
        raise ValueError(
            "vmap: Expected all tensors to have the same size in the mapped "
            f"dimension, got sizes {sizes} for the mapped dimension"
        )
    return BatchedArgs(leaves, dims, spec, size)


def split_outputs(
    func: Callable[..., Any], out_dims: Any, output: Any
) -> Tuple[List[Any], List[Optional[int]], Any]:
    """Flatten one sample's output and match ``out_dims`` to it.

    Returns
    -------
    tuple
        ``(leaves, dims, spec)``; ``dims`` are as given (possibly negative).
    """
    leaves, spec = tree_flatten(output)
    if isinstance(out_dims, (int, type(None))) and not isinstance(out_dims, bool):
        dims = [out_dims] * len(leaves)
    elif isinstance(out_dims, (tuple, list)):
        if isinstance(output, torch.Tensor) and type(out_dims) is tuple and len(out_dims) == 1:
            dims = [out_dims[0]]  # torch.func takes a 1-tuple for a bare tensor output
        else:
            try:
                dims = broadcast_prefix(out_dims, output)
            except IncompatibleStructure:
                raise ValueError(
                    f"vmap({_name(func)}, ..., out_dims={out_dims})(<inputs>): out_dims is "
                    f"not compatible with the structure of `outputs`. out_dims is "
                    f"{out_dims!r} (a {type(out_dims).__name__}) but outputs have the "
                    f"structure {spec}."
                ) from None
    elif isinstance(out_dims, dict):
        try:
            dims = broadcast_prefix(out_dims, output)
        except IncompatibleStructure:
            raise ValueError(
                f"vmap({_name(func)}, ..., out_dims={out_dims})(<inputs>): out_dims is "
                "not compatible with the structure of `outputs`."
            ) from None
    else:
        raise ValueError(
            f"vmap({_name(func)}, ..., out_dims={out_dims}): `out_dims` must be an int, "
            "None or a python collection of ints representing where in the outputs "
            "the vmapped dimension should appear."
        )
    for leaf, d in zip(leaves, dims):
        if d is not None and (not isinstance(d, int) or isinstance(d, bool)):
            raise ValueError(
                f"vmap({_name(func)}, ..., out_dims={out_dims}): `out_dims` must be an int, "
                "None or a python collection of ints representing where in the outputs "
                "the vmapped dimension should appear."
            )
        if d is not None and not isinstance(leaf, torch.Tensor):
            raise ValueError(
                f"vmap({_name(func)}, ...): `{_name(func)}` must only return Tensors, got "
                f"type {type(leaf)}. Did you mean to set out_dims= to None for output?"
            )
    return leaves, dims, spec


def check_out_dim(out_dims: Any, d: int, ndim: int) -> None:
    """Raise ``IndexError`` (as :func:`torch.func.vmap`) if ``d`` is no dim of an ``ndim``-d output.

    ``ndim`` counts the batch dimension; ``out_dims`` is named in the message.

    Examples
    --------
    >>> check_out_dim(-1, -1, 2)
    >>> check_out_dim(2, 2, 2)
    Traceback (most recent call last):
    ...
    IndexError: vmap(..., out_dims=2): out_dims 2 is out of range for an output with 2 ...
    """
    if not -ndim <= d < ndim:
        raise IndexError(
            f"vmap(..., out_dims={out_dims!r}): out_dims {d} is out of range for an "
            f"output with {ndim} dimensions including the batch dimension "
            f"(expected to be in range of [{-ndim}, {ndim - 1}], but got {d})"
        )


def join_outputs(
    samples: Sequence[List[Any]],
    dims: List[Optional[int]],
    spec: Any,
    join: Callable[..., Any],
    given: Optional[Dict[int, Any]] = None,
) -> Any:
    """Join per-sample (or per-chunk) output leaves along their ``out_dims``.

    Parameters
    ----------
    samples : sequence of list
        Flattened outputs, one list per sample or chunk.
    dims : list of int or None
        The output dimension of each leaf; ``None`` keeps the first sample's leaf.
    spec : TreeSpec
        The output structure.
    join : callable
        ``torch.stack`` for samples, ``torch.cat`` for chunks.
    given : dict, optional
        Leaves already joined, by index (not joined again).
    """
    joined = []
    for k, d in enumerate(dims):
        if given and k in given:
            joined.append(given[k])
        elif d is None:
            joined.append(samples[0][k])
        else:
            parts = [s[k] for s in samples]
            check_out_dim(dims, d, parts[0].dim() + (1 if join is torch.stack else 0))
            joined.append(join(parts, d))
    return tree_unflatten(joined, spec)
