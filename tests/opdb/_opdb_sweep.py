"""Runs the OpInfo sweep: every case under every transform, backend and automatic mode.

References are independent of the library: for ``jacrev`` a row loop of
:func:`torch.autograd.grad` (:func:`torch.autograd.functional.jacobian` with
``vectorize=False``), for ``vmap`` a Python loop over the samples and
:func:`torch.stack`, for ``vmap(jacrev)`` the Jacobian of each sample,
stacked.  Forward mode is checked against reverse mode: ``jacfwd`` against the
same row loop, ``jvp`` (one fixed tangent ``t``) against ``(f(x), J @ t)``
(:mod:`_opdb_forward`, which also runs torch's plain dual numbers as the
pseudo-mode ``forward_ad``).  A result that differs from the reference is
adjudicated with central finite differences in float64 (``agree-fd`` when it
matches them and the reference does not; the comparisons live in
:mod:`_opdb_compare`).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from _opdb_cases import (
    MAX_DEFECT_SAMPLES,
    MAX_SAMPLES,
    SAMPLES_PER_OP,
    Case,
    graph_nodes,
    iter_cases,
    load_op_db,
    op_name,
    why_not_swept,
)
from _opdb_compare import difference, nonfinite, numerical_jacobian, stack
from _opdb_forward import (
    FORWARD,
    FORWARD_AD,
    eager_forward,
    forward_from_jacobian,
    tangent_of,
)
from torch.autograd.functional import jacobian

import tad_autograd as ta
import tad_autograd.compat.batching_defects as table
from tad_autograd.compat._torch_info import TORCH_VERSION
from tad_autograd.compat.batching_defects import BATCHING_DEFECTS, BatchingDefect
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.errors import BackendFallbackWarning

TRANSFORMS = ("jacrev", "vmap", "vmap(jacrev)", "jacfwd", "jvp")
RTOL, ATOL = 1e-7, 1e-9  # result against the reference
FD_RTOL, FD_ATOL = 1e-4, 1e-5  # against central finite differences
#: Function-transform backends: the only ones a batching rule can make wrong.
_TRANSFORM = frozenset(b for b in REGISTRY.names() if REGISTRY.get(b).is_transform)


@dataclass
class Outcome:
    kind: str  # "agree" | "agree-fd" | "error" | "wrong"
    detail: str = ""
    error: float = 0.0  # max abs difference from the reference
    fd_error: Optional[float] = None  # ... and from finite differences, where computed
    nonfinite: bool = False  # NaN or infinity where the reference is finite


@dataclass(eq=False)
class CaseResult:
    case: Case
    outcomes: Dict[Tuple[str, str], Outcome] = field(default_factory=dict)  # (transform, mode)
    skipped: Dict[str, str] = field(default_factory=dict)  # transform -> why
    fallbacks: Counter = field(default_factory=Counter)  # transform -> BackendFallbackWarnings

    def __repr__(self) -> str:
        return f"<CaseResult {self.case.label}>"


@dataclass
class Sweep:
    torch_version: str
    backends: Tuple[str, ...]
    results: List[CaseResult] = field(default_factory=list)
    skipped_ops: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __repr__(self) -> str:  # short: pytest shows the fixture in failure reports
        return f"<Sweep torch {self.torch_version}: {len(self.results)} cases>"

    @property
    def modes(self) -> Tuple[str, ...]:
        return (*self.backends, "auto")

    def modes_of(self, transform: str) -> Tuple[str, ...]:
        """The modes run for ``transform``: with plain dual numbers for ``jvp``."""
        return (*self.modes, FORWARD_AD) if transform == "jvp" else self.modes

    def counts(self, transform: str, mode: str) -> Counter:
        c = Counter(
            r.outcomes[transform, mode].kind
            for r in self.results
            if (transform, mode) in r.outcomes
        )
        c.update(f"skipped: {r.skipped[transform]}" for r in self.results if transform in r.skipped)
        return c

    def cells(self, transform: str, mode: str, *kinds: str) -> List[Tuple[CaseResult, Outcome]]:
        return [
            (r, r.outcomes[transform, mode])
            for r in self.results
            if (transform, mode) in r.outcomes and r.outcomes[transform, mode].kind in kinds
        ]


def known_defect(name: str, transform: Optional[str] = None) -> Optional[BatchingDefect]:
    """The table's entry for op ``name`` on the installed torch, if any (none for an op whose
    batching the package corrects in it: that op must be right on every path).

    With ``transform``: only an entry that explains a wrong ``transform`` (a wrong
    forward-mode formula, stage ``"tangent"``, explains only ``jacfwd`` and ``jvp``).
    """
    for d in table.ACTIVE_DEFECTS:
        explains = transform is None or d.stage != "tangent" or transform in FORWARD
        if name in d.opinfo_names() and explains:
            return d
    return None


def _short(error: BaseException) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {line[:160]}"


class _Runner:
    """The references of one case (computed on demand) and the transformed calls."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.xs = case.batch()
        self._fd: Dict[str, Any] = {}
        self._jacobian: Any = None  # the reference Jacobian of x, the batch's first sample
        self.tangent = tangent_of(case.x)

    def reference(self, transform: str, reuse: bool = True) -> Any:
        """The independent reference; ``reuse``: take x's Jacobian computed before."""
        f, x, xs = self.case.f, self.case.x, self.xs
        if transform in ("jacrev", *FORWARD):
            if not (reuse and transform in FORWARD and self._jacobian is not None):
                self._jacobian = jacobian(f, x.clone(), vectorize=False)
            if transform in FORWARD:
                return self._forward(self._jacobian, transform)
            return self._jacobian
        if transform == "vmap":
            with torch.no_grad():
                return stack([f(xi.clone()) for xi in xs])
        reuse = reuse and self._jacobian is not None
        first = self._jacobian if reuse else jacobian(f, x.clone(), vectorize=False)
        return stack([first] + [jacobian(f, xi.clone(), vectorize=False) for xi in xs[1:]])

    def _forward(self, jac: Any, transform: str) -> Any:
        with torch.no_grad():
            out = self.case.f(self.case.x.clone())
        return forward_from_jacobian(jac, out, transform, self.tangent)

    def finite_differences(self, transform: str) -> Any:
        key = "jacrev" if transform in FORWARD else transform
        f = self.case.f
        if key not in self._fd:
            self._fd[key] = (
                numerical_jacobian(f, self.case.x)
                if key == "jacrev"
                else stack([numerical_jacobian(f, xi.clone()) for xi in self.xs])
            )
        if transform in FORWARD:
            return self._forward(self._fd[key], transform)
        return self._fd[key]

    def call(self, transform: str, mode: str) -> Any:
        kw: Dict[str, Any] = {} if mode == "auto" else {"backend": mode}
        f = self.case.f
        if mode == FORWARD_AD:  # plain dual numbers, no library
            return eager_forward(f, self.case.x.clone(), self.tangent)
        if transform == "jacrev":
            return ta.jacrev(f, **kw)(self.case.x.clone())
        if transform == "vmap":
            return ta.vmap(f, randomness="error", **kw)(self.xs.clone())
        if transform == "jacfwd":  # f seeds itself: every column sees the same draws
            randomness = "same" if self.case.random else "error"
            return ta.jacfwd(f, randomness=randomness, **kw)(self.case.x.clone())
        if transform == "jvp":
            return ta.jvp(f, (self.case.x.clone(),), (self.tangent,), **kw)
        inner = ta.jacrev(f, **kw)
        return ta.vmap(inner, randomness="error", **kw)(self.xs.clone())

    def outcome(self, transform: str, mode: str, reference: Any) -> Outcome:
        try:
            got = self.call(transform, mode)
        except Exception as e:
            return Outcome("error", _short(e))
        problem, error = difference(got, reference, RTOL, ATOL)
        if problem is None:
            return Outcome("agree")
        if transform == "vmap":  # the eager loop is the ground truth of a forward pass
            return Outcome("wrong", problem, error)
        # Adjudicate with finite differences: autograd's own formula is wrong for a few
        # ops (native_group_norm's backward ignores its mean and rstd outputs).
        fd = self.finite_differences(transform)
        got_fd, fd_error = difference(got, fd, FD_RTOL, FD_ATOL)
        ref_fd, _ = difference(reference, fd, FD_RTOL, FD_ATOL)
        kind = "agree-fd" if got_fd is None and ref_fd is not None else "wrong"
        return Outcome(kind, problem, error, fd_error, nonfinite(got, reference))


