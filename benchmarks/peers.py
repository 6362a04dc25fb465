"""The hand-written peers and the method sets of the timing grids.

A method set maps names to zero-argument callables computing the same
quantity: ``tad:<backend>`` for every available backend, ``tad:auto`` (the
automatic choice, the subject of the §8 ratios) and ``peer:*``, what a user
would write without tad_autograd.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch
import torch.autograd.functional as AF

import tad_autograd as ta
from benchmarks.config import backends
from benchmarks.harness import AUTO

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
