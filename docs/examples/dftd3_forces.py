"""DFT-D3 dispersion forces and Hessians with tad-dftd3, on every backend.

A real model from PyPI (``pip install tad-dftd3``, or the ``docs`` extra of
tad_autograd): the D3(BJ) dispersion energy with the three-body term, as
implemented by :mod:`tad_dftd3`, differentiated with respect to the atomic
positions.  For every available backend and for automatic mode
(``backend=None``) the script computes

1. the forces on formamide (6 atoms), ``-jacrev(energy)``;
2. the Hessian of a water-methanol dimer (9 atoms), ``hessian(energy)``;
3. the Hessians of both molecules at once, zero-padded to 9 atoms as
   tad-dftd3 expects, ``vmap(hessian(energy))``;
4. the forces for two sets of damping parameters at once (a parameter sweep),
   ``vmap(forces)`` over the parameters.

Each result is checked against an independent reference (central finite
differences, :func:`torch.autograd.grad`, :func:`torch.autograd.functional.hessian`
and Python loops) with :func:`torch.testing.assert_close`.  Every
``BackendFallbackWarning`` is printed, and so is every call a transform
backend refuses, marked "expected" where tad-dftd3's code is known to be
data-dependent under ``vmap`` (``EXPECTED_TO_RAISE``), and so are
the timings of 1-3 against :mod:`torch.func` (medians of interleaved rounds;
measured, never asserted).

Run it from a checkout with::

    python docs/examples/dftd3_forces.py [--rounds N] [--threads N]

It exits non-zero when a result is wrong, or when automatic mode or the
``"autograd"`` backend fails; a transform backend that cannot handle a
computation is reported, since that is what automatic mode is for.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

import tad_autograd as ta

try:
    import tad_dftd3 as d3
except ImportError:  # pragma: no cover - the docs extra installs it
    raise SystemExit("this example needs tad-dftd3: pip install tad-dftd3") from None

DD: Dict[str, Any] = {"dtype": torch.float64}

# Formamide (S22 system 4, one monomer), Bohr.
NUMBERS_A = torch.tensor([6, 8, 7, 1, 1, 1])
POSITIONS_A = torch.tensor(
    [
        [-0.55569743203406, +1.09030425468557, 0.00000000000000],
        [+0.51473634678469, +3.15152550263611, 0.00000000000000],
        [+0.59869690244446, -1.16861263789477, 0.00000000000000],
        [-0.45355203669134, -2.74568780438064, 0.00000000000000],
        [+2.52721209544999, -1.29200800956867, 0.00000000000000],
        [-2.63139587595376, +0.96447869452240, 0.00000000000000],
    ],
    **DD,
)

# A water-methanol dimer, Bohr.
NUMBERS_B = torch.tensor([8, 1, 1, 8, 1, 6, 1, 1, 1])
POSITIONS_B = torch.tensor(
    [
        [-4.224363834, +0.270465696, +0.527578960],
        [-5.011768887, +1.780116228, +1.143194385],
        [-2.468758653, +0.479766200, +0.982905589],
        [+1.146167671, +0.452771215, +1.257722311],
        [+1.841554378, -0.628298322, +2.538065200],
        [+2.024899840, -0.438480095, -1.127412563],
        [+1.210773578, +0.791908575, -2.550591723],
        [+4.077073644, -0.342495506, -1.267841745],
        [+1.404422261, -2.365753991, -1.503620411],
    ],
    **DD,
)

# The batch: both molecules padded to 9 atoms (atomic number 0 is padding).
N_MAX = len(NUMBERS_B)
NUMBERS = torch.stack([torch.cat([NUMBERS_A, NUMBERS_A.new_zeros(N_MAX - 6)]), NUMBERS_B])
POSITIONS = torch.stack(
    [torch.cat([POSITIONS_A, POSITIONS_A.new_zeros(N_MAX - 6, 3)]), POSITIONS_B]
)

# wB97M-D3(BJ) damping parameters; s9 = 1 switches on the three-body term.
PARAM = {
    "a1": torch.tensor(0.5660, **DD),
    "s8": torch.tensor(0.3908, **DD),
    "a2": torch.tensor(3.1280, **DD),
    "s9": torch.tensor(1.0, **DD),
}

# Two parameter sets stacked for a sweep: wB97M-D3(BJ) and r2SCAN-D3(BJ).
PARAM_SETS = {
    "a1": torch.tensor([0.5660, 0.49484001], **DD),
    "s8": torch.tensor([0.3908, 0.78981345], **DD),
    "a2": torch.tensor([3.1280, 5.73083694], **DD),
    "s9": torch.tensor([1.0, 1.0], **DD),
}

# The reference C6 table, read once (without ``ref=``, every call reads it from disk).
REF = d3.reference.Reference(**DD)

TIGHT = {"rtol": 1e-10, "atol": 1e-14}  # float64 agreement between exact derivatives


def energy(numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Total D3(BJ)-ATM dispersion energy (Hartree) of one molecule."""
    return d3.dftd3(numbers, positions, PARAM, ref=REF).sum()


