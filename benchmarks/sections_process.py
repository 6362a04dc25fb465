"""Sections measured in fresh interpreters: import time and peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.config import REPO, Config, backends
from benchmarks.harness import AUTO

_IMPORT_TORCH = (
    "import sys, time, json; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
    "print(json.dumps({'torch_s': t1 - t0, 'modules': sorted(sys.modules)}))"
)
_IMPORT_TAD = (
    "import sys, time, json; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
    "before = set(sys.modules); import tad_autograd; t2 = time.perf_counter(); "
    "print(json.dumps({'torch_s': t1 - t0, 'tad_s': t2 - t1, 'total_s': t2 - t0, "
    "'new_modules': sorted(set(sys.modules) - before), 'modules': sorted(sys.modules)}))"
)


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TAD_AUTOGRAD_BACKEND", None)
    return env


def _child(code: str) -> Tuple[Dict[str, Any], float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=REPO,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def _byte_compile_package() -> None:
    """Write tad_autograd's ``.pyc`` files, as installing the package does.

    Run by the children's interpreter with their environment, so the files
    match what they look for.  ``PYTHONDONTWRITEBYTECODE`` (set by tox and
    many CI setups) stops the import system from writing ``.pyc`` files, not
    from reading them, and ``compileall`` writes them regardless.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "tad_autograd")],
        env=_child_env(),
        cwd=REPO,
        check=True,
    )


def section_import(cfg: Config) -> Dict[str, Any]:
    """``import tad_autograd`` vs ``import torch`` alone, fresh interpreters, interleaved.

    Measures the installed case: the package is byte-compiled first (as ``pip
    install`` does), so the children load cached ``.pyc`` files.  Without
    them, each child would compile every module from source, because under
    ``PYTHONDONTWRITEBYTECODE`` no child ever writes the cache.
    """
    _byte_compile_package()
    repeats = 3 if cfg.quick else 10
    torch_only, with_tad, wall_torch, wall_tad = [], [], [], []
    last_torch = last_tad = {}
    for _ in range(repeats):
        # quick mode: no torch-only interpreter; the tad child times `import torch` itself too
        a, wa = _child(_IMPORT_TORCH) if not cfg.quick else (None, None)
        b, wb = _child(_IMPORT_TAD)
        if a is None:
            a, wa = (
                {
                    "torch_s": b["torch_s"],
                    "modules": [m for m in b["modules"] if m not in b["new_modules"]],
                },
                wb,
            )
        torch_only.append(a["torch_s"])
        with_tad.append(b)
        wall_torch.append(wa)
        wall_tad.append(wb)
        last_torch, last_tad = a, b
    tad_s = [b["tad_s"] for b in with_tad]
    # where the time goes: python -X importtime, self times of the modules tad_autograd adds
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import torch; import tad_autograd"],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=REPO,
    )
    breakdown = []
    seen_tad = False
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:"):
            continue
        try:
            self_us, cum_us = int(parts[0].split(":")[1]), int(parts[1])
        except ValueError:
            continue
        mod = parts[2].strip()
        if mod.startswith("tad_autograd") or (mod.split(".")[0] in ("packaging",) and not seen_tad):
            breakdown.append(
                {"module": mod, "self_ms": self_us / 1e3, "cumulative_ms": cum_us / 1e3}
            )
        seen_tad = seen_tad or mod == "tad_autograd"
    breakdown.sort(key=lambda r: -r["self_ms"])
    med = statistics.median
    heavy = [
        m
        for m in ("functorch", "torch.func", "torch._functorch.eager_transforms")
        if m in last_tad["modules"] and m not in last_torch["modules"]
    ]
    new_top = sorted({m.split(".")[0] for m in last_tad["new_modules"]} - {"tad_autograd"})
    out = {
        "kind": "import",
        "title": "Import time (fresh interpreters)",
        "target_ms": 15.0,
        "repeats": repeats,
        "import_torch_ms": med(torch_only) * 1e3,
        "import_torch_then_tad_total_ms": med(b["total_s"] for b in with_tad) * 1e3,
        "added_by_tad_ms": med(tad_s) * 1e3,
        "added_by_tad_ms_all": [t * 1e3 for t in tad_s],
        "delta_of_medians_ms": (med(b["total_s"] for b in with_tad) - med(torch_only)) * 1e3,
        "process_wall_torch_ms": med(wall_torch) * 1e3,
        "process_wall_tad_ms": med(wall_tad) * 1e3,
        "heavy_modules_imported_by_tad": heavy,
        "other_top_level_modules_imported_by_tad": new_top,
        "torch_func_imported_by_torch_itself": "torch.func" in last_torch["modules"],
        "importtime_self_ms": breakdown[:10],
    }
    cfg.log(
        f"  import: torch {out['import_torch_ms']:.0f} ms; tad_autograd adds "
        f"{out['added_by_tad_ms']:.1f} ms "
        f"(median in-process), delta of medians {out['delta_of_medians_ms']:.1f} ms; heavy: "
        f"{heavy}; "
        f"new top-level modules: {new_top}"
    )
    return out


def _num(v: Optional[float]) -> float:
    return float("nan") if v is None else v


_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
_CUDA_MEASURE = (
    "torch.cuda.max_memory_allocated - memory_allocated, reset per row, one process per method"
)


