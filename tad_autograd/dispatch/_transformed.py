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
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ..backends._operators import Builds, Operator
from ..backends.base import Backend
from ..compat._torch_info import is_compiling, raise_when_run, transforms_active
from ..compat._transform_failures import DefectWatch, failed_inside_transform
from ..compat.batching_defects import Stages
from ..compat.devices import device_type_of
from ..eager._loop_vmap import strictly_unbatched
from ..errors import BackendFallbackWarning
from ._automatic import builder_for, compiled_builder_for, run_watched_inside, watched_for
from ._checks import check_differentiable
from ._fallback import MEMORY, Fallback, add_hint, describe, recognise
from ._registry import REGISTRY
from ._resolver import Resolution, resolve_cached, resolve_in
from ._settings import (
    CONTEXT,
    ORIGIN_AUTOMATIC,
    ORIGIN_AUTOMATIC_EAGER,
    ORIGIN_AUTOMATIC_LOOP,
    ORIGIN_EXPLICIT,
    enter,
    innermost,
    leave,
)

__all__ = ["Transformed", "run_on_named_backend"]

_log = logging.getLogger("tad_autograd")

Context = Tuple[Optional[str], str]


class _Explicit(NamedTuple):
    """A ``backend=`` argument's choice, as built for a :class:`Transformed`."""

    registry_version: int
    builder: Builds
    fn: Callable[..., Any]
    context: Context


class _LastAutomatic(NamedTuple):
    """The last automatic run of a :class:`Transformed`, reused while nothing changed."""

    resolution: Resolution
    memory_generation: int
    candidate: int
    fn: Callable[..., Any]
    context: Context


class _Named(NamedTuple):
    """What a ``backend=`` argument names, resolved once per registry version."""

    registry_version: int
    builder: Builds
    context: Context


#: Per backend name (and transforms-only flag): what a ``backend=`` argument resolves
#: to; no setting plays a part, so it is looked up once, not per transform built.
_NAMED: Dict[Tuple[str, bool], _Named] = {}


def _named(backend: str, transforms_only: bool = False) -> _Named:
    """The builder and context for ``backend=backend``, looked up once per registry version."""
    entry = _NAMED.get((backend, transforms_only))
    if entry is None or entry.registry_version != REGISTRY.version:
        # the device type plays no part in an argument's resolution (it only names it)
        resolution = resolve_cached(backend, "", transforms_only)
        builder = builder_for(resolution.backend, automatic=False)
        entry = _Named(REGISTRY.version, builder, (resolution.backend.name, ORIGIN_EXPLICIT))
        _NAMED[(backend, transforms_only)] = entry
    return entry


def transform_name(op_name: str, func: Callable[..., Any]) -> str:
    """The ``__name__`` of ``func`` transformed by the operator ``op_name``.

    Examples
    --------
    >>> import torch
    >>> transform_name("jacrev", torch.sin)
    'jacrev(sin)'
    """
    return f"{op_name}({getattr(func, '__name__', type(func).__name__)})"


