"""The benchmark sections: four timing grids and the CONTRACT §8 special measurements.

Every problem is built on the CPU exactly as on a CPU run (same seeds, float64
master data) and then moved to ``Config.device`` with the benchmarked dtype;
references are computed on that device in float64 from the moved data.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.autograd.functional as AF

import tad_autograd as ta
from benchmarks import problems
from benchmarks.harness import AUTO, Settings, check, paired_ratio, run_cell, time_interleaved

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Config:
    quick: bool
    dtypes: Tuple[str, ...]
    settings: Settings
    log: Callable[[str], None] = print
    #: where every problem tensor lives, e.g. "cpu" or "cuda" (``python -m benchmarks --device``)
    device: str = "cpu"

    def sizes(self, section: str) -> List[int]:
        return (QUICK_SIZES if self.quick else FULL_SIZES)[section]

    @property
    def cuda(self) -> bool:
        """True when the benchmarks run on a CUDA device."""
        return torch.device(self.device).type == "cuda"

    def put(self, t: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """CPU master data on the benchmark device, cast to ``dtype``."""
        return t.to(device=self.device, dtype=dtype)


FULL_SIZES = {
    "forces": [10, 30, 100, 300, 1000],
    "jacobian": [2, 8, 32, 128, 512],
    "hessian": [4, 8, 16, 32, 64],
    "vmap": [1, 4, 16, 64, 256],
    "autograd": [2, 8, 32, 128, 512],
    "fallback": [2, 32, 256],
}
QUICK_SIZES = {
    "forces": [10, 100, 1000],
    "jacobian": [2, 32, 256],
    "hessian": [4, 16, 32],
    "vmap": [1, 16, 256],
    "autograd": [2, 32, 256],
    "fallback": [2, 32],
}
VMAP_ATOMS = 16


def backends() -> Tuple[str, ...]:
    return tuple(ta.available_backends())


# --------------------------------------------------------------------------- hand-written peers


def grad_loop(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Jacobian by one ``torch.autograd.grad`` call per output element (one call for a scalar)."""
    xr = x.detach().requires_grad_(True)
    y = f(xr)
    if y.numel() == 1:
        return torch.autograd.grad(y, xr)[0].reshape(y.shape + x.shape)
    flat = y.reshape(-1)
    m = flat.numel()
    rows = [torch.autograd.grad(flat[i], xr, retain_graph=i < m - 1)[0] for i in range(m)]
    return torch.stack(rows).reshape(y.shape + x.shape)


