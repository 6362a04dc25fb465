"""The transformed callables behind :func:`tad_autograd.jacrev`, ``vmap`` and ``hessian``.

A :class:`Transformed` object holds the user's function and the transform's
parameters.  At each call it resolves the backend (cached per settings and
device type), runs the backend's transform with that backend set as the
innermost setting (so nested transforms use it too), and in automatic mode
falls back to the next backend when the function cannot be transformed.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..backends.base import Backend
from ..compat._torch_info import is_compiling, raise_when_run
from ..compat._transform_failures import (
    DefectWatch,
    failed_inside_transform,
    stages_of,
    watch_calls,
)
from ..compat.batching_defects import Stages
from ..compat.devices import device_type_of
from ..eager._loop_vmap import STRICT_UNBATCHED
from ..errors import BackendFallbackWarning
from ._checks import check_differentiable
from .fallback import MEMORY, add_hint, describe, recognise
from .registry import REGISTRY
from .resolver import Resolution, resolve_cached, resolve_in
from .settings import (
    CONTEXT,
    ORIGIN_AUTOMATIC,
    ORIGIN_AUTOMATIC_EAGER,
    ORIGIN_EXPLICIT,
    enter,
    innermost,
    leave,
)
from .strategies import Strategy, compiled_strategy_for, strategy_for

__all__ = ["Transformed", "run_on_named_backend"]

_log = logging.getLogger("tad_autograd")


class Transformed:
    """A function transformed by ``jacrev``, ``vmap`` or ``hessian`` on a resolved backend."""

    def __init__(
        self,
        kind: str,
        func: Callable[..., Any],
        build: Callable[[Strategy, Callable[..., Any]], Callable[..., Any]],
        backend: Optional[str],
        transforms_only: bool,
        kwargs_in_call: bool,
        argnums: Any = None,
        in_dims: Any = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"{kind}: expected a callable `func`, got {type(func)}")
        self.__wrapped__ = func
        self.__name__ = f"{kind}({getattr(func, '__name__', type(func).__name__)})"
        self.__qualname__ = self.__name__
        self._kind = kind
        self._build = build
        self._backend = backend
        self._transforms_only = transforms_only
        self._kwargs_in_call = kwargs_in_call
        self._built: Dict[Any, Callable[..., Any]] = {}  # by strategy (and watched stages)
        self._argnums = argnums
        self._in_dims = in_dims
        self._explicit: Optional[Tuple[int, Strategy, Callable[..., Any], Tuple[str, str]]] = None
        # the last automatic run: (resolution, memory generation, candidate, callable, context)
        self._automatic: Optional[
            Tuple[Resolution, int, int, Callable[..., Any], Tuple[str, str]]
        ] = None
        if isinstance(func, Transformed):
            self._user_func: Callable[..., Any] = func._user_func
            self._chain: Tuple[str, ...] = (kind,) + func._chain
        else:
            self._user_func = func
            self._chain = (kind,)

    def __repr__(self) -> str:
        return f"<tad_autograd {self.__name__}, backend={self._backend or 'auto'}>"

    def _transformed(
        self, strategy: Strategy, kwargs: Dict[str, Any], watch: Optional[Stages] = None
    ) -> Callable[..., Any]:
        """The operator on ``strategy``; with ``watch``, the function's calls run under a
        defect watch for those stages (a derivative inside an automatic transform)."""
        if kwargs and not self._kwargs_in_call:
            bound: Callable[..., Any] = functools.partial(self.__wrapped__, **kwargs)
            return self._build(strategy, bound if watch is None else watch_calls(bound, watch))
        key = strategy if watch is None else (strategy, watch)
        fn = self._built.get(key)
        if fn is None:  # the first call with this strategy (no KeyError raised and caught)
            func = self.__wrapped__ if watch is None else watch_calls(self.__wrapped__, watch)
            fn = self._built[key] = self._build(strategy, func)
            if not is_compiling():  # dynamo cannot trace a Logger
                _log.debug("%s: built on %r", self.__name__, strategy)
        return fn

    def _run(
        self,
        strategy: Strategy,
        origin: str,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        watch: Optional[Stages] = None,
    ) -> Any:
        fn = self._transformed(strategy, kwargs, watch)
        token = CONTEXT.set((strategy.backend.name, origin))
        try:
            if kwargs and self._kwargs_in_call:
                return fn(*args, **kwargs)
            return fn(*args)
        finally:
            CONTEXT.reset(token)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._argnums is not None:
            check_differentiable(args, self._argnums, self._kind)
        if is_compiling():  # dynamo folds this to a constant: free in compiled code
            return self._call_traced(args, kwargs)
        if self._backend is not None and (self._kwargs_in_call or not kwargs):
            # backend= argument: it wins over every setting and every device type, so
            # nothing else is consulted, and the transformed callable is built once.
            explicit = self._explicit
            if explicit is None or explicit[0] != REGISTRY.version:
                explicit = self._explicit = self._explicit_choice()
            token = CONTEXT.set(explicit[3])
            try:
                return explicit[2](*args, **kwargs)
            except Exception as error:
                self._clarify(error)
                self._hint(explicit[1].backend, error)
                raise
            finally:
                CONTEXT.reset(token)
        device_type = device_type_of(args, kwargs)
        resolution = resolve_cached(self._backend, device_type, self._transforms_only)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "%s on %s: backend %r (%s)",
                self.__name__,
                device_type,
                resolution.backend.name,
                resolution.source,
            )
        if resolution.automatic:
            fast = self._automatic
            if (
                fast is not None
                and fast[0] is resolution
                and fast[1] == MEMORY.generation
                and (self._kwargs_in_call or not kwargs)
            ):
                # the same choice as on the last call: no memory look-up, nothing rebuilt
                token = CONTEXT.set(fast[4])
                try:
                    return fast[3](*args, **kwargs)
                except Exception as error:
                    failed = error
                finally:
                    CONTEXT.reset(token)
                self._check_retryable(failed, fast[2], resolution.candidates)
                return self._run_automatic(
                    resolution, device_type, args, kwargs, fast[2] + 1, (fast[2], failed)
                )
            return self._run_automatic(resolution, device_type, args, kwargs)
        return self._run_explicit(resolution, args, kwargs)

    def _call_traced(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """The call while dynamo traces it: the backends' own transforms, which dynamo
        supports natively, never an eager strategy (its ``torch.autograd.grad`` calls
        break the graph, and a graph compiled by AOTAutograd cannot be differentiated
        twice); automatic mode tries its candidates in order, transform backends first,
        and never one that cannot compile the call."""
        resolution = resolve_in(
            self._backend, innermost(), device_type_of(args, kwargs), self._transforms_only
        )
        if not resolution.automatic:
            backend = resolution.backend
            refusal = compile_refusal(self._kind, backend)
            if refusal is not None:  # before any try block: dynamo would run it eagerly
                raise_when_run(refusal)
            origin = ORIGIN_AUTOMATIC if resolution.inherited_automatic else ORIGIN_EXPLICIT
            strategy = strategy_for(backend, automatic=False)
            try:
                return run_traced(
                    self._kind,
                    backend,
                    origin,
                    functools.partial(self._run_plain, strategy, args, kwargs),
                )
            except Exception as error:
                self._clarify(error)
                if not resolution.inherited_automatic:
                    self._hint(backend, error)
                raise
        candidates = []
        refusal = None
        for candidate in resolution.candidates:
            refusal = compile_refusal(self._kind, candidate)
            if refusal is None:
                candidates.append(candidate)
        if not candidates and refusal is not None:  # e.g. a device without transforms
            raise_when_run(refusal)
        failed: Optional[Exception] = None
        for i, backend in enumerate(candidates):
            strategy = compiled_strategy_for(backend)
            try:
                return run_traced(
                    self._kind,
                    backend,
                    ORIGIN_AUTOMATIC,
                    functools.partial(self._run_plain, strategy, args, kwargs),
                )
            except Exception as error:
                if failed is not None:
                    _attach_context(error, failed)
                if i == len(candidates) - 1 or not backend.is_transform:
                    self._clarify(error)
                    raise
                failed = error
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_plain(self, strategy: Strategy, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        fn = self._transformed(strategy, kwargs)
        if kwargs and self._kwargs_in_call:
            return fn(*args, **kwargs)
        return fn(*args)

    def _explicit_choice(self) -> Tuple[int, Strategy, Callable[..., Any], Tuple[str, str]]:
        """For a ``backend=`` argument: (registry version, strategy, callable, context)."""
        # the device type plays no part in an argument's resolution (it only names the backend)
        resolution = resolve_cached(self._backend, "", self._transforms_only)
        backend = resolution.backend
        strategy = strategy_for(backend, automatic=False)
        _log.debug("%s: %r (%s)", self.__name__, strategy, resolution.source)
        return (
            REGISTRY.version,
            strategy,
            self._transformed(strategy, {}),
            (backend.name, ORIGIN_EXPLICIT),
        )

    def _clarify(self, error: BaseException) -> None:
        """Reword torch's messages for mistakes to name the parameter, value and what is allowed.

        Only the text changes (type and traceback stay); it costs nothing on success.
        """
        if not error.args or not isinstance(error.args[0], str):
            return
        message = error.args[0]
        extra = None
        if "Expected f to be a function that has non-empty output" in message:
            extra = (
                f"{self._kind}: func must return a tensor or a non-empty pytree of tensors, "
                "got None or an empty output"
            )
        elif "if has_aux is True" in message and "func must return a tuple" not in message:
            extra = (
                "with has_aux=True, func must return a tuple (output, aux) whose output is "
                "a tensor or a pytree of tensors"
            )
        elif message.startswith("vmap: Expected at least one Tensor to vmap over"):
            extra = (
                f"vmap(in_dims={self._in_dims!r}): at least one of the inputs must be batched "
                "(a tensor with an int in_dim); none is"
            )
        if extra is not None:
            error.args = (f"{extra}. ({message})",) + error.args[1:]

    @staticmethod
    def _hint(backend: Backend, error: BaseException) -> None:
        """Note on an explicit transform backend's error that ``backend='autograd'`` would work."""
        if backend.is_transform:
            entry = recognise(error)
            if entry is not None:
                add_hint(error, backend.name, entry)

    def _run_explicit(
        self, resolution: Resolution, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Any:
        backend = resolution.backend
        eager = resolution.inherited_eager and not self._transforms_only
        strategy = strategy_for(backend, automatic=eager)
        origin = ORIGIN_EXPLICIT
        watch = False
        stages = stages_of(self._kind)
        if resolution.inherited_automatic:
            origin = self._automatic_origin(strategy) if eager else ORIGIN_AUTOMATIC
            # a derivative inside an automatic transform: never through a defective op
            watch = (
                not eager
                and self._kind != "vmap"
                and backend.is_transform
                and DefectWatch.needed(stages)
            )
        try:
            return self._run(strategy, origin, args, kwargs, stages if watch else None)
        except Exception as error:
            self._clarify(error)
            if not resolution.inherited_automatic:
                self._hint(backend, error)
            raise

    def _automatic_origin(self, strategy: Strategy) -> str:
        """How nested transforms see an automatic choice: eager forward, or inside a transform."""
        eager = self._kind != "vmap" and strategy.eager
        return ORIGIN_AUTOMATIC_EAGER if eager else ORIGIN_AUTOMATIC

    def _run_automatic(
        self,
        resolution: Resolution,
        device_type: str,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        start: Optional[int] = None,
        failed: Optional[Tuple[int, Exception]] = None,
    ) -> Any:
        """Run on the automatic choice; after a failure inside a transform, on the next candidate.

        ``start`` skips candidates already tried in this call (``failed`` is
        the last one's index and exception); by default the call starts at
        the backend remembered for this function, if any.  A retry that
        succeeds warns once per function and is remembered; one that fails
        raises its own exception with the transform's as its context.
        """
        candidates = resolution.candidates
        generation = MEMORY.generation
        if start is None:
            start = 0
            remembered = MEMORY.recall(self._user_func, (self._chain, device_type))
            if remembered is not None:
                for i, b in enumerate(candidates):
                    if b.name == remembered:
                        start = i
                        break
        for i in range(start, len(candidates)):
            strategy = strategy_for(
                candidates[i], automatic=True, transforms_only=self._transforms_only
            )
            origin = self._automatic_origin(strategy)
            # a retry: an out_dims=None output must prove itself unbatched (the transform
            # may have refused it rightly, and equal values in the loop prove nothing)
            strict = STRICT_UNBATCHED.set(True) if failed is not None else None
            try:
                result = self._run(strategy, origin, args, kwargs)
            except Exception as error:
                if failed is not None:
                    _attach_context(error, failed[1])
                self._check_retryable(error, i, candidates)
                failed = (i, error)
                continue
            finally:
                if strict is not None:
                    STRICT_UNBATCHED.reset(strict)
            if failed is not None:
                self._warn_fallback(
                    failed[1],
                    strategy_for(candidates[failed[0]], automatic=True),
                    strategy,
                    device_type,
                )
            if not kwargs or self._kwargs_in_call:
                fn = self._transformed(strategy, {})
                self._automatic = (resolution, generation, i, fn, (strategy.backend.name, origin))
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_retryable(self, error: Exception, i: int, candidates: Tuple[Backend, ...]) -> None:
        """Raise ``error`` unless candidate ``i`` failed inside a transform and a next one exists.

        Structural: only an exception that escaped a function
        transform is retried, whatever it says; one from eager code is the
        user's own and propagates.
        """
        if i == len(candidates) - 1 or not (
            candidates[i].is_transform and failed_inside_transform(error)
        ):
            self._clarify(error)
            raise error

    def _warn_fallback(
        self, error: Exception, failed: Strategy, used: Strategy, device_type: str
    ) -> None:
        """After a successful retry: remember it, and warn once per function (at the caller).

        Torch's message texts only word the warning's reason.
        """
        message = (
            f"{getattr(self._user_func, '__qualname__', self._user_func)!r} cannot be "
            f"transformed by backend {failed.backend.name!r} (strategy {failed.name!r}: "
            f"{describe(error)}); using backend {used.backend.name!r} (strategy "
            f"{used.name!r}) instead for {self.__name__} on {device_type}. Choose a "
            "backend explicitly to avoid the retry, or silence this warning with "
            "warnings.filterwarnings('ignore', "
            "category=tad_autograd.BackendFallbackWarning)."
        )
        _log.info("fallback: %s", message)
        if MEMORY.remember(self._user_func, (self._chain, device_type), used.backend.name):
            # stack: here, _run_automatic, __call__, the caller
            warnings.warn(message, BackendFallbackWarning, stacklevel=4)


#: Per backend name: (registry version, strategy, context) for a ``backend=`` argument.
_NAMED: Dict[str, Tuple[int, Strategy, Tuple[str, str]]] = {}


def run_on_named_backend(backend: str, call: Callable[[Strategy], Any]) -> Any:
    """``call(strategy)`` on the backend a ``backend=`` argument names, looked up once.

    For the operators that evaluate at once (``vjp``, ``jvp``, ...): what a
    :class:`Transformed` does for an explicit backend, without building one
    per call.  No fallback; an error gets the note that ``"autograd"`` would
    work where a transform backend refused the function.
    """
    entry = _NAMED.get(backend)
    if entry is None or entry[0] != REGISTRY.version:
        resolution = resolve_cached(backend, "", False)
        strategy = strategy_for(resolution.backend, automatic=False)
        entry = (REGISTRY.version, strategy, (resolution.backend.name, ORIGIN_EXPLICIT))
        _NAMED[backend] = entry
    token = CONTEXT.set(entry[2])
    try:
        return call(entry[1])
    except Exception as error:
        Transformed._hint(entry[1].backend, error)
        raise
    finally:
        CONTEXT.reset(token)


#: The derivatives on a backend without function transforms that dynamo is tracing now.
_TRACED_PLAIN_DERIVATIVES: List[str] = []

#: Operators that differentiate twice by themselves.
_SECOND_ORDER = frozenset({"hessian", "hvp"})


def compile_refusal(kind: str, backend: Backend) -> Optional[RuntimeError]:
    """The error for a ``kind`` call on ``backend`` under dynamo, or ``None`` if it compiles.

    Plain :mod:`torch.autograd` differentiates twice by a second backward pass
    through the first one; under ``torch.compile`` the forward pass is a graph
    compiled apart from the ``torch.autograd.grad`` calls (they break the
    graph), and a graph compiled by AOTAutograd (``"aot_eager"``,
    ``"inductor"``) has no second derivative: torch returns zeros or refuses.
    Decided from the operator and the backend, never from torch's messages.
    """
    if backend.is_transform or kind == "vmap":
        return None
    if kind not in _SECOND_ORDER and not _TRACED_PLAIN_DERIVATIVES:
        return None
    what = kind if kind in _SECOND_ORDER else f"{kind} inside another derivative"
    return RuntimeError(
        f"backend {backend.name!r} cannot compute {what} under torch.compile: its second "
        "backward pass would go through a graph compiled without a second derivative "
        "(torch gives zeros or raises there). Use backend='func' (torch.func transforms, "
        "which torch.compile supports) or automatic mode (backend=None)."
    )


def run_traced(kind: str, backend: Backend, origin: str, call: Callable[[], Any]) -> Any:
    """``call()`` with ``backend`` as the innermost setting, while dynamo traces."""
    token = enter((backend.name, origin))
    plain = kind != "vmap" and not backend.is_transform
    if plain:
        _TRACED_PLAIN_DERIVATIVES.append(kind)
    try:
        return call()
    finally:
        if plain:
            _TRACED_PLAIN_DERIVATIVES.pop()
        leave(token)


def _attach_context(error: BaseException, transform_error: BaseException) -> None:
    """Make ``transform_error`` part of ``error``'s context chain (at its end)."""
    last = error
    for _ in range(32):
        if last.__context__ is None or last.__context__ is transform_error:
            break
        last = last.__context__
    if last.__context__ is None and last is not transform_error:
        last.__context__ = transform_error