class Transformed:
    """A function transformed by an operator (``jacrev``, ``vmap``, ...) on a resolved backend.

    Building one costs a few attribute stores (users build transforms inside
    loops): what does not depend on the function is decided by the caller
    once per set of parameters (see :func:`tad_autograd.api.transforms.transformed`),
    and the rest (its name, the cache of built operators) is made on first use.
    """

    _explicit: Optional[_Explicit] = None
    _automatic: Optional[_LastAutomatic] = None
    # made on first use (see __getattr__) unless the function is itself transformed
    _built: Dict[Any, Callable[..., Any]]
    _user_func: Callable[..., Any]
    _chain: Tuple[str, ...]

    def __init__(
        self,
        op: Operator,
        func: Callable[..., Any],
        build: Callable[[Builds, Callable[..., Any]], Callable[..., Any]],
        backend: Optional[str],
        transforms_only: bool,
        kwargs_in_call: bool,
        argnums: Any = None,
        in_dims: Any = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"{op.name}: expected a callable `func`, got {type(func)}")
        self.__wrapped__ = func
        self._op = op
        self._build = build
        self._backend = backend
        self._transforms_only = transforms_only
        self._kwargs_in_call = kwargs_in_call
        self._argnums = argnums
        self._in_dims = in_dims
        if isinstance(func, Transformed):
            self._user_func = func._user_func
            self._chain = (op.name,) + func._chain

    def __getattr__(self, name: str) -> Any:
        """What is made on first use only: the built operators' cache, the name, the chain.

        (Called only for attributes not set; one missing on a half-made object, as
        during ``copy.copy``, raises ``AttributeError`` without recursing.)
        """
        if name == "_built":  # by builder (and watched stages)
            built: Dict[Any, Callable[..., Any]] = {}
            self.__dict__["_built"] = built
            return built
        if name == "_user_func":  # not nested: the function itself
            return self.__wrapped__
        if name == "_chain":
            return (self._op.name,)
        if name == "__name__" or name == "__qualname__":
            value = transform_name(self._op.name, self.__wrapped__)
            self.__dict__["__name__"] = self.__dict__["__qualname__"] = value
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<tad_autograd {self.__name__}, backend={self._backend or 'auto'}>"

    def _transformed(
        self, builder: Builds, kwargs: Dict[str, Any], watch: Optional[Stages] = None
    ) -> Callable[..., Any]:
        """The operator built by ``builder``; with ``watch``, the function's calls run under
        a defect watch for those stages (a derivative inside an automatic transform)."""
        if kwargs and not self._kwargs_in_call:
            bound: Callable[..., Any] = functools.partial(self.__wrapped__, **kwargs)
            return self._build(
                builder, bound if watch is None else watched_for(self._op, bound, watch)
            )
        key = builder if watch is None else (builder, watch)
        fn = self._built.get(key)
        if fn is None:  # the first call with this builder (no KeyError raised and caught)
            func = (
                self.__wrapped__
                if watch is None
                else watched_for(self._op, self.__wrapped__, watch)
            )
            fn = self._built[key] = self._build(builder, func)
            # dynamo cannot trace a Logger; the name is made only for a record
            if not is_compiling() and _log.isEnabledFor(logging.DEBUG):
                _log.debug("%s: built on %r", self.__name__, builder)
        return fn

    def _run(
        self,
        builder: Builds,
        context: Context,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        watch: Optional[Stages] = None,
    ) -> Any:
        fn = self._transformed(builder, kwargs, watch)
        token = CONTEXT.set(context)
        try:
            if kwargs and self._kwargs_in_call:
                return fn(*args, **kwargs)
            return fn(*args)
        finally:
            CONTEXT.reset(token)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._argnums is not None:
            op = self._op
            check_differentiable(args, self._argnums, op.name, op.complex_inputs, op.integer_error)
        if is_compiling():  # dynamo folds this to a constant: free in compiled code
            return self._call_traced(args, kwargs)
        if self._backend is not None and (self._kwargs_in_call or not kwargs):
            # backend= argument: it wins over every setting and every device type, so
            # nothing else is consulted, and the transformed callable is built once.
            explicit = self._explicit
            if explicit is None or explicit.registry_version != REGISTRY.version:
                explicit = self._explicit = self._explicit_choice()
            token = CONTEXT.set(explicit.context)
            try:
                return explicit.fn(*args, **kwargs)
            except Exception as error:
                self._clarify(error)
                self._hint(explicit.builder.backend, error)
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
                and fast.resolution is resolution
                and fast.memory_generation == MEMORY.generation
                and (self._kwargs_in_call or not kwargs)
            ):
                # the same choice as on the last call: no memory look-up, nothing rebuilt
                token = CONTEXT.set(fast.context)
                try:
                    return fast.fn(*args, **kwargs)
                except Exception as error:
                    failed = error
                finally:
                    CONTEXT.reset(token)
                i = fast.candidate
                self._check_retryable(failed, i, resolution.candidates)
                return self._run_automatic(
                    resolution, device_type, args, kwargs, i + 1, (i, failed)
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
            refusal = compile_refusal(self._op, backend)
            if refusal is not None:  # before any try block: dynamo would run it eagerly
                raise_when_run(refusal)
            origin = ORIGIN_AUTOMATIC if resolution.inherited_automatic else ORIGIN_EXPLICIT
            builder = builder_for(backend, automatic=False)
            try:
                return run_traced(
                    self._op,
                    backend,
                    origin,
                    functools.partial(self._run_plain, builder, args, kwargs),
                )
            except Exception as error:
                self._clarify(error)
                if not resolution.inherited_automatic:
                    self._hint(backend, error)
                raise
        candidates = []
        refusal = None
        for candidate in resolution.candidates:
            refusal = compile_refusal(self._op, candidate)
            if refusal is None:
                candidates.append(candidate)
        if not candidates and refusal is not None:  # e.g. a device without transforms
            raise_when_run(refusal)
        failed: Optional[Exception] = None
        for i, backend in enumerate(candidates):
            builder = compiled_builder_for(backend)
            try:
                return run_traced(
                    self._op,
                    backend,
                    ORIGIN_AUTOMATIC,
                    functools.partial(self._run_plain, builder, args, kwargs),
                )
            except Exception as error:
                if failed is not None:
                    _attach_context(error, failed)
                if i == len(candidates) - 1 or not backend.is_transform:
                    self._clarify(error)
                    raise
                failed = error
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_plain(self, builder: Builds, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        fn = self._transformed(builder, kwargs)
        if kwargs and self._kwargs_in_call:
            return fn(*args, **kwargs)
        return fn(*args)

    def _explicit_choice(self) -> _Explicit:
        """For a ``backend=`` argument: the named backend's builder, built once."""
        assert self._backend is not None
        named = _named(self._backend, self._transforms_only)
        builder = named.builder
        # kept here, not in self._built: a transform built per call pays one build only
        return _Explicit(
            named.registry_version, builder, self._build(builder, self.__wrapped__), named.context
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
                f"{self._op.name}: func must return a tensor or a non-empty pytree of tensors, "
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
        elif transforms_active() and isinstance(error, RuntimeError):
            _note(error, _PLAIN_INSIDE_TRANSFORM.format(name=backend.name))

    def _run_explicit(
        self, resolution: Resolution, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Any:
        backend = resolution.backend
        eager = resolution.inherited_eager and not self._transforms_only
        builder = builder_for(backend, automatic=eager)
        origin = ORIGIN_EXPLICIT
        watch = False
        stages = self._op.stages
        if resolution.inherited_automatic:
            origin = self._automatic_origin(builder) if eager else ORIGIN_AUTOMATIC
            # a derivative inside an automatic transform: never through a defective op
            watch = (
                not eager
                and not self._op.batches
                and backend.is_transform
                and (DefectWatch.needed(stages) or self._op.mode == "forward")
            )
        try:
            context = (backend.name, origin)
            if not watch:
                return self._run(builder, context, args, kwargs)
            return run_watched_inside(
                self._op, lambda: self._run(builder, context, args, kwargs, stages)
            )
        except Exception as error:
            self._clarify(error)
            if not resolution.inherited_automatic:
                self._hint(backend, error)
            raise

    def _automatic_origin(self, builder: Builds) -> str:
        """How nested transforms see an automatic choice: eager forward, or inside a transform."""
        eager = not self._op.batches and builder.eager
        return ORIGIN_AUTOMATIC_EAGER if eager else ORIGIN_AUTOMATIC

    def _automatic_context(self, builder: Builds) -> Context:
        """The innermost setting while an automatic choice runs the function.

        A ``vmap`` that loops on a backend without transforms (its transform
        failed) runs each sample as automatic mode would run it alone: the
        derivatives inside keep automatic mode's own strategies and fallback
        (e.g. an eager-vectorised Hessian), not the plain loops of backward
        passes that choosing that backend explicitly means.
        """
        if self._op.batches and not builder.backend.is_transform:
            return (None, ORIGIN_AUTOMATIC_LOOP)
        return (builder.backend.name, self._automatic_origin(builder))

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
            builder = builder_for(
                candidates[i], automatic=True, transforms_only=self._transforms_only
            )
            context = self._automatic_context(builder)
            try:
                if failed is None or not isinstance(failed[1], ValueError):
                    result = self._run(builder, context, args, kwargs)
                else:
                    # a retry after the transform refused an argument or an output (torch.func
                    # raises ValueError for those): an out_dims=None output must prove itself
                    # unbatched (the transform may have refused it rightly, and equal values
                    # in the loop prove nothing)
                    with strictly_unbatched():
                        result = self._run(builder, context, args, kwargs)
            except Exception as error:
                if failed is not None:
                    _attach_context(error, failed[1])
                self._check_retryable(error, i, candidates)
                failed = (i, error)
                continue
            if failed is not None:
                self._warn_fallback(
                    failed[1],
                    builder_for(candidates[failed[0]], automatic=True),
                    builder,
                    device_type,
                )
            if not kwargs or self._kwargs_in_call:
                fn = self._transformed(builder, {})
                self._automatic = _LastAutomatic(resolution, generation, i, fn, context)
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
        self, error: Exception, failed: Builds, used: Builds, device_type: str
    ) -> None:
        """After a successful retry: remember it, and warn once per function (at the caller).

        Torch's message texts only word the warning's reason.
        """
        message = (
            f"{getattr(self._user_func, '__qualname__', self._user_func)!r} cannot be "
            f"transformed by backend {failed.backend.name!r} (strategy {failed.runs!r}: "
            f"{describe(error)}); using backend {used.backend.name!r} (strategy "
            f"{used.runs!r}) instead for {self.__name__} on {device_type}. Choose a "
            "backend explicitly to avoid the retry, or silence this warning with "
            "warnings.filterwarnings('ignore', "
            "category=tad_autograd.BackendFallbackWarning)."
        )
        _log.info("fallback: %s", message)
        if MEMORY.remember(self._user_func, Fallback(self._chain, device_type), used.backend.name):
            # stack: here, _run_automatic, __call__, the caller
            warnings.warn(message, BackendFallbackWarning, stacklevel=4)


def run_on_named_backend(backend: str, call: Callable[[Builds], Any]) -> Any:
    """``call(builder)`` on the backend a ``backend=`` argument names, looked up once.

    For the operators that evaluate at once (``vjp``, ``jvp``, ...): what a
    :class:`Transformed` does for an explicit backend, without building one
    per call.  No fallback; an error gets the note that ``"autograd"`` would
    work where a transform backend refused the function.
    """
    entry = _named(backend)
    token = CONTEXT.set(entry.context)
    try:
        return call(entry.builder)
    except Exception as error:
        Transformed._hint(entry.builder.backend, error)
        raise
    finally:
        CONTEXT.reset(token)


#: The derivatives on a backend without function transforms that dynamo is tracing now.
_TRACED_PLAIN_DERIVATIVES: List[Operator] = []


def compile_refusal(op: Operator, backend: Backend) -> Optional[RuntimeError]:
    """The error for an ``op`` call on ``backend`` under dynamo, or ``None`` if it compiles.

    Plain :mod:`torch.autograd` differentiates twice by a second backward pass
    through the first one; under ``torch.compile`` the forward pass is a graph
    compiled apart from the ``torch.autograd.grad`` calls (they break the
    graph), and a graph compiled by AOTAutograd (``"aot_eager"``,
    ``"inductor"``) has no second derivative: torch returns zeros or refuses.
    Decided from the operator and the backend, never from torch's messages.
    """
    if backend.is_transform or op.batches:
        return None
    if not op.second_order and not _TRACED_PLAIN_DERIVATIVES:
        return None
    what = op.name if op.second_order else f"{op.name} inside another derivative"
    return RuntimeError(
        f"backend {backend.name!r} cannot compute {what} under torch.compile: its second "
        "backward pass would go through a graph compiled without a second derivative "
        "(torch gives zeros or raises there). Use backend='func' (torch.func transforms, "
        "which torch.compile supports) or automatic mode (backend=None)."
    )


def run_traced(op: Operator, backend: Backend, origin: str, call: Callable[[], Any]) -> Any:
    """``call()`` with ``backend`` as the innermost setting, while dynamo traces."""
    token = enter((backend.name, origin))
    plain = not op.batches and not backend.is_transform
    if plain:
        _TRACED_PLAIN_DERIVATIVES.append(op)
    try:
        return call()
    finally:
        if plain:
            _TRACED_PLAIN_DERIVATIVES.pop()
        leave(token)


#: The note on an error of an explicit plain-autograd operator run inside a function
#: transform (``torch.func.jacfwd``/``jvp``/``vmap``, or a library operator on a
#: transform backend): torch refuses plain autograd's ``requires_grad_()`` there.
_PLAIN_INSIDE_TRANSFORM = (
    "tad_autograd: this operator ran with backend={name!r} (plain torch.autograd) inside a "
    "function transform (torch.func, functorch, or a tad_autograd operator on a transform "
    "backend); torch refuses plain autograd inside forward-mode and vmap transforms. Use the "
    "same backend for the inner and outer operators, or automatic mode (backend=None) for "
    "the inner one."
)


def _note(error: BaseException, note: str) -> None:
    """Attach ``note`` to ``error`` once (as a note, or appended to its message)."""
    if hasattr(error, "add_note"):
        if note not in getattr(error, "__notes__", ()):
            error.add_note(note)
    elif error.args and isinstance(error.args[0], str) and note not in error.args[0]:
        error.args = (f"{error.args[0]}\n{note}",) + error.args[1:]


def _attach_context(error: BaseException, transform_error: BaseException) -> None:
    """Make ``transform_error`` part of ``error``'s context chain (at its end)."""
    last = error
    for _ in range(32):
        if last.__context__ is None or last.__context__ is transform_error:
            break
        last = last.__context__
    if last.__context__ is None and last is not transform_error:
        last.__context__ = transform_error
