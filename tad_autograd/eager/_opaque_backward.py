"""Custom ``autograd.Function`` backward passes that cannot be differentiated.

A custom Function's backward is Python code.  When it computes outside
autograd -- under ``@once_differentiable`` (which runs it under
``torch.no_grad()``), with NumPy, ``.item()``, ``.tolist()``, ``float()``,
``.detach()``, ``.data``, a tensor's storage, a backward pass of its own
without ``create_graph``, its own ``torch.no_grad()`` block, or with a
detached alias of an input its forward kept (``ctx.x = x.detach()``) -- the
gradient it returns carries no graph, or only part of one.  Differentiating that gradient again
(a Hessian, an ``hvp``, a Jacobian of forces) then silently misses terms:
plain autograd returns such wrong second derivatives whether the Function's
result enters the function linearly or not.

While a backward pass that builds a graph runs (``create_graph=True``),
:func:`custom_backwards_guarded` wraps each custom node of the graph.  When
such a node's backward runs with an incoming gradient, a saved tensor or a
tangent that carries a derivative, the wrapper watches it: the Function's
backward is ``@once_differentiable``, or it called one of the operations
above, or it ran an operation with grad mode off, or it returned a gradient
without a graph.  Then every gradient it returns is replaced by one whose own
backward raises a :class:`RuntimeError` naming the Function (and a lost
tangent raises at once).  First derivatives are unchanged and cost nothing
extra: the watch only runs in backward passes that build a graph through the
node.

While a backward pass is *vectorised* (the rows of a Jacobian, batched by a
``vmap``), :func:`custom_backwards_watched` wraps the custom nodes the same
way to run each backward under a
:class:`~tad_autograd.compat._transform_failures.DefectWatch`: a backward
that calls an op whose batched derivative the installed torch gets wrong, or
runs a backward pass of its own (whose ops no watch sees), raises
:class:`~tad_autograd.compat._transform_failures.DefectiveBatchingError`
there, and the rows are taken by a loop instead.

Examples
--------
>>> import torch
>>> from torch.autograd.function import FunctionCtx, once_differentiable
>>> class Cube(torch.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     @once_differentiable
...     def backward(ctx, g):
...         (x,) = ctx.saved_tensors
...         return g * 3 * x ** 2
>>> x = torch.ones(1, requires_grad=True)
>>> y = (Cube.apply(x) * x).sum()  # the Function's result enters non-linearly
>>> with custom_backwards_guarded([y], active=True):
...     (g,) = torch.autograd.grad(y, x, create_graph=True)
>>> g.detach()
tensor([4.])
>>> torch.autograd.grad(g.sum(), x)
Traceback (most recent call last):
...
RuntimeError: Cube: the backward of this custom autograd.Function ...
"""

from __future__ import annotations

import contextlib
import dis
import sys
import threading
import types
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import BackwardCFunction, FunctionCtx, once_differentiable

from ..compat._dual import level_active, unpack_dual
from ..compat._pytree import tree_flatten
from ..compat._torch_info import cache, differentiating_levels, is_compiling
from ..compat._transform_failures import (
    REVERSE_STAGES,
    DefectiveBatchingError,
    DefectWatch,
    OpWatch,
    custom_function_call,
    function_twin,
)
from ._grad_modes import GradModeOffWatch, builds_no_graph
from ._graph import graph_facts

__all__ = [
    "custom_backwards_guarded",
    "opaque_backward_message",
    "custom_backwards_watched",
    "WatchedBackwards",
    "hooks_watched",
    "backwards_watched_or_refused",
    "GradCallsWatched",
    "opaque_backwards_refused",
]

#: The code of the wrapper ``@once_differentiable`` puts around a backward.
_ONCE_DIFFERENTIABLE_CODE = once_differentiable(lambda ctx: None).__code__

#: Names of the operations whose results leave autograd: a backward calling one is opaque
#: (the method, the ``torch.`` function and the ``aten`` op of each share its name).
_LEAVE_AUTOGRAD = frozenset(
    {
        "detach",
        "detach_",
        "detach.default",
        "numpy",
        "item",
        "tolist",
        "__array__",
        "new_tensor",
        "tensor",
    }
)

