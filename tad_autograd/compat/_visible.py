"""What a call of a function can see: the random generators it may draw from and the
tensors it may update in place.

The arguments, and for the function and each function it wraps (``__wrapped__``,
a :func:`functools.partial`'s function and bound arguments): its closure,
defaults, the module globals its code names (comprehensions included), the
attributes of the object or of a bound method's object, the code a callable
object's ``__call__`` runs, and an ``nn.Module``'s submodules (their
attributes, buffers and the globals their classes' ``forward`` names).  What
is reached only through other objects (a list, a dict attribute) or other
functions is not found.  :mod:`tad_autograd.compat._rng` snapshots what this
finds.
"""

from __future__ import annotations

import collections
import functools
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ._pytree import tree_flatten
from ._torch_info import is_compiling

__all__ = ["visible", "visible_generators"]


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
    return visible(func, args, kwargs)[0]


def visible(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Optional[Dict[str, Any]] = None,
    tensors: bool = False,
) -> Tuple[List[torch.Generator], List[torch.Tensor]]:
    """The generators and, with ``tensors``, the tensors a call can see, in one walk.

    The tensors are those a call can update in place: the arguments' and those
    found where the generators are looked for (:func:`visible_generators`),
    with each ``nn.Module``'s buffers (a ``BatchNorm``'s running statistics;
    its parameters require grad, and autograd refuses their in-place updates).

    Examples
    --------
    >>> import torch
    >>> buffer = torch.zeros(1)
    >>> generators, tensors = visible(lambda x: x + buffer, (1.0,), tensors=True)
    >>> generators, [t is buffer for t in tensors]
    ([], [True])
    """
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


def _global_names(code: types.CodeType) -> Tuple[str, ...]:
    """The names ``code`` and the code nested in it (comprehensions, lambdas) look up,
    remembered per code object (while dynamo traces: ``code``'s own, which it folds).

    Examples
    --------
    >>> _global_names((lambda: [gen for _ in range(2)]).__code__)
    ('range', 'gen')
    """
    if is_compiling():
        return tuple(code.co_names)
    names = _NAMES.get(code)
    if names is None:
        found = list(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found += [n for n in _global_names(const) if n not in found]
        if len(_NAMES) >= 4096:  # (code objects of functions made and dropped per call)
            _NAMES.clear()
        names = _NAMES[code] = tuple(found)
    return names


#: :func:`_global_names` per code object.
_NAMES: Dict[types.CodeType, Tuple[str, ...]] = {}
