"""Snapshots of torch's random generators: the CPU one and the accelerators a call uses.

vmap's ``randomness`` flags need them: ``"same"`` replays one state for every
batch element (or every chunk) and ``"error"`` must notice any draw.  A
tensor on a CUDA device draws from that device's generator, not the CPU's, so
a snapshot covers the CUDA devices of the arguments as well.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


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

    def __init__(self, devices: Iterable[torch.device]):
        self.cpu = torch.get_rng_state()
        self.cpu_key = _state_key(self.cpu)
        # the devices' generator objects themselves: torch.cuda.get_rng_state(i) would
        # switch the current device there and back on every call
        self.generators = [
            torch.cuda.default_generators[i]
            for i in sorted({d.index or 0 for d in devices if d.type == "cuda"})
        ]
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