#: Calls that copy a tensor's values out of autograd and have no name of their own: the
#: ``.data`` getter, ``float()`` and ``complex()`` of a tensor, its storage.
_LEAVE_AUTOGRAD_CALLS = frozenset(
    f
    for f in (
        torch.Tensor.data.__get__,  # type: ignore[attr-defined]
        torch.Tensor.__float__,
        torch.Tensor.__complex__,
        getattr(torch.Tensor, "untyped_storage", None),
        getattr(torch.Tensor, "storage", None),
        getattr(torch.Tensor, "_typed_storage", None),
    )
    if f is not None
)

#: The Python ``Function.apply`` (torch >= 2.0): ops below it are a nested Function's forward.
_FUNCTION_APPLY_CODE = getattr(
    getattr(torch.autograd.Function.apply, "__func__", None), "__code__", None
)

#: Instance attribute that replaces a node's ``apply`` while a pass guards or watches it.
_APPLY = "apply"

#: The graph's nodes are shared between threads: installing and removing the wrappers is
#: serialised, and each wrapper asks which of the passes running in its thread asked for it.
_WRAP_LOCK = threading.Lock()
#: Per thread: the nodes this thread's passes guard (``guards``) and watch (``watches``), with
#: counts, and the :class:`WatchedBackwards` of its watched passes, innermost last (``seen``).
_LOCAL = threading.local()


class _Installed:
    """The wrapper installed on one node: how many passes (of all threads) guard and watch
    it, and the instance ``apply`` it replaced (``None``: the class's)."""

    __slots__ = ("guards", "watches", "previous")

    def __init__(self, previous: Optional[Callable[..., Any]]) -> None:
        self.guards = 0
        self.watches = 0
        self.previous = previous


#: Each node that a running pass guards or watches, and its wrapper's counts.
_INSTALLED: Dict[Any, _Installed] = {}


def _thread_counts(kind: str) -> Dict[Any, int]:
    counts: Optional[Dict[Any, int]] = getattr(_LOCAL, kind, None)
    if counts is None:
        counts = {}
        setattr(_LOCAL, kind, counts)
    return counts


@contextlib.contextmanager
def _nodes_wrapped(nodes: Sequence[Any], kind: str) -> Iterator[None]:
    """While the block runs, this thread's passes ``kind`` (``"guards"`` or ``"watches"``)
    ``nodes``; the last pass of any thread to leave a node restores it exactly."""
    mine = _thread_counts(kind)
    with _WRAP_LOCK:
        for node in nodes:
            entry = _INSTALLED.get(node)
            if entry is None:
                entry = _INSTALLED[node] = _Installed(vars(node).get(_APPLY))
                setattr(node, _APPLY, _dispatching_apply(node, entry))
            setattr(entry, kind, getattr(entry, kind) + 1)
            mine[node] = mine.get(node, 0) + 1
    try:
        yield
    finally:
        with _WRAP_LOCK:
            for node in nodes:
                left = mine[node] - 1
                if left:
                    mine[node] = left
                else:
                    del mine[node]
                entry = _INSTALLED[node]
                setattr(entry, kind, getattr(entry, kind) - 1)
                if not entry.guards and not entry.watches:
                    del _INSTALLED[node]
                    if entry.previous is None:
                        delattr(node, _APPLY)
                    else:
                        setattr(node, _APPLY, entry.previous)


def _asked(node: Any, kind: str, installed: int) -> bool:
    """Whether a pass running in this thread ``kind`` (guards, watches) ``node``.

    The autograd engine runs the nodes of a graph on another device in a thread
    of its own (no Python thread): there, any pass that asked counts
    (``installed``), which at worst watches a pass that needed no watch.
    """
    if not installed:
        return False
    counts: Optional[Dict[Any, int]] = getattr(_LOCAL, kind, None)
    if counts is not None and node in counts:
        return True
    return isinstance(threading.current_thread(), threading._DummyThread)


