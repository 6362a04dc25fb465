"""The fixed Python cost of a pre-built automatic call.

The function is ``f(x) = (x * x).sum()`` of a 2-element float64 tensor, so
the derivative itself costs next to nothing and what remains is the
library's own work per call.  Three methods are timed interleaved:

* ``ta.jacrev(f)`` built once, called on ``x`` (the automatic choice);
* a bare ``torch.autograd.grad`` of the same function (``x`` detached and
  marked ``requires_grad``, then one ``grad`` call): what the library costs
  on top of;
* the very same bare ``grad``, as a second method (an A/A control): its
  difference from the first, in µs and as a paired ratio, is the noise floor
  the fixed cost is read against.

The fixed cost is the median of the per-round differences (automatic minus
bare) and, for reference, the difference of the two medians.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Sequence

import torch

import tad_autograd as ta
from benchmarks.config import Config, special_settings
from benchmarks.harness import check, paired_ratio, time_interleaved

FIXED_TARGET_US = 15.0
AUTO_CALL = "tad jacrev (automatic), pre-built"
BARE = "bare torch.autograd.grad"
BARE_AA = "bare torch.autograd.grad (A/A copy)"


def _square_sum(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum()


def _bare_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], Any]:
    def call() -> torch.Tensor:
        xr = x.detach().requires_grad_(True)
        return torch.autograd.grad(f(xr), xr)[0]

    return call


def _paired_diff_us(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(x - y for x, y in zip(a, b)) * 1e6


def section_fixed(cfg: Config) -> Dict[str, Any]:
    """Fixed cost of a pre-built automatic jacrev of (x * x).sum(), 2 elements, minus bare grad."""
    x = cfg.put(torch.tensor([0.5, -1.5], dtype=torch.float64))
    jac = ta.jacrev(_square_sum)
    methods = {
        AUTO_CALL: lambda: jac(x),
        BARE: _bare_grad(_square_sum, x),
        BARE_AA: _bare_grad(_square_sum, x),
    }
    s = special_settings(cfg, 3.0 if cfg.quick else 10.0)
    results = check(methods, 2 * x, torch.float64, s.sync)
    ok = {n: fn for n, fn in methods.items() if results[n]["status"] != "error"}
    for n, t in time_interleaved(ok, s).items():
        results[n].update(t)
    out: Dict[str, Any] = {
        "kind": "fixed",
        "title": (
            "Fixed cost of a pre-built automatic call: jacrev of (x * x).sum() on a 2-element "
            "float64 tensor, minus a bare torch.autograd.grad of the same function"
        ),
        "target_us": FIXED_TARGET_US,
        "methods": results,
    }
    if not all("samples" in results[n] for n in methods):
        failed: List[str] = [n for n in methods if "samples" not in results[n]]
        out["error"] = f"not timed: {failed}"
        cfg.log(f"  fixed: {out['error']}")
        return out
    a, b, c = (results[n]["samples"] for n in (AUTO_CALL, BARE, BARE_AA))
    out.update(
        auto_us=results[AUTO_CALL]["median_s"] * 1e6,
        bare_us=results[BARE]["median_s"] * 1e6,
        fixed_us=_paired_diff_us(a, b),
        fixed_of_medians_us=(results[AUTO_CALL]["median_s"] - results[BARE]["median_s"]) * 1e6,
        paired_ratio=paired_ratio(a, b),
        noise_us=_paired_diff_us(c, b),
        noise_paired_ratio=paired_ratio(c, b),
        rounds=len(a),
    )
    cfg.log(
        f"  fixed: automatic {out['auto_us']:.1f} µs, bare grad {out['bare_us']:.1f} µs; fixed "
        f"cost {out['fixed_us']:.1f} µs (median of paired differences; difference of medians "
        f"{out['fixed_of_medians_us']:.1f} µs), paired ratio {out['paired_ratio']:.3f}; "
        f"noise floor (A/A) {out['noise_us']:+.1f} µs, paired ratio "
        f"{out['noise_paired_ratio']:.3f}; {out['rounds']} rounds"
    )
    return out
