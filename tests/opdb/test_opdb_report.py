"""The OpInfo sweep's counts, in a file (``--opdb-report`` prints them) and as junit properties.

Per transform (``jacrev``, ``vmap``, ``vmap(jacrev)``, ``jacfwd``, ``jvp``) and
backend (each available backend and automatic mode; for ``jvp`` also
``forward_ad``, torch's plain dual numbers): how many ops agree with the reference,
agree with finite differences where the reference does not (``agree-fd``),
raise, or give a wrong number, and how many were skipped and why.  The rules
are checked in ``test_opdb_rules`` and ``test_opdb_defects``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import pytest
from _opdb_cases import BATCH, MAX_NUMEL, SAMPLES_PER_OP
from _opdb_forward import FORWARD_AD
from _opdb_sweep import TRANSFORMS, Sweep, known_defect

pytestmark = pytest.mark.slow

_KINDS = ("agree", "agree-fd", "error", "wrong")


def _report(sweep: Sweep) -> str:
    random = sorted({r.case.name for r in sweep.results if r.case.random})
    lines = [
        f"op_db sweep on torch {sweep.torch_version}: {len(sweep.results)} cases in "
        f"{sweep.seconds:.0f} s ({sweep.cpu_seconds:.0f} s CPU); the first {SAMPLES_PER_OP} "
        f"float64 samples of each op with input and output numel <= {MAX_NUMEL} (a table op: "
        f"until one reproduces); vmap over {BATCH} samples with randomness='error' (random "
        f"ops, seeded inside f: {random})",
        "  ops not swept: " + ", ".join(f"{k}: {v}" for k, v in sorted(sweep.skipped_ops.items())),
        f"  {'transform':13s} {'backend':10s} " + " ".join(f"{k:>8s}" for k in _KINDS),
    ]
    for transform in TRANSFORMS:
        for mode in sweep.modes_of(transform):
            c = sweep.counts(transform, mode)
            skipped = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()) if k not in _KINDS)
            fallbacks = sum(r.fallbacks[transform] for r in sweep.results)
            lines.append(
                f"  {transform:13s} {mode:10s} "
                + " ".join(f"{c[k]:8d}" for k in _KINDS)
                + (f"   {skipped}" if skipped else "")
                + (f"   BackendFallbackWarning: {fallbacks}" if mode == "auto" else "")
            )
    for transform in TRANSFORMS:
        for mode in sweep.modes_of(transform):
            fd = sorted({r.case.name for r, _ in sweep.cells(transform, mode, "agree-fd")})
            if fd:
                lines.append(f"  agree-fd {transform} {mode} (autograd itself is wrong): {fd}")
            for r, o in sweep.cells(transform, mode, "wrong"):
                defect = known_defect(r.case.name, transform)
                known = f" (BATCHING_DEFECTS, {defect.stage})" if defect else ""
                known = " (automatic mode: never allowed)" if mode == "auto" else known
                known = " (autograd backend: never allowed)" if mode == "autograd" else known
                if mode == FORWARD_AD:
                    known = " (torch's dual numbers, no library)"
                fd_err = "" if o.fd_error is None else f", {o.fd_error:.3g} from finite differences"
                lines.append(
                    f"  wrong{known}: {r.case.label} {transform} {mode}: max abs diff "
                    f"{o.error:.3g} from the reference{fd_err}"
                )
    for mode in (*sweep.modes, FORWARD_AD):
        errors = Counter(
            o.detail[:100] for t in TRANSFORMS for _, o in sweep.cells(t, mode, "error")
        )
        for detail, n in errors.most_common():
            lines.append(f"  error {mode}: {n} x {detail}")
    return "\n".join(lines)


def test_opdb_counts(
    sweep: Sweep, publish_report: Callable[[str], None], record_property: Any
) -> None:
    """Write (and record) the counts; fails only if too little was compared."""
    report = _report(sweep)
    publish_report(report)
    record_property("opdb_cases", len(sweep.results))
    record_property("opdb_seconds", round(sweep.seconds, 1))
    for transform in TRANSFORMS:
        for mode in sweep.modes:
            for outcome, n in sweep.counts(transform, mode).items():
                record_property(f"opdb_{transform}_{mode}_{outcome}", n)
    assert len(sweep.results) > 200, report
    for transform in TRANSFORMS:
        compared = sum(n for k, n in sweep.counts(transform, "autograd").items() if k in _KINDS)
        assert compared > 200, f"{transform}: only {compared} ops compared\n{report}"