def _dispatching_apply(node: Any, entry: _Installed) -> Callable[..., Any]:
    """The one wrapper of a node: the guard and the defect watch of the passes that asked."""
    original = entry.previous if entry.previous is not None else type(node).apply.__get__(node)
    guarded = _guarded_apply(node, original)

    def apply(*grad_outputs: Any) -> Any:
        run = guarded if _asked(node, "guards", entry.guards) else original
        if not _asked(node, "watches", entry.watches):
            return run(*grad_outputs)
        watch = DefectWatch(REVERSE_STAGES, nested_derivatives=True)
        try:
            with watch:
                return run(*grad_outputs)
        finally:
            if watch.op is not None:
                _note_seen(f"custom Function {_function_name(node)}'s backward", watch.op)

    return apply


def _note_seen(code: str, op: str) -> None:
    """Tell this thread's innermost watched pass that ``code`` (a custom Function's backward,
    a hook) called ``op``."""
    stack: Optional[List[WatchedBackwards]] = getattr(_LOCAL, "seen", None)
    if stack and stack[-1].op is None:
        stack[-1].code, stack[-1].op = code, op


def opaque_backward_message(function_name: str) -> str:
    """The error for a derivative through the backward of custom Function ``function_name``.

    Examples
    --------
    >>> opaque_backward_message("Cube").split(":")[0]
    'Cube'
    """
    return (
        f"{function_name}: the backward of this custom autograd.Function computes outside "
        "autograd (@once_differentiable, NumPy, .item(), .tolist(), float(), .detach(), "
        ".data, a backward pass without create_graph or torch.no_grad()), so a derivative "
        "of its derivative would silently miss terms; write its backward with "
        "differentiable torch operations (or give the Function a jvp and take the "
        "derivative in forward mode) to differentiate through it twice"
    )


@contextlib.contextmanager
def custom_backwards_guarded(
    outputs: Sequence[torch.Tensor], active: bool, custom_nodes: Optional[List[Any]] = None
) -> Iterator[None]:
    """During backward passes that build a graph: no silent second derivatives through Python.

    With ``active``, each custom ``autograd.Function`` node of the graph of
    ``outputs`` is watched while the block runs (see the module docstring).
    ``custom_nodes``: the custom nodes of the graph, if a
    :func:`~tad_autograd.eager._graph.graph_facts` walk already found them.

    Examples
    --------
    >>> import torch
    >>> class Detached(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x ** 2
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g * 2 * x.detach()
    >>> x = torch.ones(1, requires_grad=True)
    >>> y = Detached.apply(x).sin().sum()
    >>> with custom_backwards_guarded([y], active=True):
    ...     (g,) = torch.autograd.grad(y, x, create_graph=True)
    >>> torch.autograd.grad(g.sum(), x)
    Traceback (most recent call last):
    ...
    RuntimeError: Detached: the backward of this custom autograd.Function ...
    """
    if not active:
        yield
        return
    nodes = custom_nodes if custom_nodes is not None else graph_facts(outputs, set())[1]
    with _nodes_wrapped(nodes, "guards"):
        yield


class WatchedBackwards:
    """What :func:`custom_backwards_watched` saw: the first code the engine ran (a custom
    Function's backward, a hook) that called a defective op (:attr:`code`), and that op
    (:attr:`op`)."""

    __slots__ = ("code", "op", "blind")

    def __init__(self) -> None:
        self.code: Optional[str] = None
        self.op: Optional[str] = None
        #: Whether the hooks cannot be watched (a profiler that is no Python function runs):
        #: the pass must not be vectorised.
        self.blind = False

    def __str__(self) -> str:
        return f"{self.code} calls {self.op}"


