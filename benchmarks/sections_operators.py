"""Performance targets for the operators beyond jacrev: forward vs reverse, dispatch, hvp.

* ``modes`` -- ``jacobian(mode="auto")`` against ``jacfwd`` and ``jacrev``
  (tad_autograd's and torch.func's) on tall (3 -> 1000), square and wide
  (1000 -> 3) Jacobians of tanh(W x);
* ``operators`` -- ``jacfwd``, ``jvp`` and ``hvp`` with ``backend="func"``
  against the same torch.func calls, pre-built, and automatic mode beside;
* ``hvp`` -- Hessian-vector products of the Lennard-Jones energy, automatic
  and every backend, against ``torch.autograd.functional.hvp``,
  ``torch.func`` ``jvp(grad)`` and ``vjp(grad)``, and a hand-written double
  backward pass.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Tuple

import torch
import torch.autograd.functional as AF

import tad_autograd as ta
from benchmarks import problems
from benchmarks.config import DTYPES, Config, backends, ratio_rows, special_settings
from benchmarks.harness import AUTO, check, run_cell, time_interleaved
from benchmarks.peers import grad_loop
from tad_autograd.report import lennard_jones

_LJ = lennard_jones

SHAPES = {"tall": (3, 1000), "square": (100, 100), "wide": (1000, 3)}


def _layer(n_in: int, n_out: int) -> Tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) / math.sqrt(n_in)
    x = torch.randn(n_in, generator=g, dtype=torch.float64)
    return (lambda v: torch.tanh(w.to(v) @ v)), x


def _pairs_section(
    cfg: Config,
    title: str,
    target: float,
    groups_in: Dict[str, Tuple[Dict[str, Callable[[], Any]], torch.Tensor, list]],
    budget: float,
) -> Dict[str, Any]:
    s = special_settings(cfg, budget)
    groups = []
    for label, (methods, ref, pairs_spec) in groups_in.items():
        results = check(methods, ref, torch.float64, s.sync)
        ok = {n: fn for n, fn in methods.items() if results[n]["status"] != "error"}
        for n, t in time_interleaved(ok, s).items():
            results[n].update(t)
        pairs = ratio_rows(results, pairs_spec)
        for p in pairs:
            if p["ratio"] is not None:
                cfg.log(
                    f"  {label}: {p['label']}: {p['ratio']:.3f} (paired {p['paired_ratio']:.3f})"
                )
        groups.append({"transform": label, "methods": results, "ratios": pairs})
    return {"kind": "pairs", "title": title, "target": target, "groups": groups}


def section_modes(cfg: Config) -> Dict[str, Any]:
    """jacobian(mode="auto") vs jacfwd and jacrev on tall, square and wide Jacobians (float64)."""
    groups = {}
    for shape, (n_in, n_out) in SHAPES.items():
        f, x = _layer(n_in, n_out)
        x = cfg.put(x)
        auto, fwd, rev = ta.jacobian(f), ta.jacfwd(f), ta.jacrev(f)
        auto(x)  # the first call counts the outputs
        ffwd, frev = torch.func.jacfwd(f), torch.func.jacrev(f)
        methods = {
            "tad jacobian(mode='auto')": lambda a=auto, x=x: a(x),
            "tad jacfwd": lambda a=fwd, x=x: a(x),
            "tad jacrev": lambda a=rev, x=x: a(x),
            "torch.func.jacfwd": lambda a=ffwd, x=x: a(x),
            "torch.func.jacrev": lambda a=frev, x=x: a(x),
        }
        names = list(methods)
        spec = [(f"{shape} {n_in}->{n_out}: auto / {b}", names[0], b) for b in names[1:]]
        spec.append((f"{shape} {n_in}->{n_out}: tad jacrev / auto", names[2], names[0]))
        groups[f"{shape} ({n_in} -> {n_out}), auto chose {auto.mode_for(x)}"] = (
            methods,
            grad_loop(f, x) if n_out <= 100 else torch.func.jacrev(f)(x.double()),
            spec,
        )
    return _pairs_section(
        cfg,
        "jacobian(mode='auto') vs jacfwd / jacrev of tanh(W x), W (n_out, n_in), float64",
        1.05,
        groups,
        3.0 if cfg.quick else 8.0,
    )


def section_operators(cfg: Config) -> Dict[str, Any]:
    """jacfwd, jvp and hvp with backend="func" vs the same torch.func calls, pre-built (float64)."""
    f, x = _layer(32, 32)
    x = cfg.put(x)
    t = torch.ones_like(x)
    pos = cfg.put(problems.cluster(30))
    v = torch.ones_like(pos)
    F = torch.func
    jt, jf, ja = ta.jacfwd(f, backend="func"), F.jacfwd(f), ta.jacfwd(f)
    hvp_func = F.jvp(F.grad(lennard_jones), (pos,), (v,))[1]
    groups = {
        "jacfwd (n = 32)": (
            {
                "tad jacfwd(backend='func')": lambda: jt(x),
                "torch.func.jacfwd": lambda: jf(x),
                "tad jacfwd (automatic)": lambda: ja(x),
            },
            grad_loop(f, x),
            [
                (
                    "jacfwd backend='func' / torch.func",
                    "tad jacfwd(backend='func')",
                    "torch.func.jacfwd",
                ),
                ("jacfwd automatic / torch.func", "tad jacfwd (automatic)", "torch.func.jacfwd"),
            ],
        ),
        "jvp (n = 32)": (
            {
                "tad jvp(backend='func')": lambda: ta.jvp(f, (x,), (t,), backend="func")[1],
                "torch.func.jvp": lambda: F.jvp(f, (x,), (t,))[1],
                "tad jvp (automatic)": lambda: ta.jvp(f, (x,), (t,))[1],
            },
            grad_loop(f, x) @ t,
            [
                ("jvp backend='func' / torch.func", "tad jvp(backend='func')", "torch.func.jvp"),
                ("jvp automatic / torch.func", "tad jvp (automatic)", "torch.func.jvp"),
            ],
        ),
        "hvp (Lennard-Jones, 30 atoms)": (
            {
                "tad hvp(backend='func')": lambda: ta.hvp(
                    lennard_jones, (pos,), (v,), backend="func"
                )[1][0],
                "torch.func jvp(grad)": lambda: F.jvp(F.grad(lennard_jones), (pos,), (v,))[1],
                "tad hvp (automatic)": lambda: ta.hvp(lennard_jones, (pos,), (v,))[1][0],
            },
            hvp_func,
            [
                (
                    "hvp backend='func' / torch.func jvp(grad)",
                    "tad hvp(backend='func')",
                    "torch.func jvp(grad)",
                ),
                (
                    "hvp automatic / torch.func jvp(grad)",
                    "tad hvp (automatic)",
                    "torch.func jvp(grad)",
                ),
            ],
        ),
    }
    return _pairs_section(
        cfg,
        "Operators with backend='func' vs torch.func, pre-built (float64)",
        1.03,
        groups,
        3.0 if cfg.quick else 8.0,
    )


def _double_backward(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor):
    xr = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xr), xr, create_graph=True)
    return torch.autograd.grad(g, xr, v)[0]


def section_hvp(cfg: Config) -> Dict[str, Any]:
    """hvp of a Lennard-Jones energy of N atoms vs autograd.functional.hvp, jvp(grad), vjp(grad)."""
    F = torch.func
    cells = []
    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        for n in cfg.sizes("hvp"):
            t0 = time.perf_counter()
            pos = cfg.put(problems.cluster(n, seed=2), dtype)
            v = cfg.put(torch.linspace(-1, 1, 3 * n).reshape(n, 3), dtype)
            ref = _double_backward(lennard_jones, pos.double(), v.double())
            methods: Dict[str, Callable[[], Any]] = {
                AUTO: lambda pos=pos, v=v: ta.hvp(_LJ, (pos,), (v,))[1][0],
                "peer:functional.hvp": lambda pos=pos, v=v: AF.hvp(_LJ, pos, v)[1],
                "peer:func jvp(grad)": lambda pos=pos, v=v: F.jvp(F.grad(_LJ), (pos,), (v,))[1],
                "peer:func vjp(grad)": lambda pos=pos, v=v: F.vjp(F.grad(_LJ), pos)[1](v)[0],
                "peer:double backward": lambda pos=pos, v=v: _double_backward(_LJ, pos, v),
            }
            for b in backends():
                methods[f"tad:{b}"] = lambda b=b, pos=pos, v=v: ta.hvp(
                    _LJ, (pos,), (v,), backend=b
                )[1][0]
            cell = run_cell(methods, ref, dtype, cfg.settings)
            cell.update(dtype=dname, size=n)
            cells.append(cell)
            cfg.log(
                f"  hvp      {dname} N={n:<5d} auto/fastest peer = "
                f"{cell.get('subject_ratio', float('nan')):.3f} (paired "
                f"{cell.get('subject_paired_ratio', float('nan')):.3f}, peer "
                f"{cell.get('fastest_peer')}) [{time.perf_counter() - t0:.1f}s]"
            )
    return {
        "kind": "grid",
        "size_label": "N",
        "target": 1.05,
        "cells": cells,
        "title": "hvp of a Lennard-Jones energy, positions (N, 3)",
    }
