"""Ratios measured side by side: dispatch overhead, the autograd backend, fallback."""

from __future__ import annotations

import warnings
from typing import Any, Dict

import torch
import torch.autograd.functional as AF

import tad_autograd as ta
from benchmarks import problems
from benchmarks.config import DTYPES, Config, ratio_rows, special_settings
from benchmarks.harness import check, run_cell, time_interleaved
from benchmarks.peers import grad_loop


def section_dispatch(cfg: Config) -> Dict[str, Any]:
    """tad_autograd(backend="func") vs torch.func at n=2, built per call and pre-built."""
    w, x = problems.tanh_layer(2)
    xb = cfg.put(torch.stack([x, 2 * x]))  # a batch of 2 vectors of size 2
    w, x = cfg.put(w), cfg.put(x)
    f = problems.make_tanh(w)
    s = special_settings(cfg, 3.0 if cfg.quick else 10.0)
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
        pairs = ratio_rows(
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
    s = special_settings(cfg, 2.0 if cfg.quick else 5.0)
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
        pairs = ratio_rows(
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