@contextlib.contextmanager
def custom_backwards_watched(nodes: Sequence[Any]) -> Iterator[WatchedBackwards]:
    """While a vectorised backward pass runs: each custom node's backward under a defect watch.

    ``nodes``: the custom ``autograd.Function`` nodes of the graph
    (:func:`~tad_autograd.eager._graph.batching_hazards`).  A backward that
    calls an op whose batched derivative the installed torch gets wrong, or
    runs a backward pass of its own, raises
    :class:`~tad_autograd.compat._transform_failures.DefectiveBatchingError`;
    the yielded :class:`WatchedBackwards` names the Function and the op.

    Examples
    --------
    >>> import torch
    >>> class Dist(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return x * 1
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         return torch.cdist(g.view(1, -1), g.view(1, -1)).sum() * 0 + g
    >>> x = torch.ones(2, requires_grad=True)
    >>> y = Dist.apply(x)
    >>> with custom_backwards_watched([y.grad_fn]) as seen:
    ...     try:
    ...         _ = torch.autograd.grad(y, x, torch.ones(2))
    ...     except RuntimeError:
    ...         pass
    >>> str(seen)  # doctest: +SKIP
    "custom Function Dist's backward calls cdist"
    """
    seen = WatchedBackwards()
    stack = getattr(_LOCAL, "seen", None)
    if stack is None:
        stack = _LOCAL.seen = []
    stack.append(seen)
    profiler = sys.getprofile()
    seen.blind = DefectWatch.needed(REVERSE_STAGES) and (
        not _engine_call_sites() or (profiler is not None and not callable(profiler))
    )
    try:
        with _nodes_wrapped(nodes, "watches"):
            yield seen
    finally:
        stack.pop()


def _code_objects(function: Any) -> Iterator[Any]:
    """The code of ``function`` and of the functions defined in it (``torch.autograd.grad``'s
    batched ``vjp``)."""
    code = getattr(function, "__code__", None)
    todo = [code] if code is not None else []
    while todo:
        code = todo.pop()
        yield code
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


@cache
def _engine_call_sites() -> FrozenSet[Tuple[Any, int]]:
    """Where torch's Python enters the autograd engine (read from torch's bytecode once, on
    the first watched pass, not at import): the code and instruction offset of
    each call of ``run_backward`` in ``torch.autograd.grad``/``backward`` (and the functions
    they call it through).  A Python function whose caller stands at one of them was called
    by the engine: a hook, or a custom Function's ``apply``."""
    sites = set()
    for function in (
        torch.autograd.grad,
        torch.autograd.backward,
        getattr(torch.autograd.graph, "_engine_run_backward", None),
    ):
        for code in _code_objects(function):
            instructions = list(dis.get_instructions(code))
            for k, instruction in enumerate(instructions):
                if instruction.argval == "run_backward":
                    call = next(
                        (i for i in instructions[k + 1 :] if i.opname.startswith("CALL")), None
                    )
                    if call is not None:
                        sites.add((code, call.offset))
    return frozenset(sites)


#: What the engine calls that :func:`_nodes_wrapped` watches already: a custom Function's
#: backward (the class's ``apply``, or a node's dispatching wrapper).
_NODE_APPLY_CODES = frozenset(
    {
        *_code_objects(BackwardCFunction.apply),
        *(
            c
            for c in _dispatching_apply.__code__.co_consts
            if getattr(c, "co_name", None) == "apply"
        ),
    }
)


