"""Writing results: JSON (everything but raw samples), a Markdown report, a PNG plot."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Dict, List, Optional

from packaging.version import Version

from benchmarks.harness import AUTO, PEER_PREFIX, strip_samples

GRID_ORDER = ("forces", "jacobian", "hessian", "vmap")
SECTION_ORDER = GRID_ORDER + ("dispatch", "autograd", "fallback", "import", "memory")
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


def _mark(rec: Dict[str, Any]) -> str:
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


def _is_cuda(sec: Dict[str, Any]) -> bool:
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


def load(path: str) -> Dict[str, Any]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"sections": {}}


def save_json(path: str, data: Dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(strip_samples(data), fh, indent=1, sort_keys=False)
        fh.write("\n")


# --------------------------------------------------------------------------- summary of §8


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


def summary_lines(data: Dict[str, Any]) -> List[str]:
    S = data["sections"]
    out = [f"## CONTRACT §8 summary — {' / '.join(section_devices(data)) or 'cpu'}", ""]
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
        what = "peak CUDA memory" if _is_cuda(mem) else "peak memory"
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


# --------------------------------------------------------------------------- sections


def grid_lines(name: str, sec: Dict[str, Any]) -> List[str]:
    methods: List[str] = []
    for c in sec["cells"]:
        for m in c["methods"]:
            if m not in methods:
                methods.append(m)
    head = ["dtype", sec["size_label"]] + methods + ["fastest peer", "auto / peer", "paired"]
    if name == "autograd":
        head = ["dtype", sec["size_label"]] + methods + ["autograd / functional", "paired"]
    out = [
        f"## {name}: {sec['title']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    notes = []
    for c in sec["cells"]:
        row = [c["dtype"], str(c["size"])]
        for m in methods:
            rec = c["methods"].get(m)
            row.append("—" if rec is None else _mark(rec))
            if rec is not None and rec["status"] != "ok":
                notes.append(
                    f"- {c['dtype']} {sec['size_label']}={c['size']} `{m}`: {rec.get('error')}"
                )
        if name != "autograd":
            row.append(str(c.get("fastest_peer", "—")).replace(PEER_PREFIX, ""))
        r = c.get("subject_ratio")
        row.append(
            fmt_ratio(r) + (" ⚠" if r is not None and r > sec.get("target", AUTO_TARGET) else "")
        )
        row.append(fmt_ratio(c.get("subject_paired_ratio")))
        out.append("| " + " | ".join(row) + " |")
    return out + [""] + (["Problems:", ""] + notes + [""] if notes else [])


def pairs_lines(name: str, sec: Dict[str, Any]) -> List[str]:
    out = [f"## {name}: {sec['title']}", ""]
    for g in sec["groups"]:
        label = g.get("transform") or f"n={g.get('size')}"
        out += [
            f"### {label}",
            "",
            "| method | median | IQR | rounds × calls | status |",
            "|---|---|---|---|---|",
        ]
        for m, rec in g["methods"].items():
            iqr = (
                f"{fmt_time(rec.get('q1_s'))} – {fmt_time(rec.get('q3_s'))}"
                if "q1_s" in rec
                else "—"
            )
            rc = f"{rec.get('rounds', 0)} × {rec.get('inner', 0)}"
            out.append(
                f"| {m} | {fmt_time(rec.get('median_s'))} | {iqr} | {rc} | {rec['status']} |"
            )
        out += ["", "| ratio | median/median | paired | target |", "|---|---|---|---|"]
        for p in g["ratios"]:
            out.append(
                f"| {p['label']} | {fmt_ratio(p['ratio'])} | {fmt_ratio(p['paired_ratio'])} | ≤ "
                f"{sec['target']}x |"
            )
        if "fallback_warnings" in g:
            out += [
                "",
                "BackendFallbackWarnings over the first three calls: "
                f"{len(g['fallback_warnings'])} "
                "(expected exactly 1).",
            ]
        out.append("")
    return out


def import_lines(sec: Dict[str, Any]) -> List[str]:
    return [
        f"## import: {sec['title']}",
        "",
        f"- `import torch` alone: median {sec['import_torch_ms']:.0f} ms ({sec['repeats']} fresh "
        "interpreters)",
        "- `import tad_autograd` right after `import torch`, timed in the same interpreter: "
        "median "
        f"**{sec['added_by_tad_ms']:.1f} ms** (all: "
        f"{', '.join(f'{t:.1f}' for t in sec['added_by_tad_ms_all'])})",
        f"- difference of the medians of whole imports (noisier): {sec['delta_of_medians_ms']:.0f} "
        "ms; "
        f"process wall times {sec['process_wall_torch_ms']:.0f} ms vs "
        f"{sec['process_wall_tad_ms']:.0f} ms",
        "- heavy modules imported by tad_autograd beyond torch's own: "
        f"{sec['heavy_modules_imported_by_tad'] or 'none'}"
        f" (torch itself imports torch.func: {sec['torch_func_imported_by_torch_itself']})",
        "- other top-level modules tad_autograd imports: "
        f"{', '.join(sec['other_top_level_modules_imported_by_tad']) or 'none'}",
        "- largest self times (`python -X importtime`, one run): "
        + ", ".join(
            f"{r['module']} {r['self_ms']:.1f} ms" for r in sec.get("importtime_self_ms", [])
        ),
        "",
    ]


def memory_lines(sec: Dict[str, Any]) -> List[str]:
    methods: List[str] = []
    for r in sec["rows"]:
        if r["method"] not in methods:
            methods.append(r["method"])
    cuda = _is_cuda(sec)
    unit = "CUDA peak MB" if cuda else "MB"
    head = ["chunk_size"] + [f"{m} ({unit})" for m in methods]
    what = (
        "Peak CUDA memory allocated minus the allocation after setup and warm-up"
        if cuda
        else "Peak RSS minus the RSS after setup and warm-up"
    )
    out = [
        f"## memory: {sec['title']}",
        "",
        f"{what} ({sec.get('measure', '')}); time of the "
        "call in "
        f"brackets. The Jacobian itself is {sec['result_mb']:.1f} MB.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for ch in sec["chunks"]:
        row = [str(ch)]
        for m in methods:
            r = next((r for r in sec["rows"] if r["method"] == m and r["chunk_size"] == ch), None)
            if r is None or r.get("delta_mb") is None:
                row.append("ERROR")
            else:
                t = fmt_time(r["time_s"]) if cuda else f"{r['time_s']:.2f} s"
                row.append(f"{r['delta_mb']:.1f} ({t})")
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        "Never rises as the chunk shrinks, and falls unless already at the floor (a backend "
        "that works one row at a time whatever the chunk): "
        + ", ".join(f"{m}: {'yes' if ok else 'NO'}" for m, ok in sec["falls_with_chunk"].items()),
        "",
    ]
    return out


def write_markdown(path: str, data: Dict[str, Any]) -> None:
    S = data["sections"]
    devices = section_devices(data)
    title = "# tad_autograd benchmarks"
    if len(devices) > 1:
        title += " — MIXED devices"
    elif devices and next(iter(devices)) != "cpu":
        title += f" on {next(iter(devices))}"
    lines = [title, ""] + device_lines(data)
    metas = {}
    for name in SECTION_ORDER:
        if name in S:
            m = S[name]["meta"]
            metas.setdefault(
                json.dumps(
                    {k: m[k] for k in m if k not in ("finished", "elapsed_s", "budget_s")},
                    sort_keys=True,
                ),
                [],
            ).append(name)
    for key, names in metas.items():
        m = json.loads(key)
        lines.append(
            f"- sections {', '.join(names)}: device **{device_label(m)}**, mode `{m['mode']}`, "
            f"torch {m['torch']}{', CUDA ' + m['cuda'] if m.get('cuda') else ''}, Python "
            f"{m['python']}, "
            f"{m['threads']} torch thread(s), {m['cpus']} CPUs, backends "
            f"{', '.join(m['backends'])}, "
            f"command `{m['command']}`, clock {m.get('clock', 'wall')}, tad_autograd source "
            f"sha1 {m.get('tad_autograd_source_sha1', '?')}"
        )
    lines += [
        "",
        "Times are medians over interleaved rounds (see benchmarks/README.md). Ratios are "
        "median/median; *paired* is the median of per-round ratios. ⚠ marks a ratio over its "
        "target.",
        "",
    ]
    lines += summary_lines(data)
    for name in SECTION_ORDER:
        sec = S.get(name)
        if not sec:
            continue
        if sec["kind"] == "grid":
            lines += grid_lines(name, sec)
        elif sec["kind"] == "pairs":
            lines += pairs_lines(name, sec)
        elif sec["kind"] == "import":
            lines += import_lines(sec)
        elif sec["kind"] == "memory":
            lines += memory_lines(sec)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


# --------------------------------------------------------------------------- plot


def write_plot(path: str, data: Dict[str, Any]) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    S = data["sections"]
    grids = [n for n in GRID_ORDER if n in S]
    if not grids:
        return None
    dtypes = sorted({c["dtype"] for n in grids for c in S[n]["cells"]}, reverse=True)
    rows = len(dtypes) + 1
    fig, axes = plt.subplots(
        rows, len(grids), figsize=(4.6 * len(grids), 3.6 * rows), squeeze=False
    )
    colours: Dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for col, name in enumerate(grids):
        sec = S[name]
        methods: List[str] = []
        for c in sec["cells"]:
            methods += [m for m in c["methods"] if m not in methods]
        for row, dt in enumerate(dtypes):
            ax = axes[row][col]
            cells = [c for c in sec["cells"] if c["dtype"] == dt]
            for m in methods:
                colours.setdefault(m, cmap(len(colours) % 10))
                pts = [
                    (c["size"], c["methods"][m]["median_s"])
                    for c in cells
                    if m in c["methods"] and "median_s" in c["methods"][m]
                ]
                if not pts:
                    continue
                style = "--" if m.startswith(PEER_PREFIX) else "-"
                lw = 2.6 if m == AUTO else 1.3
                ax.plot(*zip(*pts), style, marker="o", ms=3, lw=lw, color=colours[m], label=m)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{name} ({dt})", fontsize=10)
            ax.set_xlabel(sec["size_label"])
            ax.set_ylabel("time per call [s]")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.legend(fontsize=6.5, loc="upper left")
        ax = axes[-1][col]
        for dt, marker in zip(dtypes, ("o", "s")):
            cells = [c for c in sec["cells"] if c["dtype"] == dt]
            for m in methods:
                if m.startswith(PEER_PREFIX):
                    continue
                pts = [
                    (c["size"], c["methods"][m]["ratio_to_fastest_peer"])
                    for c in cells
                    if m in c["methods"] and "ratio_to_fastest_peer" in c["methods"][m]
                ]
                if pts:
                    ax.plot(
                        *zip(*pts),
                        "-",
                        marker=marker,
                        ms=3,
                        lw=2.6 if m == AUTO else 1.1,
                        color=colours[m],
                        label=f"{m} {dt}",
                    )
        ax.axhline(AUTO_TARGET, color="k", ls=":", lw=1)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name}: tad / fastest correct peer", fontsize=10)
        ax.set_xlabel(sec["size_label"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(
        "tad_autograd vs peers (solid: tad_autograd, thick: automatic; dashed: peers), on "
        + " / ".join(section_devices({"sections": {n: S[n] for n in grids}})),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
