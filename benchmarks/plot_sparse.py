"""The figure of the ``sparse`` section: time per call against size, sparse and dense."""

from __future__ import annotations

from typing import Any, Dict, Optional

from benchmarks.plot import INSTALL_HINT, PlotUnavailable


def write_sparse_plot(path: str, data: Dict[str, Any]) -> Optional[str]:
    """Draw the ``sparse`` section of ``data`` into ``path``; None when there is none.

    Left: the banded problems against n; right: the Lennard-Jones Hessian
    against the number of coordinates.  Solid lines: sparse; dashed: dense
    (points only where the dense derivative was timed).  Raises
    :class:`~benchmarks.plot.PlotUnavailable` when matplotlib is missing.
    """
    sec = data["sections"].get("sparse")
    if not sec:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise PlotUnavailable(
            f"the sparse plot was not drawn: matplotlib is not installed ({error}); "
            f"install it with {INSTALL_HINT} (or pip install matplotlib)"
        ) from error
    problems = list(dict.fromkeys(c["problem"] for c in sec["cells"]))
    panels = {
        "banded": [p for p in problems if "Lennard-Jones" not in p],
        "Lennard-Jones": [p for p in problems if "Lennard-Jones" in p],
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for ax, (panel, names) in zip(axes, panels.items()):
        for k, name in enumerate(names):
            cells = [c for c in sec["cells"] if c["problem"] == name]
            colour = cmap(k)
            sparse = [(c["n"], c["methods"]["sparse"]["median_s"]) for c in cells]
            dense = [
                (c["n"], c["methods"]["dense"]["median_s"])
                for c in cells
                if "dense" in c["methods"]
            ]
            ax.plot(*zip(*sparse), "-o", ms=4, color=colour, label=f"{name}: sparse")
            if dense:
                ax.plot(*zip(*dense), "--s", ms=4, color=colour, label=f"{name}: dense")
            for c in cells:
                ax.annotate(
                    f"{c['colours']}",
                    (c["n"], c["methods"]["sparse"]["median_s"]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                    color=colour,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (coordinates)" if panel == "Lennard-Jones" else "n")
        ax.set_ylabel("time per call [s]")
        ax.set_title(f"{panel}: sparse (numbers: colours) vs dense", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right" if panel == "Lennard-Jones" else "upper left")
        sizes = sorted({c["n"] for c in sec["cells"] if c["problem"] in names})
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()
    meta = sec.get("meta", {})
    fig.suptitle(
        "tad_autograd sparse derivatives, automatic mode, float64, torch "
        f"{meta.get('torch', '?')}, "
        f"{meta.get('device', 'cpu')}, {meta.get('threads', '?')} thread(s)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
