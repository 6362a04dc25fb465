"""The ``sparse`` section: sparse Jacobians and Hessians by colouring against the dense ones.

Problems (:mod:`benchmarks.problems_sparse`): a tridiagonal and a
pentadiagonal ODE right-hand side (Jacobians), a pentadiagonal spring chain
and a cutoff Lennard-Jones cluster (Hessians).  Per cell, pre-built
automatic-mode operators are timed interleaved (medians of rounds):
``ta.sparse_jacobian(f, pattern)`` / ``ta.sparse_hessian(f, pattern)``
against the dense ``ta.jacrev(f)`` / ``ta.hessian(f)``, the latter with a
``chunk_size`` that keeps each chunk's intermediates near 128 MB.  The table
reports the colours used, the lower bound, the other colourings' counts, the
set-up time (colouring, then the first call, which builds the decompression
plan), and the agreement with the dense result -- or, where the dense
derivative is too slow to time, with 16 rows computed by ``torch.autograd.grad``.
Nothing here is asserted; ``python -m benchmarks --only sparse``.

:func:`colouring_orders_lines` measures the colouring orders (colours and
time of ``ta.colouring`` per order) on these problems' patterns and on
five- and seven-point stencils of several grids, periodic and not:
``python -c "from benchmarks.sections_sparse import colouring_orders_lines as t;
print(*t(), sep=chr(10))"``.

Timing (:func:`time_warm`): rounds in a new shuffled order, medians, as
:func:`benchmarks.harness.time_interleaved` (garbage collection off inside
samples), with two differences that keep one method's memory from being
charged to the next: each sample ends with an untimed ``malloc_trim(0)``
(glibc), and each sample of a fast method (< 0.1 s per call) follows one
untimed call of it.  Without them, the hundreds of MB a dense call frees
are returned to the system (tens of ms of kernel time) inside the next
sparse call, which then measured 5-10x its steady-state time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import random
import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import torch

import tad_autograd as ta
from benchmarks import problems_sparse as P
from benchmarks.config import Config
from benchmarks.harness import CLOCKS, Settings, compare, paired_ratio
from benchmarks.report_format import fmt_ratio, fmt_time

#: Sizes: ``n`` for the banded problems, atoms for Lennard-Jones (3 coordinates each).
FULL = {"banded": [500, 2000, 8000], "atoms": [1000, 2000, 4000]}
QUICK = {"banded": [500, 2000], "atoms": [300]}
#: Dense derivatives whose estimated time per call exceeds this are not timed (seconds).
DENSE_BUDGET = {"full": 150.0, "quick": 20.0}
#: Elements of the largest intermediate per chunk of the dense derivative (256 MB in float64).
CHUNK_ELEMENTS = 32_000_000

#: name -> (Jacobian or Hessian, builder, size kind)
PROBLEMS = {
    "tridiagonal Jacobian (Allen-Cahn)": ("jacobian", P.allen_cahn, "banded"),
    "pentadiagonal Jacobian (Kuramoto-Sivashinsky)": (
        "jacobian",
        P.kuramoto_sivashinsky,
        "banded",
    ),
    "pentadiagonal Hessian (spring chain)": ("hessian", P.spring_chain, "banded"),
    "cutoff Lennard-Jones Hessian": ("hessian", P.cutoff_lennard_jones, "atoms"),
}


def _malloc_trim() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)`` (returns freed heap memory to the system), else a no-op."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim is not None else (lambda: None)


def time_warm(methods: Dict[str, Callable[[], Any]], s: Settings) -> Dict[str, Dict[str, Any]]:
    """Interleaved rounds; a fast method's sample follows one untimed call (module docstring)."""
    per_call = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        fn()
        per_call[name] = max(time.perf_counter() - t0, 1e-7)
    inner = {n: max(1, int(round(s.sample_s / t))) for n, t in per_call.items()}
    slow = sum(per_call[n] * inner[n] for n in methods) * s.min_rounds > s.slow_cap_s
    min_rounds = 3 if slow else s.min_rounds
    clock, trim = CLOCKS[s.clock], _malloc_trim()
    samples: Dict[str, List[float]] = {n: [] for n in methods}
    order, shuffle = list(methods), random.Random(0).shuffle
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()  # as the harness: no collection inside a sample
    start, rounds = time.perf_counter(), 0
    try:
        while rounds < min_rounds or time.perf_counter() - start < s.budget_s:
            shuffle(order)
            for name in order:
                fn = methods[name]
                if per_call[name] < 0.1:
                    fn()
                t0 = clock()
                for _ in range(inner[name]):
                    fn()
                samples[name].append((clock() - t0) / inner[name])
                trim()  # untimed: the memory this method freed goes back to the system now
            rounds += 1
            if rounds % 16 == 0:
                gc.collect()
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        out[name] = {
            "median_s": statistics.median(xs),
            "q1_s": q[0],
            "q3_s": q[2],
            "rounds": len(xs),
            "inner": inner[name],
            "samples": xs,
            "clock": s.clock,
        }
    return out


