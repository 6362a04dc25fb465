"""Run the tad_autograd benchmarks: ``python -m benchmarks [--quick] [--only forces,dispatch]``.

Also runnable as ``python benchmarks/run.py``.  Writes
``build/benchmarks/results{,-quick}.{json,md,png}`` (git-ignored; with
``--device cuda``: ``results-cuda{,-quick}.*``); ``--save`` writes the same
files to ``docs/benchmarks/`` instead, the committed results the docs show.
With ``--only`` the named sections replace their previous results in those
files and the others are kept, so one section can be re-run after a change.
``--device cuda`` runs every problem on the GPU, timed by the wall clock
after ``torch.cuda.synchronize()``.  The plot needs matplotlib
(``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.harness import Settings  # noqa: E402
from benchmarks.plot import PlotUnavailable  # noqa: E402
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


DEVICE_TYPES = ("cpu", "cuda")


def device_problem(name: str) -> Optional[str]:
    """Why the benchmarks cannot run on device ``name`` here, or None when they can."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as error:
        return f"--device {name}: not a torch device ({error})"
    if dev.type not in DEVICE_TYPES:
        return f"--device {name}: only {' and '.join(DEVICE_TYPES)} are supported"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (
                f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); run on a machine with an NVIDIA GPU "
                "and a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here"
    return None


#: where results go by default (git-ignored), and with ``--save`` (committed, shown by the docs)
BUILD_DIR = os.path.join(REPO, "build", "benchmarks")
SAVE_DIR = os.path.join(REPO, "docs", "benchmarks")


def default_prefix(device_type: str, quick: bool, save: bool = False) -> str:
    """<dir>/results[-<device type>][-quick]: a GPU run never overwrites CPU results.

    ``<dir>`` is ``build/benchmarks`` (git-ignored), or ``docs/benchmarks`` with ``save``.
    """
    name = "results" if device_type == "cpu" else f"results-{device_type}"
    return os.path.join(SAVE_DIR if save else BUILD_DIR, name + ("-quick" if quick else ""))


def _plain(text: Optional[str]) -> str:
    """A docstring as terminal text: without reStructuredText's double backticks."""
    return (text or "").replace("``", "")


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=_plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes, float64 only, shorter cells (about 2.5 min on 2 busy CPU cores)",
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
        "--device",
        default="cpu",
        help="torch device of every problem: cpu (default) or cuda[:i]; on cuda the clock is "
        "wall time after torch.cuda.synchronize() and memory is the CUDA allocator's peak",
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
        help="cpu = process CPU time (default with 1 thread on the CPU: robust to other load), "
        "wall = perf_counter (default with several threads; always with --device cuda)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        default=None,
        help="output prefix (default build/benchmarks/results or results-quick; "
        "results-<device type>[-quick] on another device, e.g. results-cuda)",
    )
    where.add_argument(
        "--save",
        action="store_true",
        help="write to docs/benchmarks/ (the committed results the docs include) instead of "
        "build/benchmarks/",
    )
    p.add_argument(
        "--fresh", action="store_true", help="do not merge with an existing results JSON"
    )
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    return p.parse_args(argv)


def _warn_mixed_devices(data: Dict[str, Any], chosen: List[str], device: str, prefix: str) -> None:
    """Warn when the kept sections of the merged results were measured on another device."""
    kept = {
        name: sec.get("meta", {}).get("device", "cpu")
        for name, sec in data["sections"].items()
        if name not in chosen
    }
    others = sorted({d for d in kept.values() if d != device})
    if others:
        print(
            f"warning: {prefix}.json keeps sections measured on {', '.join(others)}; the report "
            "will mark the devices as mixed (use --fresh or another --out to keep them apart)",
            file=sys.stderr,
        )


def main(argv: Optional[List[str]] = None) -> int:
    a = parse(argv)
    if a.list:
        for name, fn in SECTIONS.items():
            print(f"{name:10s} {_plain(fn.__doc__).strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    only = [s for s in a.only.split(",") if s] or list(SECTIONS)
    skip = {s for s in a.skip.split(",") if s}
    unknown = [s for s in list(only) + list(skip) if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    chosen = [s for s in only if s not in skip]
    problem = device_problem(a.device)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and a.clock == "cpu":
        print(
            "--clock cpu cannot time --device cuda: the GPU's work is not CPU time of this "
            "process; leave --clock out (wall time after torch.cuda.synchronize() is used)",
            file=sys.stderr,
        )
        return 2
    dtypes = tuple((a.dtypes or ("float64" if a.quick else "float32,float64")).split(","))
    budget = a.budget if a.budget is not None else (0.25 if a.quick else 0.8)
    clock = "wall" if cuda else a.clock or ("cpu" if a.threads == 1 else "wall")
    sync: Optional[Callable[[], None]] = None
    if cuda:  # cuda:N: synchronise that device (torch.cuda.synchronize() waits for the current)
        sync = torch.cuda.synchronize if dev.index is None else partial(torch.cuda.synchronize, dev)
    settings = Settings(
        clock=clock,
        budget_s=budget,
        sample_s=0.003 if a.quick else 0.005,
        min_rounds=5 if a.quick else 7,
        slow_cap_s=3.0 if a.quick else 15.0,
        sync=sync,
    )
    torch.set_num_threads(a.threads)
    prefix = a.out or default_prefix(dev.type, a.quick, a.save)
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    data = {"sections": {}} if a.fresh else report.load(prefix + ".json")
    data.setdefault("sections", {})
    _warn_mixed_devices(data, chosen, str(dev), prefix)
    import tad_autograd as ta

    cfg = Config(
        quick=a.quick,
        dtypes=dtypes,
        settings=settings,
        log=lambda s: print(s, flush=True),
        device=str(dev),
    )
    meta = {
        "mode": "quick" if a.quick else "full",
        "device": str(dev),
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
    if cuda:
        meta["device_name"] = torch.cuda.get_device_name(dev)
        meta["cuda"] = torch.version.cuda
    meta["tad_autograd_source_sha1"] = _source_hash()
    print(f"device {report.device_label(meta)}, clock {clock}, {a.threads} torch thread(s)")
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
    try:
        png = report.write_plot(prefix + ".png", data)
        # the sparse figure: <prefix>.png when there is no grid figure, else <prefix>-sparse.png
        sparse_png = report.write_sparse_plot(prefix + ("-sparse.png" if png else ".png"), data)
        png = ", ".join(p for p in (png, sparse_png) if p) or None
    except PlotUnavailable as error:
        png = None
        stale = (
            f" ({prefix}.png, if any, is from an earlier run)"
            if os.path.exists(prefix + ".png")
            else ""
        )
        print(f"note: {error}{stale}", file=sys.stderr)
    print(
        f"total {time.perf_counter() - t_all:.0f} s; wrote {prefix}.json, {prefix}.md"
        + (f", {png}" if png else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
