"""Interleaved timing and correctness checks.

A *cell* is one point of a grid (a problem, a size, a dtype) with several
*methods* (zero-argument callables computing the same quantity).  Every
method is first run once, checked against the reference
(:func:`torch.testing.assert_close`, see :func:`compare`) and
marked ``ok``, ``mismatch`` or ``error``; then the methods that ran are
timed round-robin in the same process: each round times every method once
(in a new shuffled order, so that no method always runs after the same
other method and inherits its cache and allocator state), each time as the
mean of ``inner`` back-to-back calls chosen so one sample lasts
``sample_s``.  Rounds continue until the cell has used ``budget_s`` (at
least ``min_rounds`` rounds).  The statistic is the median over rounds;
``paired`` ratios are medians of per-round ratios, which cancel slow drifts
in machine load.

On an asynchronous device (CUDA) ``Settings.sync`` waits for the queued
work: it is called after the ``inner`` calls of every sample, before the
clock is read, and likewise after the calibration and first (checking)
calls, so a sample covers the device work it launched.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

PEER_PREFIX = "peer:"
AUTO = "tad:auto"


#: The clock samples are measured with: "cpu" = CPU time of this process
#: (time.process_time: unaffected by other processes taking the CPU, the
#: right clock on a shared machine with one torch thread) or "wall"
#: (time.perf_counter).  Both are recorded; CLOCK picks the one ratios use.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass
class Settings:
    clock: str = "cpu"
    budget_s: float = 0.5
    sample_s: float = 0.004
    min_rounds: int = 5
    max_rounds: int = 2000
    slow_cap_s: float = 20.0  # a method slower than cap/min_rounds per call gets 3 rounds
    #: waits for asynchronous device work (``torch.cuda.synchronize`` on CUDA); None on CPU
    sync: Optional[Callable[[], None]] = None


def tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-4


def compare(
    value: Any, reference: torch.Tensor, dtype: torch.dtype
) -> Tuple[Optional[float], Optional[str]]:
    """Check ``value`` with :func:`torch.testing.assert_close`; return ``(error, why)``.

    ``value`` must equal the reference cast to ``dtype`` in shape, dtype and
    device (a method that silently moved the result elsewhere does not
    match), hold no NaN, and lie within ``tolerance(dtype) * max |ref|`` of it
    everywhere (``rtol=0``).  ``error`` is max |err| / max |ref| against the
    float64 reference (``None`` when the attributes differ); ``why`` is
    ``None`` when the value matches, else why not, in one line.
    """
    expected = reference.to(dtype)
    if not isinstance(value, torch.Tensor):
        return None, (
            f"expected tensor {tuple(reference.shape)} {dtype} on {reference.device}, "
            f"got {type(value).__name__}"
        )
    value = value.detach()
    ref = reference.to(torch.float64)
    scale = float(ref.abs().max()) or 1.0
    tol = tolerance(dtype)
    alike = (value.shape, value.dtype, value.device) == (
        expected.shape,
        expected.dtype,
        expected.device,
    )
    err = float((value.to(torch.float64) - ref).abs().max()) / scale if alike else None

    def why(message: str) -> str:
        if err is not None:
            return f"max |err| / max |ref| = {err:.2e} > {tol:.0e}"
        return (
            f"{message.strip().splitlines()[0]} (expected {tuple(reference.shape)} {dtype} "
            f"on {reference.device}, got {tuple(value.shape)} {value.dtype} on {value.device})"
        )

    try:
        torch.testing.assert_close(value, expected, rtol=0.0, atol=tol * scale, msg=why)
    except AssertionError as error:
        return err, str(error)
    return err, None


def check(
    methods: Dict[str, Callable[[], Any]],
    reference: torch.Tensor,
    dtype: torch.dtype,
    sync: Optional[Callable[[], None]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Run every method once (the warm-up) and compare it with ``reference``.

    ``sync`` (see :class:`Settings`) is called before the first call's time is read.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for name, fn in methods.items():
        rec: Dict[str, Any] = {"status": "ok"}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                t0 = time.perf_counter()
                value = fn()
                if sync is not None:
                    sync()  # inside the try: an asynchronous device error surfaces here
                rec["first_call_s"] = time.perf_counter() - t0
            except Exception as error:  # noqa: BLE001 - recorded, not hidden
                rec["status"] = "error"
                first_line = (str(error).strip().splitlines() or [""])[0]
                rec["error"] = f"{type(error).__name__}: {first_line[:200]}"
                rec["traceback"] = traceback.format_exc(limit=3)[-800:]
                out[name] = rec
                continue
        if caught:
            rec["warnings"] = sorted(
                {f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught}
            )
        err, why = compare(value, reference, dtype)
        if err is not None:
            rec["max_rel_err"] = err
        if why is not None:
            rec["status"] = "mismatch"
            rec["error"] = why
        out[name] = rec
    return out


def _once(fn: Callable[[], Any], sync: Optional[Callable[[], None]] = None) -> float:
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def time_interleaved(
    methods: Dict[str, Callable[[], Any]], s: Settings
) -> Dict[str, Dict[str, Any]]:
    """Round-robin timing; returns per method the per-call times of every round and stats."""
    names = list(methods)
    if not names:
        return {}
    # calibrate: per-call time (after the checking warm-up); slow methods are not re-run
    sync = s.sync
    per_call = {}
    for n in names:
        t = _once(methods[n], sync)
        per_call[n] = max(t if t > 0.05 else min(t, _once(methods[n], sync)), 1e-7)
    inner = {n: max(1, int(round(s.sample_s / per_call[n]))) for n in names}
    round_cost = sum(per_call[n] * inner[n] for n in names)
    min_rounds = (
        s.min_rounds if round_cost * s.min_rounds <= max(s.slow_cap_s, 4 * s.budget_s) else 3
    )
    samples: Dict[str, List[float]] = {n: [] for n in names}
    wall: Dict[str, List[float]] = {n: [] for n in names}
    other = "wall" if s.clock == "cpu" else "cpu"
    clock, other_clock = CLOCKS[s.clock], CLOCKS[other]
    shuffle = random.Random(0).shuffle  # reproducible orders
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    rounds = 0
    try:
        while rounds < s.max_rounds and (
            rounds < min_rounds or time.perf_counter() - start < s.budget_s
        ):
            order = names[:]
            shuffle(order)  # a new order each round: no method always follows the same one
            for n in order:
                fn, m = methods[n], inner[n]
                o0 = other_clock()
                t0 = clock()
                for _ in range(m):
                    fn()
                if sync is not None:
                    sync()  # the device work of the m calls belongs to this sample
                t1 = clock()
                samples[n].append((t1 - t0) / m)
                wall[n].append((other_clock() - o0) / m)
            rounds += 1
            if rounds % 16 == 0:
                gc.collect()
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for n in names:
        xs = samples[n]
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        out[n] = {
            "median_s": statistics.median(xs),
            "q1_s": q[0],
            "q3_s": q[2],
            "min_s": min(xs),
            "rounds": len(xs),
            "inner": inner[n],
            "samples": xs,
            "clock": s.clock,
            f"median_{other}_s": statistics.median(wall[n]),
        }
    return out


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def run_cell(
    methods: Dict[str, Callable[[], Any]],
    reference: torch.Tensor,
    dtype: torch.dtype,
    s: Settings,
    subject: str = AUTO,
) -> Dict[str, Any]:
    """Check, then time, the methods of one cell.

    Ratios are of ``subject`` to the fastest correct peer.
    """
    results = check(methods, reference, dtype, s.sync)
    runnable = {n: f for n, f in methods.items() if results[n]["status"] != "error"}
    timings = time_interleaved(runnable, s)
    for n, t in timings.items():
        results[n].update(t)
    cell: Dict[str, Any] = {"methods": results}
    peers = [n for n in results if n.startswith(PEER_PREFIX) and results[n]["status"] == "ok"]
    if peers:
        fastest = min(peers, key=lambda n: results[n]["median_s"])
        cell["fastest_peer"] = fastest
        for _n, r in results.items():
            if "median_s" in r:
                r["ratio_to_fastest_peer"] = r["median_s"] / results[fastest]["median_s"]
                r["paired_ratio_to_fastest_peer"] = paired_ratio(
                    r["samples"], results[fastest]["samples"]
                )
        if subject in results and "median_s" in results[subject]:
            cell["subject"] = subject
            cell["subject_ratio"] = results[subject]["ratio_to_fastest_peer"]
            cell["subject_paired_ratio"] = results[subject]["paired_ratio_to_fastest_peer"]
            cell["subject_ok"] = results[subject]["status"] == "ok"
    return cell


def strip_samples(obj: Any) -> Any:
    """Drop the raw per-round samples (kept only in memory) before writing JSON, unless wanted."""
    if isinstance(obj, dict):
        return {k: strip_samples(v) for k, v in obj.items() if k != "samples"}
    if isinstance(obj, list):
        return [strip_samples(v) for v in obj]
    return obj
