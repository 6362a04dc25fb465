"""Scratch measurement: automatic Hessians through custom autograd.Functions.

Not part of the benchmark suite: it compares designs of how automatic mode
vectorises the rows of a Jacobian through a custom ``autograd.Function``,
side by side in one process, interleaved, medians and paired ratios.

* ``old``: any custom Function in the graph makes the rows loop;
* ``a-watch``: each custom backward runs under a defect watch while the rows
  are vectorised (what the library does);
* ``b-probe``: as ``a-watch``, but a Function class whose backward ran clean
  once is not watched again (kept out of the library: a backward may branch);
* ``no-watch``: vectorised without any watch (wrong where a backward calls a
  defective op): the cost of the watch itself.

Run: ``python -m benchmarks.scratch_custom_functions [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch

import tad_autograd as ta
import tad_autograd.eager._jacobian as eager_jacobian
from benchmarks import problems_models
from tad_autograd.eager._batched_backward_watch import WatchedBackwards, custom_backwards_watched
from tad_autograd.eager._graph import BatchingHazards, batching_hazards

F64 = torch.float64


# -- the models -----------------------------------------------------------------------------


class Exp(torch.autograd.Function):
    """exp, its backward using its output (``generate_vmap_rule``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.exp()

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:  # type: ignore[override]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return g * y


def tanh_stack(n_layers: int = 40, width: int = 48) -> Tuple[Callable[..., Any], torch.Tensor]:
    """The issue's reproduction: ``x = tanh(W @ x)`` layers, then the custom Exp, summed."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(width, width, dtype=F64, generator=g) / 7 for _ in range(n_layers)]

    def f(x: torch.Tensor) -> torch.Tensor:
        for w in weights:
            x = torch.tanh(w @ x)
        return Exp.apply(x).sum()

    return f, torch.randn(width, dtype=F64, generator=g)


def tight_binding(eigh: Any, atoms: int = 8) -> Tuple[Callable[..., Any], torch.Tensor]:
    """The models section's SCF tight-binding energy of ``atoms`` positions, at a fixed field."""
    energy, at = problems_models.tight_binding(eigh), problems_models.field()
    return (lambda pos: energy(pos, at)), problems_models.geometry(atoms)


# -- the designs ----------------------------------------------------------------------------


def _old_hazards(outputs: Sequence[torch.Tensor]) -> BatchingHazards:
    """Before: every custom Function counts as a possibly defective op (the rows loop)."""
    found = batching_hazards(outputs)
    if found.custom:
        names = {type(n).__name__ for n in found.custom}
        return BatchingHazards(found.defective | names, [])
    return found


_CLEAN: Dict[type, bool] = {}


@contextlib.contextmanager
def _probed_once(nodes: Sequence[Any]) -> Iterator[WatchedBackwards]:
    """Design (b): watch only the classes not yet seen running clean."""
    fresh = [n for n in nodes if getattr(n, "_forward_cls", None) not in _CLEAN]
    with custom_backwards_watched(fresh) as seen:
        yield seen
    if seen.op is None:
        for n in fresh:
            _CLEAN[getattr(n, "_forward_cls", None)] = True  # type: ignore[index]


@contextlib.contextmanager
def _unwatched(nodes: Sequence[Any]) -> Iterator[WatchedBackwards]:
    yield WatchedBackwards()


@contextlib.contextmanager
def design(name: str) -> Iterator[None]:
    saved = (eager_jacobian.batching_hazards, eager_jacobian.custom_backwards_watched)
    if name == "old":
        eager_jacobian.batching_hazards = _old_hazards  # type: ignore[assignment]
    elif name == "b-probe":
        eager_jacobian.custom_backwards_watched = _probed_once  # type: ignore[assignment]
    elif name == "no-watch":
        eager_jacobian.custom_backwards_watched = _unwatched  # type: ignore[assignment]
    try:
        yield
    finally:
        eager_jacobian.batching_hazards, eager_jacobian.custom_backwards_watched = saved


# -- measuring ------------------------------------------------------------------------------


def candidates(f: Callable[..., Any], x: torch.Tensor) -> Dict[str, Callable[[], Any]]:
    jacrev = torch.func.jacrev
    calls: Dict[str, Callable[[], Any]] = {
        "torch.func jacrev(jacrev)": lambda: jacrev(jacrev(f))(x),
        "ta func": lambda: ta.hessian(f, backend="func")(x),
        "ta autograd": lambda: ta.hessian(f, backend="autograd")(x),
    }
    for name in ("old", "a-watch", "b-probe", "no-watch"):

        def call(name: str = name) -> Any:
            with design(name):
                return ta.hessian(f)(x)

        calls[f"ta auto {name}"] = call
    return calls


def measure(label: str, f: Callable[..., Any], x: torch.Tensor, rounds: int) -> None:
    calls = candidates(f, x)
    reference = calls["ta autograd"]()
    for name, call in calls.items():
        torch.testing.assert_close(call(), reference, msg=lambda m, n=name: f"{n}: {m}")
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = times["torch.func jacrev(jacrev)"]
    print(f"\n{label}  (median of {rounds} interleaved rounds, paired ratio vs torch.func)")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"  {name:28s} {statistics.median(ts) * 1e3:9.2f} ms  {ratio:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--atoms", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    measure("tanh stack + custom Exp", *tanh_stack(), args.rounds)
    for eigh in (problems_models.EighVmapRule, problems_models.EighGeneratedVmap):
        measure(
            f"tight-binding SCF, {args.atoms} atoms, {eigh.__name__}",
            *tight_binding(eigh, args.atoms),
            args.rounds,
        )


if __name__ == "__main__":
    main()