def sweep_energy(param: Dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Dispersion energy of formamide for one set of damping parameters."""
    return d3.dftd3(NUMBERS_A, positions, param, ref=REF).sum()


# -- independent references ---------------------------------------------------


def reference_forces(numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Forces from one :func:`torch.autograd.grad` on the eager energy."""
    pos = positions.detach().requires_grad_()
    (grad,) = torch.autograd.grad(energy(numbers, pos), pos)
    return -grad


def finite_difference_forces(
    numbers: torch.Tensor, positions: torch.Tensor, step: float = 1e-5
) -> torch.Tensor:
    """Forces from central differences of the energy, one coordinate at a time."""
    flat = positions.detach().reshape(-1)
    forces = torch.empty_like(flat)
    with torch.no_grad():
        for k in range(flat.numel()):
            shift = torch.zeros_like(flat)
            shift[k] = step
            plus = energy(numbers, (flat + shift).reshape(positions.shape))
            minus = energy(numbers, (flat - shift).reshape(positions.shape))
            forces[k] = -(plus - minus) / (2 * step)
    return forces.reshape(positions.shape)


def reference_hessian(numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Hessian from :func:`torch.autograd.functional.hessian` (a loop of backward passes)."""
    return torch.autograd.functional.hessian(lambda p: energy(numbers, p), positions)


def reference_batch() -> torch.Tensor:
    """Hessians of the unpadded molecules, one by one, placed into the padded shape."""
    out = torch.zeros(2, N_MAX, 3, N_MAX, 3, **DD)
    for i, (numbers, positions) in enumerate([(NUMBERS_A, POSITIONS_A), (NUMBERS_B, POSITIONS_B)]):
        n = len(numbers)
        out[i, :n, :, :n, :] = reference_hessian(numbers, positions)
    return out


def reference_sweep() -> torch.Tensor:
    """Forces for each parameter set, one :func:`torch.autograd.grad` each."""
    rows = []
    for i in range(2):
        param = {key: value[i] for key, value in PARAM_SETS.items()}
        pos = POSITIONS_A.detach().requires_grad_()
        (grad,) = torch.autograd.grad(sweep_energy(param, pos), pos)
        rows.append(-grad)
    return torch.stack(rows)


# -- the computations, per backend ----------------------------------------------


def sweep_forces(param: Dict[str, torch.Tensor], backend: Optional[str] = None) -> torch.Tensor:
    """Forces on formamide for one set of damping parameters."""
    return -ta.jacrev(sweep_energy, argnums=1, backend=backend)(param, POSITIONS_A)


def computations(backend: Optional[str]) -> Dict[str, Callable[[], torch.Tensor]]:
    """The transformed calls of one backend (``None``: automatic mode), pre-built."""
    jac = ta.jacrev(energy, argnums=1, backend=backend)
    hess = ta.hessian(energy, argnums=1, backend=backend)
    batched = ta.vmap(ta.hessian(energy, argnums=1, backend=backend), backend=backend)
    sweep = ta.vmap(sweep_forces, backend=backend)
    return {
        "forces": lambda: -jac(NUMBERS_A, POSITIONS_A),
        "hessian": lambda: hess(NUMBERS_B, POSITIONS_B),
        "vmap(hessian)": lambda: batched(NUMBERS, POSITIONS),
        "parameter sweep": lambda: sweep(PARAM_SETS, backend=backend),
    }


def sweep_with_fixed_s9(backend: Optional[str]) -> torch.Tensor:
    """The parameter sweep with s9 unbatched: tad-dftd3's ``if s9 != 0`` sees one value."""
    jac = ta.jacrev(sweep_energy, argnums=1, backend=backend)
    in_dims = ({"a1": 0, "s8": 0, "a2": 0, "s9": None},)
    sweep = ta.vmap(lambda param: -jac(param, POSITIONS_A), in_dims=in_dims, backend=backend)
    return sweep({**PARAM_SETS, "s9": torch.tensor(1.0, **DD)})


def torch_func_computations() -> Dict[str, Callable[[], torch.Tensor]]:
    """The same calls written with :mod:`torch.func` directly (the timing peer)."""
    from torch import func

    jac = func.jacrev(energy, argnums=1)
    hess = func.hessian(energy, argnums=1)
    batched = func.vmap(func.hessian(energy, argnums=1))
    return {
        "forces": lambda: -jac(NUMBERS_A, POSITIONS_A),
        "hessian": lambda: hess(NUMBERS_B, POSITIONS_B),
        "vmap(hessian)": lambda: batched(NUMBERS, POSITIONS),
    }


#: The calls a transform backend (``"func"``, ``"functorch"``) is expected to refuse, with
#: why: what automatic mode falls back for.  Anything else a transform backend refuses is
#: printed as "not expected" (the run still passes: automatic mode falls back for it too).
EXPECTED_TO_RAISE: Dict[str, str] = {
    "parameter sweep": "tad-dftd3 branches on the value of s9, data-dependent under vmap",
}
if not hasattr(torch, "func"):  # torch < 2.0: tad-dftd3 checks values of batched tensors
    EXPECTED_TO_RAISE["vmap(hessian)"] = "tad-dftd3 checks values of batched tensors before 2.0"


def run_checked(
    label: str, call: Callable[[], torch.Tensor], expected: torch.Tensor, must_work: bool
) -> Tuple[bool, List[str]]:
    """Call once, record fallback warnings, compare with ``expected``.

    Returns whether the call worked and the notes to print (the error it raised, if it
    did).  A wrong result always raises; an error raises only when ``must_work``.
    """
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ta.BackendFallbackWarning)
        try:
            result = call()
        except Exception as exc:
            if must_work:
                raise
            return False, [f"  {type(exc).__name__}: {shorten(str(exc), 138)}"]
    for warning in caught:
        if issubclass(warning.category, ta.BackendFallbackWarning):
            message = str(warning.message)
            failed = re.match(r"(.*?) \(strategy", message)
            chosen = re.search(r"using backend '[^']+' \(strategy '[^']+'\) instead", message)
            notes.append(f"{label}: BackendFallbackWarning")
            notes.append(f"  {failed.group(1) if failed else shorten(message)},")
            if chosen:
                notes.append(f"  {chosen.group(0)}")
    torch.testing.assert_close(result, expected, **TIGHT)
    return True, notes


def shorten(message: str, width: int = 100) -> str:
    """The first line of a long message, cut to ``width`` characters."""
    text = message.splitlines()[0] if message else ""
    return text if len(text) <= width else text[: width - 3] + "..."


def median_ms(calls: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, float]:
    """Median wall time (ms) of each call over ``rounds`` interleaved rounds."""
    times: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def backend_label(backend: Optional[str]) -> str:
    return "automatic" if backend is None else backend


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    # Tensors of a few atoms gain nothing from intra-op threads, and on a busy
    # machine waiting for them dominates every timing: one thread by default.
    torch.set_num_threads(args.threads)

    backends: List[Optional[str]] = [*ta.available_backends(), None]
    print(
        f"torch {torch.__version__}, tad-dftd3 {d3.__version__}, float64, CPU, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"backends: {', '.join(backend_label(b) for b in backends)}")
    explanation = ta.explain(POSITIONS)
    print(f"automatic mode: backend {explanation.backend!r}, strategy {explanation.strategy!r}")

    # The references, and the reference forces against finite differences.
    forces_ref = reference_forces(NUMBERS_A, POSITIONS_A)
    torch.testing.assert_close(
        forces_ref, finite_difference_forces(NUMBERS_A, POSITIONS_A), rtol=1e-6, atol=1e-9
    )
    expected = {
        "forces": forces_ref,
        "hessian": reference_hessian(NUMBERS_B, POSITIONS_B),
        "vmap(hessian)": reference_batch(),
        "parameter sweep": reference_sweep(),
    }
    print("references: autograd.grad forces agree with central differences")
    e_a, e_b = (energy(NUMBERS_A, POSITIONS_A).item(), energy(NUMBERS_B, POSITIONS_B).item())
    print(f"energies: formamide {e_a:.7f} Eh, water-methanol {e_b:.7f} Eh")
    shapes = ", ".join(f"{name} {tuple(value.shape)}" for name, value in expected.items())
    print(f"shapes: {shapes}")

    print("\nresults (each checked against its reference):")
    working: Dict[str, Dict[str, Callable[[], torch.Tensor]]] = {}
    built = {backend: computations(backend) for backend in backends}
    for backend, calls in built.items():
        label = backend_label(backend)
        must_work = backend in (None, "autograd")
        ok_names, notes = [], []
        for name, call in calls.items():
            ok, call_notes = run_checked(f"{label} {name}", call, expected[name], must_work)
            if ok:
                ok_names.append(name)
                notes += call_notes
                if name != "parameter sweep":
                    working.setdefault(name, {})[label] = call
            elif name in EXPECTED_TO_RAISE:
                notes += [f"{name}: raises, as expected ({EXPECTED_TO_RAISE[name]}):", *call_notes]
            else:
                notes += [f"{name}: raises, not expected (automatic mode falls back):", *call_notes]
        print(f"  {label:10s} correct: {', '.join(ok_names) or 'nothing'}")
        for note in notes:
            print(f"    {note}")

    # Automatic mode remembers a fallback: later calls neither retry nor warn.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ta.BackendFallbackWarning)
        built[None]["parameter sweep"]()
        built[None]["parameter sweep"]()
    fallbacks = [w for w in caught if issubclass(w.category, ta.BackendFallbackWarning)]
    print(f"  automatic parameter sweep, two more calls: {len(fallbacks)} fallback warnings")

    # The workaround: s9 left out of the batch.
    ok_labels, notes = [], []
    for backend in backends:
        label = backend_label(backend)
        ok, call_notes = run_checked(
            f"{label} sweep with unbatched s9",
            lambda backend=backend: sweep_with_fixed_s9(backend),
            expected["parameter sweep"],
            must_work=backend in (None, "autograd"),
        )
        if ok:
            ok_labels.append(label)
            notes += call_notes
        else:
            notes += [f"{label}: raises, not expected:", *call_notes]
    print(f"  sweep with s9 unbatched (in_dims None), correct: {', '.join(ok_labels)}")
    for note in notes:
        print(f"    {note}")

    # Timings against torch.func.
    if not hasattr(torch, "func"):
        print("\ntimings: skipped, torch.func needs torch >= 2.0")
        return 0
    peers = torch_func_computations()
    labels = ["torch.func", *(backend_label(b) for b in backends)]
    print(f"\ntimings: ms, median of {args.rounds} interleaved rounds (ratio to torch.func)")
    print("  " + f"{'':14s}" + "".join(f"{label:>16s}" for label in labels))
    for name, peer in peers.items():
        torch.testing.assert_close(peer(), expected[name], **TIGHT)
        medians = median_ms({"torch.func": peer, **working.get(name, {})}, args.rounds)
        base = medians["torch.func"]
        cells = [f"{base:.1f}"] + [
            f"{medians[label]:.1f} ({medians[label] / base:.2f}x)" if label in medians else "failed"
            for label in labels[1:]
        ]
        print("  " + f"{name:14s}" + "".join(f"{cell:>16s}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
