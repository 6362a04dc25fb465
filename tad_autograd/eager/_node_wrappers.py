"""One wrapper per custom ``autograd.Function`` node, shared by the passes that ask for it.

Two jobs wrap the backward of a graph's custom Function nodes while a
backward pass runs: the second-order guard of the passes that build a graph
(:mod:`tad_autograd.eager._opaque_backward`, kind ``"guards"``) and the
defect watch of the passes that a ``vmap`` vectorises
(:mod:`tad_autograd.eager._batched_backward_watch`, kind ``"watches"``).
A graph's nodes are shared: several passes, in several threads, may run
through one node at once, each asking for its own kind of wrapping or for
none.  So each node gets one wrapper, installed by the first pass that asks
and removed by the last one to leave, which restores the node exactly
(counted per kind over all threads, under one lock).  When the engine calls
it, the wrapper applies the kinds that a pass running in the calling thread
asked for, the guard inside the watch, and otherwise runs the node's own
backward.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

__all__ = ["KINDS", "Wrap", "nodes_wrapped", "function_name", "WRAPPER_CODE"]

#: What a job puts around a node's backward: called with the node and the backward it wraps,
#: it returns the backward to run instead.
Wrap = Callable[[Any, Callable[..., Any]], Callable[..., Any]]

#: The kinds of wrapping, innermost first: a pass that is both guarded and watched runs the
#: guard inside the watch.
KINDS = ("guards", "watches")

#: Instance attribute that replaces a node's ``apply`` while a pass guards or watches it.
_APPLY = "apply"

#: The graph's nodes are shared between threads: installing and removing the wrappers is
#: serialised, and each wrapper asks which of the passes running in its thread asked for it.
_WRAP_LOCK = threading.Lock()
#: Per thread, one attribute per kind: the nodes this thread's passes wrap so, with counts.
_LOCAL = threading.local()


class _Installed:
    """The wrapper installed on one node: how many passes (of all threads) ask for each
    kind, what each kind puts around the backward, and the instance ``apply`` it replaced
    (``None``: the class's)."""

    __slots__ = ("counts", "wraps", "previous")

    def __init__(self, previous: Optional[Callable[..., Any]]) -> None:
        self.counts: Dict[str, int] = dict.fromkeys(KINDS, 0)
        self.wraps: Dict[str, Wrap] = {}
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
def nodes_wrapped(nodes: Sequence[Any], kind: str, wrap: Wrap) -> Iterator[None]:
    """While the block runs, this thread's passes ``kind`` (one of :data:`KINDS`) ``nodes``:
    their backward runs inside ``wrap``; the last pass of any thread to leave a node
    restores it exactly.

    Examples
    --------
    >>> import torch
    >>> Twice = type("Twice", (torch.autograd.Function,), {
    ...     "forward": staticmethod(lambda ctx, x: x * 2),
    ...     "backward": staticmethod(lambda ctx, g: g * 2)})
    >>> x = torch.ones(1, requires_grad=True)
    >>> y = Twice.apply(x)
    >>> called = []
    >>> def noted(node, backward):
    ...     called.append(function_name(node))
    ...     return backward
    >>> with nodes_wrapped([y.grad_fn], "watches", noted):
    ...     torch.autograd.grad(y, x, retain_graph=True)
    (tensor([2.]),)
    >>> called, "apply" in vars(y.grad_fn)
    (['Twice'], False)
    """
    mine = _thread_counts(kind)
    with _WRAP_LOCK:
        for node in nodes:
            entry = _INSTALLED.get(node)
            if entry is None:
                entry = _INSTALLED[node] = _Installed(vars(node).get(_APPLY))
                setattr(node, _APPLY, _dispatching_apply(node, entry))
            entry.wraps[kind] = wrap
            entry.counts[kind] += 1
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
                entry.counts[kind] -= 1
                if not any(entry.counts.values()):
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
    """The one wrapper of a node: the wrapping of each kind that a pass of this thread asked
    for, innermost first."""
    original = entry.previous if entry.previous is not None else type(node).apply.__get__(node)

    def apply(*grad_outputs: Any) -> Any:
        run = original
        for kind in KINDS:
            if _asked(node, kind, entry.counts[kind]):
                run = entry.wraps[kind](node, run)
        return run(*grad_outputs)

    return apply


#: The code the engine runs for a node that a pass wraps (the wrapper's ``apply``).
WRAPPER_CODE = next(
    c for c in _dispatching_apply.__code__.co_consts if getattr(c, "co_name", None) == "apply"
)


def function_name(node: Any) -> str:
    """The name of the custom Function whose backward node is ``node`` (else the node's
    type's).

    Examples
    --------
    >>> import torch
    >>> function_name(torch.ones(1, requires_grad=True).exp().grad_fn)
    'ExpBackward0'
    """
    cls = getattr(node, "_forward_cls", None)
    return cls.__name__ if cls is not None else type(node).__name__