def _chunk(per_row: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(per_row, 1))


def _other_colourings(kind: str, pattern: Any) -> Dict[str, int]:
    kinds = ("column", "row") if kind == "jacobian" else ("column", "star", "symmetric")
    return {k: int(ta.colouring(pattern, kind=k).max()) + 1 for k in kinds}


def _check(result: torch.Tensor, dense: Optional[torch.Tensor], func: Any, x: Any, kind: str):
    """(max |err| / max |ref|, what it was checked against, problem or None)."""
    if dense is not None:
        err, why = compare(result.to_dense(), dense, torch.float64)
        return err, "dense", why
    rows = torch.linspace(0, x.numel() - 1, 16).round().long()
    expected = P.reference_rows(func, x, rows, hessian=kind == "hessian")
    indices, values = result.indices(), result.values()
    got = torch.zeros(len(rows), x.numel(), dtype=values.dtype, device=values.device)
    for k, r in enumerate(rows.tolist()):
        mine = indices[0] == r
        got[k, indices[1][mine]] = values[mine]
    err, why = compare(got, expected, torch.float64)
    return err, "16 rows by autograd.grad", why


def _cell(cfg: Config, name: str, size: int, estimate: Optional[float]) -> Dict[str, Any]:
    kind, build, _ = PROBLEMS[name]
    func, pattern, x = build(size)
    x = cfg.put(x)
    n = x.numel()
    t0 = time.perf_counter()
    sparse = (ta.sparse_jacobian if kind == "jacobian" else ta.sparse_hessian)(func, pattern)
    colouring_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = sparse(x)
    first_call_s = time.perf_counter() - t0
    cell: Dict[str, Any] = {
        "problem": name,
        "size": size,
        "n": n,
        "nnz": int(result._nnz()),
        "colouring": sparse.kind,
        "mode": sparse.mode,
        "colours": sparse.n_colours,
        "lower_bound": sparse.lower_bound,
        "other_colourings": _other_colourings(kind, pattern),
        "colouring_s": colouring_s,
        "first_call_s": first_call_s,
    }
    methods: Dict[str, Callable[[], Any]] = {"sparse": lambda: sparse(x)}
    budget = DENSE_BUDGET["quick" if cfg.quick else "full"]
    dense_value = None
    if estimate is not None and estimate > budget:
        cell["dense_skipped"] = f"estimated {estimate:.0f} s per call > {budget:.0f} s"
    else:
        # per row: n elements (stencils), 3 per neighbour pair (Lennard-Jones: entries / 6)
        lj = "Lennard-Jones" in name
        chunk: Optional[int] = _chunk(int(pattern.shape[0]) // 6 if lj else n)
        chunk = None if chunk is not None and chunk >= n else chunk
        op = ta.jacrev if kind == "jacobian" else ta.hessian
        dense = op(func, chunk_size=chunk)
        t0 = time.perf_counter()
        dense_value = dense(x).reshape(n if kind == "hessian" else -1, n)
        cell["dense_first_call_s"] = time.perf_counter() - t0
        if chunk is not None:
            cell["dense_chunk_size"] = chunk
        methods["dense"] = lambda: dense(x)
    cell["max_rel_err"], cell["checked_against"], problem = _check(
        result, dense_value, func, x, kind
    )
    if problem:
        cell["check_problem"] = problem
    del dense_value
    timings = time_warm(methods, cfg.settings)
    cell["methods"] = {m: {k: v for k, v in t.items()} for m, t in timings.items()}
    if "dense" in timings:
        cell["speedup"] = timings["dense"]["median_s"] / timings["sparse"]["median_s"]
        cell["paired_speedup"] = 1.0 / paired_ratio(
            timings["sparse"]["samples"], timings["dense"]["samples"]
        )
    return cell


def section_sparse(cfg: Config) -> Dict[str, Any]:
    """Sparse Jacobians and Hessians by colouring vs the dense ones: banded ODEs, cutoff LJ."""
    sizes = QUICK if cfg.quick else FULL
    cells: List[Dict[str, Any]] = []
    for name, (_, _, size_kind) in PROBLEMS.items():
        last: Optional[Dict[str, Any]] = None
        for size in sizes[size_kind]:
            estimate = None
            if last is not None and "dense" in last["methods"]:
                estimate = last["methods"]["dense"]["median_s"] * (size / last["size"]) ** 2
            elif last is not None:
                estimate = float("inf")
            t0 = time.perf_counter()
            cell = _cell(cfg, name, size, estimate)
            cells.append(cell)
            last = cell
            dense = cell["methods"].get("dense", {}).get("median_s")
            cfg.log(
                f"  {name}: n={cell['n']} colours {cell['colours']} (bound "
                f"{cell['lower_bound']}) sparse {fmt_time(cell['methods']['sparse']['median_s'])}"
                f" dense {fmt_time(dense)} speed-up {fmt_ratio(cell.get('speedup'))} "
                f"[{time.perf_counter() - t0:.0f}s]"
            )
    return {
        "kind": "sparse",
        "title": "Sparse Jacobians and Hessians by colouring vs dense jacrev / hessian "
        "(automatic mode, float64)",
        "cells": cells,
    }


def sparse_lines(sec: Dict[str, Any]) -> List[str]:
    """The Markdown table of the ``sparse`` section."""
    head = [
        "problem",
        "n",
        "entries",
        "colours (kind)",
        "lower bound",
        "other colourings",
        "set-up: colouring + first call",
        "sparse",
        "dense",
        "speed-up",
        "paired",
        "max rel. error (vs)",
    ]
    out = [f"## sparse: {sec['title']}", "", "| " + " | ".join(head) + " |"]
    out.append("|" + "---|" * len(head))
    notes = []
    for c in sec["cells"]:
        dense = c["methods"].get("dense")
        others = ", ".join(f"{k} {v}" for k, v in c["other_colourings"].items())
        err = c.get("max_rel_err")
        row = [
            c["problem"],
            str(c["n"]),
            str(c["nnz"]),
            f"{c['colours']} ({c['colouring']}, {c['mode']})",
            str(c["lower_bound"]),
            others,
            f"{fmt_time(c['colouring_s'])} + {fmt_time(c['first_call_s'])}",
            fmt_time(c["methods"]["sparse"]["median_s"]),
            fmt_time(dense["median_s"]) if dense else "not timed",
            fmt_ratio(c.get("speedup")),
            fmt_ratio(c.get("paired_speedup")),
            ("—" if err is None else f"{err:.1e}") + f" ({c['checked_against']})",
        ]
        out.append("| " + " | ".join(row) + " |")
        if "dense_skipped" in c:
            notes.append(f"- {c['problem']}, n={c['n']}: dense not timed, {c['dense_skipped']}")
        if "dense_chunk_size" in c:
            notes.append(
                f"- {c['problem']}, n={c['n']}: dense with chunk_size={c['dense_chunk_size']}"
            )
        if "check_problem" in c:
            notes.append(f"- {c['problem']}, n={c['n']}: MISMATCH {c['check_problem']}")
    return out + [""] + (["Notes:", ""] + notes + [""] if notes else [])


#: The orders of :func:`colouring_orders_lines`, "best" (the default) last.
ORDERS = ("natural", "largest_first", "smallest_last", "dsatur", "best")


def _order_patterns() -> List[Any]:
    """(label, pattern, kinds) of the colouring-orders table."""
    out: List[Any] = []
    for name, (kind, build, _) in PROBLEMS.items():
        size = 1000 if kind == "hessian" and "Lennard" in name else 2000
        kinds = ("column", "row") if kind == "jacobian" else ("column", "star", "symmetric")
        out.append((f"{name}, n={size}", build(size)[1], kinds))
    for shape in [(4, 4), (8, 8), (16, 16), (64, 64), (8, 8, 8), (16, 16, 16)]:
        points = 2 * len(shape) + 1
        for periodic in (False, True):
            label = "x".join(map(str, shape)) + (" periodic" if periodic else "")
            out.append((f"{points}-point stencil {label}", P.stencil(shape, periodic), ("column",)))
    return out


def colouring_orders_lines(repeats: int = 3) -> List[str]:
    """A Markdown table: colours and time (median of ``repeats``) of each colouring order."""
    head = ["pattern", "kind", "bound", *ORDERS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, pattern, kinds in _order_patterns():
        for kind in kinds:
            cells = []
            for order in ORDERS:
                if order == "dsatur" and kind in ("star", "symmetric"):
                    cells.append("—")
                    continue
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    colours = ta.colouring(pattern, kind=kind, order=order)
                    times.append(time.perf_counter() - t0)
                count = int(colours.max()) + 1
                cells.append(f"{count} ({fmt_time(statistics.median(times))})")
            bound = ta.colouring_lower_bound(pattern, kind=kind)
            out.append("| " + " | ".join([label, kind, str(bound), *cells]) + " |")
    return out
