"""The four timing grids: forces, Jacobians, Hessians and vmap, against the peers.

The forces and vmap grids differentiate the library's own reference model,
:func:`tad_autograd.report.lennard_jones` (the one ``python -m tad_autograd``
checks every backend on), at positions from :func:`benchmarks.problems.cluster`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Tuple

import torch

from benchmarks import problems
from benchmarks.config import DTYPES, VMAP_ATOMS, Config
from benchmarks.harness import run_cell
from benchmarks.peers import (
    batched_forces_loop,
    grad_loop,
    hessian_double_loop,
    hessian_methods,
    jacobian_methods,
    vmap_methods,
)
from tad_autograd.report import lennard_jones


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
    """Forces: jacrev of the Lennard-Jones energy of N atoms (the gradient, minus the forces)."""

    def build(n: int, dtype: torch.dtype):
        pos = cfg.put(problems.cluster(n), dtype)
        ref = grad_loop(lennard_jones, pos.double())
        return jacobian_methods(lennard_jones, pos), ref

    out = _grid(cfg, "forces", build, "N")
    out["title"] = "Scalar energy -> forces: jacrev of a Lennard-Jones energy, positions (N, 3)"
    return out


def section_jacobian(cfg: Config) -> Dict[str, Any]:
    """Jacobian of tanh(W x), W (n, n), against the peers."""

    def build(n: int, dtype: torch.dtype):
        w, x = problems.tanh_layer(n)
        w, x = cfg.put(w, dtype), cfg.put(x, dtype)
        ref = grad_loop(problems.make_tanh(w.double()), x.double())
        return jacobian_methods(problems.make_tanh(w), x), ref

    out = _grid(cfg, "jacobian", build, "n")
    out["title"] = "Jacobian of tanh(W x), W (n, n)"
    return out


def section_hessian(cfg: Config) -> Dict[str, Any]:
    """Hessian of a Morse pair-potential energy of N atoms, against the peers."""

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
    """vmap of Lennard-Jones forces over B structures of 16 atoms, against the peers."""

    def build(b: int, dtype: torch.dtype):
        pos = cfg.put(problems.batch_of_clusters(b, VMAP_ATOMS), dtype)
        ref = batched_forces_loop(lennard_jones, pos.double())
        return vmap_methods(lennard_jones, pos), ref

    out = _grid(cfg, "vmap", build, "B")
    out["title"] = (
        f"vmap of forces (jacrev of a Lennard-Jones energy) over B structures of {VMAP_ATOMS} atoms"
    )
    return out
