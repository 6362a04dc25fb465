"""``vmap`` as a Python loop over the batch, with :func:`torch.func.vmap`'s semantics.

The ``"autograd"`` backend's ``vmap`` and the automatic strategy for small
batches.  Every sample is a fresh, contiguous tensor (as the function would
see an unbatched input: storage-dependent ops such as ``as_strided`` give
what they give outside ``vmap``); the outputs are stacked along ``out_dims``.
``randomness`` covers the CPU generator, the arguments' CUDA devices and the
explicit generators the call can see (:func:`tad_autograd.compat._visible.visible_generators`).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch

from ..compat._pytree import tree_unflatten
from ..compat._rng import RngStates, version_of
from ..compat._visible import visible_generators
from ._batching import BatchedArgs, check_out_dim, flatten_args, join_outputs, split_outputs

__all__ = ["loop_vmap", "strictly_unbatched"]

_RANDOM_MESSAGE = (
    "vmap: called random operation while in randomness error mode. Please either "
    "use the 'same' or 'different' randomness flags on vmap or perform the "
    "randomness operation out of vmap"
)


def _sample(batched: BatchedArgs, index: int, aliased: FrozenSet[int]) -> List[Any]:
    """Batch element ``index``'s leaves as fresh tensors (no view into the batch's storage),
    except the ``aliased`` ones: views, so that an update through one shows in the others.
    A tensor passed twice along the same dimension is one fresh tensor, passed twice."""
    fresh = torch.contiguous_format
    clones: Dict[Tuple[int, int], torch.Tensor] = {}
    sample = []
    for k, (leaf, d) in enumerate(zip(batched.leaves, batched.dims)):
        if d is None:
            sample.append(leaf)
        elif k in aliased:
            sample.append(leaf.select(d, index))
        else:
            key = (id(leaf), d)
            if key not in clones:
                clones[key] = leaf.select(d, index).clone(memory_format=fresh)
            sample.append(clones[key])
    return sample


#: A tensor's storage (torch 1.13 has no ``untyped_storage``; later torches warn on ``storage``).
_STORAGE = getattr(torch.Tensor, "untyped_storage", None) or torch.Tensor.storage


def _aliased(batched: BatchedArgs) -> FrozenSet[int]:
    """The batched leaves that share memory with another argument (``vmap(f)(x, x)``)."""
    tensors = [
        (k, leaf)
        for k, leaf in enumerate(batched.leaves)
        if isinstance(leaf, torch.Tensor)
        and leaf.layout == torch.strided
        # (an expanded batch's samples share their memory: views would add up updates)
        and all(st or n < 2 for st, n in zip(leaf.stride(), leaf.shape))
    ]
    if len(tensors) < 2 or all(batched.dims[k] is None for k, _ in tensors):
        return frozenset()
    owners: Dict[int, List[int]] = {}
    for k, leaf in tensors:
        owners.setdefault(_STORAGE(leaf).data_ptr(), []).append(k)
    return frozenset(
        k for ks in owners.values() if len(ks) > 1 for k in ks if batched.dims[k] is not None
    )


def loop_vmap(
    func: Callable[..., Any],
    in_dims: Any,
    out_dims: Any,
    randomness: str,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
) -> Any:
    """``vmap(func, in_dims, out_dims, randomness)(*args, **kwargs)`` by a loop.

    Examples
    --------
    >>> import torch
    >>> loop_vmap(torch.sum, 0, 0, "error", (torch.ones(3, 2),), {})
    tensor([2., 2., 2.])
    """
    batched = flatten_args(func, in_dims, args)
    devices = {leaf.device for leaf in batched.leaves if isinstance(leaf, torch.Tensor)}
    generators = visible_generators(func, args, kwargs) if randomness != "different" else []
    states = RngStates(devices, generators)
    # in-place updates of the samples are copied into the batch after the last one: every
    # sample starts from the batch as the caller passed it (an expanded batch, whose
    # samples share memory, too)
    pending: List[Tuple[int, List[Any], List[Optional[int]]]] = []
    try:
        if batched.size == 0:
            result = _empty_batch(func, out_dims, batched, kwargs)
            if randomness == "error" and states.changed():
                raise RuntimeError(_RANDOM_MESSAGE)
            states.restore()  # no sample: no draw
            return result
        aliased = _aliased(batched)
        samples = []
        inputs = []
        dims: List[Optional[int]] = []
        spec = None
        for b in range(batched.size):
            if randomness == "same" and b > 0:
                states.restore()  # every element draws what the first drew
            sample = _sample(batched, b, aliased)
            inputs.append(sample)
            versions = [version_of(t) for t in sample]
            output = func(*tree_unflatten(sample, batched.spec), **kwargs)
            pending.append((b, sample, versions))
            leaves, leaf_dims, leaf_spec = split_outputs(func, out_dims, output)
            if spec is None:
                dims, spec = leaf_dims, leaf_spec
            elif leaf_spec != spec:
                raise ValueError(
                    f"vmap: the outputs of batch elements 0 and {b} have different "
                    f"structures ({spec} and {leaf_spec})"
                )
            samples.append(leaves)
        _write_backs(batched, pending)
        if randomness == "error" and states.changed():
            raise RuntimeError(_RANDOM_MESSAGE)
        _check_unbatched(func, samples, dims, _STRICT_UNBATCHED.get())
    except BaseException:
        _write_backs(batched, pending)
        states.restore()
        raise
    given = _returned_inputs(samples, inputs, batched, dims)
    return join_outputs(samples, dims, spec, torch.stack, given)


def _returned_inputs(
    samples: List[List[Any]],
    inputs: List[List[Any]],
    batched: BatchedArgs,
    dims: List[Optional[int]],
) -> Dict[int, torch.Tensor]:
    """Outputs that are a batched input itself in every sample: that input, as in torch.func.

    ``torch.func.vmap(lambda x: x)(xs)`` returns ``xs`` (a view of it, when
    ``out_dims`` moves the batch dimension), not a copy.
    """
    first = {id(leaf): i for i, leaf in enumerate(inputs[0]) if batched.dims[i] is not None}
    given: Dict[int, torch.Tensor] = {}
    for k, d in enumerate(dims):
        i = first.get(id(samples[0][k]))
        if d is None or i is None:
            continue
        if all(s[k] is inp[i] for s, inp in zip(samples, inputs)):
            leaf, source = batched.leaves[i], batched.dims[i]
            check_out_dim(dims, d, leaf.dim())
            given[k] = leaf if d % leaf.dim() == source else leaf.movedim(source, d)
    return given


def _write_backs(
    batched: BatchedArgs, pending: List[Tuple[int, List[Any], List[Optional[int]]]]
) -> None:
    """:func:`_write_back` of each sample run so far, once."""
    for entry in pending:
        _write_back(batched, *entry)
    pending.clear()


def _write_back(
    batched: BatchedArgs, index: int, sample: List[Any], versions: List[Optional[int]]
) -> None:
    """Copy a sample the function updated in place back into its batch, as under torch.func."""
    for leaf, d, fresh, version in zip(batched.leaves, batched.dims, sample, versions):
        if d is None or not isinstance(fresh, torch.Tensor):
            continue
        if version is not None:
            if fresh._version != version:
                leaf.select(d, index).copy_(fresh)
        elif fresh.is_inference():  # an inference tensor keeps no version: its values tell
            target = leaf.select(d, index)
            if not torch.equal(fresh, target):
                target.copy_(fresh)


#: Set while automatic mode retries a failed transform on the loop (see
#: :func:`strictly_unbatched`).
_STRICT_UNBATCHED: ContextVar[bool] = ContextVar("tad_autograd_strict_unbatched", default=False)


@contextlib.contextmanager
def strictly_unbatched() -> Iterator[None]:
    """A context in which every loop ``vmap`` holds ``out_dims=None`` outputs to the strict rule.

    An ``out_dims=None`` output must then be the same object in every sample
    (equal values could hide a batched output that a transform rightly
    refused): what automatic mode's retry on the loop needs.

    Examples
    --------
    >>> import torch
    >>> with strictly_unbatched():
    ...     loop_vmap(lambda x: x.sum(), 0, 0, "error", (torch.ones(2, 3),), {})
    tensor([3., 3.])
    """
    token = _STRICT_UNBATCHED.set(True)
    try:
        yield
    finally:
        _STRICT_UNBATCHED.reset(token)


def _check_unbatched(
    func: Callable[..., Any], samples: List[List[Any]], dims: List[Any], strict: bool = False
) -> None:
    """Raise ``ValueError`` (as torch.func) for an ``out_dims=None`` output that varies per sample.

    An output mapped to ``None`` must not depend on the batch: the same
    object, or (unless ``strict``) equal values, in every sample.  (With one
    sample and not ``strict``, nothing can be told apart; the first sample's
    output is returned.)
    """
    for k, d in enumerate(dims):
        if d is not None:
            continue
        first = samples[0][k]
        if strict:  # only the same object in every sample proves an output unbatched
            proven = len(samples) > 1 and all(s[k] is first for s in samples[1:])
            if proven or not isinstance(first, torch.Tensor):
                continue
            _raise_batched_none(func, k)
        for s in samples[1:]:
            other = s[k]
            if other is first:
                continue
            if isinstance(first, torch.Tensor):
                same = (
                    isinstance(other, torch.Tensor)
                    and first.shape == other.shape
                    and torch.equal(first, other)
                )
            else:
                same = other == first
            if not same:
                _raise_batched_none(func, k)


def _raise_batched_none(func: Callable[..., Any], k: int) -> None:
    name = getattr(func, "__name__", repr(func))
    raise ValueError(
        f"vmap({name}, ...): `{name}` can not return a BatchedTensor when out_dim is None "
        f"(output {k} depends on the batch; use an int out_dims for it)"
    )


def _empty_batch(
    func: Callable[..., Any], out_dims: Any, batched: BatchedArgs, kwargs: Dict[str, Any]
) -> Any:
    """Batch size 0: run one zero-filled element for the output shapes only."""
    output = func(*batched.placeholder(), **kwargs)
    leaves, dims, spec = split_outputs(func, out_dims, output)
    joined = []
    for leaf, d in zip(leaves, dims):
        if d is None:
            joined.append(leaf)
        else:
            joined.append(
                leaf.detach().unsqueeze(d % (leaf.dim() + 1)).narrow(d % (leaf.dim() + 1), 0, 0)
            )
    return tree_unflatten(joined, spec)
