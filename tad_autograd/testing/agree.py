"""Compare the answers of several backends (or against a reference).

The main entry point is :func:`assert_backends_agree`.  The comparator
(:func:`~tad_autograd.testing.compare.assert_trees_close`, built on
:func:`torch.testing.assert_close`) and the independent references
(:func:`~tad_autograd.testing.reference.reference_jacobian`,
:func:`~tad_autograd.testing.reference.reference_vmap`) live in their own modules
and are re-exported here.

Examples
--------
>>> import torch
>>> x = torch.linspace(-1, 1, 3, dtype=torch.float64)
>>> "autograd" in assert_backends_agree(torch.sin, x).results
True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union, cast

import torch

from .compare import assert_trees_close, default_tolerances, tree_problems
from .reference import flat_function, map_tensors, reference_jacobian, reference_vmap

__all__ = [
    "AUTO",
    "Agreement",
    "default_tolerances",
    "assert_trees_close",
    "assert_backends_agree",
    "reference_jacobian",
    "reference_vmap",
    "flat_function",
]

#: Pseudo backend name for "let the resolver choose" (``backend=None``).
AUTO = "auto"


# --------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------
@dataclass
class Agreement:
    """What :func:`assert_backends_agree` ran and found.

    Attributes
    ----------
    reference : str or None
        The backend every other result was compared with (the first that succeeded).
    results : dict
        Backend name -> result, for the backends that succeeded.
    errors : dict
        Backend name -> exception, for the backends that raised (only
        non-empty with ``errors="ignore"``).
    warnings : dict
        Backend name -> list of ``BackendFallbackWarning`` messages captured
        while running the ``"auto"`` pseudo backend.
    """

    reference: Optional[str]
    results: Dict[str, Any] = field(default_factory=dict)
    errors: Dict[str, BaseException] = field(default_factory=dict)
    warnings: Dict[str, List[str]] = field(default_factory=dict)


def _short_repr(obj: Any, limit: int = 2000) -> str:
    r = repr(obj)
    return r if len(r) <= limit else r[:limit] + " ...<truncated>"


def _args_summary(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
    def one(x: Any) -> Any:
        return map_tensors(_ShapeRepr, x)

    parts = [_short_repr(one(a), 200) for a in args]
    parts += [f"{k}={_short_repr(one(v), 200)}" for k, v in kwargs.items()]
    return ", ".join(parts)


class _ShapeRepr:
    def __init__(self, t: torch.Tensor):
        self.t = t

    def __repr__(self) -> str:
        dt = str(self.t.dtype).replace("torch.", "")
        dev = "" if self.t.device.type == "cpu" else f", {self.t.device}"
        return f"Tensor({list(self.t.shape)}, {dt}{dev})"


def _describe_error(exc: BaseException) -> str:
    notes = "".join(f"\n      note: {n}" for n in getattr(exc, "__notes__", ()))
    return f"{type(exc).__name__}: {exc}{notes}"


def _make_transformed(
    transform: Union[str, Callable[..., Any]],
    func: Callable[..., Any],
    backend: Optional[str],
    argnums: Any,
    transform_kwargs: Dict[str, Any],
) -> Callable[..., Any]:
    import tad_autograd as ta

    if callable(transform):
        transformed: Callable[..., Any] = transform(func, backend=backend, **transform_kwargs)
        return transformed
    if transform == "jacrev":
        return ta.jacrev(func, argnums=argnums, backend=backend, **transform_kwargs)
    if transform == "hessian":
        return ta.hessian(func, argnums=argnums, backend=backend, **transform_kwargs)
    if transform == "vmap":
        return ta.vmap(func, backend=backend, **transform_kwargs)
    raise ValueError(
        f"transform must be 'jacrev', 'vmap', 'hessian' or a callable, got {transform!r}"
    )


def assert_backends_agree(
    func: Callable[..., Any],
    *args: Any,
    argnums: Any = 0,
    transform: Union[str, Callable[..., Any]] = "jacrev",
    backends: Optional[Sequence[str]] = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    errors: str = "raise",
    call_kwargs: Optional[Dict[str, Any]] = None,
    **transform_kwargs: Any,
) -> Agreement:
    """Run a transform of ``func`` with several backends and assert the answers agree.

    Parameters
    ----------
    func : callable
        The function to transform.
    *args
        Positional arguments for the transformed function.
    argnums : int or tuple of int
        For ``"jacrev"`` and ``"hessian"``; ignored by ``"vmap"``.
    transform : {"jacrev", "vmap", "hessian"} or callable
        Which transform to run.  A callable is called as
        ``transform(func, backend=name, **transform_kwargs)`` and must return
        the transformed function; use it for compositions, e.g.
        ``lambda f, backend: ta.vmap(ta.jacrev(f, backend=backend), backend=backend)``.
    backends : sequence of str, optional
        Backend names to compare, in order; default
        ``tad_autograd.available_backends()``.  The pseudo name ``"auto"``
        runs with ``backend=None`` (the automatic choice); any
        ``BackendFallbackWarning`` it issues is captured into the result
        instead of being emitted.
    rtol, atol : float, optional
        Tolerances; default per dtype (:func:`default_tolerances`): rtol 1e-10
        for float64 and 1e-5 for float32.
    errors : {"raise", "ignore"}
        What a backend that *raises* means.  ``"raise"`` (default): it is a
        failure - the ``AssertionError`` report names the backend and its
        exception (chained as ``__cause__`` when it is the only problem).
        ``"ignore"``: backends that raise are left out of the comparison and
        recorded in ``Agreement.errors``; at least one backend must succeed.
    call_kwargs : dict, optional
        Keyword arguments for the transformed function (for ``vmap`` they are
        passed through unbatched).
    **transform_kwargs
        Passed to the transform: ``in_dims``, ``out_dims``, ``randomness``,
        ``chunk_size``, ``has_aux`` ...

    Returns
    -------
    Agreement
        The results per backend, the reference backend and captured errors.

    Raises
    ------
    AssertionError
        When results differ in pytree structure, shape, dtype, device or
        value, or a backend raises with ``errors="raise"``.  The message
        names the backends, the leaf path and the largest abs/rel difference.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.testing import assert_backends_agree
    >>> def f(x, y):
    ...     return {"s": (x.sin() * y).sum(), "t": x @ y}
    >>> x = torch.linspace(-1, 1, 3, dtype=torch.float64)
    >>> y = torch.ones(3, dtype=torch.float64)
    >>> agreement = assert_backends_agree(f, x, y, argnums=(0, 1))
    >>> "autograd" in agreement.results
    True
    >>> _ = assert_backends_agree(torch.sin, x.reshape(3, 1), transform="vmap", in_dims=1)
    """
    import tad_autograd as ta

    if errors not in ("raise", "ignore"):
        raise ValueError(f"errors must be 'raise' or 'ignore', got {errors!r}")
    call_kwargs = dict(call_kwargs or {})
    names = list(ta.available_backends() if backends is None else backends)
    if not names:
        raise ValueError("backends is empty: nothing to compare")
    fallback_warning: Optional[Type[Warning]] = getattr(ta, "BackendFallbackWarning", None)

    agreement = Agreement(reference=None)
    for name in names:
        backend = None if name in (AUTO, None) else name
        label = AUTO if backend is None else name
        try:
            with warnings.catch_warnings(
                record=fallback_warning is not None and backend is None
            ) as caught:
                if backend is None and fallback_warning is not None:
                    warnings.simplefilter("always", fallback_warning)
                fn = _make_transformed(transform, func, backend, argnums, transform_kwargs)
                out = fn(*args, **call_kwargs)
            if caught:
                rest = []
                for w in caught:
                    # caught is only recorded when fallback_warning is not None
                    if issubclass(w.category, cast(Type[Warning], fallback_warning)):
                        agreement.warnings.setdefault(label, []).append(str(w.message))
                    else:
                        rest.append(w)
                for w in rest:  # re-emit anything that is not a fallback warning
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Exception as exc:  # noqa: BLE001 - reported below
            agreement.errors[label] = exc
            continue
        agreement.results[label] = out
        if agreement.reference is None:
            agreement.reference = label

    tname = (
        transform if isinstance(transform, str) else getattr(transform, "__name__", repr(transform))
    )
    header = (
        f"backends disagree on {tname}(func"
        + ("" if tname == "vmap" else f", argnums={argnums!r}")
        + "".join(f", {k}={v!r}" for k, v in transform_kwargs.items())
        + ")("
        + _args_summary(args, call_kwargs)
        + ")"
    )
    sections: List[str] = []
    if errors == "raise":
        for label, err in agreement.errors.items():
            sections.append(f"  backend {label!r} raised {_describe_error(err)}")
    elif not agreement.results:
        sections.append("  every backend raised:")
        for label, err in agreement.errors.items():
            sections.append(f"    {label!r}: {type(err).__name__}: {err}")

    ref = agreement.reference
    if ref is not None:
        expected = agreement.results[ref]
        for label, out in agreement.results.items():
            if label == ref:
                continue
            problems = tree_problems(out, expected, rtol, atol)
            if problems:
                sections.append(f"  backend {label!r} vs reference {ref!r}:")
                sections.extend("    " + p for p in problems)

    if sections:
        lines = [
            header,
            f"  backends compared: {names!r}"
            + (f"; reference: {ref!r}" if ref is not None else ""),
        ]
        lines += sections
        lines.append(f"  func: {_short_repr(func)}")
        err = AssertionError("\n".join(lines))
        causes = (
            list(agreement.errors.values()) if errors == "raise" or not agreement.results else []
        )
        if causes:
            raise err from causes[0]
        raise err
    return agreement
