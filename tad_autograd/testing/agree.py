"""Compare the answers of several backends (or against a reference).

The main entry point is :func:`assert_backends_agree`; :func:`assert_trees_close`
compares two pytrees of tensors with the same readable report, and
:func:`reference_jacobian` / :func:`reference_vmap` compute independent
references with ``torch.autograd.functional.jacobian`` and a Python loop.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union, cast

import torch

from . import _tree

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

_DEFAULT_TOLS = {
    torch.float64: (1e-10, 1e-12),
    torch.complex128: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.complex64: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-4),
    torch.bfloat16: (1e-2, 1e-3),
}


def default_tolerances(dtype: torch.dtype) -> Tuple[float, float]:
    """``(rtol, atol)`` used for ``dtype`` when none are given.

    float64: ``(1e-10, 1e-12)``; float32: ``(1e-5, 1e-6)`` (the contract's
    rtol, and a small atol for entries that should be zero); half types are
    looser.  Integer and bool tensors are compared exactly.

    Examples
    --------
    >>> import torch
    >>> default_tolerances(torch.float64)
    (1e-10, 1e-12)
    >>> default_tolerances(torch.int64)
    (0.0, 0.0)
    """
    return _DEFAULT_TOLS.get(dtype, (0.0, 0.0))


# --------------------------------------------------------------------------
# tree comparison
# --------------------------------------------------------------------------
def _fmt_index(idx: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ("," if len(idx) == 1 else "") + ")"


def _compare_leaf(a: Any, b: Any, rtol: Optional[float], atol: Optional[float]) -> Optional[str]:
    """Return ``None`` when the leaves agree, else a one-line description."""
    if not isinstance(b, torch.Tensor) or not isinstance(a, torch.Tensor):
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return f"type differs: {type(a).__name__} vs {type(b).__name__}"
        try:
            same = bool(a == b)
        except Exception:  # pragma: no cover - exotic leaves
            same = a is b
        return None if same else f"values differ: {a!r} vs {b!r}"
    problems = []
    if a.shape != b.shape:
        problems.append(f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dtype != b.dtype:
        problems.append(f"dtype {a.dtype} vs {b.dtype}")
    if a.device != b.device:
        problems.append(f"device {a.device} vs {b.device}")
    if problems:
        return "; ".join(problems)
    d_rtol, d_atol = default_tolerances(b.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    if a.numel() == 0:
        return None
    x = a.detach().cpu()
    y = b.detach().cpu()
    if x.is_complex() or y.is_complex():
        x, y = x.to(torch.complex128), y.to(torch.complex128)
    elif x.is_floating_point() or y.is_floating_point():
        x, y = x.to(torch.float64), y.to(torch.float64)
    else:
        x, y = x.to(torch.int64), y.to(torch.int64)
        bad = x != y
        if not bool(bad.any()):
            return None
        idx = bad.nonzero()[0].tolist()
        return (
            f"values differ at {int(bad.sum())} of {bad.numel()} elements, first at "
            f"{_fmt_index(idx)}: {x[tuple(idx)].item()} vs {y[tuple(idx)].item()}"
        )
    nan_x, nan_y = torch.isnan(x), torch.isnan(y)
    both_nan = nan_x & nan_y
    diff = (x - y).abs()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    diff = torch.where(nan_x ^ nan_y, torch.full_like(diff, math.inf), diff)
    same_inf = torch.isinf(x) & torch.isinf(y) & (x == y)
    diff = torch.where(same_inf, torch.zeros_like(diff), diff)
    tol = atol + rtol * y.abs()
    bad = diff > tol
    if not bool(bad.any()):
        return None
    flat = diff.reshape(-1)
    k = int(torch.argmax(torch.where(torch.isnan(flat), torch.full_like(flat, math.inf), flat)))
    idx = []
    rest = k
    for size in reversed(diff.shape):  # torch.unravel_index needs torch >= 2.2
        idx.append(rest % size)
        rest //= size
    idx.reverse()
    rel = diff / y.abs()
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)
    max_rel = float(rel.max())
    xv = x.reshape(-1)[k].item()
    yv = y.reshape(-1)[k].item()
    return (
        f"values differ at {int(bad.sum())} of {bad.numel()} elements; "
        f"largest abs diff {float(diff.reshape(-1)[k]):.3e} at index {_fmt_index(idx)} "
        f"({xv!r} vs {yv!r}); largest rel diff {max_rel:.3e}; "
        f"allowed: |a - b| <= {atol:g} + {rtol:g} * |b| ({b.dtype})"
    )


def _compare_trees(
    actual: Any, expected: Any, rtol: Optional[float], atol: Optional[float]
) -> List[str]:
    la, sa, pa = _tree.flatten(actual)
    lb, sb, _ = _tree.flatten(expected)
    if sa != sb:
        return [f"structure differs: {_tree.spec_repr(sa)} vs {_tree.spec_repr(sb)}"]
    out = []
    for a, b, path in zip(la, lb, pa):
        msg = _compare_leaf(a, b, rtol, atol)
        if msg is not None:
            out.append(f"leaf {_tree.render_path(path)}: {msg}")
    return out


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    actual_name: str = "actual",
    expected_name: str = "expected",
    context: str = "",
) -> None:
    """Assert two pytrees of tensors have the same structure, shapes, dtypes, devices and values.

    Values are close when ``|a - b| <= atol + rtol * |b|`` elementwise (NaNs
    in the same places count as equal).  Default tolerances depend on the
    dtype, see :func:`default_tolerances`.

    Raises
    ------
    AssertionError
        With one line per differing leaf, naming its path and the largest
        absolute and relative difference.

    Examples
    --------
    >>> import torch
    >>> assert_trees_close({"a": torch.ones(2)}, {"a": torch.ones(2)})
    >>> try:
    ...     assert_trees_close((torch.ones(2),), (torch.zeros(2),),
    ...                        actual_name="mine", expected_name="ref")
    ... except AssertionError as e:
    ...     print(str(e).splitlines()[0])
    mine and ref differ:
    """
    problems = _compare_trees(actual, expected, rtol, atol)
    if problems:
        head = (
            f"{actual_name} and {expected_name} differ" + (f" ({context})" if context else "") + ":"
        )
        raise AssertionError("\n".join([head] + ["  " + p for p in problems]))


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
        return _tree.tree_map(lambda t: _ShapeRepr(t) if isinstance(t, torch.Tensor) else t, x)

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
            problems = _compare_trees(out, expected, rtol, atol)
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


# --------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------
def reference_jacobian(func: Callable[..., Any], *args: Any, argnums: Any = 0) -> Any:
    """``jacrev(func, argnums)(*args)`` computed with ``torch.autograd.functional.jacobian``.

    Independent of every ``tad_autograd`` backend; returns the structure
    ``jacrev`` promises (output pytree, then the argnums tuple when a tuple,
    then the input pytree; leaves of shape ``out.shape + in.shape``).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> reference_jacobian(lambda x: {"y": x * x}, x)["y"]
    tensor([[2., 0.],
            [0., 4.]], dtype=torch.float64)
    """
    flat_func, flat_in, rebuild = flat_function(func, args, argnums)
    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(flat_func, flat_in)  # type: ignore[no-untyped-call]
    return rebuild(jac)


def flat_function(
    func: Callable[..., Any], args: Tuple[Any, ...], argnums: Any
) -> Tuple[Callable[..., Tuple[Any, ...]], Tuple[Any, ...], Callable[[Any], Any]]:
    """Flatten ``func`` at ``argnums`` for tools that want tensors in, tensors out.

    Returns ``(flat_func, flat_inputs, rebuild)``: ``flat_func(*flat_inputs)``
    returns the tuple of output leaves; ``rebuild(jac)`` turns a nested tuple
    ``jac[out_leaf][in_leaf]`` (as ``torch.autograd.functional.jacobian``
    returns) into the structure ``jacrev`` returns.  Other arguments are
    passed through unchanged.

    Examples
    --------
    >>> import torch
    >>> f, inputs, rebuild = flat_function(lambda d, k: d["a"] * k, ({"a": torch.ones(2)}, 3), 0)
    >>> f(*inputs)
    (tensor([3., 3.]),)
    """
    n = len(args)
    single = isinstance(argnums, int)
    positions = [(a % n if -n <= a < n else a) for a in ((argnums,) if single else argnums)]
    in_specs: List[Any] = []
    in_leaves_per_arg: List[List[Any]] = []
    for p in positions:
        leaves, spec, _ = _tree.flatten(args[p])
        in_specs.append(spec)
        in_leaves_per_arg.append(leaves)
    counts = [len(leaves) for leaves in in_leaves_per_arg]
    flat_in = tuple(t for leaves in in_leaves_per_arg for t in leaves)
    box: Dict[str, Any] = {}

    def flat_func(*flat: Any) -> Tuple[Any, ...]:
        new_args = list(args)
        k = 0
        for p, spec, c in zip(positions, in_specs, counts):
            new_args[p] = _tree.unflatten(spec, list(flat[k : k + c]))
            k += c
        out = func(*new_args)
        leaves, spec, _ = _tree.flatten(out)
        box["spec"] = spec
        return tuple(leaves)

    def rebuild(jac: Any) -> Any:
        if "spec" not in box:
            flat_func(*flat_in)
        rows = []
        for row in jac:  # one per output leaf
            k = 0
            per_arg = []
            for spec, c in zip(in_specs, counts):
                per_arg.append(_tree.unflatten(spec, list(row[k : k + c])))
                k += c
            rows.append(per_arg[0] if single else tuple(per_arg))
        return _tree.unflatten(box["spec"], rows)

    return flat_func, flat_in, rebuild


def reference_vmap(
    func: Callable[..., Any], in_dims: Any = 0, out_dims: Any = 0
) -> Callable[..., Any]:
    """A Python-loop ``vmap``: call ``func`` per sample and stack the outputs.

    Keyword arguments are passed through unbatched.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(6.0).reshape(2, 3)
    >>> reference_vmap(torch.sum, in_dims=1)(x)
    tensor([3., 5., 7.])
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dims_tree = tuple([in_dims] * len(args)) if not isinstance(in_dims, tuple) else in_dims
        leaves, spec, _ = _tree.flatten(tuple(args))
        dims = _tree.broadcast_prefix(dims_tree, tuple(args))
        sizes = {leaf.shape[d] for leaf, d in zip(leaves, dims) if d is not None}
        if len(sizes) != 1:
            raise ValueError(f"reference_vmap: need one batch size, found {sorted(sizes)}")
        (size,) = sizes
        outs = []
        for b in range(size):
            sample = [leaf if d is None else leaf.select(d, b) for leaf, d in zip(leaves, dims)]
            outs.append(func(*_tree.unflatten(spec, sample), **kwargs))
        o_leaves, o_spec, _ = _tree.flatten(outs[0])
        o_dims = _tree.broadcast_prefix(out_dims, outs[0])
        per = [_tree.flatten(o)[0] for o in outs]
        return _tree.unflatten(
            o_spec, [torch.stack([p[i] for p in per], dim=d) for i, d in enumerate(o_dims)]
        )

    return wrapper
