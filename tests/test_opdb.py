"""Every differentiable op of PyTorch's OpInfo database through ``jacrev`` (CONTRACT §1, §4).

For every op in ``torch.testing._internal.common_methods_invocations.op_db``
that supports autograd and float64 on the CPU, take its *first* sample input
(``float64``, ``requires_grad=False``) and differentiate
``f(x) = op(x, *sample.args, **sample.kwargs)`` (its floating-point outputs)
with :func:`torch.autograd.functional.jacobian` as the reference (an op whose
reference fails is skipped), then with ``tad_autograd.jacrev`` on every
backend and in automatic mode.

* An explicitly chosen backend must either agree with the reference (same
  structure and shapes, ``allclose`` with rtol 1e-7, atol 1e-9) or raise;
  raising counts as a "clear error".  A different number is a failure.
* Where a backend disagrees with the reference, finite differences decide: a
  result that matches them while the reference does not counts as agreeing
  (``agree-fd``; torch.autograd's own formula is wrong there, e.g. the mean
  and rstd outputs of ``native_group_norm``).
* Automatic mode must agree on every op: it has to pick, or fall back to, a
  backend that works (a ``BackendFallbackWarning`` is allowed and counted).

Bounds, to run in a few minutes on 2 cores: the first sample only; samples
whose input is not a single tensor, or whose input or outputs have more than
:data:`MAX_NUMEL` elements, are skipped; random ops are made deterministic by
seeding inside ``f``; outputs that are not floating-point, or that do not
require grad when the input does, are left out of ``f``.  The counts per
backend are printed (also without ``-s``) and recorded as junit properties.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch

import tad_autograd as ta
from tad_autograd.errors import BackendFallbackWarning

pytest.importorskip("expecttest")

pytestmark = pytest.mark.slow

MAX_NUMEL = 200
RTOL, ATOL = 1e-7, 1e-9
SEED = 1234


@dataclass
class OpResult:
    name: str
    per_backend: Dict[str, str] = field(default_factory=dict)  # "agree" | "error" | "wrong"
    details: Dict[str, str] = field(default_factory=dict)
    fallback_warnings: int = 0


@dataclass
class Sweep:
    torch_version: str
    backends: Tuple[str, ...]
    results: List[OpResult] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def counts(self, backend: str) -> Counter:
        return Counter(r.per_backend[backend] for r in self.results)

    def failures(self, backend: str, outcome: str) -> List[str]:
        return [
            f"{r.name}: {r.details.get(backend, '')}"
            for r in self.results
            if r.per_backend.get(backend) == outcome
        ]


def _output_leaves(out: Any) -> Optional[Tuple[Any, ...]]:
    """The outputs as a tuple of tensors, or ``None`` if any output is not a tensor."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(out)
    return None


def _differentiable_outputs(op: Any, sample: Any, x: torch.Tensor) -> Tuple[bool, Tuple[int, ...]]:
    """``(single, kept)``: whether the op returns one tensor, and which outputs to compare.

    Kept are the floating-point outputs that autograd differentiates: outputs an
    op declares non-differentiable (e.g. ``native_group_norm``'s mean and rstd)
    get zeros from autograd but the true derivative from torch.func, so the
    reference says nothing about them.
    """
    with torch.enable_grad():
        torch.manual_seed(SEED)
        out = op(x.detach().clone().requires_grad_(True), *sample.args, **sample.kwargs)
    leaves = _output_leaves(out)
    if leaves is None:
        return False, ()
    kept = tuple(i for i, o in enumerate(leaves) if o.is_floating_point() and o.requires_grad)
    return isinstance(out, torch.Tensor), kept


def _make_f(
    op: Any, sample: Any, single: bool, kept: Tuple[int, ...]
) -> Callable[[torch.Tensor], Any]:
    args, kwargs = sample.args, sample.kwargs

    def f(x: torch.Tensor) -> Any:
        torch.manual_seed(SEED)  # random ops draw the same numbers in every evaluation
        out = op(x, *args, **kwargs)
        if single:
            return out
        return tuple(out[i] for i in kept)

    return f


