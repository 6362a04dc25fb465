"""Automatic mode as composite backends, and the plan ``explain()`` shows.

A backend says *what* computes derivatives (:mod:`torch.func`, ``functorch``,
plain :mod:`torch.autograd`); what builds a call's operators says *how* it
uses it, by a name that :func:`~tad_autograd.explain`, the fallback warning,
the log records and the report show:

``"transform"``, ``"loop"``
    An explicitly chosen backend's own operators
    (:class:`~tad_autograd.backends._operators.Plain`): a transform backend's
    transforms (also ``fjacrev``/``fvmap``), or the ``"autograd"`` backend's
    eager forward pass and loops of backward passes.
``"eager-vectorised"``
    Automatic mode on a transform backend (:class:`EagerVectorised`): every
    derivative operator runs its eager implementation (an eager forward pass
    under ordinary autograd, then the Jacobian's rows: one backward pass for
    a scalar, a short loop for a few rows, otherwise one backward pass
    vectorised with the backend's ``vmap``, never through an op whose batched
    derivative torch gets wrong); inside a function transform, the backend's
    own operator under the defect watch.  ``vmap`` loops over small batches
    and uses the backend's ``vmap`` otherwise.  Whatever escapes a transform
    is marked as such, after the random generators the call can see were
    restored, so the automatic fallback retries it on plain autograd.
``"compiled"``
    Automatic mode on a transform backend while dynamo (``torch.compile``)
    traces the call (:class:`Compiled`): the backend's own transforms, which
    dynamo supports natively, with an operator's ``compiled`` form where it
    has one (``hvp`` reverse over reverse).

The choices are explicit objects: :func:`builder_for` picks what builds a
call, :func:`plan` describes automatic mode's decisions for ``explain()``.

Examples
--------
>>> from tad_autograd.dispatch._registry import REGISTRY
>>> builder_for(REGISTRY.get("autograd"), automatic=True).runs
'loop'
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

from ..backends._operators import (
    JACFWD,
    JACREV,
    JVP,
    LINEARIZE,
    VJP,
    Builds,
    Fn,
    Operator,
    Params,
    Plain,
)
from ..backends.base import Backend
from ..compat._pytree import tree_flatten, tree_unflatten
from ..compat._rng import attempt
from ..compat._torch_info import transforms_active
from ..compat._transform_failures import (
    REVERSE_STAGES,
    DefectiveBatchingError,
    DefectWatch,
    ForwardWatch,
    mark_inside_transform,
    watch_calls,
    watch_forward_calls,
)
from ..compat.batching_defects import Stages
from ..eager._batched_backward_watch import GradCallsWatched, backwards_watched_or_refused
from ..eager._loop_vmap import loop_vmap
from ..eager._rows import LOOP_MAX_ROWS
from ._settings import CONTEXT, ORIGIN_AUTOMATIC_EAGER

__all__ = [
    "EagerVectorised",
    "Compiled",
    "builder_for",
    "compiled_builder_for",
    "run_watched_inside",
    "Plan",
    "plan",
    "LOOP_MAX_BATCH",
    "LOOP_MAX_BATCH_ACCELERATOR",
]

#: Up to this batch size, an automatic ``vmap`` on the CPU loops (no transform overhead).
LOOP_MAX_BATCH = 2
#: The same on an accelerator, where each looped sample launches its own kernels.
LOOP_MAX_BATCH_ACCELERATOR = 1


class EagerVectorised(Builds):
    """Automatic mode on a transform backend: eager outside transforms, the backend inside.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.backends._operators import JACREV, Params
    >>> from tad_autograd.dispatch._registry import REGISTRY
    >>> from tad_autograd import available_backends
    >>> composite = EagerVectorised(REGISTRY.get(available_backends()[0]))
    >>> composite.build(JACREV, torch.sin, Params())(torch.zeros(6)).shape
    torch.Size([6, 6])
    """

    runs = "eager-vectorised"
    eager = True

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._batch = backend.vmap_primitive()

    def build(self, op: Operator, func: Fn, params: Params) -> Fn:
        if op.composed is not None:
            return op.composed(self, func, params)
        if op.eager is None:  # vmap: differentiates nothing, so no eager version
            return self._vmap(op, func, params)
        eager = op.eager(func, params, self._batch)
        backend = self.backend
        inside: List[Fn] = []  # the backend's operator, built on first need

        def run(*args: Any) -> Any:
            if not transforms_active():
                return eager(*args)
            # Called inside a function transform (a vmap around it, or the user's own
            # torch.func transform): autograd cannot run there, the transform can.
            if not inside:
                inside.append(op.on_backend(backend, watched_for(op, func), params))
            return run_watched_inside(op, lambda: inside[0](*args))

        return run

    def _vmap(self, op: Operator, func: Fn, p: Params) -> Fn:
        # never vmap an op this torch batches wrongly (today: random ops that ignore
        # randomness, on torch 1.13 and 2.0; a Python-level watch on every op of the
        # function, paid on those releases only, since a function that reseeds hides its
        # draws from _marked)
        backend = self.backend
        context = (backend.name, ORIGIN_AUTOMATIC_EAGER)
        loops = _loopable(p.out_dims)
        in_dims, out_dims, randomness = p.in_dims, p.out_dims, p.randomness
        vectorised: List[Fn] = []  # the backend's vmap, built on first need (small batches loop)

        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            size = _batch_size_hint(in_dims, args) if loops else None
            # an empty batch goes to the transform too: the loop must make up a sample
            if size is None or not 0 < size <= _loop_max_batch(args[0]) or transforms_active():
                if not vectorised:
                    watched = (
                        watch_calls(func, op.inner_stages) if randomness != "different" else func
                    )
                    vectorised.append(op.on_backend(backend, watched, p))
                return _marked(vectorised[0], func, args, kwargs, randomness == "error")
            token = CONTEXT.set(context)  # the loop runs func eagerly
            try:
                return loop_vmap(func, in_dims, out_dims, randomness, args, kwargs)
            finally:
                CONTEXT.reset(token)

        return batched_fn


class Compiled(Builds):
    """Automatic mode on a transform backend while dynamo traces the call.

    The backend's own transforms, with the function under the watches automatic
    mode keeps inside transforms, decided while dynamo traces (a torch
    function mode, which dynamo traces like the function): a Jacobian that
    would vectorise through an op whose batched derivative the installed torch
    gets wrong, and a forward-mode operator whose function runs ops with grad
    mode off (its own ``torch.no_grad()`` block: dual numbers pass through it,
    reverse mode stops) or an op whose forward-mode formula is wrong, raise
    there, so the call takes the next candidate (plain autograd, with a graph
    break) or raises that clear error; a ``vjp`` through such an op returns a
    function that refuses to run inside a transform (a ``vmap`` around it
    then loops).

    Examples
    --------
    ``hvp`` runs reverse over reverse here (its ``compiled`` form):

    >>> import torch, tad_autograd as ta
    >>> from tad_autograd.backends._operators import HVP, Params
    >>> backend = ta.dispatch._registry.REGISTRY.get(ta.available_backends()[0])
    >>> Compiled(backend).build(HVP, lambda x: (x ** 3).sum(), Params())(
    ...     (torch.tensor([1.0, 2.0]),), (torch.ones(2),))
    (tensor(9.), (tensor([ 6., 12.]),))
    """

    runs = "compiled"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def build(self, op: Operator, func: Fn, params: Params) -> Fn:
        if op.compiled is not None:
            return op.compiled(self.backend, func, params)
        if op.composed is not None or op.batches:
            return super().build(op, func, params)
        watched = op.on_backend(self.backend, watched_for(op, func), params)
        if op.mode == "forward":
            return self._forward(op, func, params, watched)
        if op.on_backend is JACREV.on_backend:
            return self._jacobian(op, func, params)
        return self._reverse_at_top(op, func, params, watched)

    def _jacobian(self, op: Operator, func: Fn, params: Params) -> Fn:
        """The backend's ``jacrev``; where the function calls an op whose batched derivative
        the installed torch gets wrong, its row-by-row form (``chunk_size=1``: a loop of
        vjps in the graph, no batched backward pass)."""
        backend = self.backend
        rows = op.on_backend(backend, func, params._replace(chunk_size=1))

        def run(*args: Any) -> Any:
            look = DefectWatch(op.inner_stages, look_only=True)  # a constant in the graph

            def looked(*inputs: Any, **kwargs: Any) -> Any:
                with look:
                    return func(*inputs, **kwargs)

            result = op.on_backend(backend, looked, params)(*args)
            return rows(*args) if look.seen else result

        return run

    def _forward(self, op: Operator, func: Fn, params: Params, watched: Fn) -> Fn:
        """Dual numbers, or reverse mode's product where the function runs ops with grad
        mode off or an op whose forward-mode formula is wrong (one graph either way)."""
        reverse = self._by_reverse(op, func, params)
        if reverse is None:
            return watched
        backend = self.backend
        others = tuple(s for s in op.inner_stages if s != "tangent")

        def run(*args: Any) -> Any:
            look = ForwardWatch(
                "tangent", look_only=True
            )  # decided while dynamo traces: a constant in the graph

            def looked(*inputs: Any, **kwargs: Any) -> Any:
                grad = contextlib.nullcontext() if torch.is_grad_enabled() else torch.enable_grad()
                with grad, look:
                    return func(*inputs, **kwargs)

            result = op.on_backend(backend, watch_calls(looked, others), params)(*args)
            return reverse(*args) if look.seen else result

        return run

    def _by_reverse(self, op: Operator, func: Fn, params: Params) -> Optional[Fn]:
        """``op`` from reverse mode: ``jacrev`` for ``jacfwd``, the transpose of the vjp
        function (a vjp of it) for ``jvp`` and ``linearize``; ``None`` for others."""
        backend = self.backend
        func = watch_calls(func, REVERSE_STAGES)
        if op.on_backend is JACFWD.on_backend:
            return JACREV.on_backend(backend, func, params)
        if op.on_backend is not JVP.on_backend and op.on_backend is not LINEARIZE.on_backend:
            return None

        def linear(primals: Tuple[Any, ...]) -> Tuple[Any, Fn, Tuple[Any, ...]]:
            output, vjp_fn, *aux = backend.vjp(func, tuple(primals), has_aux=params.has_aux)
            leaves, spec = tree_flatten(output)
            zeros = tree_unflatten([torch.zeros_like(t) for t in leaves], spec)
            transpose = backend.vjp(vjp_fn, (zeros,), has_aux=False)[1]
            return output, lambda tangents: transpose(tuple(tangents))[0], tuple(aux)

        if op.on_backend is JVP.on_backend:

            def jvp(primals: Tuple[Any, ...], tangents: Tuple[Any, ...]) -> Any:
                output, apply, aux = linear(primals)
                return (output, apply(tangents), *aux)

            return jvp

        def linearize(*primals: Any) -> Any:
            output, apply, _ = linear(primals)
            return output, lambda *tangents: apply(tangents)

        return linearize

    def _reverse_at_top(self, op: Operator, func: Fn, params: Params, watched: Fn) -> Fn:
        """``grad``, ``vjp``: nothing vectorised unless a transform runs around the call;
        a ``vjp`` through a defective op returns a function that refuses to be vectorised."""
        backend = self.backend
        plain = None if op.at_once else op.on_backend(backend, func, params)

        def run(*args: Any) -> Any:
            if transforms_active():
                return watched(*args)
            if plain is not None:
                return plain(*args)
            look = DefectWatch(op.inner_stages, look_only=True)

            def looked(*inputs: Any, **kwargs: Any) -> Any:
                with look:
                    return func(*inputs, **kwargs)

            result = op.on_backend(backend, looked, params)(*args)
            if not look.seen:
                return result
            return (result[0], _unbatchable(result[1], look.op or "an op"), *result[2:])

        return run


def watched_for(op: Operator, func: Fn, stages: Optional[Stages] = None) -> Fn:
    """``func`` as automatic mode runs it under ``op`` on a transform backend, inside a
    transform or while dynamo traces: under a defect watch for ``stages`` (by default the
    operator's ``inner_stages``); a forward-mode operator's also refuses ops run with grad
    mode off.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.backends._operators import JACFWD
    >>> watched_for(JACFWD, torch.sin)(torch.zeros(1))
    tensor([0.])
    """
    stages = op.inner_stages if stages is None else stages
    if op.mode == "forward":
        return watch_forward_calls(func, stages)
    return watch_calls(func, stages)


def run_watched_inside(op: Operator, call: Callable[[], Any]) -> Any:
    """``call()``: a transform backend's operator ``op`` that automatic mode runs inside a
    function transform.  The hooks (and custom Functions' backward passes) that its
    backward passes call -- and those of the vjp function a ``vjp`` returns -- are batched
    by the transform too, so each runs under a defect watch: a defective op there raises
    :class:`~tad_autograd.compat._transform_failures.DefectiveBatchingError` (an automatic
    ``vmap`` around then loops).  Nothing more for forward-mode and batching operators.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> run_watched_inside(JACREV, lambda: torch.autograd.grad(x.sin(), x, torch.ones(2)))
    (tensor([1., 1.]),)
    """
    if op.mode != "reverse" or not DefectWatch.needed(REVERSE_STAGES):
        return call()
    with _backwards_watched():
        result = call()
    if op is not VJP:
        return result
    vjp_fn = result[1]

    def watched_vjp_fn(*cotangents: Any, **kwargs: Any) -> Any:
        with _backwards_watched():
            return vjp_fn(*cotangents, **kwargs)

    return (result[0], watched_vjp_fn, *result[2:])


@contextlib.contextmanager
def _backwards_watched() -> Iterator[None]:
    with backwards_watched_or_refused(()), GradCallsWatched():
        yield


def _unbatchable(vjp_fn: Fn, op: str) -> Fn:
    """``vjp_fn``, refusing to run inside a function transform (its backward goes through
    ``op``, whose batched derivative the installed torch gets wrong)."""

    def checked(*cotangents: Any) -> Any:
        if transforms_active():
            raise DefectiveBatchingError(op, "a vmap of a vjp function through it")
        return vjp_fn(*cotangents)

    return checked


_BUILDERS: Dict[Tuple[Backend, bool], Builds] = {}
_COMPILED: Dict[Backend, Builds] = {}


def builder_for(backend: Backend, *, automatic: bool, transforms_only: bool = False) -> Builds:
    """What builds a call's operators on ``backend`` (made once per backend and kind).

    Parameters
    ----------
    backend : Backend
        The resolved backend.
    automatic : bool
        The backend was chosen (or inherited) automatically, with the user's
        function run eagerly around this call.
    transforms_only : bool
        For ``fjacrev``/``fvmap``: the backend's own transforms only.

    Examples
    --------
    >>> from tad_autograd.dispatch._registry import REGISTRY
    >>> builder_for(REGISTRY.get("autograd"), automatic=False).runs
    'loop'
    """
    key = (backend, automatic and not transforms_only)
    builder = _BUILDERS.get(key)
    if builder is None:  # decided once per backend and kind, off the per-call path
        if key[1] and backend.is_transform and backend.vmap_primitive() is not None:
            builder = EagerVectorised(backend)
        else:
            builder = Plain(backend)
        _BUILDERS[key] = builder
    return builder


def compiled_builder_for(backend: Backend) -> Builds:
    """What automatic mode runs on ``backend`` while dynamo traces the call.

    Examples
    --------
    >>> from tad_autograd.dispatch._registry import REGISTRY
    >>> compiled_builder_for(REGISTRY.get("autograd")).runs
    'loop'
    """
    builder = _COMPILED.get(backend)
    if builder is None:
        if backend.is_transform:
            builder = Compiled(backend)
        else:
            builder = builder_for(backend, automatic=False)
        _COMPILED[backend] = builder
    return builder


class Plan(NamedTuple):
    """Automatic mode's decisions for a resolved call, as ``explain()`` shows them.

    An immutable named tuple.

    Attributes
    ----------
    backend : str
        The backend that runs the call.
    runs : str
        How: ``"transform"``, ``"loop"`` or ``"eager-vectorised"``.
    vectorise_rows_above : int
        Reverse-mode Jacobians of more rows (and forward-mode ones of more
        columns) are vectorised with the backend's ``vmap``; fewer loop.
        0 where nothing runs eagerly.
    vmap_loops_up_to : tuple of int
        ``vmap`` loops over batches of at most this many samples (on the CPU,
        on an accelerator); larger ones use the backend's ``vmap``.
    fallback : tuple of str
        The backends a call that cannot be transformed retries on, in order.
    """

    backend: str
    runs: str
    vectorise_rows_above: int
    vmap_loops_up_to: Tuple[int, int]
    fallback: Tuple[str, ...]


def plan(backend: Backend, automatic: bool, candidates: Tuple[Backend, ...] = ()) -> Plan:
    """The decisions a call resolved to ``backend`` runs with.

    Examples
    --------
    >>> from tad_autograd.dispatch._registry import REGISTRY
    >>> plan(REGISTRY.get("autograd"), True).runs
    'loop'
    """
    builder = builder_for(backend, automatic=automatic)
    composite = isinstance(builder, EagerVectorised)
    return Plan(
        backend.name,
        builder.runs,
        LOOP_MAX_ROWS if composite else 0,
        (LOOP_MAX_BATCH, LOOP_MAX_BATCH_ACCELERATOR) if composite else (0, 0),
        tuple(b.name for b in candidates[1:]) if automatic else (),
    )


def _marked(
    transformed: Callable[..., Any],
    func: Callable[..., Any],
    args: Any,
    kwargs: Any,
    no_draws: bool = False,
) -> Any:
    """``transformed(*args, **kwargs)``; what escapes it is marked, with the RNG restored.

    With ``no_draws`` (``randomness="error"``) a transform that drew random numbers
    without raising has batched a random op wrongly (e.g. scaled_dot_product_attention
    with dropout on torch 1.13 and 2.0): that is a failure inside the transform too.
    """

    def run(states: Any) -> Any:
        result = transformed(*args, **kwargs)
        if no_draws and states.changed():
            raise DefectiveBatchingError(
                "a random operation", "it drew random numbers under randomness='error'"
            )
        return result

    return attempt(run, func, args, kwargs, on_failure=mark_inside_transform)


def _loopable(out_dims: Any) -> bool:
    """Whether a small batch may loop: not when an output is unbatched (``out_dims`` None).

    Only the transform can tell a batched output from an unbatched one
    whatever the batch size, and raise as :func:`torch.func.vmap` does.
    """
    if out_dims is None:
        return False
    if isinstance(out_dims, (tuple, list)):
        return all(_loopable(d) for d in out_dims)
    if isinstance(out_dims, dict):
        return all(_loopable(d) for d in out_dims.values())
    return True


def _loop_max_batch(first: torch.Tensor) -> int:
    """The largest batch an automatic ``vmap`` loops over, for a batch on ``first``'s device."""
    return LOOP_MAX_BATCH if first.device.type == "cpu" else LOOP_MAX_BATCH_ACCELERATOR


def _batch_size_hint(in_dims: Any, args: Tuple[Any, ...]) -> Optional[int]:
    """The batch size read off the first argument when that is cheap, else ``None``."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    dim = in_dims[0] if isinstance(in_dims, tuple) and in_dims else in_dims
    if type(dim) is not int or not -args[0].dim() <= dim < args[0].dim():
        return None
    return int(args[0].shape[dim])
