"""Comparisons of the OpInfo sweep: results against references, and finite differences.

Results are tensors or (nested) tuples of tensors, as the ops return them.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

FD_EPS = 1e-6  # the step of central finite differences


def flat_leaves(tree: Any) -> Tuple[List[Any], Any]:
    if isinstance(tree, (tuple, list)):
        leaves: List[Any] = []
        specs = []
        for t in tree:
            sub, spec = flat_leaves(t)
            leaves.extend(sub)
            specs.append(spec)
        return leaves, (type(tree).__name__, tuple(specs))
    return [tree], "tensor" if isinstance(tree, torch.Tensor) else type(tree).__name__


def stack(trees: List[Any]) -> Any:
    if isinstance(trees[0], torch.Tensor):
        return torch.stack(trees)
    return tuple(torch.stack(parts) for parts in zip(*trees))


def difference(
    result: Any, reference: Any, rtol: float, atol: float
) -> Tuple[Optional[str], float]:
    """``(None, d)`` when ``result`` is close to ``reference``, else ``(what differs, d)``."""
    got, got_spec = flat_leaves(result)
    want, want_spec = flat_leaves(reference)
    if got_spec != want_spec:
        return f"structure {got_spec} != reference {want_spec}", float("inf")
    worst, problem = 0.0, None
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape or g.dtype != w.dtype:
            return (
                f"leaf {i}: {g.dtype}{tuple(g.shape)} != reference {w.dtype}{tuple(w.shape)}",
                float("inf"),
            )
        if g.layout != w.layout:
            return f"leaf {i}: layout {g.layout} != reference {w.layout}", float("inf")
        g, w = g.detach(), w.detach()
        if g.layout != torch.strided:
            g, w = g.to_dense(), w.to_dense()
        if not torch.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
            diff = (g - w).abs().nan_to_num(nan=float("inf")).max().item()
            worst = max(worst, diff)
            problem = f"leaf {i}: values differ (max abs diff {worst:.3g})"
    return problem, worst


def nonfinite(result: Any, reference: Any) -> bool:
    """Whether ``result`` has NaN or infinite entries where ``reference`` is finite."""
    got, want = flat_leaves(result)[0], flat_leaves(reference)[0]
    return any(
        isinstance(g, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and g.shape == w.shape
        and bool((~torch.isfinite(g.detach()) & torch.isfinite(w.detach())).any())
        for g, w in zip(got, want)
    )


def numerical_jacobian(f: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
    """Central finite differences in the structure of ``f``'s output."""
    single = isinstance(f(x.clone()), torch.Tensor)
    flat = x.detach().reshape(-1)
    columns: List[List[torch.Tensor]] = []
    with torch.no_grad():
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += FD_EPS
            minus[i] -= FD_EPS
            hi, lo = f(plus.reshape(x.shape)), f(minus.reshape(x.shape))
            hi, lo = ((hi,), (lo,)) if single else (hi, lo)
            columns.append([(h - w) / (2 * FD_EPS) for h, w in zip(hi, lo)])
    jac = tuple(
        torch.stack([c[k].reshape(-1) for c in columns], dim=-1).reshape(
            columns[0][k].shape + x.shape
        )
        for k in range(len(columns[0]))
    )
    return jac[0] if single else jac