def _memory_command(
    method: str, n: int, hidden: int, chunks: Sequence[Optional[int]], cfg: Config
) -> List[str]:
    """The command line of one ``benchmarks.memory_child`` process."""
    child = [
        sys.executable,
        "-m",
        "benchmarks.memory_child",
        "--method",
        method,
        "--n",
        str(n),
        "--hidden",
        str(hidden),
        "--chunks",
        ",".join("none" if c is None else str(c) for c in chunks),
    ]
    if cfg.cuda:
        # CUDA memory statistics are per process and resettable: no launcher needed
        return child + ["--device", cfg.device]
    # Linux carries the parent's ru_maxrss over exec: start the child through a launcher
    return [sys.executable, "-c", _LAUNCHER] + child


def _log_memory_row(cfg: Config, rec: Dict[str, Any]) -> None:
    head = f"  memory {rec['method']:18s} chunk={str(rec['chunk_size']):5s} "
    if cfg.cuda:
        cfg.log(
            head + f"CUDA peak - baseline = {_num(rec.get('delta_mb')):7.1f} MB "
            f"({rec.get('time_s', float('nan')):.3f} s)"
        )
        return
    cfg.log(
        head + f"peak - baseline = "
        f"{_num(rec.get('delta_mb')):7.1f} MB (ru_maxrss "
        f"{rec.get('maxrss_delta_mb', float('nan')):.1f}, "
        f"VmHWM {rec.get('hwm_delta_mb', float('nan')):.1f}; "
        f"{rec.get('time_s', float('nan')):.2f} s)"
    )


def _malloc_env(hidden: int) -> Dict[str, str]:
    """glibc settings that make the RSS follow the live tensors of the memory problem.

    A fixed mmap threshold (glibc's adaptive one would recycle freed blocks
    unseen by the RSS) *below* the size of one row's hidden-layer temporary
    (``hidden`` float64 values): every such temporary is mmapped and returned
    to the OS when freed.  With a threshold above it (64 KB while a quick
    run's rows are 32 KB), the temporaries came from the heap, interleaved
    with the small per-row results kept until the end; each freed temporary
    left a hole too small for the next one, so at ``chunk_size=1`` the heap
    grew by one temporary per row (4 MB for 128 rows) although the live
    tensors never did (the torch profiler's allocation events: 0.28 MB).
    """
    return {
        "MALLOC_MMAP_THRESHOLD_": str(min(65536, hidden * 8 // 2)),
        "MALLOC_TRIM_THRESHOLD_": "131072",
    }


def section_memory(cfg: Config) -> Dict[str, Any]:
    """Peak RSS (CUDA: allocator peak) of a process computing a large Jacobian, per chunk_size."""
    n = 128 if cfg.quick else 256
    hidden = 32 * n
    chunks: List[Optional[int]] = [None, 16, 1] if cfg.quick else [None, 64, 16, 4, 1]
    methods = [f"tad:{b}" for b in backends()] + [AUTO]
    if not cfg.quick:
        methods.append("peer:func.jacrev")
    # CPU full: one fresh process per (method, chunk), ru_maxrss as the measure;
    # CPU quick: one process per method measuring every chunk (VmHWM reset between them);
    # CUDA: one process per method, torch.cuda peak statistics reset before every chunk
    runs = (
        [(m, chunks) for m in methods]
        if cfg.quick or cfg.cuda
        else [(m, [c]) for m in methods for c in chunks]
    )
    rows = []
    for method, cs in runs:
        cmd = _memory_command(method, n, hidden, cs, cfg)
        env = dict(_child_env(), **_malloc_env(hidden))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or len(lines) != len(cs):
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            lines += [{"chunk_size": c, "error": err} for c in cs[len(lines) :]]
        for rec in lines:
            rec["method"] = method
            if cfg.cuda:
                rec["delta_mb"] = rec.get("cuda_delta_mb")
            else:
                rec["delta_mb"] = (
                    rec.get("maxrss_delta_mb", rec.get("hwm_delta_mb"))
                    if len(cs) == 1
                    else rec.get("hwm_delta_mb")
                )
            rows.append(rec)
            _log_memory_row(cfg, rec)
    monotone = {}
    for method in methods:
        ds = [r.get("delta_mb") for r in rows if r["method"] == method]
        ok = all(d is not None for d in ds)
        # chunks run from None (all rows at once) down to 1: the peak must never grow (beyond
        # 5 % + 1 MB of allocator noise); a backend that always works one row at a time (the
        # autograd loop) stays flat at the floor, every other one must fall overall
        never_grows = ok and all(b <= a * 1.05 + 1.0 for a, b in zip(ds, ds[1:]))
        flat = ok and max(ds) <= min(ds) * 1.05 + 1.0
        monotone[method] = never_grows and (flat or ds[-1] < ds[0])
    if cfg.cuda:
        measure = _CUDA_MEASURE
    elif cfg.quick:
        measure = "VmHWM reset per row, one fresh process per method"
    else:
        measure = "ru_maxrss, one fresh process per row"
    title = f"Peak memory: jacrev of A tanh(B x), n={n}, hidden {hidden}, float64"
    return {
        "kind": "memory",
        "device": cfg.device,
        "n": n,
        "result_mb": n * n * 8 / 2**20,
        "hidden": hidden,
        "chunks": chunks,
        "rows": rows,
        "falls_with_chunk": monotone,
        "measure": measure,
        "title": title if not cfg.cuda else f"{title}, on {cfg.device}",
    }