def hessian_double_loop(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hessian of a scalar: one create_graph grad, then one grad per gradient element."""
    xr = x.detach().requires_grad_(True)
    g = torch.autograd.grad(f(xr), xr, create_graph=True)[0].reshape(-1)
    m = g.numel()
    rows = [torch.autograd.grad(g[i], xr, retain_graph=i < m - 1)[0] for i in range(m)]
    return torch.stack(rows).reshape(x.shape + x.shape)


def batched_forces_loop(
    f: Callable[[torch.Tensor], torch.Tensor], pos: torch.Tensor
) -> torch.Tensor:
    """dE/dpos for each structure of a batch: a Python loop of ``autograd.grad``."""
    out = []
    for p in pos:
        p = p.detach().requires_grad_(True)
        out.append(torch.autograd.grad(f(p), p)[0])
    return torch.stack(out)


# --------------------------------------------------------------------------- method sets


def jacobian_methods(f: Callable, x: torch.Tensor) -> Dict[str, Callable[[], Any]]:
    m: Dict[str, Callable[[], Any]] = {}
    for b in backends():
        jb = ta.jacrev(f, backend=b)
        m[f"tad:{b}"] = lambda jb=jb: jb(x)
    ja = ta.jacrev(f)
    m[AUTO] = lambda: ja(x)
    jf = torch.func.jacrev(f)
    m["peer:func.jacrev"] = lambda: jf(x)
    m["peer:functional(vec=False)"] = lambda: AF.jacobian(f, x, vectorize=False)
    m["peer:functional(vec=True)"] = lambda: AF.jacobian(f, x, vectorize=True)
    m["peer:grad loop"] = lambda: grad_loop(f, x)
    return m


def hessian_methods(f: Callable, x: torch.Tensor) -> Dict[str, Callable[[], Any]]:
    m: Dict[str, Callable[[], Any]] = {}
    for b in backends():
        hb = ta.hessian(f, backend=b)
        m[f"tad:{b}"] = lambda hb=hb: hb(x)
    ha = ta.hessian(f)
    m[AUTO] = lambda: ha(x)
    hf = torch.func.hessian(f)
    m["peer:func.hessian"] = lambda: hf(x)
    hrr = torch.func.jacrev(torch.func.jacrev(f))
    m["peer:func.jacrev(jacrev)"] = lambda: hrr(x)
    m["peer:functional.hessian(vec=False)"] = lambda: AF.hessian(f, x, vectorize=False)
    m["peer:functional.hessian(vec=True)"] = lambda: AF.hessian(f, x, vectorize=True)
    m["peer:grad double loop"] = lambda: hessian_double_loop(f, x)
    return m


def vmap_methods(f: Callable, pos: torch.Tensor) -> Dict[str, Callable[[], Any]]:
    m: Dict[str, Callable[[], Any]] = {}
    for b in backends():
        vb = ta.vmap(ta.jacrev(f), backend=b)
        m[f"tad:{b}"] = lambda vb=vb: vb(pos)
    va = ta.vmap(ta.jacrev(f))
    m[AUTO] = lambda: va(pos)
    vf = torch.func.vmap(torch.func.jacrev(f))
    m["peer:func.vmap(jacrev)"] = lambda: vf(pos)
    m["peer:grad loop"] = lambda: batched_forces_loop(f, pos)
    return m


# --------------------------------------------------------------------------- grids


def _grid(
    cfg: Config,
    name: str,
    build: Callable[[int, torch.dtype], Tuple[Dict, torch.Tensor]],
    size_label: str,
) -> Dict[str, Any]:
    cells = []
    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        for size in cfg.sizes(name):
            t0 = time.perf_counter()
            methods, reference = build(size, dtype)
            cell = run_cell(methods, reference, dtype, cfg.settings)
            cell.update(dtype=dname, size=size)
            cells.append(cell)
            bad = [n for n, r in cell["methods"].items() if r["status"] != "ok"]
            cfg.log(
                f"  {name:8s} {dname} {size_label}={size:<5d} auto/fastest peer = "
                f"{cell.get('subject_ratio', float('nan')):.3f} (paired "
                f"{cell.get('subject_paired_ratio', float('nan')):.3f}, "
                f"peer {cell.get('fastest_peer')}) [{time.perf_counter() - t0:.1f}s]"
                + (f" NOT OK: {bad}" if bad else "")
            )
    return {"kind": "grid", "size_label": size_label, "cells": cells}


def section_forces(cfg: Config) -> Dict[str, Any]:
    def build(n: int, dtype: torch.dtype):
        pos = cfg.put(problems.cluster(n), dtype)
        f = problems.lj_energy(n, cfg.device)
        ref = grad_loop(problems.lj_energy(n, cfg.device), pos.double())
        return jacobian_methods(f, pos), ref

    out = _grid(cfg, "forces", build, "N")
    out["title"] = "Scalar energy -> forces: jacrev of a Lennard-Jones energy, positions (N, 3)"
    return out


def section_jacobian(cfg: Config) -> Dict[str, Any]:
    def build(n: int, dtype: torch.dtype):
        w, x = problems.tanh_layer(n)
        w, x = cfg.put(w, dtype), cfg.put(x, dtype)
        ref = grad_loop(problems.make_tanh(w.double()), x.double())
        return jacobian_methods(problems.make_tanh(w), x), ref

    out = _grid(cfg, "jacobian", build, "n")
    out["title"] = "Jacobian of tanh(W x), W (n, n)"
    return out


def section_hessian(cfg: Config) -> Dict[str, Any]:
    def build(n: int, dtype: torch.dtype):
        pos = cfg.put(problems.cluster(n, seed=1), dtype)
        ref = hessian_double_loop(problems.morse_energy(n, cfg.device), pos.double())
        return hessian_methods(problems.morse_energy(n, cfg.device), pos), ref

    out = _grid(cfg, "hessian", build, "N")
    out["title"] = (
        "Hessian of a Morse pair-potential energy, positions (N, 3); tad backends use "
        "reverse-over-reverse"
    )
    return out


def section_vmap(cfg: Config) -> Dict[str, Any]:
    def build(b: int, dtype: torch.dtype):
        pos = cfg.put(problems.batch_of_clusters(b, VMAP_ATOMS), dtype)
        ref = batched_forces_loop(problems.lj_energy(VMAP_ATOMS, cfg.device), pos.double())
        return vmap_methods(problems.lj_energy(VMAP_ATOMS, cfg.device), pos), ref

    out = _grid(cfg, "vmap", build, "B")
    out["title"] = (
        f"vmap of forces (jacrev of a Lennard-Jones energy) over B structures of {VMAP_ATOMS} atoms"
    )
    return out


# --------------------------------------------------------------------------- §8 special sections


def _special_settings(cfg: Config, budget_s: float) -> Settings:
    """Many short interleaved samples: the paired ratios of §8 need ~1 % precision."""
    s = cfg.settings
    return Settings(
        clock=s.clock,
        budget_s=budget_s,
        sample_s=0.001,
        min_rounds=30,
        max_rounds=100000,
        slow_cap_s=s.slow_cap_s,
        sync=s.sync,
    )


def _pairs(
    results: Dict[str, Dict[str, Any]], pairs: Sequence[Tuple[str, str, str]]
) -> List[Dict[str, Any]]:
    rows = []
    for label, a, b in pairs:
        ra, rb = results.get(a, {}), results.get(b, {})
        if "median_s" not in ra or "median_s" not in rb:
            rows.append(
                {"label": label, "subject": a, "baseline": b, "ratio": None, "paired_ratio": None}
            )
            continue
        rows.append(
            {
                "label": label,
                "subject": a,
                "baseline": b,
                "subject_s": ra["median_s"],
                "baseline_s": rb["median_s"],
                "ratio": ra["median_s"] / rb["median_s"],
                "paired_ratio": paired_ratio(ra["samples"], rb["samples"]),
            }
        )
    return rows


def section_dispatch(cfg: Config) -> Dict[str, Any]:
    """tad_autograd(backend="func") vs torch.func at n=2, built per call and pre-built."""
    w, x = problems.tanh_layer(2)
    xb = cfg.put(torch.stack([x, 2 * x]))  # a batch of 2 vectors of size 2
    w, x = cfg.put(w), cfg.put(x)
    f = problems.make_tanh(w)
    s = _special_settings(cfg, 3.0 if cfg.quick else 10.0)
    groups = []

    jt, jf, ja = ta.jacrev(f, backend="func"), torch.func.jacrev(f), ta.jacrev(f)
    jac = {
        "tad jacrev(backend='func'), built per call": lambda: ta.jacrev(f, backend="func")(x),
        "torch.func.jacrev, built per call": lambda: torch.func.jacrev(f)(x),
        "tad jacrev(backend='func'), pre-built": lambda: jt(x),
        "torch.func.jacrev, pre-built": lambda: jf(x),
        "tad jacrev (automatic), built per call": lambda: ta.jacrev(f)(x),
        "tad jacrev (automatic), pre-built": lambda: ja(x),
    }
    vt, vf, va = ta.vmap(f, backend="func"), torch.func.vmap(f), ta.vmap(f)
    vm = {
        "tad vmap(backend='func'), built per call": lambda: ta.vmap(f, backend="func")(xb),
        "torch.func.vmap, built per call": lambda: torch.func.vmap(f)(xb),
        "tad vmap(backend='func'), pre-built": lambda: vt(xb),
        "torch.func.vmap, pre-built": lambda: vf(xb),
        "tad vmap (automatic), built per call": lambda: ta.vmap(f)(xb),
        "tad vmap (automatic), pre-built": lambda: va(xb),
    }
    for title, methods, ref, kind in (
        ("jacrev", jac, grad_loop(f, x), "jacrev"),
        ("vmap", vm, torch.tanh(xb @ w.T), "vmap"),
    ):
        results = check(methods, ref, torch.float64, s.sync)
        ok = {n: fn for n, fn in methods.items() if results[n]["status"] != "error"}
        for n, t in time_interleaved(ok, s).items():
            results[n].update(t)
        names = list(methods)
        pairs = _pairs(
            results,
            [
                (f"{kind} backend='func' / torch.func, built per call", names[0], names[1]),
                (f"{kind} backend='func' / torch.func, pre-built", names[2], names[3]),
                (f"{kind} automatic / torch.func, built per call", names[4], names[1]),
                (f"{kind} automatic / torch.func, pre-built", names[5], names[3]),
            ],
        )
        for p in pairs:
            cfg.log(f"  dispatch {p['label']}: {p['ratio']:.3f} (paired {p['paired_ratio']:.3f})")
        groups.append({"transform": title, "methods": results, "ratios": pairs})
    return {
        "kind": "pairs",
        "title": "Dispatch overhead at n=2 (float64): tad_autograd vs torch.func",
        "target": 1.03,
        "groups": groups,
    }


def section_autograd(cfg: Config) -> Dict[str, Any]:
    """The "autograd" backend vs torch.autograd.functional.jacobian(vectorize=False), tanh grid."""
    cells = []
    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        for n in cfg.sizes("autograd"):
            w, x = problems.tanh_layer(n)
            w, x = cfg.put(w, dtype), cfg.put(x, dtype)
            f = problems.make_tanh(w)
            ref = grad_loop(problems.make_tanh(w.double()), x.double())
            jb = ta.jacrev(f, backend="autograd")
            methods = {
                "tad:autograd": lambda jb=jb, x=x: jb(x),
                "peer:functional(vec=False)": lambda f=f, x=x: AF.jacobian(f, x, vectorize=False),
            }
            cell = run_cell(methods, ref, dtype, cfg.settings, subject="tad:autograd")
            cell.update(dtype=dname, size=n)
            cells.append(cell)
            cfg.log(
                f"  autograd {dname} n={n:<4d} autograd/functional(vec=False) = "
                f"{cell.get('subject_ratio', float('nan')):.3f} (paired "
                f"{cell.get('subject_paired_ratio', float('nan')):.3f})"
            )
    return {
        "kind": "grid",
        "size_label": "n",
        "target": 1.0,
        "cells": cells,
        "title": (
            "backend='autograd' vs torch.autograd.functional.jacobian(vectorize=False), tanh(W x)"
        ),
    }


FALLBACK_BATCH = 8


def section_fallback(cfg: Config) -> Dict[str, Any]:
    # one line on purpose: `run.py --list` prints the first line of each section's docstring
    """Second and later automatic calls of a vmap that needs the fallback vs backend='autograd'."""  # noqa: E501
    # Automatic jacrev needs no fallback for an old-style autograd.Function (its eager
    # forward pass handles one); automatic vmap over more samples than it loops over runs
    # torch.func.vmap, which refuses the Function: that call falls back to "autograd".
    groups = []
    s = _special_settings(cfg, 2.0 if cfg.quick else 5.0)
    for n in cfg.sizes("fallback"):
        w, x = problems.tanh_layer(n)
        w = cfg.put(w)
        xb = cfg.put(torch.stack([x * (1 + k / FALLBACK_BATCH) for k in range(FALLBACK_BATCH)]))
        f = problems.make_fallback_fn(w)
        ref = torch.stack([f(v) for v in xb])
        va, vg = ta.vmap(f), ta.vmap(f, backend="autograd")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            va(xb)  # first call: torch.func fails, falls back, warns once
            va(xb)
            ta.vmap(f)(xb)  # remembered per function: no second warning
        fallback_warnings = [
            str(w_.message)[:200]
            for w_ in caught
            if issubclass(w_.category, ta.BackendFallbackWarning)
        ]
        # the closures below are all checked and timed within this iteration (B023 is moot)
        methods = {
            "tad automatic (after fallback), pre-built": lambda: va(xb),  # noqa: B023
            "tad backend='autograd', pre-built": lambda: vg(xb),  # noqa: B023
            "tad automatic (after fallback), built per call": lambda: ta.vmap(f)(xb),  # noqa: B023
            "tad backend='autograd', built per call": lambda: ta.vmap(f, backend="autograd")(xb),  # noqa: B023
            "peer:loop": lambda: torch.stack([f(v) for v in xb]),  # noqa: B023
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            results = check(methods, ref, torch.float64, s.sync)
            ok = {k: fn for k, fn in methods.items() if results[k]["status"] != "error"}
            for k, t in time_interleaved(ok, s).items():
                results[k].update(t)
        names = list(methods)
        pairs = _pairs(
            results,
            [
                (f"n={n}: automatic / backend='autograd', pre-built", names[0], names[1]),
                (f"n={n}: automatic / backend='autograd', built per call", names[2], names[3]),
            ],
        )
        for p in pairs:
            cfg.log(f"  fallback {p['label']}: {p['ratio']:.3f} (paired {p['paired_ratio']:.3f})")
        cfg.log(f"  fallback n={n}: {len(fallback_warnings)} warning(s) over the first three calls")
        groups.append(
            {"size": n, "methods": results, "ratios": pairs, "fallback_warnings": fallback_warnings}
        )
    return {
        "kind": "pairs",
        "target": 1.05,
        "groups": groups,
        "title": (
            f"Fallback path: vmap over {FALLBACK_BATCH} samples of tanh(W square(x)) with an "
            "old-style autograd.Function, calls after the first (float64)"
        ),
    }


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
        # a fixed mmap threshold: every large tensor is mmapped and returned to the OS when freed
        # (glibc's adaptive threshold would otherwise recycle freed blocks unseen by the RSS)
        env = dict(_child_env(), MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
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


SECTIONS: Dict[str, Callable[[Config], Dict[str, Any]]] = {
    "forces": section_forces,
    "jacobian": section_jacobian,
    "hessian": section_hessian,
    "vmap": section_vmap,
    "dispatch": section_dispatch,
    "autograd": section_autograd,
    "fallback": section_fallback,
    "import": section_import,
    "memory": section_memory,
}
