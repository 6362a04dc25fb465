"""What every benchmark section shares: the run's configuration, sizes and §8 helpers.

Every problem is built on the CPU exactly as on a CPU run (same seeds, float64
master data) and then moved to ``Config.device`` with the benchmarked dtype;
references are computed on that device in float64 from the moved data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

import tad_autograd as ta
from benchmarks.harness import Settings, paired_ratio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Config:
    quick: bool
    dtypes: Tuple[str, ...]
    settings: Settings
    log: Callable[[str], None] = print
    #: where every problem tensor lives, e.g. "cpu" or "cuda" (``python -m benchmarks --device``)
    device: str = "cpu"

    def sizes(self, section: str) -> List[int]:
        return (QUICK_SIZES if self.quick else FULL_SIZES)[section]

    @property
    def cuda(self) -> bool:
        """True when the benchmarks run on a CUDA device."""
        return torch.device(self.device).type == "cuda"

    def put(self, t: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """CPU master data on the benchmark device, cast to ``dtype``."""
        return t.to(device=self.device, dtype=dtype)


FULL_SIZES = {
    "forces": [10, 30, 100, 300, 1000],
    "jacobian": [2, 8, 32, 128, 512],
    "hessian": [4, 8, 16, 32, 64],
    "vmap": [1, 4, 16, 64, 256],
    "autograd": [2, 8, 32, 128, 512],
    "fallback": [2, 32, 256],
    "hvp": [10, 100, 1000],
}
QUICK_SIZES = {
    "forces": [10, 100, 1000],
    "jacobian": [2, 32, 256],
    "hessian": [4, 16, 32],
    "vmap": [1, 16, 256],
    "autograd": [2, 32, 256],
    "fallback": [2, 32],
    "hvp": [10, 100],
}
VMAP_ATOMS = 16


def backends() -> Tuple[str, ...]:
    return tuple(ta.available_backends())


def special_settings(cfg: Config, budget_s: float) -> Settings:
    """Many short interleaved samples: the paired ratios of §8 need ~1 % precision."""
    s = cfg.settings
    return Settings(
        clock=s.clock,
        budget_s=budget_s,
        sample_s=0.001,
        min_rounds=30,
        max_rounds=100000,
        slow_cap_s=s.slow_cap_s,
        sync=s.sync,
    )


def ratio_rows(
    results: Dict[str, Dict[str, Any]], pairs: Sequence[Tuple[str, str, str]]
) -> List[Dict[str, Any]]:
    rows = []
    for label, a, b in pairs:
        ra, rb = results.get(a, {}), results.get(b, {})
        if "median_s" not in ra or "median_s" not in rb:
            rows.append(
                {"label": label, "subject": a, "baseline": b, "ratio": None, "paired_ratio": None}
            )
            continue
        rows.append(
            {
                "label": label,
                "subject": a,
                "baseline": b,
                "subject_s": ra["median_s"],
                "baseline_s": rb["median_s"],
                "ratio": ra["median_s"] / rb["median_s"],
                "paired_ratio": paired_ratio(ra["samples"], rb["samples"]),
            }
        )
    return rows