@contextlib.contextmanager
def hooks_watched() -> Iterator[None]:
    """Around the call into the autograd engine of a pass that :func:`custom_backwards_watched`
    watches (in this thread): each hook the engine calls (a tensor's ``register_hook``, a
    node's ``register_hook``/``register_prehook``, a module's backward hooks) runs under a
    :class:`~tad_autograd.compat._transform_failures.DefectWatch`.

    Hooks are not visible in a graph walk (torch keeps them in C++), so the
    engine's calls are seen as they happen, by a profile function of this
    thread: a call whose caller stands where torch's Python enters the engine.
    A hook that calls a defective op, or runs a backward pass of its own,
    raises :class:`~tad_autograd.compat._transform_failures.DefectiveBatchingError`.
    The profile runs for the whole block, so that it sees the hooks the
    engine calls first too (those of the outputs' own tensors and nodes).
    Nothing happens outside a watched pass, or under a profiler that is no
    Python function (the pass is then not vectorised:
    :attr:`WatchedBackwards.blind`).  In the engine's own threads (a graph on
    another device) no profile of this thread runs.  A hook that runs no
    Python frame (a TorchScript function, a ``functools.partial`` of a
    builtin) cannot be seen.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> y = x * 2
    >>> _ = y.register_hook(lambda g: g * 3)
    >>> with custom_backwards_watched([]), hooks_watched():
    ...     torch.autograd.grad(y, x, torch.ones(2))
    (tensor([6., 6.]),)
    """
    stack: Optional[List[WatchedBackwards]] = getattr(_LOCAL, "seen", None)
    if not stack or stack[-1].blind or not DefectWatch.needed(REVERSE_STAGES):
        yield
        return
    previous: Any = sys.getprofile()  # a Python profiler's: called first, as if alone
    running: List[Any] = []  # (frame, watch) of the hooks running now, innermost last
    engine_call_sites = _engine_call_sites()

    def profile(frame: Any, event: str, arg: Any) -> None:  # every call: kept to a test
        if previous is not None:
            previous(frame, event, arg)
        if event == "call":
            caller = frame.f_back
            if (
                caller is not None
                and (caller.f_code, caller.f_lasti) in engine_call_sites
                and (frame.f_code not in _NODE_APPLY_CODES)
            ):
                watch = DefectWatch(REVERSE_STAGES, nested_derivatives=True)
                watch.__enter__()  # type: ignore[no-untyped-call]
                running.append((frame, watch))
        elif event == "return" and running and running[-1][0] is frame:  # also on a raise
            watch = running.pop()[1]
            watch.__exit__(None, None, None)
            if watch.op is not None:
                _note_seen(f"backward hook {frame.f_code.co_name}", watch.op)

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)
        while running:  # only if the block left while a hook ran (it cannot, normally)
            running.pop()[1].__exit__(None, None, None)


@contextlib.contextmanager
def backwards_watched_or_refused(custom: Sequence[Any]) -> Iterator[None]:
    """:func:`custom_backwards_watched` for backward passes that a function transform batches
    (whose hooks :func:`hooks_watched` watches): where hooks cannot be watched (a profiler
    that is no Python function runs),
    :class:`~tad_autograd.compat._transform_failures.DefectiveBatchingError` at once, so that
    the caller loops.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> with backwards_watched_or_refused([]), hooks_watched():
    ...     torch.autograd.grad(x * 2, x, torch.ones(2))
    (tensor([2., 2.]),)
    """
    with custom_backwards_watched(custom) as seen:
        if seen.blind:
            raise DefectiveBatchingError(
                "a backward hook", "a profiler is active, so hooks cannot be watched"
            )
        yield


#: The calls into the autograd engine that :class:`GradCallsWatched` watches.
_GRAD_CALLS = (torch.autograd.grad, torch.autograd.backward)


