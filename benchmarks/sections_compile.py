"""The ``compile`` section: ``torch.compile(op(f), fullgraph=True)`` against eager calls.

For each operator (jacrev, grad, vjp, jvp, jacfwd, hessian, hvp,
vmap(jacrev)) and each way of writing it -- tad_autograd's automatic mode,
tad_autograd with ``backend="func"`` and :mod:`torch.func` -- the section
records the graphs and graph breaks :func:`torch._dynamo.explain` finds, the
time of the first compiled call (the compile time), the steady-state times
of the compiled and the eager call (interleaved, medians and paired ratios)
and the largest absolute difference between the compiled and the eager
result.  Vector functions: ``tanh(W x)``, n = 16; scalar ones: the
Lennard-Jones energy of 6 atoms; ``vmap`` over a batch of 8.  Quick mode
compiles with ``backend="aot_eager"`` (no C++ compiler; the graphs and
breaks are the same), full mode with inductor, torch's default.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from unittest import mock

import torch

import tad_autograd as ta
from benchmarks import problems
from benchmarks.config import Config, special_settings
from benchmarks.harness import paired_ratio, time_interleaved
from benchmarks.report_format import fmt_ratio, fmt_time
from tad_autograd.report import lennard_jones

OPERATORS = ("jacrev", "grad", "vjp", "jvp", "jacfwd", "hessian", "hvp", "vmap(jacrev)")
#: the ways of writing each operator: tad_autograd automatic, tad_autograd on torch.func, torch.func
IMPLS = ("tad auto", "tad func", "torch.func")


def unavailable() -> Optional[str]:
    """Why torch.compile cannot be benchmarked here, or None."""
    if not hasattr(torch, "compile") or not hasattr(torch, "func"):
        return f"torch {torch.__version__} has no torch.compile (dynamo needs torch >= 2.0)"
    try:  # torch 2.0 compiles nothing on Python 3.11
        torch.compile(torch.neg, backend="eager")(torch.ones(1))
    except RuntimeError as error:
        return f"torch {torch.__version__}: {str(error).strip().splitlines()[0]}"
    finally:
        torch._dynamo.reset()
    return None


def _problem(device: str) -> Tuple[Callable, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(16, 16, generator=g, dtype=torch.float64) / math.sqrt(16)).to(device)
    x = torch.randn(16, generator=g, dtype=torch.float64).to(device)
    batch = torch.randn(8, 16, generator=g, dtype=torch.float64).to(device)
    pos = problems.cluster(6, seed=1).to(device)

    def layer(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w @ v)

    return layer, x, batch, pos


def operator_calls(op: str, device: str = "cpu") -> Tuple[Dict[str, Callable[[Any], Any]], Any]:
    """``{impl: one-argument callable}`` computing ``op`` the three ways, and its argument."""
    F = torch.func  # not at import: torch 1.13 has no torch.func
    f, x, batch, pos = _problem(device)
    t = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64, device=device)
    v = torch.linspace(-1.0, 1.0, pos.numel(), dtype=pos.dtype, device=device).reshape(pos.shape)
    lj = lennard_jones
    ways: Dict[str, Any] = {"tad auto": (ta, {}), "tad func": (ta, {"backend": "func"})}
    calls: Dict[str, Callable[[Any], Any]] = {}
    for impl in IMPLS:
        m, kw = ways.get(impl, (F, {}))
        if op == "jacrev":
            calls[impl], arg = m.jacrev(f, **kw), x
        elif op == "jacfwd":
            calls[impl], arg = m.jacfwd(f, **kw), x
        elif op == "grad":
            calls[impl], arg = m.grad(lj, **kw), pos
        elif op == "hessian":
            calls[impl], arg = m.hessian(lj, **kw), pos
        elif op == "vjp":
            calls[impl], arg = (lambda y, m=m, kw=kw: m.vjp(f, y, **kw)[1](t)[0]), x
        elif op == "jvp":
            calls[impl], arg = (lambda y, m=m, kw=kw: m.jvp(f, (y,), (t,), **kw)[1]), x
        elif op == "hvp":
            if m is F:
                calls[impl] = lambda p: F.jvp(F.grad(lj), (p,), (v,))[1]
            else:
                calls[impl] = lambda p, kw=kw: ta.hvp(lj, (p,), (v,), **kw)[1][0]
            arg = pos
        elif op == "vmap(jacrev)":
            calls[impl], arg = m.vmap(m.jacrev(f), **kw), batch
        else:
            raise ValueError(f"unknown operator {op!r}; choose from {OPERATORS}")
    return calls, arg


def _explain(fn: Callable[[Any], Any], arg: Any) -> Dict[str, Any]:
    torch._dynamo.reset()
    try:
        e = torch._dynamo.explain(fn)(arg)
    except Exception as error:  # noqa: BLE001 - recorded in the report
        return {"explain_error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    reasons = sorted({str(getattr(r, "reason", r)).splitlines()[0][:160] for r in e.break_reasons})
    return {"graphs": e.graph_count, "breaks": e.graph_break_count, "break_reasons": reasons}


def compile_row(
    op: str, cfg: Config, backend: str, budget_s: float, first: int = 0
) -> Dict[str, Any]:
    """Explain, compile and time (``budget_s`` seconds) one operator's three ways.

    The ways are compiled in the order of :data:`IMPLS` rotated by ``first``:
    the first one compiled pays inductor's full compile, the later ones reuse
    its cached code where their graphs are the same (its FX graph cache).
    """
    calls, arg = operator_calls(op, cfg.device)
    calls = {impl: calls[impl] for impl in IMPLS[first:] + IMPLS[:first]}
    eager = {impl: fn(arg) for impl, fn in calls.items()}
    reference = eager["torch.func"]
    row: Dict[str, Any] = {"operator": op, "compiled_first": next(iter(calls)), "ways": {}}
    timed: Dict[str, Callable[[], Any]] = {}
    explained = {impl: _explain(fn, arg) for impl, fn in calls.items()}
    torch._dynamo.reset()
    for impl, fn in calls.items():
        rec: Dict[str, Any] = dict(explained[impl])
        compiled = torch.compile(fn, fullgraph=True, backend=backend)
        t0 = time.perf_counter()
        try:
            out = compiled(arg)
        except Exception as error:  # noqa: BLE001 - recorded: fullgraph refuses a graph break
            rec["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
        else:
            rec["compile_s"] = time.perf_counter() - t0
            rec["max_abs_diff_vs_eager"] = float((out - eager[impl]).abs().max())
            rec["max_abs_diff_vs_torch_func"] = float((out - reference).abs().max())
            timed[f"{impl} compiled"] = lambda c=compiled: c(arg)
        rec["eager_max_abs_diff_vs_torch_func"] = float((eager[impl] - reference).abs().max())
        timed[f"{impl} eager"] = lambda fn=fn: fn(arg)
        row["ways"][impl] = rec
    times = time_interleaved(timed, special_settings(cfg, budget_s))
    for impl, rec in row["ways"].items():
        e, c = times[f"{impl} eager"], times.get(f"{impl} compiled")
        rec["eager_s"] = e["median_s"]
        if c is not None:
            rec["compiled_s"] = c["median_s"]
            rec["compiled_over_eager"] = c["median_s"] / e["median_s"]
            rec["paired_compiled_over_eager"] = paired_ratio(c["samples"], e["samples"])
    return row


def _log_row(cfg: Config, row: Dict[str, Any], elapsed_s: float) -> None:
    cfg.log(
        f"  {row['operator']:13s} "
        + "; ".join(
            f"{impl}: "
            + (
                f"{r.get('graphs')} graph(s), {r.get('breaks')} break(s), compile "
                f"{r['compile_s']:.1f} s, compiled/eager {r['paired_compiled_over_eager']:.2f}"
                if "compile_s" in r
                else str(r.get("error"))
            )
            for impl, r in row["ways"].items()
        )
        + f" [{elapsed_s:.0f}s]"
    )


def section_compile(cfg: Config) -> Dict[str, Any]:
    """torch.compile(op(f), fullgraph=True): graphs, breaks, compile time, speed vs eager."""
    why = unavailable()
    backend = "aot_eager" if cfg.quick else "inductor"
    title = f"torch.compile(op(f), fullgraph=True, backend={backend!r}) vs eager (float64)"
    if why is not None:
        cfg.log(f"  skipped: {why}")
        return {"kind": "compile", "title": title, "skipped": why, "rows": []}
    rows: List[Dict[str, Any]] = []
    # a new, empty cache: compiled code left on disk by an earlier run would hide the compile time
    with (
        tempfile.TemporaryDirectory(prefix="tad-bench-inductor-") as cache,
        mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": cache}),
    ):
        torch.compile(torch.sin, backend=backend)(torch.ones(3))  # the compiler's one-time start
        for k, op in enumerate(OPERATORS):
            t0 = time.perf_counter()
            rows.append(
                compile_row(op, cfg, backend, 1.0 if cfg.quick else 3.0, first=k % len(IMPLS))
            )
            _log_row(cfg, rows[-1], time.perf_counter() - t0)
    torch._dynamo.reset()
    return {"kind": "compile", "title": title, "backend": backend, "rows": rows}


def compile_lines(sec: Dict[str, Any]) -> List[str]:
    """The Markdown table of the compile section."""
    out = [f"## compile: {sec['title']}", ""]
    if sec.get("skipped"):
        return out + [f"Not measured: {sec['skipped']}.", ""]
    head = [
        "operator",
        "way",
        "graphs / breaks",
        "compile",
        "eager",
        "compiled",
        "compiled / eager (paired)",
        "max |compiled − eager|",
    ]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for row in sec["rows"]:
        for impl, r in row["ways"].items():
            gb = f"{r['graphs']} / {r['breaks']}" if "graphs" in r else "—"
            first = " (compiled first)" if impl == row.get("compiled_first") else ""
            if "error" in r:
                notes.append(f"- {row['operator']}, {impl}: {r['error']}")
            if r.get("break_reasons"):
                notes.append(f"- {row['operator']}, {impl} breaks: {'; '.join(r['break_reasons'])}")
            out.append(
                "| "
                + " | ".join(
                    [
                        row["operator"],
                        impl + first,
                        gb,
                        f"{r['compile_s']:.1f} s" if "compile_s" in r else "ERROR",
                        fmt_time(r.get("eager_s")),
                        fmt_time(r.get("compiled_s")),
                        f"{fmt_ratio(r.get('compiled_over_eager'))} "
                        f"({fmt_ratio(r.get('paired_compiled_over_eager'))})",
                        f"{r['max_abs_diff_vs_eager']:.1e}"
                        if "max_abs_diff_vs_eager" in r
                        else "—",
                    ]
                )
                + " |"
            )
    out += [
        "",
        "The way compiled first for an operator pays the whole compile; the other two "
        "reuse the compiler's cached code where their graphs are the same (inductor's FX "
        "graph cache), so their compile time is mostly tracing.",
        "",
    ]
    return out + (["Problems:", ""] + notes + [""] if notes else [])
