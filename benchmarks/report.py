"""Writing results: JSON (everything but raw samples), a Markdown report, a PNG plot.

The report's parts live in :mod:`benchmarks.report_format` (order, targets,
formats, devices), :mod:`benchmarks.report_summary` (the §8 summary),
:mod:`benchmarks.report_tables` (one table per section) and
:mod:`benchmarks.plot` (the figure).
"""

from __future__ import annotations

import json
from typing import Any, Dict

from benchmarks.harness import strip_samples
from benchmarks.plot import write_plot
from benchmarks.plot_sparse import write_sparse_plot
from benchmarks.report_format import SECTION_ORDER, device_label, device_lines, section_devices
from benchmarks.report_summary import summary_lines
from benchmarks.report_tables import (
    fixed_lines,
    grid_lines,
    import_lines,
    memory_lines,
    pairs_lines,
)
from benchmarks.sections_compile import compile_lines
from benchmarks.sections_sparse import sparse_lines

__all__ = [
    "device_label",
    "load",
    "save_json",
    "write_markdown",
    "write_plot",
    "write_sparse_plot",
]


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
        elif sec["kind"] == "fixed":
            lines += fixed_lines(sec)
        elif sec["kind"] == "import":
            lines += import_lines(sec)
        elif sec["kind"] == "memory":
            lines += memory_lines(sec)
        elif sec["kind"] == "sparse":
            lines += sparse_lines(sec)
        elif sec["kind"] == "compile":
            lines += compile_lines(sec)
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
