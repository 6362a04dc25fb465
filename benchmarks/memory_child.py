"""Memory measurements, run in a fresh interpreter by the ``memory`` section.

Sets up f(x) = A tanh(B x), A (n, H) and B (H, n) with a wide hidden layer
H = ``hidden`` (default 32 n), in place (no transient copies), warms the chosen
method up on a tiny problem (so lazy imports and one-time allocations are not
counted), records the baseline, computes the Jacobian once and prints the
peak minus the baseline as JSON, one line per chunk size.

Two peak measures are recorded:

* ``ru_maxrss`` (``resource.getrusage``): a high-water mark for the whole
  life of the process, so it is meaningful only for the first (or only)
  measurement of a process.  The ``memory`` section starts this script
  through a tiny launcher process, because Linux carries the *parent's*
  high-water mark over ``exec`` when the benchmark runner (hundreds of MB)
  spawns a child directly.
* ``VmHWM`` from ``/proc/self/status`` after resetting it by writing ``5``
  to ``/proc/self/clear_refs`` (Linux): valid for every measurement, which
  lets one process measure several chunk sizes in turn (quick mode).

With ``--device cuda`` the same CPU tensors (same generator, same order) are
moved to the GPU in place of the CPU ones, and the measure is the CUDA
caching allocator's own account instead: ``torch.cuda.reset_peak_memory_stats()``
before each chunk size, the baseline ``torch.cuda.memory_allocated()``, then
``torch.cuda.max_memory_allocated()`` after the call and a synchronisation.
These statistics count the bytes of live tensors exactly (blocks the
allocator keeps cached are not counted), are per process and can be reset,
so one process measures every chunk size and needs no launcher.  The warm-up
then runs every chunk size on the full problem: buffers created lazily on the
first use of a kernel family (cuBLAS workspaces) stay allocated for the
life of the process and so must exist before the baseline, while the
allocator's cache of freed blocks does not count.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from typing import Any, Callable, Dict, List, Optional

import torch

import tad_autograd as ta
from benchmarks import problems


def build(method: str, chunk):
    if method == "tad:auto":
        return lambda f: ta.jacrev(f, chunk_size=chunk)
    if method.startswith("tad:"):
        backend = method[4:]
        return lambda f: ta.jacrev(f, backend=backend, chunk_size=chunk)
    if method == "peer:func.jacrev":
        return lambda f: torch.func.jacrev(f, chunk_size=chunk)
    raise SystemExit(f"unknown method {method}")


def _hwm_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_cuda(
    method: str,
    chunks: List[Optional[int]],
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> None:
    """Every chunk size in this process, from the CUDA allocator's statistics on ``x.device``."""
    device = x.device
    for chunk in chunks:  # warm-up on the full problem: kernels, cuBLAS workspaces, lazy imports
        build(method, chunk)(f)(x)
    for chunk in chunks:
        jac = build(method, chunk)(f)
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        out = jac(x)
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device)
        rec: Dict[str, Any] = {
            "chunk_size": chunk,
            "time_s": elapsed,
            "shape": list(out.shape),
            "checksum": float(out.sum()),
            "device": str(device),
            "cuda_baseline_mb": base / 2**20,
            "cuda_peak_mb": peak / 2**20,
            "cuda_delta_mb": (peak - base) / 2**20,
        }
        print(json.dumps(rec), flush=True)
        del out, jac


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", required=True)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--hidden", type=int, default=0, help="H (default 32 n)")
    p.add_argument("--chunks", default="none", help="comma-separated: none,64,16,4,1")
    p.add_argument("--device", default="cpu", help="cpu (RSS measures) or cuda[:i] (CUDA stats)")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {a.device}: only cpu and cuda are measured")
    chunks = [None if c == "none" else int(c) for c in a.chunks.split(",")]
    torch.set_num_threads(1)
    hidden = a.hidden or 32 * a.n
    g = torch.Generator().manual_seed(0)
    wa = torch.empty(a.n, hidden, dtype=torch.float64).normal_(generator=g).div_(hidden**0.5)
    wb = torch.empty(hidden, a.n, dtype=torch.float64).normal_(generator=g).div_(a.n**0.5)
    x = torch.empty(a.n, dtype=torch.float64).normal_(generator=g)
    if device.type == "cuda":  # the same data, on the GPU in place of the CPU tensors
        wa, wb, x = wa.to(device), wb.to(device), x.to(device)
        _measure_cuda(a.method, chunks, problems.make_wide(wa, wb), x)
        return
    f = problems.make_wide(wa, wb)
    small_a, small_b = wa[:8, :64].contiguous(), wb[:64, :8].contiguous()
    f_small, x_small = problems.make_wide(small_a, small_b), x[:8].clone()
    for chunk in chunks:  # warm-up: lazy imports, allocator
        build(a.method, chunk)(f_small)(x_small)
    for k, chunk in enumerate(chunks):
        jac = build(a.method, chunk)(f)
        reset = _reset_hwm()
        base_rss, base_hwm = _maxrss_mb(), _hwm_mb()
        t0 = time.perf_counter()
        out = jac(x)
        elapsed = time.perf_counter() - t0
        peak_rss, peak_hwm = _maxrss_mb(), _hwm_mb()
        rec = {
            "chunk_size": chunk,
            "time_s": elapsed,
            "shape": list(out.shape),
            "checksum": float(out.sum()),
            "hwm_valid": reset and base_hwm is not None,
        }
        if k == 0:
            rec.update(
                maxrss_baseline_mb=base_rss,
                maxrss_peak_mb=peak_rss,
                maxrss_delta_mb=peak_rss - base_rss,
            )
        if rec["hwm_valid"]:
            rec.update(
                hwm_baseline_mb=base_hwm, hwm_peak_mb=peak_hwm, hwm_delta_mb=peak_hwm - base_hwm
            )
        print(json.dumps(rec), flush=True)
        del out, jac


if __name__ == "__main__":
    main()
