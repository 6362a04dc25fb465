"""``chunk_size`` for transform libraries that lack it (functorch on torch 1.13).

It also holds :func:`vmap_with_out_dims`, the guard every transform backend
puts around the library's ``vmap``: torch (1.13 to 2.13 at least) mishandles a
non-zero ``out_dims`` for an output that does not depend on the batched inputs
(it expands without inserting the batch dimension first: a negative value
gives garbage sizes, on 1.13/2.0 sometimes ``free(): invalid pointer`` and an
abort; a positive one raises, or silently returns wrong values when sizes
happen to match), so non-zero ``out_dims`` are applied here by moving the
batch dimension after a ``vmap`` with ``out_dims`` 0.

``jacrev`` is rebuilt from the library's own ``vjp`` and ``vmap``: one
``vjp``, then the rows of the Jacobian in chunks of ``chunk_size`` basis
vectors, as :func:`torch.func.jacrev` does.  ``vmap`` runs the library's
``vmap`` over slices of the batch and concatenates.  Results equal the
unchunked ones; peak memory falls with the chunk.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

from ..compat._pytree import tree_flatten, tree_unflatten
from ..compat._rng import snapshot
from ..eager._batching import check_out_dim, flatten_args, join_outputs, split_outputs
from ..eager._rows import basis
from ..eager._stand_ins import check_argnums, check_outputs
from .base import ArgnumsT, InDimsT, OutDimsT

__all__ = [
    "chunked_jacrev",
    "chunked_vmap",
    "vmap_with_out_dims",
    "jacrev_tensor_args_only",
    "vmap_batch_of_one_guard",
]


def _on_primals(
    func: Callable[..., Any], args: Tuple[Any, ...], positions: Tuple[int, ...]
) -> Callable[..., Any]:
    """``func`` as a function of the arguments at ``positions`` only (the others fixed)."""

    def on_primals(*primals: Any) -> Any:
        new_args = list(args)
        for p, value in zip(positions, primals):
            new_args[p] = value
        return func(*new_args)

    return on_primals


def chunked_jacrev(
    vjp: Callable[..., Any],
    vmap: Callable[..., Any],
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    chunk_size: int,
) -> Callable[..., Any]:
    """Build ``jacrev(func, argnums, has_aux=..., chunk_size=...)`` from ``vjp`` and ``vmap``.

    Parameters
    ----------
    vjp, vmap : callable
        The transform library's ``vjp(func, *primals, has_aux=...)`` and
        ``vmap(func)``.
    func, argnums, has_aux, chunk_size
        As in :func:`torch.func.jacrev`.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> vjp, vmap = function_transforms().vjp, function_transforms().vmap
    >>> jac = chunked_jacrev(vjp, vmap, torch.sin, 0, False, 1)(torch.zeros(2))
    >>> torch.equal(jac, torch.eye(2))
    True
    """

    def jacobian_fn(*args: Any) -> Any:
        positions = check_argnums(argnums, len(args))

        on_primals = _on_primals(func, args, positions)

        primals = tuple(args[p] for p in positions)
        if has_aux:
            output, vjp_fn, aux = vjp(on_primals, *primals, has_aux=True)
        else:
            output, vjp_fn = vjp(on_primals, *primals)
        out_leaves, out_spec = tree_flatten(output)
        check_outputs(out_leaves)
        flat_primals, primals_spec = tree_flatten(primals)
        numels = [o.numel() for o in out_leaves]
        total = sum(numels)

        pieces: List[List[torch.Tensor]] = [[] for _ in flat_primals]
        for start in range(0, total, chunk_size):
            size = min(chunk_size, total - start)
            rows = tree_unflatten(basis(out_leaves, numels, start, size), out_spec)
            if size == 1:  # no vmap at all, as torch.func does for chunk_size=1
                squeezed = tree_unflatten([b.squeeze(0) for b in tree_flatten(rows)[0]], out_spec)
                cotangents = [c.unsqueeze(0) for c in tree_flatten(vjp_fn(squeezed))[0]]
            else:
                cotangents = tree_flatten(vmap(vjp_fn)(rows))[0]
            for piece, c in zip(pieces, cotangents):
                piece.append(c)

        per_primal = []
        for x, piece in zip(flat_primals, pieces):
            stacked = torch.cat(piece) if piece else x.new_zeros((0,) + x.shape)
            per_primal.append(
                [
                    split.view(o.shape + x.shape)
                    for split, o in zip(torch.split(stacked, numels), out_leaves)
                ]
            )
        nested = []
        for k in range(len(out_leaves)):
            per_arg = tree_unflatten([row[k] for row in per_primal], primals_spec)
            nested.append(per_arg[0] if isinstance(argnums, int) else per_arg)
        jacobian = tree_unflatten(nested, out_spec)
        return (jacobian, aux) if has_aux else jacobian

    return jacobian_fn


def chunked_vmap(
    vmap: Callable[..., Any],
    func: Callable[..., Any],
    in_dims: InDimsT,
    out_dims: OutDimsT,
    randomness: str,
    chunk_size: int,
) -> Callable[..., Any]:
    """Run ``vmap(func, in_dims, out_dims, randomness)`` over chunks of ``chunk_size`` samples.

    With ``randomness="same"`` every chunk starts from the same generator
    states (the CPU's, those of the arguments' CUDA devices and the explicit
    generators the call can see), so every element sees the same draws, as in
    :func:`torch.func.vmap` without chunks.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> vmap = function_transforms().vmap
    >>> chunked_vmap(vmap, torch.sum, 0, 0, "error", 2)(torch.ones(5, 3))
    tensor([3., 3., 3., 3., 3.])
    """
    batched_func = vmap_with_out_dims(vmap, func, in_dims, out_dims, randomness)

    def chunked_fn(*args: Any, **kwargs: Any) -> Any:
        batched = flatten_args(func, in_dims, args)
        if batched.size <= chunk_size:
            return batched_func(*args, **kwargs)
        states = snapshot(func, args, kwargs) if randomness == "same" else None
        chunks = []
        dims: List[Optional[int]] = []
        spec = None
        for start in range(0, batched.size, chunk_size):
            length = min(chunk_size, batched.size - start)
            if states is not None and start:
                states.restore()
            part = batched_func(*batched.narrow(start, length), **kwargs)
            leaves, dims, spec = split_outputs(func, out_dims, part)
            chunks.append(leaves)
        return join_outputs(chunks, dims, spec, torch.cat)

    return chunked_fn


def _moves(out_dims: Any) -> bool:
    """Whether ``out_dims`` puts the batch dimension anywhere but first."""
    if isinstance(out_dims, bool):
        return False
    if isinstance(out_dims, int):
        return out_dims != 0
    if isinstance(out_dims, (tuple, list)):
        return any(_moves(d) for d in out_dims)
    if isinstance(out_dims, dict):
        return any(_moves(d) for d in out_dims.values())
    return False


def _first(out_dims: Any) -> Any:
    """``out_dims`` with every int replaced by 0 (structure and ``None`` kept)."""
    if isinstance(out_dims, bool):
        return out_dims
    if isinstance(out_dims, int):
        return 0
    if isinstance(out_dims, (tuple, list)):
        return type(out_dims)(_first(d) for d in out_dims)
    if isinstance(out_dims, dict):
        return {k: _first(d) for k, d in out_dims.items()}
    return out_dims


def vmap_with_out_dims(
    vmap: Callable[..., Callable[..., Any]],
    func: Callable[..., Any],
    in_dims: InDimsT,
    out_dims: OutDimsT,
    randomness: str,
    **kwargs: Any,
) -> Callable[..., Any]:
    """``vmap(func, in_dims, out_dims, randomness, **kwargs)``, correct for any ``out_dims``.

    With ``out_dims`` 0 (the default) this is the library's ``vmap`` itself
    (no overhead).  Otherwise the library puts the batch dimension first and
    it is moved to ``out_dims`` here, as :func:`torch.func.vmap` specifies,
    also for outputs that do not depend on the batched inputs.

    A ``chunk_size`` with ``randomness="same"`` goes through
    :func:`chunked_vmap`: torch's own chunking replays only the CPU
    generator, so on CUDA each chunk would draw different values.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> vmap = function_transforms().vmap
    >>> c = torch.zeros(2, 3)
    >>> vmap_with_out_dims(vmap, lambda x: c, 0, -1, "error")(torch.ones(4)).shape
    torch.Size([2, 3, 4])
    >>> vmap_with_out_dims(vmap, lambda x: c, 0, 1, "error")(torch.ones(4)).shape
    torch.Size([2, 4, 3])
    """
    if randomness == "same" and kwargs.get("chunk_size") is not None:
        return chunked_vmap(vmap, func, in_dims, out_dims, randomness, kwargs["chunk_size"])
    if not _moves(out_dims):
        return vmap(func, in_dims, out_dims, randomness, **kwargs)
    batched_func = vmap(func, in_dims, _first(out_dims), randomness, **kwargs)

    def moved(*args: Any, **call_kwargs: Any) -> Any:
        output = batched_func(*args, **call_kwargs)
        leaves, dims, spec = split_outputs(func, out_dims, output)
        result = []
        for leaf, d in zip(leaves, dims):
            if d:
                check_out_dim(out_dims, d, leaf.dim())
                leaf = leaf.movedim(0, d)
            result.append(leaf)
        return tree_unflatten(result, spec)

    return moved


def jacrev_tensor_args_only(
    jacrev: Callable[..., Any],
    func: Callable[..., Any],
    argnums: ArgnumsT,
    **kwargs: Any,
) -> Callable[..., Any]:
    """``jacrev(func, argnums, **kwargs)`` that lets non-tensor arguments pass through.

    torch 2.0's ``jacrev`` (and ``jacfwd``: pass it as ``jacrev``) checks every
    positional argument for a complex dtype and fails on anything without
    ``.dtype`` (``AttributeError: 'int' object has no attribute 'dtype'``),
    although only the arguments at ``argnums`` are differentiated.  When some
    argument is not a tensor, the others are closed over and only the
    differentiated ones reach ``jacrev``; the result has the same structure.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> jacrev = function_transforms().jacrev
    >>> f = jacrev_tensor_args_only(jacrev, lambda x, n: x * n, 0)
    >>> f(torch.zeros(2), 3)
    tensor([[3., 0.],
            [0., 3.]])
    """
    direct = jacrev(func, argnums, **kwargs)

    def jacobian_fn(*args: Any) -> Any:
        if all(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(args)[0]):
            return direct(*args)
        positions = check_argnums(argnums, len(args))

        on_primals = _on_primals(func, args, positions)

        local: ArgnumsT = 0 if isinstance(argnums, int) else tuple(range(len(positions)))
        return jacrev(on_primals, local, **kwargs)(*(args[p] for p in positions))

    return jacobian_fn


def vmap_batch_of_one_guard(vmap: Callable[..., Any], every: bool = False) -> Callable[..., Any]:
    """Wrap functorch 1.13's ``vmap`` against its batch-of-one bug: the one shim for it.

    On torch 1.13, ``vmap`` over a batch of one fails through a reduction to a
    0-dim sample (``vmap(jacrev(lambda x: x.sum()))(torch.ones(1))``, a ``jacfwd``
    chunk of one column of ``lambda v: (v @ v).sum()``: "Could not allocate memory
    to change Tensor SizesAndStrides!").  A batch of one 0-dim sample (with ``every``
    any batch of one: for the batches the library makes, the chunks of a chunked
    ``vmap`` or ``jacfwd``) is doubled and the first half of every output kept; an
    in-place update of the doubled batch is copied back to the caller's tensor.

    Parameters
    ----------
    vmap : callable
        ``functorch.vmap`` (``vmap(func, in_dims, out_dims, randomness)``).

    Returns
    -------
    callable
        A ``vmap`` with the same signature.
    """

    def guarded_vmap(
        func: Callable[..., Any],
        in_dims: InDimsT = 0,
        out_dims: OutDimsT = 0,
        randomness: str = "error",
    ) -> Callable[..., Any]:
        batched_func = vmap(func, in_dims, out_dims, randomness)

        def call(*args: Any, **kwargs: Any) -> Any:
            batched = flatten_args(func, in_dims, args)  # torch.func's checks and words
            if batched.size != 1 or not (
                every
                or any(d is not None and x.dim() == 1 for x, d in zip(batched.leaves, batched.dims))
            ):
                return batched_func(*args, **kwargs)
            twice = [
                x if d is None else torch.cat([x, x], d)
                for x, d in zip(batched.leaves, batched.dims)
            ]
            # inference tensors have no version counter: their values tell instead
            versions = [
                None if d is None or t.is_inference() else t._version
                for t, d in zip(twice, batched.dims)
            ]
            output = batched_func(*tree_unflatten(twice, batched.spec), **kwargs)
            for x, t, d, v in zip(batched.leaves, twice, batched.dims, versions):
                if d is None:
                    continue
                first = t.narrow(d, 0, 1)
                if (t._version != v) if v is not None else not torch.equal(first, x):
                    x.copy_(first)  # an in-place update reaches the caller
            leaves, dims, spec = split_outputs(func, out_dims, output)
            return tree_unflatten(
                [leaf if d is None else leaf.narrow(d, 0, 1) for leaf, d in zip(leaves, dims)],
                spec,
            )

        return call

    return guarded_vmap


def checked_outputs(func: Callable[..., Any], has_aux: bool, name: str) -> Callable[..., Any]:
    """``func``, raising torch 2.x's ``RuntimeError`` for outputs ``jacrev`` cannot take.

    functorch 1.13 reports ``None`` outputs or a missing ``(output, aux)``
    tuple in words that do not say what was expected (current torch says
    "Expected f(*primals) to return only tensors"), and returns a real
    Jacobian for a complex output where torch.func raises.

    Examples
    --------
    >>> checked_outputs(lambda x: None, False, "jacrev")(1)
    Traceback (most recent call last):
    ...
    RuntimeError: jacrev: Expected f(*primals) to return only tensors, got unsupported type ...
    """

    def checked(*args: Any) -> Any:
        output = func(*args)
        main = output
        if has_aux:
            if not (isinstance(output, tuple) and len(output) == 2):
                raise RuntimeError(
                    f"{name}(func, ..., has_aux=True): output of function func should be a "
                    "tuple: (output, aux) where output is a tensor or a pytree of tensors; "
                    f"got {type(output)}"
                )
            main = output[0]
        leaves = tree_flatten(main)[0]
        for leaf in leaves or [main]:
            if not isinstance(leaf, torch.Tensor):
                raise RuntimeError(
                    f"{name}: Expected f(*primals) to return only tensors, got unsupported "
                    f"type {type(leaf)}"
                )
        check_outputs(leaves, name)  # functorch 1.13 takes complex outputs silently
        return output

    return checked
