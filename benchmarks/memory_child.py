"""One memory measurement, run in a fresh interpreter by the ``memory`` section.

Sets up W (n, n) and x, warms the chosen method up on a tiny problem (so lazy
imports and one-time allocations are not counted), records ``ru_maxrss`` as
the baseline, computes the Jacobian once and prints the peak minus the
baseline as JSON.  ``ru_maxrss`` is a high-water mark, which is why each
configuration needs its own process.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

import tad_autograd as ta
from benchmarks import problems


def build(method: str, chunk):
    if method.startswith("tad:"):
        backend = method[4:]
        return lambda f: ta.jacrev(f, backend=backend, chunk_size=chunk)
    if method == "peer:func.jacrev":
        return lambda f: torch.func.jacrev(f, chunk_size=chunk)
    raise SystemExit(f"unknown method {method}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", required=True)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--chunk", default="none")
    a = p.parse_args()
    chunk = None if a.chunk == "none" else int(a.chunk)
    torch.set_num_threads(1)
    make = build(a.method, chunk)
    w_small, x_small = problems.tanh_layer(8)
    make(problems.make_tanh(w_small))(x_small)  # warm-up: lazy imports, allocator
    # built in place: no transient copy may raise the high-water mark before the baseline
    g = torch.Generator().manual_seed(0)
    w = torch.empty(a.n, a.n, dtype=torch.float64).normal_(generator=g).div_(a.n ** 0.5)
    x = torch.empty(a.n, dtype=torch.float64).normal_(generator=g)
    f = problems.make_tanh(w)
    jac = make(f)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = jac(x)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_mb": base / 1024, "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024,
                      "time_s": elapsed, "shape": list(out.shape), "checksum": float(out.sum())}))


if __name__ == "__main__":
    main()
