"""The ``python -m tad_autograd`` report: environment, backends, and a self-check.

The self-check differentiates a small Lennard-Jones cluster (forces and
Hessian) with every available backend and shows that they agree.  A second
variant of the model computes its pair term through an old-style custom
``autograd.Function``: the transform backends may refuse it (with any
error; its words are only shown), and automatic mode must handle it and
agree.  The exit status is non-zero when backends disagree, or when a backend
fails on the plain model or automatic mode or the autograd backend on either.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .api import transforms as api
from .compat._torch_info import TORCH_VERSION
from .compat.devices import TRANSFORM_SUPPORT
from .dispatch._automatic import builder_for
from .dispatch._fallback import describe
from .dispatch._registry import REGISTRY, available_backends
from .dispatch._resolver import resolve
from .dispatch._settings import CONTEXT, ENV_VAR, GLOBAL
from .errors import BackendFallbackWarning, BackendUnavailableError, UnknownBackendError

__all__ = ["main", "lennard_jones", "lennard_jones_custom", "cluster"]

TOLERANCE = 1e-10


class _InverseSixth(torch.autograd.Function):
    """r2 -> r2**-3, written the old way (forward(ctx, ...)), as many codes do."""

    @staticmethod
    def forward(ctx: Any, r2: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
        ctx.save_for_backward(r2)
        return r2**-3

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override,unused-ignore]
        r2: torch.Tensor
        (r2,) = ctx.saved_tensors
        return grad * (-3.0) * r2**-4


def _pair_r2(pos: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu_indices(pos.shape[0], pos.shape[0], 1, device=pos.device)
    return ((pos[i] - pos[j]) ** 2).sum(-1)


def lennard_jones(pos: torch.Tensor) -> torch.Tensor:
    """Lennard-Jones energy (epsilon = sigma = 1) of positions of shape ``(n, 3)``.

    Examples
    --------
    >>> import torch
    >>> float(lennard_jones(torch.tensor([[0.0, 0.0, 0.0], [2 ** (1 / 6), 0.0, 0.0]])))
    -1.0
    """
    inv6 = _pair_r2(pos) ** -3
    return (4 * (inv6**2 - inv6)).sum()


def lennard_jones_custom(pos: torch.Tensor) -> torch.Tensor:
    """:func:`lennard_jones` with its pair term through an old-style ``autograd.Function``.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]], dtype=torch.float64)
    >>> bool(torch.isclose(lennard_jones_custom(p), lennard_jones(p)))
    True
    """
    inv6: torch.Tensor = _InverseSixth.apply(_pair_r2(pos))  # type: ignore[no-untyped-call]
    return (4 * (inv6**2 - inv6)).sum()


def cluster(n: int = 8, device: str = "cpu") -> torch.Tensor:
    """A reproducible, non-overlapping cluster of ``n`` atoms (float64).

    Examples
    --------
    >>> cluster(4).shape
    torch.Size([4, 3])
    """
    g = torch.Generator().manual_seed(7)
    side = int(round(n ** (1 / 3) + 0.5))
    grid = torch.stack(
        torch.meshgrid(
            *(torch.arange(side, dtype=torch.float64, device="cpu"),) * 3, indexing="ij"
        ),
        -1,
    ).reshape(-1, 3)[:n]
    jitter = 0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64, device="cpu")
    return (1.12 * grid + jitter).to(device)


def _median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _devices() -> List[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _self_check(
    device: str, out: Callable[[str], None], quick: bool = False
) -> Tuple[bool, List[Dict[str, Any]]]:
    """Forces and Hessian with every backend; ``(passed, one record per model and backend)``."""
    pos = cluster(8, device)
    ok = True
    records: List[Dict[str, Any]] = []
    names = [b.name for b in REGISTRY.backends() if b.availability().ok]
    for label, model, transformable in (
        ("Lennard-Jones, plain torch", lennard_jones, True),
        ("Lennard-Jones through an old-style autograd.Function", lennard_jones_custom, False),
    ):
        out(f"\n  {label} ({pos.shape[0]} atoms, float64, {device}):")
        out(f"    {'backend':<12} {'forces+Hessian':>16}  {'max |diff| vs autograd':>22}")
        results: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        rows: List[Tuple[str, Optional[float]]] = []
        for name in [*names, "auto"]:
            backend = None if name == "auto" else name
            record: Dict[str, Any] = {"device": device, "model": label, "backend": name}
            records.append(record)

            # `compute` only runs within this iteration, so the late binding of `model` is moot
            def compute(backend: Optional[str] = backend) -> Tuple[torch.Tensor, torch.Tensor]:
                forces = -api.jacrev(model, backend=backend)(pos)  # noqa: B023
                hess = api.hessian(model, backend=backend)(pos)  # noqa: B023
                return forces, hess

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BackendFallbackWarning)
                    results[name] = compute()
                    seconds = None if quick else _median_time(compute)
                rows.append((name, seconds))
            except Exception as error:  # noqa: BLE001 - reported, and judged below
                # an explicit transform backend may refuse an untransformable model, with
                # any error (structural, as the fallback); the words only describe it
                expected_refusal = (
                    not transformable and backend is not None and backend != "autograd"
                )
                ok = ok and expected_refusal
                record.update(outcome="refused" if expected_refusal else "FAILED")
                record["reason"] = describe(error)
                out(f"    {name:<12} {record['outcome']:>16}  ({record['reason']})")
                continue
        reference = results.get("autograd")
        for name, seconds in rows:
            if reference is None:
                continue
            diff = _max_diff(results[name], reference)
            agree = diff <= TOLERANCE * max(1.0, float(reference[1].abs().max()))
            ok = ok and agree
            record = next(r for r in records if r["backend"] == name and r["model"] == label)
            record.update(outcome="agree" if agree else "DISAGREE", max_diff=diff)
            record["seconds"] = seconds
            timing = "(--quick)" if seconds is None else f"{seconds * 1e3:12.2f} ms"
            out(f"    {name:<12} {timing:>16}  {diff:22.3e}{'' if agree else '  DISAGREE'}")
    return ok, records


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tad_autograd",
        description=(
            "Report the installed torch, devices, backends (with why not), the backend and "
            "strategy a call would use per device type under the setting in force, and a "
            "self-check that differentiates a Lennard-Jones cluster with every backend.  "
            "Exit status: 0 when every backend agrees, 1 when not, 2 for a bad setting."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="skip the timings")
    return parser


def _setting() -> Dict[str, Any]:
    """The backend setting in force, where it comes from, and why it is unusable (if it is)."""
    env = os.environ.get(ENV_VAR)
    context = CONTEXT.get()
    if context is not None:
        value, source = context[0] or "auto", "use_backend"
    elif GLOBAL.name is not None:
        value, source = GLOBAL.name, "set_backend"
    elif env and env != "auto":
        value, source = env, ENV_VAR
    else:
        value, source = "auto", "default (nothing set)"
    setting: Dict[str, Any] = {"value": value, "source": source, "error": None}
    try:
        resolve(
            argument=None,
            context=context,
            global_setting=GLOBAL.name,
            environment=env,
            device_type="cpu",
            registry=REGISTRY,
        )
    except (UnknownBackendError, BackendUnavailableError) as error:
        setting["error"] = f"{error}. Fix: choose one of {list(available_backends())} or 'auto'" + (
            f" (or unset {ENV_VAR})" if source == ENV_VAR else ""
        )
    return setting


def _choices(setting: Dict[str, Any]) -> List[Dict[str, str]]:
    """Per device type: the backend and strategy a call would use under the setting in force."""
    rows = []
    for device_type in ["cpu", "cuda", *[d for d in TRANSFORM_SUPPORT if d not in ("cpu", "cuda")]]:
        resolution = resolve(
            argument=None,
            context=CONTEXT.get(),
            global_setting=GLOBAL.name,
            environment=os.environ.get(ENV_VAR),
            device_type=device_type,
            registry=REGISTRY,
        )
        strategy = builder_for(resolution.backend, automatic=resolution.automatic).runs
        rows.append(
            {
                "device_type": device_type,
                "backend": resolution.backend.name,
                "strategy": strategy,
                "source": resolution.source,
            }
        )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the report; return 0 when every backend agrees, 1 otherwise, 2 for a bad setting.

    Examples
    --------
    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as text:
    ...     status = main(["--quick"])
    >>> status, "self-check: PASSED" in text.getvalue()
    (0, True)
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    lines: List[str] = []
    out: Callable[[str], None] = lines.append if args.json else print
    data: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": _devices(),
        "setting": _setting(),
    }
    out("tad_autograd report")
    out("===================")
    out(f"python   {data['python']} ({data['platform']})")
    out(f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    out(f"devices  {', '.join(data['devices'])}")
    setting = data["setting"]
    out(f"setting  {setting['value']} (from {setting['source']})")
    if setting["error"] is not None:
        out(f"\nERROR: the backend setting cannot be used: {setting['error']}")
        if args.json:
            print(json.dumps(data, indent=2))
        return 2
    data["backends"] = []
    out("\nbackends (highest priority first):")
    for priority, backend in REGISTRY.priorities():
        availability = backend.availability()
        auto_ok, why = backend.automatic_ok()
        data["backends"].append(
            {
                "name": backend.name,
                "priority": priority,
                "available": availability.ok,
                "reason": availability.reason,
                "fix": availability.fix,
                "automatic": availability.ok and auto_ok,
                "not_automatic_because": why,
            }
        )
        status = "available" if availability.ok else f"unavailable: {availability.reason}"
        if availability.ok and not auto_ok:
            status += f" (not automatic: {why})"
        out(f"  {backend.name:<10} priority {priority:<4} {status}")
    data["choice_per_device_type"] = _choices(setting)
    out(f"\nbackend a call would use, per device type (setting: {setting['value']}):")
    for row in data["choice_per_device_type"]:
        out(
            f"  {row['device_type']:<14} -> {row['backend']} (strategy {row['strategy']!r}; "
            f"{row['source']})"
        )
    out(
        "\nself-check: forces and Hessian with every backend (torch "
        f"{TORCH_VERSION}); reference = 'autograd', tolerance {TOLERANCE:g} relative"
    )
    ok = True
    data["self_check"] = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        passed, records = _self_check(device, out, args.quick)
        ok = ok and passed
        data["self_check"] += records
    data["passed"] = ok
    out(f"\nself-check: {'PASSED' if ok else 'FAILED'}")
    if args.json:
        print(json.dumps(data, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