def _leaves(tree: Any) -> Tuple[List[torch.Tensor], Any]:
    if isinstance(tree, torch.Tensor):
        return [tree], "tensor"
    if isinstance(tree, (tuple, list)):
        leaves: List[torch.Tensor] = []
        specs = []
        for t in tree:
            sub, spec = _leaves(t)
            leaves.extend(sub)
            specs.append(spec)
        return leaves, (type(tree).__name__, tuple(specs))
    return [tree], type(tree).__name__


def _compare(result: Any, reference: Any) -> Optional[str]:
    """``None`` if ``result`` equals ``reference``; otherwise what differs."""
    got, got_spec = _leaves(result)
    want, want_spec = _leaves(reference)
    if got_spec != want_spec:
        return f"structure {got_spec} != reference {want_spec}"
    for i, (g, w) in enumerate(zip(got, want)):
        if not isinstance(g, torch.Tensor):
            return f"leaf {i} is {type(g).__name__}, not a tensor"
        if g.shape != w.shape:
            return f"leaf {i}: shape {tuple(g.shape)} != reference {tuple(w.shape)}"
        if g.dtype != w.dtype:
            return f"leaf {i}: dtype {g.dtype} != reference {w.dtype}"
        if not torch.allclose(g.detach(), w, rtol=RTOL, atol=ATOL, equal_nan=True):
            diff = (g.detach() - w).abs().nan_to_num(nan=float("inf")).max().item()
            return f"leaf {i}: values differ (max abs diff {diff:.3g})"
    return None


def _numerical_jacobian(
    f: Callable[[torch.Tensor], Any], x: torch.Tensor, eps: float = 1e-6
) -> Any:
    """Central finite differences, in the structure of ``f``'s output."""
    single = isinstance(f(x.clone()), torch.Tensor)
    flat = x.detach().reshape(-1)
    columns: List[List[torch.Tensor]] = []
    with torch.no_grad():
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += eps
            minus[i] -= eps
            hi, lo = f(plus.reshape(x.shape)), f(minus.reshape(x.shape))
            hi, lo = ((hi,), (lo,)) if single else (hi, lo)
            columns.append([(h - w) / (2 * eps) for h, w in zip(hi, lo)])
    jac = tuple(
        torch.stack([c[k].reshape(-1) for c in columns], dim=-1).reshape(
            columns[0][k].shape + x.shape
        )
        for k in range(len(columns[0]))
    )
    return jac[0] if single else jac


def _matches_finite_differences(result: Any, numerical: Any) -> bool:
    got, got_spec = _leaves(result)
    want, want_spec = _leaves(numerical)
    return got_spec == want_spec and all(
        isinstance(g, torch.Tensor)
        and g.shape == w.shape
        and torch.allclose(g.detach(), w, rtol=1e-4, atol=1e-5)
        for g, w in zip(got, want)
    )


def _short(error: BaseException) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {line[:160]}"


