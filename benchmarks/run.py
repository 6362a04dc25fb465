"""Run the tad_autograd benchmarks: ``python -m benchmarks [--quick] [--only forces,dispatch]``.

Also runnable as ``python benchmarks/run.py``.  Writes
``docs/benchmarks/results{,-quick}.{json,md,png}``; with ``--only`` the
named sections replace their previous results in those files and the others
are kept, so one section can be re-run after a change.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from typing import List, Optional

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.harness import Settings  # noqa: E402
from benchmarks.sections import REPO, SECTIONS, Config  # noqa: E402


def _source_hash() -> str:
    """sha1 of tad_autograd's Python sources: ties results to the code they measured."""
    import hashlib

    h = hashlib.sha1()
    root = os.path.join(REPO, "tad_autograd")
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), "rb") as fh:
                    h.update(name.encode() + fh.read())
    return h.hexdigest()[:12]


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer sizes, float64 only, shorter cells (< 3 min)"
    )
    p.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument(
        "--dtypes", default=None, help="float32,float64 (full default) or float64 (quick default)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timing per grid cell (default 0.25 quick, 0.8 full)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable on a shared box)",
    )
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="cpu = process CPU time (default with 1 thread: robust to other load), wall = "
        "perf_counter",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output prefix (default docs/benchmarks/results or results-quick)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="do not merge with an existing results JSON"
    )
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    a = parse(argv)
    if a.list:
        for name, fn in SECTIONS.items():
            print(f"{name:10s} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    only = [s for s in a.only.split(",") if s] or list(SECTIONS)
    skip = {s for s in a.skip.split(",") if s}
    unknown = [s for s in list(only) + list(skip) if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    chosen = [s for s in only if s not in skip]
    dtypes = tuple((a.dtypes or ("float64" if a.quick else "float32,float64")).split(","))
    budget = a.budget if a.budget is not None else (0.25 if a.quick else 0.8)
    clock = a.clock or ("cpu" if a.threads == 1 else "wall")
    settings = Settings(
        clock=clock,
        budget_s=budget,
        sample_s=0.003 if a.quick else 0.005,
        min_rounds=5 if a.quick else 7,
        slow_cap_s=3.0 if a.quick else 15.0,
    )
    torch.set_num_threads(a.threads)
    prefix = a.out or os.path.join(
        REPO, "docs", "benchmarks", "results-quick" if a.quick else "results"
    )
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    data = {"sections": {}} if a.fresh else report.load(prefix + ".json")
    data.setdefault("sections", {})
    import tad_autograd as ta

    cfg = Config(
        quick=a.quick, dtypes=dtypes, settings=settings, log=lambda s: print(s, flush=True)
    )
    meta = {
        "mode": "quick" if a.quick else "full",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": a.threads,
        "cpus": os.cpu_count(),
        "backends": list(ta.available_backends()),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget_s": budget,
        "clock": clock,
        "dtypes": list(dtypes),
    }
    meta["tad_autograd_source_sha1"] = _source_hash()
    t_all = time.perf_counter()
    for name in chosen:
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        sec = SECTIONS[name](cfg)
        sec["meta"] = dict(
            meta,
            finished=datetime.datetime.now().isoformat(timespec="seconds"),
            elapsed_s=round(time.perf_counter() - t0, 1),
        )
        data["sections"][name] = sec
        # write after every section, so a long run leaves results behind as it goes
        report.save_json(prefix + ".json", data)
        report.write_markdown(prefix + ".md", data)
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    png = report.write_plot(prefix + ".png", data)
    print(
        f"total {time.perf_counter() - t_all:.0f} s; wrote {prefix}.json, {prefix}.md"
        + (f", {png}" if png else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
