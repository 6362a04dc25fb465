"""How an automatic strategy tells that a call failed *inside* a function transform.

The automatic fallback is structural: an exception that left a
function transform (``vmap``, or a transform library's ``jacrev`` nested in
one) is retried on the autograd backend, whatever its message says; an
exception from eager code (the user's function run under plain autograd) is
the user's own and propagates.  The strategies that run a transform mark
what escapes it with :func:`mark_inside_transform`; the fallback asks
:func:`failed_inside_transform`.

:class:`DefectWatch` is the other source of such failures: while an automatic
strategy runs a transform library's ``jacrev`` inside a transform, it raises
:class:`DefectiveBatchingError` when the function calls an op whose batched
derivative the installed torch gets wrong, so the enclosing automatic call
retries on plain autograd instead of returning a wrong number.  Forward mode
watches for the ops whose forward-mode formula is wrong (stage ``"tangent"``),
in the eager dual-number passes too, which then take reverse mode.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode

from ._torch_info import cache
from .batching_defects import ACTIVE_DEFECTS, BatchingDefect, Stages, defective_callables

__all__ = [
    "mark_inside_transform",
    "failed_inside_transform",
    "DefectiveBatchingError",
    "DefectWatch",
    "REVERSE_STAGES",
    "FORWARD_STAGES",
    "stages_of",
    "watch_calls",
    "NESTED_DERIVATIVES",
    "GradModeOffError",
    "watch_forward_calls",
    "function_twin",
    "custom_function_call",
    "ForwardWatch",
]

#: What a reverse-mode derivative inside a transform watches for: batching defects.
REVERSE_STAGES = ("derivative", "forward")
#: What a forward-mode Jacobian watches for: ``vmap`` of the function, and its tangents.
FORWARD_STAGES = ("forward", "tangent")
#: Transforms that push tangents (``hvp`` on a transform backend: forward over reverse).
_FORWARD_KINDS = frozenset({"jacfwd", "jvp", "linearize", "hvp"})


def stages_of(kind: str) -> Stages:
    """The defect stages a transform ``kind`` (``"jacrev"``, ``"jvp"``, ...) must not run into.

    Examples
    --------
    >>> stages_of("jacrev"), stages_of("jvp")
    (('derivative', 'forward'), ('derivative', 'forward', 'tangent'))
    """
    return REVERSE_STAGES + ("tangent",) if kind in _FORWARD_KINDS else REVERSE_STAGES


_MARK = "_tad_autograd_inside_transform"

#: The stages of the installed torch's defects (asked on hot paths, so computed once).
_STAGES = frozenset(d.stage for d in ACTIVE_DEFECTS)


def mark_inside_transform(error: BaseException) -> None:
    """Record that ``error`` escaped a function transform.

    Examples
    --------
    >>> error = RuntimeError("any words at all")
    >>> mark_inside_transform(error)
    >>> failed_inside_transform(error)
    True
    """
    try:
        setattr(error, _MARK, True)
    except (AttributeError, TypeError):  # pragma: no cover - exceptions without a __dict__
        pass


def failed_inside_transform(error: BaseException) -> bool:
    """Whether ``error`` escaped a function transform (see :func:`mark_inside_transform`).

    Examples
    --------
    >>> failed_inside_transform(ValueError("the user's own error"))
    False
    """
    return bool(getattr(error, _MARK, False))


class DefectiveBatchingError(RuntimeError):
    """A function calls an op whose batched derivative the installed torch computes wrongly.

    Raised only inside automatic strategies, which then loop or retry on plain
    autograd; users see it as the reason of a fallback warning, or as the error
    of an automatic ``jacrev`` run inside a function transform the library does
    not control (``torch.func.vmap(ta.jacrev(f))``), which cannot fall back.

    Examples
    --------
    >>> str(DefectiveBatchingError("cdist", "wrong values")).startswith("torch")
    True
    """

    def __init__(self, op: str, what: str, stage: str = "derivative") -> None:
        import torch

        computes, avoids = (
            ("the forward-mode derivative", "push tangents through it")
            if stage == "tangent"
            else ("the batched derivative", "vectorise through it")
        )
        super().__init__(
            f"torch {torch.__version__} computes {computes} of {op} wrongly ({what}); "
            f"tad_autograd does not {avoids}. Inside a function transform of your own (e.g. "
            "torch.func.vmap around tad_autograd.jacrev) it cannot fall back: use "
            "tad_autograd.vmap, or backend='autograd'"
        )
        self.op = op
        self.stage = stage


#: What a backward pass run *inside* watched code counts as: its ops run in the autograd
#: engine, where no torch function mode sees them, so a defective op there would go unseen.
NESTED_DERIVATIVES = BatchingDefect(
    op="a nested backward pass (torch.autograd.grad)",
    since="0",
    fixed_in=None,
    nodes=frozenset(),
    callables=(
        "torch.autograd.grad",
        "torch.autograd.backward",
        "torch.Tensor.backward",
        "torch.autograd.functional.vjp",
        "torch.autograd.functional.jacobian",
    ),
    what="the ops of a backward pass run by the autograd engine cannot be watched",
)


#: How the call of a custom ``autograd.Function`` inside a function transform shows (torch
#: >= 2.0): its backward runs later, outside the watch, so the watch swaps in the
#: Function's watched twin (:func:`_watched_function`).
_CUSTOM_FUNCTION_CALL = BatchingDefect(
    op="custom_function_call",
    since="0",
    fixed_in=None,
    nodes=frozenset(),
    callables=("torch._functorch.autograd_function.custom_function_call",),
    what="a custom autograd.Function applied inside a function transform",
)


def _resolve(dotted: str) -> Any:
    import importlib

    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _watch_callables(
    stage: Optional[Stages], nested_derivatives: bool
) -> Dict[Callable[..., Any], BatchingDefect]:
    """What a :class:`DefectWatch` looks for: the defective callables of ``stage``, the
    nested backward passes (``nested_derivatives``), and custom Function calls inside
    transforms (stage ``"derivative"``)."""
    key = (stage, nested_derivatives)
    found = _WATCH_CALLABLES.get(key)
    if found is not None:
        return found
    found = dict(defective_callables(stage))
    stages = (stage,) if isinstance(stage, str) else stage
    if found and (stages is None or "derivative" in stages or "forward" in stages):
        call = custom_function_call()
        if call is not None:
            found[call] = _CUSTOM_FUNCTION_CALL
    if nested_derivatives:
        for dotted in NESTED_DERIVATIVES.callables:
            obj = _resolve(dotted)
            if obj is not None:
                found[obj] = NESTED_DERIVATIVES
    _WATCH_CALLABLES[key] = found
    return found


_WATCH_CALLABLES: Dict[Any, Dict[Callable[..., Any], BatchingDefect]] = {}

#: Each custom Function class's twins (:func:`function_twin`), by what they are for.
_TWINS: weakref.WeakKeyDictionary[Any, Dict[Any, Any]] = weakref.WeakKeyDictionary()


def function_twin(cls: Any, purpose: Any, rules: Callable[[], Dict[str, Any]]) -> Any:
    """The subclass of custom Function ``cls`` whose static methods are ``rules()`` (called
    once): made once per ``cls`` and ``purpose``, named as ``cls``.

    Examples
    --------
    >>> import torch
    >>> class Square(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         return x * x
    >>> twin = function_twin(Square, "doubled", lambda: {"forward": lambda ctx, x: 2 * x * x})
    >>> twin is function_twin(Square, "doubled", dict), twin.__name__
    (True, 'Square')
    >>> twin.apply(torch.ones(1))
    tensor([2.])
    """
    twins = _TWINS.get(cls)
    if twins is None:
        twins = _TWINS[cls] = {}
    twin = twins.get(purpose)
    if twin is None:
        members = {name: staticmethod(rule) for name, rule in rules().items()}
        twin = twins[purpose] = type(cls)(
            cls.__name__,
            (cls,),
            {**members, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return twin


@cache
def custom_function_call() -> Any:
    """How a function transform applies a custom Function (torch >= 2.0), or ``None``."""
    return _resolve(_CUSTOM_FUNCTION_CALL.callables[0])


def _watched_function(cls: Any, stage: Optional[Stages]) -> Any:
    """A subclass of custom Function ``cls`` whose forward and backward run under a
    :class:`DefectWatch` for ``stage`` that counts nested backward passes too.

    Inside a function transform the forward of a custom Function runs inside
    torch's ``custom_function_call``, out of sight of the watch around the
    function (a ``vmap`` of its forward: stage ``"forward"``), and its
    backward runs when the transform pulls back, long after that watch has
    ended; the twin carries the watch into both.
    """

    def rules() -> Dict[str, Any]:
        forward, backward = cls.forward, cls.backward

        # the forward too: one Function applied in another's backward runs its forward
        # inside the outer pass, where torch's custom_function_call hides it from the watch
        def watched_forward(*args: Any, **kwargs: Any) -> Any:
            with DefectWatch(stage, nested_derivatives=True):
                return forward(*args, **kwargs)

        def watched_backward(ctx: Any, *grads: Any) -> Any:
            with DefectWatch(stage, nested_derivatives=True):
                return backward(ctx, *grads)

        return {"forward": watched_forward, "backward": watched_backward}

    return function_twin(cls, ("watched", stage), rules)


class OpWatch(TorchFunctionMode):
    """A torch function mode that sees every op the code under it calls: the one base of
    the library's watches, which override :meth:`run`.

    :attr:`seen` tells whether the watch met what it looks for.

    Examples
    --------
    >>> import torch
    >>> with OpWatch() as watch:
    ...     _ = torch.sin(torch.zeros(1))
    >>> watch.seen
    False
    """

    def __init__(self) -> None:
        super().__init__()
        #: Whether the watched code did what this watch looks for.
        self.seen = False

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Tuple[Any, ...],
        args: Tuple[Any, ...] = (),
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        return self.run(func, args, kwargs or {})

    def run(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Run one op of the watched code, ``func(*args, **kwargs)``, as this watch does."""
        return func(*args, **kwargs)


class DefectWatch(OpWatch):
    """A torch function mode that raises :class:`DefectiveBatchingError` on a defective op.

    With ``look_only`` it raises nothing and notes in :attr:`seen` that one was called
    (to choose a path for later calls without running the function again); either way
    :attr:`op` names the first one.  With ``nested_derivatives`` a backward pass the
    watched code runs itself (:data:`NESTED_DERIVATIVES`: its ops are out of sight)
    counts as a defective op too.  Inside a function transform, a custom
    ``autograd.Function`` the watched code applies gets its backward watched
    too, when it runs (on torch releases that show such calls to the watch).

    Examples
    --------
    >>> import torch
    >>> with DefectWatch():
    ...     _ = torch.sin(torch.zeros(1))
    >>> DefectWatch.needed() == bool(ACTIVE_DEFECTS)
    True
    """

    def __init__(
        self,
        stage: Optional[Stages] = None,
        look_only: bool = False,
        nested_derivatives: bool = False,
    ) -> None:
        super().__init__()
        self._callables = _watch_callables(stage, nested_derivatives)
        #: What a custom Function's watched twin watches for: a derivative's defects if
        #: this watch's stages hold one, else this watch's (a ``vmap`` of the forward).
        stages = (stage,) if isinstance(stage, str) else stage
        self._twin_stage = REVERSE_STAGES if stages is None or "derivative" in stages else stage
        self._look_only = look_only
        #: The first defective op the function called (its table name), or ``None``.
        self.op: Optional[str] = None

    @staticmethod
    def needed(stage: Optional[Stages] = None) -> bool:
        """Whether the installed torch has any defect (of ``stage``, if given) to watch for.

        ``stage``: one stage or a tuple of them.
        """
        if stage is None:
            return bool(_STAGES)
        return stage in _STAGES if isinstance(stage, str) else not _STAGES.isdisjoint(stage)

    def run(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        # on every op the function calls: one dict look-up, nothing allocated
        defect = self._callables.get(func)
        if defect is _CUSTOM_FUNCTION_CALL:
            if args and isinstance(args[0], type) and not self._look_only:
                args = (_watched_function(args[0], self._twin_stage), *args[1:])
        elif defect is not None and defect.matches(args, kwargs):
            if self.op is None:
                self.op = defect.op
            if not self._look_only:
                raise DefectiveBatchingError(defect.op, defect.what, defect.stage)
            self.seen = True
        return func(*args, **kwargs)


def watch_calls(func: Callable[..., Any], stage: Optional[Stages] = None) -> Callable[..., Any]:
    """``func``, each call of it run under a :class:`DefectWatch` for ``stage``.

    Only the ops the function itself calls are watched, not the transform's
    own machinery around it (where no user op runs), so the watch costs one
    dictionary look-up per op of the function.  ``func`` itself where this
    torch has no such defect.

    Examples
    --------
    >>> import torch
    >>> watch_calls(torch.sin, "derivative")(torch.zeros(1))
    tensor([0.])
    """
    if not DefectWatch.needed(stage):
        return func

    def watched(*args: Any, **kwargs: Any) -> Any:
        with DefectWatch(stage):
            return func(*args, **kwargs)

    watched.__wrapped__ = func  # type: ignore[attr-defined]
    return watched


class GradModeOffError(RuntimeError):
    """A forward-mode derivative inside a transform met an op run with grad mode off.

    Dual numbers (what :func:`torch.func.jvp` and ``jacfwd`` push) pass through
    a function's own ``torch.no_grad()`` block, where a backward pass stops;
    automatic mode gives reverse mode's derivative there, so it does not push
    tangents through such a block.  Raised only where automatic mode runs a
    transform backend's forward-mode operator (inside a function transform,
    or while ``torch.compile`` traces): automatic mode then retries on plain
    autograd; inside a function transform of the user's own it cannot.

    Examples
    --------
    >>> "no_grad" in str(GradModeOffError())
    True
    """

    def __init__(self) -> None:
        super().__init__(
            "the function runs operations with grad mode off (its own torch.no_grad() "
            "block): forward-mode transforms push tangents through such a block, reverse "
            "mode and tad_autograd's automatic mode treat its results as constants. Inside "
            "a function transform of your own (e.g. torch.func.vmap around "
            "tad_autograd.jacfwd) this cannot fall back: use tad_autograd.vmap, or "
            "backend='autograd', or backend='func' for torch.func's forward-mode numbers"
        )


#: How a ``torch.no_grad()`` block's exit shows to a torch function mode (with grad mode
#: still off): not an op of the function, and raising there would leave grad mode off.
_SET_GRAD_ENABLED = getattr(torch._C, "_set_grad_enabled", None)


class ForwardWatch(DefectWatch):
    """A :class:`DefectWatch` that also notes an op run with grad mode off, which dual
    numbers pass through where reverse mode stops: it raises :class:`GradModeOffError`,
    or with ``look_only`` notes it in :attr:`seen` (ops inside a custom Function's forward
    are out of its sight).

    While ``torch.compile`` traces, automatic mode looks, then takes reverse mode's
    product where it saw something (an exception raised and caught inside one graph
    breaks it).

    Examples
    --------
    >>> import torch
    >>> look = ForwardWatch("tangent", look_only=True)
    >>> with look, torch.no_grad():
    ...     _ = torch.ones(1).sin()
    >>> look.seen
    True
    """

    def run(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if not torch.is_grad_enabled() and func is not _SET_GRAD_ENABLED:
            if not self._look_only:
                raise GradModeOffError()
            self.seen = True
        return super().run(func, args, kwargs)


def watch_forward_calls(
    func: Callable[..., Any], stage: Optional[Stages] = None
) -> Callable[..., Any]:
    """``func`` for a forward-mode transform: watched as by :func:`watch_calls`, and
    raising :class:`GradModeOffError` where it runs an op with grad mode off.

    Called with grad mode off (``torch.no_grad()`` around the call), ``func``
    runs with it on, as automatic mode's eager forward-mode operators run it,
    so that only the function's own blocks count.

    Examples
    --------
    >>> import torch
    >>> watch_forward_calls(torch.sin, "tangent")(torch.zeros(1))
    tensor([0.])
    >>> def f(x):
    ...     with torch.no_grad():
    ...         return x * 2
    >>> try:
    ...     watch_forward_calls(f)(torch.zeros(1))
    ... except GradModeOffError:
    ...     print("refused")
    refused
    """

    def watched(*args: Any, **kwargs: Any) -> Any:
        grad = contextlib.nullcontext() if torch.is_grad_enabled() else torch.enable_grad()
        with grad, ForwardWatch(stage):
            return func(*args, **kwargs)

    watched.__wrapped__ = func  # type: ignore[attr-defined]
    return watched


def _prepare_watches() -> None:
    """Fill the watches' look-up tables for the stages the operators watch, at import:
    ``torch.compile`` traces the watches, and cannot trace building those tables."""
    stages = (REVERSE_STAGES, FORWARD_STAGES, REVERSE_STAGES + ("tangent",), "forward", "tangent")
    for stage in stages + (("derivative", "forward"), ("forward",)):
        _watch_callables(stage, False)
    _watch_callables(REVERSE_STAGES, True)  # a custom Function's watched twin


_prepare_watches()
