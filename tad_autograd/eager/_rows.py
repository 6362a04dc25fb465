"""The rows of a Jacobian from an eager forward graph: backward passes, looped or vectorised.

Given outputs recorded under ordinary autograd and the leaves they were
computed from, :func:`rows` runs one :func:`torch.autograd.grad` per output
element (one in all for a scalar), and :func:`vectorised_rows` runs one
backward pass batched over all rows with a transform library's ``vmap``, or
with the autograd engine's own batching (:data:`GRADS_BATCHED`:
``torch.autograd.grad(..., is_grads_batched=True)``).  A backward pass that
cannot be vectorised (any exception inside the ``vmap``, whatever its
message) is left to the loop, which either succeeds or raises the user's
real error from plain autograd.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..compat._rng import RngStates
from ._batched_backward_watch import hooks_watched
from ._column_check import ReverseProbe, probe_cotangents
from ._engine import scalar_grad
from ._graph import defective_ops_in, has_custom_functions

__all__ = [
    "LOOP_MAX_ROWS",
    "GRADS_BATCHED",
    "basis",
    "rows",
    "vectorised_rows",
    "joint_rows",
    "columns_by_double_vjp",
    "transposed_graph",
    "note_rows",
    "last_rows_decision",
]

_log = logging.getLogger("tad_autograd")

#: Up to this many Jacobian rows, a loop of backward passes beats one vectorised pass.
LOOP_MAX_ROWS = 4

#: Per thread: how the last Jacobian whose rows could be vectorised took them, and why.
_DECISION = threading.local()


def note_rows(decision: str) -> None:
    """Record how the rows of a Jacobian were taken (``"vectorised"``, ``"looped: why"``).

    Examples
    --------
    >>> note_rows("vectorised")
    >>> last_rows_decision()
    'vectorised'
    """
    _DECISION.last = decision


def last_rows_decision() -> Optional[str]:
    """How this thread's last Jacobian of more than a few rows took them (``None``: none yet).

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> _ = ta.jacrev(torch.sin)(torch.zeros(6))
    >>> last_rows_decision()
    'vectorised'
    """
    last: Optional[str] = getattr(_DECISION, "last", None)
    return last


class _GradsBatched:
    """The ``vmap`` argument that batches rows in the autograd engine itself.

    With it, :func:`joint_rows` and :func:`vectorised_rows` run each chunk of
    rows as one ``torch.autograd.grad(..., is_grads_batched=True)``: no
    transform library is involved, so the graph may hold anything the engine
    can run (its batching falls back to a loop for ops without a batching
    rule).
    """

    def __repr__(self) -> str:
        return "GRADS_BATCHED"


#: Rows batched by the autograd engine (``is_grads_batched=True``) instead of a ``vmap``.
GRADS_BATCHED: Any = _GradsBatched()


def basis(
    outputs: List[torch.Tensor], numels: List[int], start: int, size: int
) -> List[torch.Tensor]:
    """Rows ``start:start + size`` of the identity over all elements of ``outputs``, split
    per tensor: the one basis of every Jacobian's rows or columns (``numels``: their sizes).

    Built with ``zeros`` and a diagonal fill, which every dtype supports
    (``torch.eye`` lacks bfloat16 on some releases).

    Examples
    --------
    >>> import torch
    >>> [b.tolist() for b in basis([torch.zeros(2), torch.zeros(1)], [2, 1], 1, 2)]
    [[[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]]]
    """
    parts = []
    offset = 0
    for o, n in zip(outputs, numels):
        b = o.new_zeros((size, n))
        k = start - offset  # row r of the chunk has its one in column r + k of this output
        if -size < k < n:
            b.diagonal(k).fill_(1)
        parts.append(b.view((size,) + o.shape))
        offset += n
    return parts


def rows(
    output: torch.Tensor, inputs: List[torch.Tensor], create_graph: bool, retain: bool = True
) -> List[torch.Tensor]:
    """d output / d input for each input by a loop of backward passes.

    Each result is shaped ``output.shape + input.shape``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> rows(x ** 2, [x], create_graph=False)[0]
    tensor([[2., 0.],
            [0., 4.]])
    """
    n = output.numel()
    if n == 0 or not output.requires_grad:
        return [
            output.new_zeros(output.shape + x.shape, dtype=x.dtype, device=x.device) for x in inputs
        ]
    # create_graph is only ever asked for with grad mode on: a scalar needs no enable_grad
    if n == 1:  # one backward pass, straight into the engine
        grads = scalar_grad(output, inputs, retain, create_graph)
        if output.dim() == 0:  # the gradient already has the Jacobian's shape
            return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs)]
        return [
            (g if g is not None else torch.zeros_like(x)).reshape(output.shape + x.shape)
            for g, x in zip(grads, inputs)
        ]
    columns: List[List[Optional[torch.Tensor]]] = [[] for _ in inputs]
    with torch.enable_grad():  # the row slices must be part of the graph, even under no_grad
        flat = output.reshape(-1)
        for j in range(n):
            grads = scalar_grad(flat[j], inputs, retain or j < n - 1, create_graph)
            for col, g in zip(columns, grads):
                col.append(g)
    out = []
    for x, col in zip(inputs, columns):
        if all(g is None for g in col):
            out.append(output.new_zeros(output.shape + x.shape, dtype=x.dtype, device=x.device))
            continue
        filled = [g if g is not None else torch.zeros_like(x) for g in col]
        out.append(torch.stack(filled).reshape(output.shape + x.shape))
    return out


def vectorised_rows(
    outputs: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Callable[..., Callable[..., Tuple[torch.Tensor, ...]]],
    chunk_size: Optional[int],
    retain: bool = True,
) -> Optional[List[List[torch.Tensor]]]:
    """All Jacobian rows by ``vmap`` over one backward pass; ``None`` if that fails.

    Returns, per output, the list of d output / d input (shaped
    ``output.shape + input.shape``).  Whatever the vectorised backward raises
    (a custom ``autograd.Function`` whose backward calls ``.item()``, an op
    without a batching rule, anything else), the generators it may have
    drawn from are restored and ``None`` tells the caller to loop instead.
    ``vmap`` may be :data:`GRADS_BATCHED`; ``retain=False`` frees the graph
    with the last row (see :func:`joint_rows`).

    Examples
    --------
    >>> import torch
    >>> try:
    ...     from torch.func import vmap
    ... except ImportError:  # torch 1.13
    ...     from functorch import vmap
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> vectorised_rows([x ** 2], [x], False, vmap, None)[0][0]
    tensor([[2., 0.],
            [0., 4.]])
    """
    states = RngStates({x.device for x in inputs})
    try:
        with torch.enable_grad():
            return joint_rows(outputs, inputs, create_graph, vmap, chunk_size, retain)
    except Exception as error:  # structural: the loop decides whether it is the user's error
        states.restore()
        note_rows(f"looped: the vectorised backward pass raised {type(error).__name__}")
        _log.info(
            "backward pass not vectorisable (%s: %s); using a loop of backward passes",
            type(error).__name__,
            error,
        )
        return None


def joint_rows(
    outputs: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Optional[Callable[..., Callable[..., Tuple[torch.Tensor, ...]]]],
    chunk_size: Optional[int] = None,
    retain: bool = True,
) -> List[List[torch.Tensor]]:
    """Every row from one backward pass over *all* outputs, as :func:`torch.func.jacrev` does.

    Each row is the vector-Jacobian product of one basis vector over the
    concatenated outputs (zero on every output but one), so its graph (with
    ``create_graph``) is the one :mod:`torch.func` builds: a block of a
    constant output is differentiable when its neighbours' are.  With
    ``vmap`` the rows are batched, ``chunk_size`` at a time (by the autograd
    engine for :data:`GRADS_BATCHED`); without, looped.

    With ``retain=False`` the last row comes from a backward pass of its own
    that frees the graph: every batched pass before it keeps the graph, so
    that a caller whose batched pass fails can still take the rows by a loop.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> w = torch.tensor(3.0, requires_grad=True)
    >>> ident, scaled = joint_rows([x * 1, x * w], [x], create_graph=True, vmap=None)
    >>> ident[0].requires_grad, scaled[0].requires_grad
    (True, True)
    """
    live = [o for o in outputs if o.requires_grad]
    numels = [o.numel() for o in outputs]
    total = sum(numels)
    if not live or total == 0:
        return [[o.new_zeros(o.shape + x.shape, dtype=x.dtype) for x in inputs] for o in outputs]
    step = total if chunk_size is None or vmap is None else chunk_size
    is_live = [o.requires_grad for o in outputs]

    def vjp(
        *cotangents: torch.Tensor, keep_graph: bool = True, engine_batched: bool = False
    ) -> Tuple[torch.Tensor, ...]:
        with hooks_watched():  # in a watched vectorised pass: the hooks the engine calls
            grads = torch.autograd.grad(
                live,
                inputs,
                [c for c, keep in zip(cotangents, is_live) if keep],
                retain_graph=keep_graph,
                create_graph=create_graph,
                allow_unused=True,
                is_grads_batched=engine_batched,
            )
        if engine_batched:
            lead = cotangents[0].shape[:1]
            return tuple(
                g if g is not None else x.new_zeros(lead + x.shape) for g, x in zip(grads, inputs)
            )
        return tuple(g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs))

    if vmap is GRADS_BATCHED:
        batched: Callable[..., Tuple[torch.Tensor, ...]] = functools.partial(
            vjp, engine_batched=True
        )
    else:
        batched = vmap(vjp) if vmap is not None else _looped(vjp)
    pieces: List[List[torch.Tensor]] = [[] for _ in inputs]
    end = total if retain else total - 1
    for start in range(0, end, step):
        size = min(step, end - start)
        for piece, part in zip(pieces, batched(*basis(outputs, numels, start, size))):
            piece.append(part)
    if not retain:  # the last row on its own, freeing the graph
        last = vjp(*(b[0] for b in basis(outputs, numels, total - 1, 1)), keep_graph=False)
        for piece, part in zip(pieces, last):
            piece.append(part.unsqueeze(0))
    per_input = [torch.cat(p) if len(p) > 1 else p[0] for p in pieces]
    result = []
    start = 0
    for o, n in zip(outputs, numels):
        result.append(
            [p[start : start + n].reshape(o.shape + x.shape) for p, x in zip(per_input, inputs)]
        )
        start += n
    return result


def _looped(
    vjp: Callable[..., Tuple[torch.Tensor, ...]],
) -> Callable[..., Tuple[torch.Tensor, ...]]:
    """``vjp`` applied to each row of its batched arguments, stacked: a ``vmap`` by a loop."""

    def looped(*cotangents: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        rows = [vjp(*(c[r] for c in cotangents)) for r in range(cotangents[0].shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*rows))

    return looped


def columns_by_double_vjp(
    outputs: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Optional[Callable[..., Callable[..., Tuple[torch.Tensor, ...]]]] = None,
    chunk_size: Optional[int] = None,
) -> Optional[List[List[torch.Tensor]]]:
    """The Jacobian column by column from the recorded graph: forward mode without a rerun.

    ``J^T v`` is built with a graph for dummy cotangents ``v``; differentiating
    it with respect to ``v`` along the ``k``-th input basis vector gives the
    ``k``-th column ``J e_k``: one backward pass per input element (batched
    with ``vmap``, ``chunk_size`` at a time, for more than a few), and the
    function ran once.  Exact through built-in ops (their backward formulas
    are differentiable, or raise); ``None`` when the graph holds a custom
    ``autograd.Function`` (its Python backward may compute outside autograd)
    or anything here raises: the caller then takes the rows.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> columns_by_double_vjp([x ** 2], [x], create_graph=False)[0][0]
    tensor([[2., 0.],
            [0., 4.]])
    """
    live = [o for o in outputs if o.requires_grad]
    if live and has_custom_functions(live):
        return None
    batch = vmap if vmap is not None and not defective_ops_in(live) else None
    per_input: List[Optional[List[torch.Tensor]]] = []
    try:
        with torch.enable_grad():
            dummies, grads = transposed_graph(live, inputs)
            for g, x in zip(grads, inputs):
                if g is None or not g.requires_grad or x.numel() == 0:
                    per_input.append(None)  # no output depends on x
                    continue
                per_input.append(_columns_of(g, dummies, create_graph, batch, chunk_size))
        probe = ReverseProbe(dummies, grads) if live else None
    except Exception as error:  # structural: the rows decide whether it is the user's error
        _log.info("no double-vjp columns (%s: %s); taking the rows", type(error).__name__, error)
        return None
    if probe is not None:
        by_output = [[None if c is None else c[k] for c in per_input] for k in range(len(live))]
        if not probe.agrees_by_columns(by_output):
            _log.info("double-vjp columns disagree with a plain vjp; taking the rows")
            return None
    result = []
    for o in outputs:
        k = next((i for i, o2 in enumerate(live) if o2 is o), None)
        blocks = []
        for x, cols in zip(inputs, per_input):
            if k is None or cols is None:
                blocks.append(o.new_zeros(o.shape + x.shape, dtype=x.dtype))
            else:
                blocks.append(cols[k].reshape(o.shape + x.shape))
        result.append(blocks)
    return result


def transposed_graph(
    live: List[torch.Tensor], inputs: List[torch.Tensor]
) -> Tuple[List[torch.Tensor], Sequence[Optional[torch.Tensor]]]:
    """``J^T v`` per input, recorded with a graph in dummy cotangents ``v``: the double-vjp trick.

    ``J^T v`` is linear in ``v``, so differentiating it with respect to ``v``
    along ``t`` gives ``J t`` whatever ``v`` is, but only where the backward
    formulas can be differentiated at ``v``.  Some cannot at zero
    (``logcumsumexp``'s takes the log of the cotangent: zero gives NaN), so
    ``v`` is random in [0.5, 1.5] (the same on every call), which also makes
    ``J^T v`` a check of the products (:mod:`~tad_autograd.eager._column_check`).
    Returns the dummies and, per input, ``J^T v`` (``None`` where no output
    depends on it).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([0.5, -1.0], requires_grad=True)
    >>> out = torch.logcumsumexp(x, 0)
    >>> dummies, (g,) = transposed_graph([out], [x])
    >>> torch.autograd.grad(g, dummies, torch.tensor([1.0, 0.0]))[0]  # column 0 of J
    tensor([1.0000, 0.8176])
    """
    if not live:
        return [], [None] * len(inputs)
    dummies = [u.requires_grad_(True) for u in probe_cotangents(live)]
    with torch.enable_grad():
        grads = torch.autograd.grad(live, inputs, dummies, create_graph=True, allow_unused=True)
    return dummies, grads


def _columns_of(
    g: torch.Tensor,
    dummies: List[torch.Tensor],
    create_graph: bool,
    vmap: Optional[Callable[..., Callable[..., Tuple[torch.Tensor, ...]]]],
    chunk_size: Optional[int],
) -> List[torch.Tensor]:
    """Per dummy (output), the (output elements, input elements) block d output / d input."""
    n = g.numel()

    def column(unit: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        found = torch.autograd.grad(
            g, dummies, unit, retain_graph=True, create_graph=create_graph, allow_unused=True
        )
        return tuple(c if c is not None else torch.zeros_like(d) for c, d in zip(found, dummies))

    units = basis([g], [n], 0, n)[0]
    if vmap is not None and n > LOOP_MAX_ROWS:
        step = n if chunk_size is None else chunk_size
        parts = [vmap(column)(units[s : s + step]) for s in range(0, n, step)]
        stacked = [torch.cat([p[k] for p in parts]) for k in range(len(dummies))]
    else:
        cols = [column(units[j]) for j in range(n)]
        stacked = [torch.stack([c[k] for c in cols]) for k in range(len(dummies))]
    return [s.reshape(n, d.numel()).transpose(0, 1) for s, d in zip(stacked, dummies)]