def _run_sweep() -> Sweep:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from torch.testing._internal.common_methods_invocations import op_db
        except ImportError as e:  # e.g. torch <= 2.0's torchgen needs PyYAML
            pytest.skip(f"op_db cannot be imported: {e!r} (pip install expecttest pyyaml)")

    backends = ta.available_backends()
    sweep = Sweep(torch.__version__, backends)
    start = time.perf_counter()
    for op in op_db:
        name = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
        if not op.supports_autograd:
            sweep.skipped["no autograd"] += 1
            continue
        try:
            if torch.float64 not in op.supported_dtypes("cpu"):
                sweep.skipped["no float64"] += 1
                continue
        except Exception:
            sweep.skipped["dtype query failed"] += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.manual_seed(SEED)
                sample = next(iter(op.sample_inputs("cpu", torch.float64, requires_grad=False)))
            except Exception:
                sweep.skipped["no sample"] += 1
                continue
            x = sample.input
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                sweep.skipped["input not a float tensor"] += 1
                continue
            if x.numel() > MAX_NUMEL:
                sweep.skipped[f"input numel > {MAX_NUMEL}"] += 1
                continue
            try:
                single, kept = _differentiable_outputs(op, sample, x)
            except Exception:
                sweep.skipped["op fails"] += 1
                continue
            if not kept:
                sweep.skipped["no differentiable floating-point tensor output"] += 1
                continue
            f = _make_f(op, sample, single, kept)
            with torch.no_grad():
                out = f(x.clone())
            out_leaves, _ = _leaves(out)
            if sum(o.numel() for o in out_leaves) > MAX_NUMEL:
                sweep.skipped[f"output numel > {MAX_NUMEL}"] += 1
                continue
            try:
                reference = torch.autograd.functional.jacobian(f, x.clone())
            except Exception:
                sweep.skipped["reference fails"] += 1
                continue
            if isinstance(out, tuple) and not isinstance(reference, tuple):  # pragma: no cover
                reference = (reference,)

        result = OpResult(name)
        numerical = None
        for b in (*backends, "auto"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    kw = {} if b == "auto" else {"backend": b}
                    got = ta.jacrev(f, **kw)(x.clone())
                except Exception as e:
                    result.per_backend[b] = "error"
                    result.details[b] = _short(e)
                else:
                    problem = _compare(got, reference)
                    result.per_backend[b] = "agree" if problem is None else "wrong"
                    if problem is not None:
                        result.details[b] = problem
                        # Adjudicate with finite differences: autograd itself is wrong for
                        # a few ops (e.g. native_group_norm's backward ignores the mean
                        # and rstd outputs), where torch.func differentiates correctly.
                        if numerical is None:
                            numerical = _numerical_jacobian(f, x)
                        if _matches_finite_differences(got, numerical) and not (
                            _matches_finite_differences(reference, numerical)
                        ):
                            result.per_backend[b] = "agree-fd"
            if b == "auto":
                result.fallback_warnings = sum(
                    issubclass(w.category, BackendFallbackWarning) for w in caught
                )
        sweep.results.append(result)
    sweep.seconds = time.perf_counter() - start
    return sweep


@pytest.fixture(scope="module")
def sweep() -> Sweep:
    return _run_sweep()


def _report(sweep: Sweep) -> str:
    lines = [
        f"op_db jacrev sweep on torch {sweep.torch_version}: {len(sweep.results)} ops compared "
        f"in {sweep.seconds:.0f} s (first sample, numel <= {MAX_NUMEL})",
        "  skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(sweep.skipped.items())),
    ]
    for b in (*sweep.backends, "auto"):
        c = sweep.counts(b)
        lines.append(
            f"  {b:10s} agree {c['agree']:4d}  error {c['error']:4d}  wrong {c['wrong']:4d}"
            f"  (differs from the autograd reference but matches finite differences, where the "
            f"reference does not: {c['agree-fd']})"
        )
    defects = sorted({r.name for r in sweep.results if "agree-fd" in r.per_backend.values()})
    if defects:
        lines.append(
            f"  reference (torch.autograd) disagrees with finite differences on: {defects}"
        )
    fallbacks = [r.name for r in sweep.results if r.fallback_warnings]
    lines.append(f"  automatic mode fell back (BackendFallbackWarning) on {len(fallbacks)} ops")
    for b in sweep.backends:
        errors = Counter(
            d.split(":")[0]
            for d in (
                r.details.get(b, "") for r in sweep.results if r.per_backend.get(b) == "error"
            )
        )
        if errors:
            lines.append(f"  {b} errors by type: {dict(errors)}")
            for detail in sweep.failures(b, "error"):
                lines.append(f"    {detail}")
    return "\n".join(lines)


def test_opdb_counts(
    sweep: Sweep, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    """Print (and record) the counts; fails only if nothing was compared."""
    report = _report(sweep)
    with capsys.disabled():
        print("\n" + report)
    for b in (*sweep.backends, "auto"):
        for outcome, n in sweep.counts(b).items():
            record_property(f"opdb_{b}_{outcome}", n)
    assert len(sweep.results) > 100, report


def test_opdb_backend_never_wrong(sweep: Sweep, backend: Optional[str]) -> None:
    """An explicitly chosen backend agrees with the reference or raises; never another number."""
    if backend is None:
        pytest.skip("automatic mode: see test_opdb_automatic_agrees")
    wrong = sweep.failures(backend, "wrong")
    assert not wrong, (
        f"backend {backend!r} gave wrong Jacobians for {len(wrong)} ops:\n" + "\n".join(wrong)
    )


def test_opdb_automatic_agrees(sweep: Sweep) -> None:
    """Automatic mode agrees with the reference on every op where the reference works."""
    bad = sweep.failures("auto", "wrong") + sweep.failures("auto", "error")
    assert not bad, f"automatic mode failed on {len(bad)} ops:\n" + "\n".join(bad)