def run_case(case: Case, backends: Tuple[str, ...]) -> CaseResult:
    result = CaseResult(case)
    runner = _Runner(case)
    for transform in TRANSFORMS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reference = runner.reference(transform)
            except Exception:
                result.skipped[transform] = "reference fails"
                continue
        outcomes = {}
        for mode in (*backends, "auto", *((FORWARD_AD,) if transform == "jvp" else ())):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outcomes[transform, mode] = runner.outcome(transform, mode, reference)
            if mode == "auto":
                result.fallbacks[transform] = sum(
                    issubclass(w.category, BackendFallbackWarning) for w in caught
                )
        if any(o.kind in ("wrong", "agree-fd") for o in outcomes.values()):
            # A reference that changes from call to call (as_strided_scatter's backward reads
            # uninitialised memory on torch 1.13) cannot judge anything.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                again = runner.reference(transform, reuse=False)
            if difference(again, reference, RTOL, ATOL)[0] is not None:
                result.skipped[transform] = "reference not reproducible"
                result.fallbacks[transform] = 0
                continue
        result.outcomes.update(outcomes)
    return result


def run_sweep() -> Sweep:
    ops = load_op_db()
    backends = ta.available_backends()
    sweep = Sweep(torch.__version__, backends)
    start, cpu, threads = time.perf_counter(), time.process_time(), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a loaded machine
    try:
        _sweep_ops(sweep, ops)
    finally:
        torch.set_num_threads(threads)
    sweep.seconds = time.perf_counter() - start
    sweep.cpu_seconds = time.process_time() - cpu
    return sweep


