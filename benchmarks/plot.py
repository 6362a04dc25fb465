"""The benchmark figure: time per call against size for every grid, and tad / fastest peer."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from benchmarks.harness import AUTO, PEER_PREFIX
from benchmarks.report_format import AUTO_TARGET, GRID_ORDER, section_devices

INSTALL_HINT = 'pip install -e ".[bench]"'


class PlotUnavailable(RuntimeError):
    """matplotlib cannot be imported: the figure was not drawn."""


def write_plot(path: str, data: Dict[str, Any]) -> Optional[str]:
    """Draw the grids of ``data`` into ``path``; None when there is no grid section.

    Raises :class:`PlotUnavailable` (saying how to install it) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise PlotUnavailable(
            f"the plot was not drawn: matplotlib is not installed ({error}); "
            f"install it with {INSTALL_HINT} (or pip install matplotlib)"
        ) from error
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
