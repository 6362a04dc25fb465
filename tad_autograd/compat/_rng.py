"""Snapshots of torch's random generators: the CPU one, the accelerators', explicit ones.

vmap's ``randomness`` flags need them: ``"same"`` replays one state for every
batch element (or every chunk) and ``"error"`` must notice any draw; the
automatic fallback restores them before its retry, so the function's draws
happen once.  A tensor on a CUDA device draws from that device's generator,
not the CPU's, so a snapshot covers the CUDA devices of the arguments as
well, and the explicit :class:`torch.Generator` objects a call can see
(:func:`visible_generators`).

:func:`snapshot` takes the snapshot a call needs; :func:`attempt` is the one
"snapshot, try, restore, then mark, fall back or raise" used wherever a
failed attempt must leave the generators as they were.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar

import torch

from ._pytree import tree_flatten

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


def visible_generators(
    func: Callable[..., Any], args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None
) -> List[torch.Generator]:
    """The explicit :class:`torch.Generator` objects a call of ``func`` can see.

    Those among the arguments (any pytree leaf), the keyword arguments, and,
    for ``func`` and each function it wraps (``__wrapped__``, as
    :func:`functools.wraps` sets it): the cells of its closure, its default
    values, the module globals its code names, and the attributes of the
    object itself or of a bound method's object (``self.gen`` of an
    ``nn.Module`` called as ``vmap(module)``).  Generators reached only
    through other objects (a submodule's attribute, a list) or other
    functions are not found.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator()
    >>> visible_generators(lambda x: torch.rand(2, generator=g), (1,)) == [g]
    True
    """
    found: List[torch.Generator] = []

    def add(obj: Any) -> None:
        # (issubclass: torch.Generator's metaclass makes isinstance a Python-level check)
        if issubclass(type(obj), torch.Generator) and all(obj is not f for f in found):
            found.append(obj)

    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):  # else: no generator there
        for leaf in tree_flatten((tuple(args), kwargs or {}))[0]:
            add(leaf)
    seen: List[int] = []
    layer: Any = func
    while layer is not None and id(layer) not in seen:  # the function and what it wraps
        seen.append(id(layer))
        _reachable(layer, add)
        layer = getattr(layer, "__wrapped__", None)
    return found


def _reachable(func: Any, add: Callable[[Any], None]) -> None:
    """Pass to ``add`` what one callable (no ``__wrapped__`` followed) can reach directly."""
    owner = func.__self__ if isinstance(func, types.MethodType) else None  # a bound method's
    for obj in (func, owner):
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict) and not isinstance(obj, (type, types.ModuleType)):
            for value in attributes.values():  # an object's generator attribute (self.gen)
                add(value)
    if owner is not None:
        func = func.__func__  # a bound method's function
    elif not isinstance(func, types.FunctionType) and hasattr(func, "__dict__"):
        if "__wrapped__" in func.__dict__:
            # a callable object that names the function it wraps (a transformed
            # function): it has no closure, defaults or globals of its own, and the
            # wrapped function is looked at next (asking such an object, which may
            # compute missing attributes, only costs time)
            return
    for cell in getattr(func, "__closure__", None) or ():
        try:
            add(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    for value in getattr(func, "__defaults__", None) or ():
        add(value)
    for value in (getattr(func, "__kwdefaults__", None) or {}).values():
        add(value)
    code = getattr(func, "__code__", None)
    namespace = getattr(func, "__globals__", None)
    if code is not None and namespace is not None:
        for name in code.co_names:
            add(namespace.get(name))


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
    leaves = args if all(isinstance(a, torch.Tensor) for a in args) else tree_flatten(args)[0]
    devices = {a.device for a in leaves if isinstance(a, torch.Tensor)}
    return RngStates(devices, visible_generators(func, args, kwargs))


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
    """
    states = snapshot(func, args, kwargs)
    try:
        return run(states)
    except catch as error:
        states.restore()
        if on_failure is not None:
            on_failure(error)
        if retry is None:
            raise
        return retry()
