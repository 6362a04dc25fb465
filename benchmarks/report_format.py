"""What every part of the benchmark report shares: section order, targets, formats, devices."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

GRID_ORDER = ("forces", "jacobian", "hessian", "vmap")
SECTION_ORDER = GRID_ORDER + (
    "dispatch",
    "fixed",
    "autograd",
    "fallback",
    "import",
    "memory",
    "modes",
    "operators",
    "hvp",
    "sparse",
    "models",
    "compile",
)
AUTO_TARGET = 1.05


def fmt_time(s: Optional[float]) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r: Optional[float]) -> str:
    return "—" if r is None else f"{r:.2f}x"


def mark(rec: Dict[str, Any]) -> str:
    if rec["status"] == "error":
        return "ERROR"
    t = fmt_time(rec.get("median_s"))
    return t if rec["status"] == "ok" else f"{t} MISMATCH"


def device_label(meta: Dict[str, Any]) -> str:
    """``cpu`` or e.g. ``cuda (NVIDIA H100 80GB HBM3)``; results older than ``--device``: cpu."""
    device = meta.get("device", "cpu")
    return f"{device} ({meta['device_name']})" if meta.get("device_name") else device


def section_devices(data: Dict[str, Any]) -> Dict[str, List[str]]:
    """Device label -> the sections measured on it, in report order."""
    out: Dict[str, List[str]] = {}
    for name in SECTION_ORDER:
        sec = data["sections"].get(name)
        if sec:
            out.setdefault(device_label(sec.get("meta", {})), []).append(name)
    return out


def is_cuda(sec: Dict[str, Any]) -> bool:
    return str(sec.get("meta", {}).get("device", sec.get("device", "cpu"))).startswith("cuda")


def device_lines(data: Dict[str, Any]) -> List[str]:
    """The report's device statement: one device, or a warning that sections were mixed."""
    devices = section_devices(data)
    if len(devices) > 1:
        parts = "; ".join(f"{d}: {', '.join(names)}" for d, names in devices.items())
        return [
            f"**Devices: MIXED** ({parts}). Do not compare figures across devices.",
            "",
        ]
    device = next(iter(devices), "cpu")
    if device.startswith("cuda"):
        return [
            f"**Device: {device}.** Every problem ran on the GPU; times are wall-clock times "
            "that include the GPU work (`torch.cuda.synchronize()` before the clock is read), "
            "memory is the CUDA allocator's peak. Not comparable with the CPU results.",
            "",
        ]
    return [f"**Device: {device}.**", ""]
