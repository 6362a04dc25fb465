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

import collections
import functools
import types
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
    :func:`functools.wraps` sets it, and a :func:`functools.partial`'s
    function, whose bound arguments count as arguments): the cells of its
    closure, its default values, the module globals its code names, and the
    attributes of the object itself or of a bound method's object (``self.gen``
    of an ``nn.Module`` called as ``vmap(module)``) and of each of an
    ``nn.Module``'s submodules.  Generators reached only through other objects
    (a list) or other functions are not found.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator()
    >>> visible_generators(lambda x: torch.rand(2, generator=g), (1,)) == [g]
    True
    """
    return _visible(func, args, kwargs, tensors=False)[0]


def visible_tensors(
    func: Callable[..., Any], args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None
) -> List[torch.Tensor]:
    """The tensors a call of ``func`` can update in place that the library can see.

    The arguments' tensors and those found where :func:`visible_generators`
    looks for generators, with the parameters and buffers of each
    ``nn.Module`` found there (a ``BatchNorm``'s running statistics).

    Examples
    --------
    >>> import torch
    >>> buffer = torch.zeros(1)
    >>> [t is buffer for t in visible_tensors(lambda x: x + buffer, (1.0,))]
    [True]
    """
    return _visible(func, args, kwargs, tensors=True)[1]


def _visible(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Optional[Dict[str, Any]],
    tensors: bool,
) -> Tuple[List[torch.Generator], List[torch.Tensor]]:
    """The generators (and, with ``tensors``, the tensors) a call can see: one walk."""
    generators: List[torch.Generator] = []
    found: List[torch.Tensor] = []
    seen_ids: Set[int] = set()

    def add(obj: Any) -> None:
        kind = type(obj)
        if kind in _NEITHER:  # most of what is looked at (a module's flags and tables)
            return
        # (issubclass: torch.Generator's metaclass makes isinstance a Python-level check)
        if issubclass(kind, torch.Tensor):
            if tensors and id(obj) not in seen_ids:
                seen_ids.add(id(obj))
                found.append(obj)
        elif issubclass(kind, torch.Generator):
            if all(obj is not g for g in generators):
                generators.append(obj)
        elif isinstance(obj, torch.nn.Module) and id(obj) not in seen_ids:
            seen_ids.add(id(obj))
            for sub in obj.modules():
                if tensors:  # its buffers (parameters require grad: autograd refuses
                    for value in sub._buffers.values():  # their in-place updates)
                        add(value)
                kind = type(sub)
                if kind.__module__.startswith("torch."):  # torch's own: no generator of
                    continue  # the user's among its attributes or in its code
                for value in vars(sub).values():  # a generator attribute (self.gen)
                    add(value)
                if id(kind) not in seen_ids:  # what the forward of the class names
                    seen_ids.add(id(kind))
                    forward = getattr(kind, "forward", None)
                    if isinstance(forward, types.FunctionType):
                        _reachable(forward, add)

    def add_leaves(tree: Any) -> None:
        if isinstance(tree, tuple) and all(isinstance(a, torch.Tensor) for a in tree):
            leaves: Any = tree  # the common case: no pytree to flatten
        else:
            leaves = tree_flatten(tree)[0]
        for leaf in leaves:
            add(leaf)

    if tensors or kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        add_leaves(tuple(args))
        if kwargs:
            add_leaves(kwargs)
    seen: List[int] = []
    layer: Any = func
    while layer is not None and id(layer) not in seen:  # the function and what it wraps
        seen.append(id(layer))
        if isinstance(layer, functools.partial):
            add_leaves((layer.args, layer.keywords))
            layer = layer.func
            continue
        owner = layer.__self__ if isinstance(layer, types.MethodType) else layer
        if isinstance(owner, torch.nn.Module):  # the module called, or the method's
            add(owner)
        _reachable(layer, add)
        wrapped = getattr(layer, "__wrapped__", None)
        if wrapped is None and not isinstance(
            layer, (types.FunctionType, types.MethodType, torch.nn.Module)
        ):
            # a callable object: what its __call__ names (a module's forward: see add)
            method = type(layer).__call__
            if isinstance(method, types.FunctionType):
                _reachable(method, add)
        layer = wrapped
    return generators, found


#: Types that are neither a tensor, a generator nor a module (skipped at once).
_NEITHER = frozenset(
    {type(None), bool, int, float, complex, str, bytes, dict, set, frozenset, list, tuple}
    | {type(collections.OrderedDict()), types.FunctionType, types.BuiltinFunctionType}
)


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
    if isinstance(code, types.CodeType) and isinstance(namespace, dict):
        for name in _global_names(code):
            add(namespace.get(name))


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> Tuple[str, ...]:
    """The names ``code`` and the code nested in it (comprehensions, lambdas) look up.

    Examples
    --------
    >>> _global_names((lambda: [gen for _ in range(2)]).__code__)
    ('range', 'gen')
    """
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += [n for n in _global_names(const) if n not in names]
    return tuple(names)


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

    The tensors the call can see (:func:`visible_tensors`: the arguments,
    captured tensors, a module's parameters and buffers) are put back too
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
    generators, tensors = _visible(func, args, kwargs, tensors=True)
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
    Inference tensors keep no version counter and are left as they are.

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
        # an inference tensor keeps no version counter: its values tell (None)
        self.versions = [None if t.is_inference() else t._version for t in self.tensors]
        self.copies: Dict[int, torch.Tensor] = {}
        budget = KEPT_BYTES
        sizes = [t.numel() * t.element_size() for t in self.tensors]
        for i in sorted(range(len(sizes)), key=sizes.__getitem__) if len(sizes) > 1 else [0]:
            if i >= len(sizes) or sizes[i] > budget:
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


def _devices(args: Sequence[Any]) -> Set[torch.device]:
    """The devices of the tensors among ``args`` (any pytree leaf)."""
    leaves = args if all(isinstance(a, torch.Tensor) for a in args) else tree_flatten(args)[0]
    return {a.device for a in leaves if isinstance(a, torch.Tensor)}
