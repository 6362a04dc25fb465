"""One Markdown table (or list) per section of the benchmark report."""

from __future__ import annotations

from typing import Any, Dict, List

from benchmarks.harness import PEER_PREFIX
from benchmarks.report_format import AUTO_TARGET, fmt_ratio, fmt_time, is_cuda, mark


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
            row.append("—" if rec is None else mark(rec))
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


def fixed_lines(sec: Dict[str, Any]) -> List[str]:
    out = [
        f"## fixed: {sec['title']}",
        "",
        "| method | median | IQR | rounds × calls | status |",
        "|---|---|---|---|---|",
    ]
    for m, rec in sec["methods"].items():
        iqr = f"{fmt_time(rec.get('q1_s'))} – {fmt_time(rec.get('q3_s'))}" if "q1_s" in rec else "—"
        rc = f"{rec.get('rounds', 0)} × {rec.get('inner', 0)}"
        out.append(f"| {m} | {fmt_time(rec.get('median_s'))} | {iqr} | {rc} | {rec['status']} |")
    out.append("")
    if "fixed_us" not in sec:
        return out + [f"Not measured: {sec.get('error')}.", ""]
    flag = "" if sec["fixed_us"] <= sec["target_us"] else " ⚠"
    return out + [
        f"- fixed cost (automatic minus bare `grad`, median of the per-round differences): "
        f"**{sec['fixed_us']:.1f} µs**{flag} (target ≤ {sec['target_us']:.0f} µs); difference "
        f"of the medians {sec['fixed_of_medians_us']:.1f} µs",
        f"- paired ratio automatic / bare `grad`: {fmt_ratio(sec['paired_ratio'])}",
        f"- noise floor, the same bare `grad` timed twice (A/A): {sec['noise_us']:+.1f} µs, "
        f"paired ratio {fmt_ratio(sec['noise_paired_ratio'])}",
        "",
    ]


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
    cuda = is_cuda(sec)
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
