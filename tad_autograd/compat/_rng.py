"""Snapshots of what a call can change that a retry must put back: torch's random
generators (the CPU one, the accelerators', explicit ones) and small tensors.

vmap's ``randomness`` flags need the generators: ``"same"`` replays one state
for every batch element (or every chunk) and ``"error"`` must notice any draw;
the automatic fallback restores them before its retry, so the function's
draws happen once.  A tensor on a CUDA device draws from that device's
generator, not the CPU's, so a snapshot covers the CUDA devices of the
arguments as well, and the explicit :class:`torch.Generator` objects a call
can see (:func:`~tad_autograd.compat._visible.visible_generators`).  The
fallback also puts back the tensors the call can see that a failed attempt
updated in place (:class:`TensorValues`).

:func:`snapshot` takes the snapshot a call needs; :func:`attempt` is the one
"snapshot, try, restore, then mark, fall back or raise" used wherever a
failed attempt must leave the generators and tensors as they were.
"""

from __future__ import annotations

from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
)

import torch

from ._pytree import tree_flatten
from ._visible import visible, visible_generators

T = TypeVar("T")


def _state_key(state: torch.Tensor) -> Any:
    """A generator state as bytes (compared faster than the tensor), or the tensor itself.

    Examples
    --------
    >>> import torch
    >>> _state_key(torch.get_rng_state()) == _state_key(torch.get_rng_state())
    True
    """
    try:
        return state.numpy().tobytes()
    except (RuntimeError, ImportError):  # torch built without numpy support
        return _TensorKey(state)


