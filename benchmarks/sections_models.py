"""The ``models`` section: derivative operators on real-model energies.

Models (:mod:`benchmarks.problems_models`): the self-consistent tight-binding
energy with either custom eigensolver (an explicit ``vmap`` rule, or
``generate_vmap_rule = True``), tad-dftd3's dispersion energy (when
``tad_dftd3`` is importable: ``pip install -e ".[docs]"``) and an MLP
potential.  Operators: forces (``grad``), ``hessian``, ``vmap(hessian)`` over
a batch of 4 geometries, the third derivative with respect to the field
(``jacrev(jacrev(jacrev))``; dispersion has no field) and ``hvp``.  Every
cell has the same method names: ``tad:<backend>`` for every available
backend, ``tad:auto``, ``peer:torch.func``, ``peer:functional``
(:mod:`torch.autograd.functional`) and ``peer:grad loop`` (hand loops of
:func:`torch.autograd.grad`, also the cell's reference, computed first).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.autograd.functional as AF

import tad_autograd as ta
from benchmarks import problems_models as pm
from benchmarks.config import Config, backends
from benchmarks.harness import AUTO, run_cell
from benchmarks.peers import grad_loop, hessian_double_loop

Energy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Cell = Tuple[str, Dict[str, Callable[[], Any]], torch.Tensor]
BATCH = 4
OPERATORS = ("forces", "hessian", "vmap(hessian)", "d3E/dfield3", "hvp")


def dispersion() -> Any:
    """tad-dftd3's D3(BJ) energy ``E(positions, field)`` (the field unused), or None without it."""
    try:
        import tad_dftd3
    except ImportError:
        return None
    param = {k: torch.tensor(v, dtype=torch.float64) for k, v in pm.D3_PARAM.items()}

    def energy(pos: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        numbers = pm.numbers(pos.shape[-2]).to(pos.device)
        p = {k: v.to(pos) for k, v in param.items()}
        return tad_dftd3.dftd3(numbers, pos * pm.BOHR_PER_ANGSTROM, p).sum()

    return energy


def models(n_atoms: int) -> Dict[str, Tuple[Energy, bool, int]]:
    """Model name -> (energy, whether it depends on the field, number of atoms).

    The dispersion energy has half the atoms (at least 4): its hand-looped
    Hessian takes about 70 ms per row at 8 atoms.
    """
    out: Dict[str, Tuple[Energy, bool, int]] = {
        "tight binding, eigh with vmap rule": (pm.tight_binding(pm.EighVmapRule), True, n_atoms),
        "tight binding, eigh with generated vmap": (
            pm.tight_binding(pm.EighGeneratedVmap),
            True,
            n_atoms,
        ),
    }
    d3 = dispersion()
    if d3 is not None:
        out["tad-dftd3 dispersion"] = (d3, False, max(4, n_atoms // 2))
    out["MLP potential"] = (pm.mlp_potential(), True, n_atoms)
    return out


def nested_grad_loop(g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, order: int):
    """The ``order``-th derivative of a scalar by nested loops of ``autograd.grad``."""
    xr = x.detach().requires_grad_(True)
    layer = [g(xr)]
    for k in range(order):
        deeper = []
        for y in layer:
            if y.requires_grad:
                (d,) = torch.autograd.grad(
                    y, xr, retain_graph=True, create_graph=k < order - 1, allow_unused=True
                )
            else:  # a constant derivative: the next one is zero
                d = None
            deeper.extend((torch.zeros_like(xr) if d is None else d).reshape(-1))
        layer = deeper
    return torch.stack([d.detach() for d in layer]).reshape(x.shape * order)


def _double_backward(f: Callable, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    xr = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xr), xr, create_graph=True)
    return torch.autograd.grad(g, xr, v)[0]


def _functional_d3(g: Callable, x: torch.Tensor) -> torch.Tensor:
    def d1(y: torch.Tensor) -> torch.Tensor:
        return AF.jacobian(g, y, create_graph=True)

    def d2(y: torch.Tensor) -> torch.Tensor:
        return AF.jacobian(d1, y, create_graph=True)

    return AF.jacobian(d2, x)


def operator_methods(
    op: str, energy: Energy, pos: torch.Tensor, field: torch.Tensor, batch: torch.Tensor
) -> Tuple[Dict[str, Callable[[], Any]], Callable[[], torch.Tensor]]:
    """The methods of one cell, and the hand loop computing its reference."""
    F = torch.func  # not at import: torch 1.13 has no torch.func

    def f(p: torch.Tensor) -> torch.Tensor:
        return energy(p, field)

    def e_of_field(x: torch.Tensor) -> torch.Tensor:
        return energy(pos, x)

    v = torch.linspace(-1.0, 1.0, pos.numel(), dtype=pos.dtype, device=pos.device).reshape(
        pos.shape
    )

    def bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        return lambda: fn(*args)

    build: Callable[[Any], Callable[[], Any]]
    if op == "forces":
        build = lambda b: bind(ta.grad(f, backend=b), pos)  # noqa: E731
        peer_func, peer_af = bind(F.grad(f), pos), bind(AF.jacobian, f, pos)
        loop = bind(grad_loop, f, pos)
    elif op == "hessian":
        build = lambda b: bind(ta.hessian(f, backend=b), pos)  # noqa: E731
        peer_func = bind(F.hessian(f), pos)
        peer_af = lambda: AF.hessian(f, pos, vectorize=True)  # noqa: E731
        loop = bind(hessian_double_loop, f, pos)
    elif op == "vmap(hessian)":
        build = lambda b: bind(ta.vmap(ta.hessian(f), backend=b), batch)  # noqa: E731
        peer_func = bind(F.vmap(F.hessian(f)), batch)
        peer_af = lambda: torch.stack([AF.hessian(f, p, vectorize=True) for p in batch])  # noqa: E731
        loop = lambda: torch.stack([hessian_double_loop(f, p) for p in batch])  # noqa: E731
    elif op == "d3E/dfield3":
        g = e_of_field
        build = lambda b: bind(  # noqa: E731
            ta.jacrev(ta.jacrev(ta.jacrev(g, backend=b), backend=b), backend=b), field
        )
        peer_func = bind(F.jacrev(F.jacrev(F.jacrev(g))), field)
        peer_af = bind(_functional_d3, g, field)
        loop = bind(nested_grad_loop, g, field, 3)
    elif op == "hvp":
        build = lambda b: lambda: ta.hvp(f, (pos,), (v,), backend=b)[1][0]  # noqa: E731
        peer_func = lambda: F.jvp(F.grad(f), (pos,), (v,))[1]  # noqa: E731
        peer_af = lambda: AF.hvp(f, pos, v)[1]  # noqa: E731
        loop = bind(_double_backward, f, pos, v)
    else:
        raise ValueError(f"unknown operator {op!r}; choose from {OPERATORS}")
    methods: Dict[str, Callable[[], Any]] = {}
    for b in backends():
        methods[f"tad:{b}"] = build(b)
    methods[AUTO] = build(None)
    methods["peer:torch.func"] = peer_func
    methods["peer:functional"] = peer_af
    methods["peer:grad loop"] = loop
    return methods, loop


def model_cells(cfg: Config, n_atoms: int) -> List[Cell]:
    """(label, methods, reference) of every model and operator, reference by the hand loop."""
    field = pm.field().to(cfg.device)
    cells = []
    for name, (energy, has_field, n) in models(n_atoms).items():
        pos = pm.geometry(n).to(cfg.device)
        batch = torch.stack([pm.geometry(n, seed=s) for s in range(BATCH)]).to(cfg.device)
        for op in OPERATORS:
            if op == "d3E/dfield3" and not has_field:
                continue
            methods, loop = operator_methods(op, energy, pos, field, batch)
            cells.append((f"{name} (N={n}): {op}", methods, loop().detach()))
    return cells


def section_models(cfg: Config) -> Dict[str, Any]:
    """Forces, Hessians, vmap(hessian), field derivatives, hvp of real-model energies (float64)."""
    n_atoms = 8 if cfg.quick else 12
    cells = []
    for label, methods, ref in model_cells(cfg, n_atoms):
        t0 = time.perf_counter()
        cell = run_cell(methods, ref, torch.float64, cfg.settings)
        cell.update(dtype="float64", size=label)
        cells.append(cell)
        bad = [n for n, r in cell["methods"].items() if r["status"] != "ok"]
        cfg.log(
            f"  {label:55s} auto/fastest peer = {cell.get('subject_ratio', float('nan')):.3f} "
            f"(paired {cell.get('subject_paired_ratio', float('nan')):.3f}, peer "
            f"{cell.get('fastest_peer')}){' not ok: ' + ', '.join(bad) if bad else ''} "
            f"[{time.perf_counter() - t0:.1f}s]"
        )
    return {
        "kind": "grid",
        "size_label": "model: operator",
        "target": 1.05,
        "cells": cells,
        "title": f"Real-model energies of {n_atoms} atoms (batch of {BATCH} for vmap), float64",
    }
