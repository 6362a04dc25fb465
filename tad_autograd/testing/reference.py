"""Independent references: a Python-loop ``vmap`` and a ``jacrev`` of plain autograd.

Nothing here calls a ``tad_autograd`` backend or the library's own loops, so the
references stay independent of the code they check.  This module holds the test
kit's one loop over the samples of a batch (:func:`select_sample` and
:func:`stack_samples`, put together by :func:`reference_vmap`); the strategies,
the property checks and the differential fuzzer all use it.

Examples
--------
>>> import torch
>>> args = (torch.arange(6.0).reshape(2, 3),)  # a batch of 3 along dimension 1
>>> stack_samples([select_sample(args, 1, b)[0].sum() for b in range(3)])
tensor([3., 5., 7.])
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from ..compat._pytree import broadcast_prefix, tree_flatten, tree_unflatten

__all__ = [
    "map_tensors",
    "select_sample",
    "stack_samples",
    "reference_vmap",
    "reference_jacobian",
    "flat_function",
]


def map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``tree``; other leaves are kept.

    Examples
    --------
    >>> import torch
    >>> map_tensors(lambda t: t.shape, {"a": torch.zeros(2), "k": 3})
    {'a': torch.Size([2]), 'k': 3}
    """
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([fn(t) if isinstance(t, torch.Tensor) else t for t in leaves], spec)


def _dims_per_leaf(args: Tuple[Any, ...], in_dims: Any) -> List[Any]:
    """``in_dims`` (an int, ``None`` or a tuple prefix of ``args``) per leaf of ``args``."""
    dims_tree = in_dims if isinstance(in_dims, tuple) else tuple([in_dims] * len(args))
    return broadcast_prefix(dims_tree, tuple(args))


def select_sample(args: Sequence[Any], in_dims: Any, b: int) -> Tuple[Any, ...]:
    """The positional arguments of sample ``b`` of a batched call.

    Parameters
    ----------
    args : sequence
        Batched positional arguments (pytrees of tensors).
    in_dims : int, None or tuple
        As for ``vmap``: one value for every argument, or a per-argument
        (possibly nested) tuple.
    b : int
        The sample.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(6.0).reshape(2, 3)
    >>> select_sample((x, {"w": x}), (1, None), 2)
    (tensor([2., 5.]), {'w': tensor([[0., 1., 2.],
            [3., 4., 5.]])})
    """
    leaves, spec = tree_flatten(tuple(args))
    dims = _dims_per_leaf(tuple(args), in_dims)
    sample = [leaf if d is None else leaf.select(d, b) for leaf, d in zip(leaves, dims)]
    out: Tuple[Any, ...] = tree_unflatten(sample, spec)
    return out


def stack_samples(outs: Sequence[Any], out_dims: Any = 0) -> Any:
    """Stack per-sample outputs (same pytree each) along ``out_dims``.

    Examples
    --------
    >>> import torch
    >>> stack_samples([(torch.zeros(2), torch.ones(())), (torch.ones(2), torch.ones(()))], (1, 0))
    (tensor([[0., 1.],
            [0., 1.]]), tensor([1., 1.]))
    """
    leaves0, spec = tree_flatten(outs[0])
    dims = broadcast_prefix(out_dims, outs[0])
    per_sample = [tree_flatten(o)[0] for o in outs]
    stacked = [torch.stack([p[i] for p in per_sample], dim=d) for i, d in enumerate(dims)]
    return tree_unflatten(stacked, spec)


def reference_vmap(
    func: Callable[..., Any], in_dims: Any = 0, out_dims: Any = 0
) -> Callable[..., Any]:
    """A Python-loop ``vmap``: call ``func`` per sample and stack the outputs.

    Keyword arguments are passed through unbatched.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(6.0).reshape(2, 3)
    >>> reference_vmap(torch.sum, in_dims=1)(x)
    tensor([3., 5., 7.])
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        leaves = tree_flatten(tuple(args))[0]
        dims = _dims_per_leaf(tuple(args), in_dims)
        sizes = {leaf.shape[d] for leaf, d in zip(leaves, dims) if d is not None}
        if len(sizes) != 1:
            raise ValueError(f"reference_vmap: need one batch size, found {sorted(sizes)}")
        (size,) = sizes
        outs = [func(*select_sample(args, in_dims, b), **kwargs) for b in range(size)]
        return stack_samples(outs, out_dims)

    return wrapper


def reference_jacobian(func: Callable[..., Any], *args: Any, argnums: Any = 0) -> Any:
    """``jacrev(func, argnums)(*args)`` computed with ``torch.autograd.functional.jacobian``.

    Independent of every ``tad_autograd`` backend; returns the structure
    ``jacrev`` promises (output pytree, then the argnums tuple when a tuple,
    then the input pytree; leaves of shape ``out.shape + in.shape``).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> reference_jacobian(lambda x: {"y": x * x}, x)["y"]
    tensor([[2., 0.],
            [0., 4.]], dtype=torch.float64)
    """
    flat_func, flat_in, rebuild = flat_function(func, args, argnums)
    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(flat_func, flat_in)  # type: ignore[no-untyped-call]
    return rebuild(jac)


def flat_function(
    func: Callable[..., Any], args: Tuple[Any, ...], argnums: Any
) -> Tuple[Callable[..., Tuple[Any, ...]], Tuple[Any, ...], Callable[[Any], Any]]:
    """Flatten ``func`` at ``argnums`` for tools that want tensors in, tensors out.

    Returns ``(flat_func, flat_inputs, rebuild)``: ``flat_func(*flat_inputs)``
    returns the tuple of output leaves; ``rebuild(jac)`` turns a nested tuple
    ``jac[out_leaf][in_leaf]`` (as ``torch.autograd.functional.jacobian``
    returns) into the structure ``jacrev`` returns.  Other arguments are
    passed through unchanged.

    Examples
    --------
    >>> import torch
    >>> f, inputs, rebuild = flat_function(lambda d, k: d["a"] * k, ({"a": torch.ones(2)}, 3), 0)
    >>> f(*inputs)
    (tensor([3., 3.]),)
    """
    n = len(args)
    single = isinstance(argnums, int)
    positions = [(a % n if -n <= a < n else a) for a in ((argnums,) if single else argnums)]
    in_specs: List[Any] = []
    in_leaves_per_arg: List[List[Any]] = []
    for p in positions:
        leaves, spec = tree_flatten(args[p])
        in_specs.append(spec)
        in_leaves_per_arg.append(leaves)
    counts = [len(leaves) for leaves in in_leaves_per_arg]
    flat_in = tuple(t for leaves in in_leaves_per_arg for t in leaves)
    box: Dict[str, Any] = {}

    def flat_func(*flat: Any) -> Tuple[Any, ...]:
        new_args = list(args)
        k = 0
        for p, spec, c in zip(positions, in_specs, counts):
            new_args[p] = tree_unflatten(list(flat[k : k + c]), spec)
            k += c
        leaves, box["spec"] = tree_flatten(func(*new_args))
        return tuple(leaves)

    def rebuild(jac: Any) -> Any:
        if "spec" not in box:
            flat_func(*flat_in)
        rows = []
        for row in jac:  # one per output leaf
            k = 0
            per_arg = []
            for spec, c in zip(in_specs, counts):
                per_arg.append(tree_unflatten(list(row[k : k + c]), spec))
                k += c
            rows.append(per_arg[0] if single else tuple(per_arg))
        return tree_unflatten(rows, box["spec"])

    return flat_func, flat_in, rebuild
