"""The performance targets summary at the top of the benchmark report."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

from packaging.version import Version

from benchmarks.report_format import (
    AUTO_TARGET,
    GRID_ORDER,
    fmt_ratio,
    is_cuda,
    section_devices,
)


def auto_cells_over(data: Dict[str, Any], limit: float = AUTO_TARGET) -> List[Dict[str, Any]]:
    rows = []
    for name in GRID_ORDER:
        sec = data["sections"].get(name)
        if not sec:
            continue
        for cell in sec["cells"]:
            r = cell.get("subject_ratio")
            if r is not None and (r > limit or not cell.get("subject_ok", True)):
                rows.append(
                    {
                        "section": name,
                        "dtype": cell["dtype"],
                        "size_label": sec["size_label"],
                        "size": cell["size"],
                        "ratio": r,
                        "paired": cell.get("subject_paired_ratio"),
                        "peer": cell.get("fastest_peer"),
                        "ok": cell.get("subject_ok", True),
                    }
                )
    return rows


def noise_floor(data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """An A/A control: ``tad:func`` / ``tad:functorch`` per grid cell, where both are the same.

    On torch >= 2.0 both backends call the same :mod:`torch.func` functions,
    so their ratio shows how far two identical methods drift apart in one
    cell; ``None`` on older torch or without both backends.
    """
    ratios = []
    for name in GRID_ORDER:
        sec = data["sections"].get(name)
        if not sec or Version(sec["meta"].get("torch", "0")).major < 2:
            continue
        for cell in sec["cells"]:
            a = cell["methods"].get("tad:func", {}).get("median_s")
            b = cell["methods"].get("tad:functorch", {}).get("median_s")
            if a and b:
                ratios.append(a / b)
    if not ratios:
        return None
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "cells": len(ratios),
    }


def fixed_summary_lines(sec: Optional[Dict[str, Any]]) -> List[str]:
    """The §8 row of the fixed cost of a pre-built automatic call, with its A/A noise floor."""
    if not sec:
        return []
    if "fixed_us" not in sec:
        return [f"| fixed cost of a pre-built automatic call | — ⚠ ({sec.get('error')}) | | |"]
    flag = "" if sec["fixed_us"] <= sec["target_us"] else " ⚠"
    return [
        "| fixed cost of a pre-built automatic call: jacrev of (x * x).sum(), 2 elements, minus "
        f"a bare autograd.grad (median of paired differences) | {sec['fixed_us']:.1f} µs{flag} "
        f"| paired ratio {fmt_ratio(sec['paired_ratio'])}; A/A noise floor "
        f"{sec['noise_us']:+.1f} µs, {fmt_ratio(sec['noise_paired_ratio'])} | "
        f"≤ {sec['target_us']:.0f} µs |"
    ]


def sparse_summary_lines(sec: Optional[Dict[str, Any]]) -> List[str]:
    """The §8 rows of the sparse section: speed-up over dense at n = 2000 (target >= 20x)."""
    if not sec:
        return []
    out = []
    for c in sec["cells"]:
        if c["n"] == 2000 and c.get("speedup") is not None:
            flag = "" if c["speedup"] >= 20 else " ⚠"
            out.append(
                f"| sparse / dense: {c['problem']}, n = 2000, {c['colours']} colours | "
                f"{fmt_ratio(c['speedup'])} faster{flag} | "
                f"{fmt_ratio(c.get('paired_speedup'))} faster | ≥ 20x |"
            )
    return out


def summary_lines(data: Dict[str, Any]) -> List[str]:
    S = data["sections"]
    out = [f"## Performance targets summary — {' / '.join(section_devices(data)) or 'cpu'}", ""]
    out += ["| measurement | ratio (median/median) | paired ratio | target |", "|---|---|---|---|"]
    for key in ("dispatch", "fallback"):
        sec = S.get(key)
        if not sec:
            continue
        for g in sec["groups"]:
            for p in g["ratios"]:
                flag = "" if p["ratio"] is not None and p["ratio"] <= sec["target"] else " ⚠"
                out.append(
                    f"| {key}: {p['label']} | {fmt_ratio(p['ratio'])}{flag} | "
                    f"{fmt_ratio(p['paired_ratio'])} | ≤ {sec['target']}x |"
                )
    sec = S.get("autograd")
    if sec:
        for c in sec["cells"]:
            r = c.get("subject_ratio")
            flag = "" if r is not None and r <= sec["target"] else " ⚠"
            out.append(
                f"| autograd backend / functional.jacobian(vectorize=False), {c['dtype']} "
                f"n={c['size']} | "
                f"{fmt_ratio(r)}{flag} | {fmt_ratio(c.get('subject_paired_ratio'))} | ≤ "
                f"{sec['target']}x |"
            )
    grid_cells = [
        c for n in GRID_ORDER if n in S for c in S[n]["cells"] if c.get("subject_ratio") is not None
    ]
    if grid_cells:
        worst = max(c["subject_ratio"] for c in grid_cells)
        over = auto_cells_over(data)
        out.append(
            f"| automatic / fastest correct peer, {len(grid_cells)} grid cells | worst "
            f"{fmt_ratio(worst)}"
            f"{' ⚠' if over else ''} | {len(over)} cells over {AUTO_TARGET}x | ≤ {AUTO_TARGET}x |"
        )
    out += fixed_summary_lines(S.get("fixed"))
    out += sparse_summary_lines(S.get("sparse"))
    imp = S.get("import")
    if imp:
        flag = "" if imp["added_by_tad_ms"] < imp["target_ms"] else " ⚠"
        out.append(
            f"| import tad_autograd after import torch (median, in-process) | "
            f"{imp['added_by_tad_ms']:.1f} ms{flag} | delta of medians "
            f"{imp['delta_of_medians_ms']:.0f} ms | "
            f"< {imp['target_ms']:.0f} ms |"
        )
    noise = noise_floor(data)
    if noise:
        out.append(
            "| noise floor: tad:func / tad:functorch over the grid (the very same torch "
            f"functions on torch >= 2.0) | median {fmt_ratio(noise['median'])}, range "
            f"{fmt_ratio(noise['min'])}-{fmt_ratio(noise['max'])} | {noise['cells']} cells | "
            "(1.0x) |"
        )
    mem = S.get("memory")
    if mem:
        bad = [m for m, ok in mem["falls_with_chunk"].items() if not ok]
        what = "peak CUDA memory" if is_cuda(mem) else "peak memory"
        out.append(
            f"| {what} never rises as chunk_size shrinks (falls unless at the floor) | "
            f"{'yes' if not bad else 'no for ' + ', '.join(bad)} "
            f"| | all backends |"
        )
    over = auto_cells_over(data)
    if over:
        out += [
            "",
            f"Grid cells where the automatic choice is over {AUTO_TARGET}x the fastest correct "
            "peer "
            "(or not correct):",
            "",
            "| section | dtype | size | auto / fastest peer | paired | fastest peer |",
            "|---|---|---|---|---|---|",
        ]
        for r in over:
            out.append(
                f"| {r['section']} | {r['dtype']} | {r['size_label']}={r['size']} | "
                f"{fmt_ratio(r['ratio'])}"
                f"{'' if r['ok'] else ' (INCORRECT)'} | {fmt_ratio(r['paired'])} | {r['peer']} |"
            )
    return out + [""]
