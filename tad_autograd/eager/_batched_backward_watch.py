"""The watch of backward passes that a ``vmap`` vectorises.

The rows of a Jacobian are taken by one backward pass batched by a ``vmap``
where that is exact.  Python code that the autograd engine runs inside such
a pass -- a custom ``autograd.Function``'s backward, a backward hook -- may
call an op whose batched derivative the installed torch gets wrong, or run a
backward pass of its own (whose ops no watch sees).  While such a pass runs,
:func:`custom_backwards_watched` wraps the custom nodes of its graph (one
wrapper per node, shared with the second-order guard:
:mod:`tad_autograd.eager._node_wrappers`) to run each backward under a
:class:`~tad_autograd.compat._transform_failures.DefectWatch`, and
:func:`hooks_watched` watches the hooks the engine calls: such code raises
:class:`~tad_autograd.compat._transform_failures.DefectiveBatchingError`
there, and the rows are taken by a loop instead.  :class:`WatchedBackwards`
names the code and the op.
"""

from __future__ import annotations

import contextlib
import dis
import sys
import threading
import types
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.autograd.function import BackwardCFunction

from ..compat._torch_info import cache
from ..compat._transform_failures import (
    REVERSE_STAGES,
    DefectiveBatchingError,
    DefectWatch,
    OpWatch,
)
from ._node_wrappers import WRAPPER_CODE, function_name, nodes_wrapped

__all__ = [
    "custom_backwards_watched",
    "WatchedBackwards",
    "hooks_watched",
    "backwards_watched_or_refused",
    "GradCallsWatched",
]

#: Per thread: the :class:`WatchedBackwards` of its watched passes, innermost last (``seen``).
_LOCAL = threading.local()


def _note_seen(code: str, op: str) -> None:
    """Tell this thread's innermost watched pass that ``code`` (a custom Function's backward,
    a hook) called ``op``."""
    stack: Optional[List[WatchedBackwards]] = getattr(_LOCAL, "seen", None)
    if stack and stack[-1].op is None:
        stack[-1].code, stack[-1].op = code, op


def _watched_apply(node: Any, backward: Callable[..., Any]) -> Callable[..., Any]:
    """``backward`` of custom Function node ``node`` under a defect watch, which tells this
    thread's innermost watched pass what it saw."""

    def apply(*grad_outputs: Any) -> Any:
        watch = DefectWatch(REVERSE_STAGES, nested_derivatives=True)
        try:
            with watch:
                return backward(*grad_outputs)
        finally:
            if watch.op is not None:
                _note_seen(f"custom Function {function_name(node)}'s backward", watch.op)

    return apply


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
        with nodes_wrapped(nodes, "watches", _watched_apply):
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


#: What the engine calls that :func:`custom_backwards_watched` watches already: a custom
#: Function's backward (the class's ``apply``, or a node's wrapper).
_NODE_APPLY_CODES = frozenset({*_code_objects(BackwardCFunction.apply), WRAPPER_CODE})


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