class GradCallsWatched(OpWatch):
    """While active: each ``torch.autograd.grad`` (or ``backward``) call runs under
    :func:`hooks_watched` -- a function transform's own backward passes, inside a pass that
    :func:`custom_backwards_watched` watches.  Only those calls pay for the profile
    function; every other op passes through.

    Examples
    --------
    A backward pass started inside the watched code runs under the hooks' watch:

    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> with custom_backwards_watched([]), GradCallsWatched():
    ...     (x.exp() * 2).sum().backward()
    >>> x.grad
    tensor([5.4366, 5.4366])
    """

    def run(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if func in _GRAD_CALLS:
            with hooks_watched():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _function_name(node: Any) -> str:
    cls = getattr(node, "_forward_cls", None)
    return cls.__name__ if cls is not None else type(node).__name__


def _once_differentiable(node: Any) -> bool:
    cls = getattr(node, "_forward_cls", None)
    backward = getattr(cls, "backward", None)
    return getattr(backward, "__code__", None) is _ONCE_DIFFERENTIABLE_CODE


def _guarded_apply(node: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    def apply(*grad_outputs: Any) -> Any:
        if not torch.is_grad_enabled():  # a backward pass that builds no graph
            return original(*grad_outputs)
        try:
            saved = tuple(node.saved_tensors)
        except RuntimeError:  # already freed: the Function's backward will say so
            saved = ()
        kept = tree_flatten(list(vars(node).values()))[0]  # what the forward kept on ctx
        incoming = [t for t in (*grad_outputs, *saved, *kept) if isinstance(t, torch.Tensor)]
        tangents_in = level_active() and any(unpack_dual(t)[1] is not None for t in incoming)
        anchors = [t for t in incoming if t.requires_grad]
        if not anchors and not tangents_in:  # its gradient is a constant: nothing to miss
            return original(*grad_outputs)
        if _once_differentiable(node) or _detached_alias(incoming):
            opaque = True
            result = original(*grad_outputs)
        else:
            watch = _LeavesAutograd()
            with watch:
                result = original(*grad_outputs)
            opaque = watch.seen
        if not opaque:
            return result
        message = opaque_backward_message(_function_name(node))
        if tangents_in:
            raise RuntimeError(message)
        # every gradient it returns now refuses to be differentiated; the refusing node
        # gets the graph's own tensors as inputs too, so that a later backward pass
        # towards the inputs runs through it (and raises) instead of around it
        refuse = torch._C._functions.DelayedError(message, 1 + len(anchors))
        single = not isinstance(result, tuple)
        refused = tuple(
            refuse(g.detach().requires_grad_(True), *anchors)[0]
            if isinstance(g, torch.Tensor)
            else g
            for g in ((result,) if single else result)
        )
        return refused[0] if single else refused

    return apply


def _detached_alias(tensors: List[torch.Tensor]) -> bool:
    """Whether one of ``tensors`` is a detached alias of another that requires grad (its
    forward kept ``x.detach()`` or ``x.data``): the backward computes with it outside
    autograd.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, requires_grad=True)
    >>> _detached_alias([x, x.detach()]), _detached_alias([x, x.detach().clone()])
    (True, False)
    """
    differentiable = {t.data_ptr() for t in tensors if t.requires_grad}
    return any(
        not t.requires_grad and t.is_floating_point() and t.data_ptr() in differentiable
        for t in tensors
        if t.numel()
    )


#: The code of the watched backward's wrapper: frame walks stop there.
_WATCHED_APPLY_CODE = next(
    c for c in _guarded_apply.__code__.co_consts if getattr(c, "co_name", None) == "apply"
)


class _LeavesAutograd(GradModeOffWatch):
    """Notes whether the code it runs leaves autograd (``seen``): an op that copies out of
    autograd, or one with grad mode off outside a nested custom Function's forward.

    ``grad_mode_counts=False``: the code starts with grad mode off (a function transform
    run under the caller's ``torch.no_grad()`` records regardless), so grad mode tells
    nothing there."""

    def __init__(self, grad_mode_counts: bool = True) -> None:
        super().__init__()
        self._grad_mode_counts = grad_mode_counts

    def notes(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        name = getattr(func, "__name__", None)
        if name in _LEAVE_AUTOGRAD or func in _LEAVE_AUTOGRAD_CALLS:
            # leaving autograd with a tensor that carries a derivative (not a constant: a
            # mask, a number, a tensor made from Python numbers)
            data = args[1:2] if name == "new_tensor" else args[:1]
            return any(isinstance(a, torch.Tensor) and a.requires_grad for a in data)
        if builds_no_graph(func, args, kwargs):  # its gradients carry no graph
            return True
        return (
            self._grad_mode_counts
            and not torch.is_grad_enabled()
            and not _inside_a_function_forward()
        )


def _inside_a_function_forward() -> bool:
    """Whether the op being watched runs in the forward of a custom Function (grad mode off
    there by torch itself), called by the watched backward."""
    frame: Any = sys._getframe(1)
    while frame is not None and frame.f_code is not _WATCHED_APPLY_CODE:
        code = frame.f_code
        if code is _FUNCTION_APPLY_CODE:
            return True
        if code.co_name == "forward" and isinstance(frame.f_locals.get("ctx"), FunctionCtx):
            return True  # an old-style forward(ctx, ...) (torch 1.13 has no Python apply)
        frame = frame.f_back
    return False


#: torch.func pushes an outer ``jvp``'s tangents through a custom Function's ``jvp`` rule
#: as if what the rule reads were constants (``jacfwd(jacfwd(f))``: 10.1 off for a cube).
_FORWARD_OVER_FORWARD = (
    "{name}: forward mode over forward mode through this custom autograd.Function's jvp "
    "(jacfwd of jacfwd, jvp of jacfwd) gives wrong values in torch.func's function "
    "transforms; take the outer derivative in reverse mode (jacrev of jacfwd, hessian), or "
    "use automatic mode or backend='autograd'"
)


def _refused_unless_differentiable(
    name: str, rule: Callable[..., Any], own_levels: int
) -> Callable[..., Any]:
    """Custom Function ``name``'s ``backward`` or ``jvp`` ``rule``, raising where it computes
    outside autograd while a transform differentiates its result again: while more ``grad``
    and ``jvp`` transforms run than the ``own_levels`` the rule runs for."""
    opaque = getattr(rule, "__code__", None) is _ONCE_DIFFERENTIABLE_CODE

    def refusing(ctx: Any, *args: Any) -> Any:
        if own_levels and differentiating_levels() <= own_levels:  # a first derivative
            return rule(ctx, *args)
        if own_levels and differentiating_levels(forward_only=True) > own_levels:
            raise RuntimeError(_FORWARD_OVER_FORWARD.format(name=name))
        if opaque:
            raise RuntimeError(opaque_backward_message(name))
        watch = _LeavesAutograd(grad_mode_counts=torch.is_grad_enabled())
        with watch:
            result = rule(ctx, *args)
        if watch.seen:
            raise RuntimeError(opaque_backward_message(name))
        return result

    return refusing


def _refusing_twin(cls: Any) -> Any:
    """A subclass of custom Function ``cls`` whose backward (and ``jvp``) raise where they
    compute outside autograd."""

    def rules() -> Dict[str, Any]:
        # a backward runs after its own transform ended: the twin is made only where another
        # differentiates it; a jvp runs inside its own one
        name = cls.__name__
        refusing = {"backward": _refused_unless_differentiable(name, cls.backward, 0)}
        if cls.jvp is not torch.autograd.Function.jvp:
            refusing["jvp"] = _refused_unless_differentiable(name, cls.jvp, 1)
        return refusing

    return function_twin(cls, "refusing", rules)


class _OpaqueBackwardsRefused(OpWatch):
    """Swaps each custom Function the watched code applies inside a function transform for
    its refusing twin."""

    def run(self, func: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if func is custom_function_call() and args and isinstance(args[0], type):
            args = (_refusing_twin(args[0]), *args[1:])
        return func(*args, **kwargs)


def opaque_backwards_refused(derivative: Callable[..., Any]) -> Callable[..., Any]:
    """``derivative`` (a function transform's derivative of a function), raising the
    :func:`opaque_backward_message` error where an outer ``grad`` or ``jvp`` transform
    differentiates it again through a custom Function whose backward (or ``jvp``)
    computes outside autograd; a first derivative runs unwatched.

    Examples
    --------
    A differentiable function is differentiated again as written (see
    ``tests/contract/test_opaque_backward.py`` for the refusals):

    >>> import torch
    >>> from tad_autograd.compat._torch_info import function_transforms
    >>> transforms = function_transforms()
    >>> gradient = opaque_backwards_refused(transforms.grad(lambda x: (x**3).sum()))
    >>> gradient(torch.ones(1))
    tensor([3.])
    >>> transforms.jacrev(gradient)(torch.ones(1))
    tensor([[6.]])
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        if is_compiling() or not differentiating_levels():
            return derivative(*args, **kwargs)
        with _OpaqueBackwardsRefused():
            return derivative(*args, **kwargs)

    run.__wrapped__ = derivative  # type: ignore[attr-defined]
    return run