class _TensorKey:
    """Equality of two tensors by value."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TensorKey) and torch.equal(self.tensor, other.tensor)

    __hash__ = None  # type: ignore[assignment]


class RngStates:
    """Snapshot of the generators a call may draw from: the CPU's and those of ``devices``.

    Examples
    --------
    >>> import torch
    >>> states = RngStates({torch.device("cpu")})
    >>> first = torch.rand(2)
    >>> states.changed()
    True
    >>> states.restore()
    >>> torch.equal(torch.rand(2), first)
    True
    """

    def __init__(
        self, devices: Iterable[torch.device], explicit: Sequence[torch.Generator] = ()
    ) -> None:
        self.cpu = torch.get_rng_state()
        self.cpu_key = _state_key(self.cpu)
        # the devices' generator objects themselves: torch.cuda.get_rng_state(i) would
        # switch the current device there and back on every call
        self.generators: List[torch.Generator] = [
            torch.cuda.default_generators[i]
            for i in sorted({d.index or 0 for d in devices if d.type == "cuda"})
        ]
        self.generators += [g for g in explicit if all(g is not h for h in self.generators)]
        self.states = [g.get_state() for g in self.generators]
        self.keys = [_state_key(state) for state in self.states]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for generator, state in zip(self.generators, self.states):
            generator.set_state(state)

    def changed(self) -> bool:
        if _state_key(torch.get_rng_state()) != self.cpu_key:
            return True
        return any(_state_key(g.get_state()) != k for g, k in zip(self.generators, self.keys))


def all_devices_states(explicit: Sequence[torch.Generator] = ()) -> RngStates:
    """A snapshot of every generator a call might draw from: the CPU's, each initialised
    CUDA device's, and ``explicit`` ones.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> states = all_devices_states([g])
    >>> first = torch.rand(2, generator=g)
    >>> states.restore()
    >>> torch.equal(torch.rand(2, generator=g), first)
    True
    """
    devices: List[torch.device] = []
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return RngStates(devices, explicit)


def snapshot(
    func: Callable[..., Any], args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None
) -> RngStates:
    """The generators a call ``func(*args, **kwargs)`` can draw from, as they are now.

    The CPU's, those of the arguments' CUDA devices, and the explicit ones
    :func:`visible_generators` finds.

    Examples
    --------
    >>> import torch
    >>> states = snapshot(torch.rand, (2,))
    >>> first = torch.rand(2)
    >>> states.restore()
    >>> torch.equal(torch.rand(2), first)
    True
    """
    return RngStates(_devices(args), visible_generators(func, args, kwargs))


def attempt(
    run: Callable[[RngStates], T],
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Optional[Dict[str, Any]] = None,
    *,
    on_failure: Optional[Callable[[Exception], None]] = None,
    retry: Optional[Callable[[], T]] = None,
    catch: Tuple[Type[Exception], ...] = (Exception,),
) -> T:
    """``run(states)`` with a :func:`snapshot` of the call's generators; on an exception
    of the ``catch`` types, the generators restored, then ``on_failure(error)``, then
    ``retry()`` if given, else the exception raised.  Other exceptions propagate as
    they are.

    The tensors the call can see (:func:`~tad_autograd.compat._visible.visible`: the
    arguments, captured tensors, a module's buffers) are put back too
    where a failed ``run`` updated them in place (:class:`TensorValues`), so
    a retry starts from what the caller had.  Where one of them is too large
    to have been kept, the retry would repeat the update: then a
    :class:`RuntimeError` saying so is raised instead, from the failure, with
    neither ``on_failure`` nor ``retry`` called.

    Examples
    --------
    >>> import torch
    >>> def fails(states):
    ...     torch.rand(1)
    ...     raise ValueError("no")
    >>> before = torch.get_rng_state()
    >>> attempt(fails, torch.rand, (1,), retry=lambda: "retried")
    'retried'
    >>> torch.equal(torch.get_rng_state(), before)
    True
    >>> counter = torch.zeros(1)
    >>> def counts(states):
    ...     counter.add_(1)
    ...     raise ValueError("no")
    >>> attempt(counts, lambda x: x + counter, (1.0,), retry=lambda: float(counter))
    0.0
    """
    generators, tensors = visible(func, args, kwargs, tensors=True)
    states = RngStates(_devices(args), generators)
    kept = TensorValues(tensors)
    try:
        return run(states)
    except catch as error:
        states.restore()
        if not kept.restore():
            name = getattr(func, "__qualname__", None) or type(func).__name__
            raise RuntimeError(
                f"{name}: the call updated in place a tensor too large to keep a copy of "
                f"before it failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); running it again "
                "another way, as a fallback would, would repeat the update. Choose "
                "backend='autograd' for this call, or update the tensor outside the function."
            ) from error
        if on_failure is not None:
            on_failure(error)
        if retry is None:
            raise
        return retry()


class TensorValues:
    """The values of ``tensors``, to put back what a failed attempt updated in place.

    Each tensor's version counter tells whether it was updated; the values of
    the smallest ones, up to :data:`KEPT_BYTES` in all, are copied first.
    Inference tensors keep no version counter: a kept one is compared by value,
    another is left as it is.

    Examples
    --------
    >>> import torch
    >>> counter = torch.zeros(2)
    >>> kept = TensorValues([counter])
    >>> _ = counter.add_(1)
    >>> kept.restore(), counter
    (True, tensor([0., 0.]))
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.versions = [version_of(t) for t in self.tensors]
        self.copies: Dict[int, torch.Tensor] = {}
        budget = KEPT_BYTES
        sizes = [t.numel() * t.element_size() for t in self.tensors]
        for i in sorted(range(len(sizes)), key=sizes.__getitem__):
            if sizes[i] > budget:
                break
            budget -= sizes[i]
            self.copies[i] = self.tensors[i].detach().clone()

    def restore(self) -> bool:
        """Put back the tensors updated since; ``False`` if one of them was not kept."""
        changed = [i for i, t in enumerate(self.tensors) if self._changed(i, t)]
        if any(i not in self.copies for i in changed):
            return False
        with torch.no_grad():
            for i in changed:
                self.tensors[i].copy_(self.copies[i])
        return True

    def _changed(self, i: int, t: torch.Tensor) -> bool:
        if self.versions[i] is not None:
            return bool(t._version != self.versions[i])
        kept = self.copies.get(i)  # an inference tensor: only a kept one can be compared
        return kept is not None and not torch.equal(t, kept)


#: How many bytes of tensor values :class:`TensorValues` copies at most per call.
KEPT_BYTES = 1 << 16


def version_of(t: Any) -> Optional[int]:
    """A tensor's version counter; ``None`` for non-tensors and inference tensors (they keep
    none: their values tell).

    Examples
    --------
    >>> import torch
    >>> version_of(torch.zeros(1).add_(1)), version_of(1.0)
    (1, None)
    """
    if isinstance(t, torch.Tensor) and not t.is_inference():
        return int(t._version)
    return None


def _devices(args: Sequence[Any]) -> Set[torch.device]:
    """The devices of the tensors among ``args`` (any pytree leaf)."""
    leaves = args if all(isinstance(a, torch.Tensor) for a in args) else tree_flatten(args)[0]
    return {a.device for a in leaves if isinstance(a, torch.Tensor)}