def _sweep_ops(sweep: Sweep, ops: List[Any]) -> None:
    # the table's ops, corrected ones too (their samples that torch's own rule gets wrong
    # show that the correction is right)
    table_ops = {name for d in BATCHING_DEFECTS for name in d.opinfo_names()}
    for op in ops:
        why = why_not_swept(op)
        if why is not None:
            sweep.skipped_ops[why] += 1
            continue
        # SAMPLES_PER_OP samples within the bounds; an op of the table: until one reproduces.
        table_op = op_name(op) in table_ops
        misfit, swept = "no sample", 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = iter_cases(op, MAX_DEFECT_SAMPLES if table_op else MAX_SAMPLES)
            while True:
                try:
                    case, misfit_now = next(cases)
                except StopIteration:
                    break
                except Exception:
                    misfit = "sample_inputs fails"
                    break
                if case is None:
                    misfit = misfit_now
                    continue
                result = run_case(case, sweep.backends)
                sweep.results.append(result)
                swept += 1
                if reproduces(result) if table_op else swept >= SAMPLES_PER_OP:
                    break
        if not swept:
            sweep.skipped_ops[misfit] += 1


def reproduces(result: CaseResult, kind: Optional[str] = None) -> bool:
    """Whether the case shows a defect of the table (of ``kind``, if given).

    ``"batching"``: a transform backend (not the autograd loop) gave a wrong
    result.  ``"tangent"`` (a wrong forward-mode formula): torch's own dual
    numbers, no library at all, gave a wrong ``jvp``.  ``None``: either.
    """
    dual = result.outcomes.get(("jvp", FORWARD_AD))
    tangent = dual is not None and dual.kind == "wrong"
    if kind == "tangent":
        return tangent
    batched = any(
        o.kind == "wrong" for (_, mode), o in result.outcomes.items() if mode in _TRANSFORM
    )
    return batched or (kind is None and tangent)


def resolves(dotted: str) -> bool:
    obj: Any = torch
    for part in dotted.split(".")[1:]:
        try:
            obj = getattr(obj, part)
        except Exception:  # torch.ops raises more than AttributeError for unknown names
            return False
    return True


def _callables(name: str) -> Tuple[str, ...]:
    candidates = (f"torch.{name}", f"torch.Tensor.{name}", f"torch.ops.aten.{name}")
    return tuple(d for d in candidates if resolves(d))


def suggested_entry(result: CaseResult) -> str:
    """A ``BatchingDefect`` for the table, from what the case measured."""
    case = result.case
    forward, backward = graph_nodes(case)
    nodes = sorted((forward | backward) - {"AccumulateGrad"})
    wrong = [(t, m, o) for (t, m), o in result.outcomes.items() if o.kind == "wrong"]
    what = "; ".join(
        f"{t} on {m}: max abs error {o.error:.3g}"
        + ("" if o.fd_error is None else f" ({o.fd_error:.3g} against finite differences)")
        for t, m, o in wrong
        if m in _TRANSFORM
    )
    return (
        f"BatchingDefect(op={case.name!r}, since={TORCH_VERSION.base_version!r}, fixed_in=None, "
        f"nodes=frozenset({nodes!r}), callables={_callables(case.op.name)!r}, "
        f"what={(what + f' on {case.label}')!r})"
    )
