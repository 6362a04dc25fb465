"""The user's function runs once per call on every path (§4, §6, §12).

A counter captured by the function counts its runs, call by call, for every
operator on every backend and in automatic mode, for three functions: a plain
one, one with a custom ``autograd.Function`` written the old way (no
``setup_context``, no ``jvp``: forward mode and the function transforms
cannot push through it), and one raising the user's own ``ValueError``.

* The autograd backend and automatic mode run it once per call (``vmap``:
  once per sample where it loops), the first call, later calls and the calls
  after a fallback alike; the user's own error propagates after one run.
* An explicitly chosen transform backend runs it as often as the transform
  library's own operator does, counted here on the same function.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Tuple

import pytest
import torch
from _helpers import OldStyleExp

import tad_autograd as ta
from tad_autograd.dispatch._registry import REGISTRY

F64 = torch.float64
CALLS = 3
BATCH = 5  # above the batch an automatic vmap loops over: vmap's transform runs

OPERATORS = (
    "jacrev",
    "jacfwd",
    "jacfwd_different",
    "jacobian_auto",
    "jacobian_forward",
    "jacobian_reverse",
    "grad",
    "grad_and_value",
    "vjp",
    "jvp",
    "linearize",
    "hessian",
    "hvp",
    "vmap",
)
KINDS = ("plain", "old_style", "raising")


class Counted:
    """``kind``'s function of a 3-vector (6 outputs: a tall Jacobian), counting its runs."""

    def __init__(self, kind: str, scalar: bool) -> None:
        self.kind, self.scalar, self.runs = kind, scalar, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        if self.kind == "raising":
            raise ValueError("the user's own error")
        y = OldStyleExp.apply(x) if self.kind == "old_style" else x.exp()
        out = torch.cat([y * x, y.sin()])
        return (out**2).sum() if self.scalar else out


_SCALAR = {"grad", "grad_and_value", "hessian", "hvp"}


def _ours(op: str, f: Callable[..., Any], x: torch.Tensor, backend: Optional[str]) -> Any:
    """One call of ``op`` of ``f`` at ``x`` through tad_autograd."""
    t = torch.ones_like(x)
    if op == "jacrev":
        return ta.jacrev(f, backend=backend)(x)
    if op == "jacfwd":
        return ta.jacfwd(f, backend=backend)(x)
    if op == "jacfwd_different":
        return ta.jacfwd(f, randomness="different", backend=backend)(x)
    if op.startswith("jacobian_"):
        return ta.jacobian(f, mode=op[len("jacobian_") :], backend=backend)(x)
    if op == "grad":
        return ta.grad(f, backend=backend)(x)
    if op == "grad_and_value":
        return ta.grad_and_value(f, backend=backend)(x)
    if op == "vjp":
        out, vjp_fn = ta.vjp(f, x, backend=backend)
        return out, vjp_fn(torch.ones_like(out))
    if op == "jvp":
        return ta.jvp(f, (x,), (t,), backend=backend)
    if op == "linearize":
        out, jvp_fn = ta.linearize(f, x, backend=backend)
        return out, jvp_fn(t), jvp_fn(2 * t)
    if op == "hessian":
        return ta.hessian(f, backend=backend)(x)
    if op == "hvp":
        return ta.hvp(f, (x,), (t,), backend=backend)
    if op == "vmap":
        return ta.vmap(f, backend=backend)(x.expand(BATCH, -1).clone())
    raise AssertionError(op)


def _theirs(op: str, library: Any, f: Callable[..., Any], x: torch.Tensor) -> Any:
    """One call of the transform library's own ``op`` (the same derivative) of ``f`` at ``x``."""
    t = torch.ones_like(x)
    if op in ("jacrev", "jacobian_reverse"):
        return library.jacrev(f)(x)
    if op in ("jacfwd", "jacobian_forward"):
        return library.jacfwd(f)(x)
    if op == "jacfwd_different":
        return library.jacfwd(f, randomness="different")(x)
    if op == "grad":
        return library.grad(f)(x)
    if op == "grad_and_value":
        return library.grad_and_value(f)(x)
    if op == "vjp":
        out, vjp_fn = library.vjp(f, x)
        return out, vjp_fn(torch.ones_like(out))
    if op == "jvp":
        return library.jvp(f, (x,), (t,))
    if op == "linearize":
        out, jvp_fn = library.linearize(f, x)
        return out, jvp_fn(t), jvp_fn(2 * t)
    if op == "hessian":
        return library.hessian(f)(x)
    if op == "hvp":  # forward over reverse, as the transform backends compute it
        return library.jvp(library.grad(f), (x,), (t,))
    if op == "vmap":
        return library.vmap(f)(x.expand(BATCH, -1).clone())
    raise AssertionError(op)


def _counts(call: Callable[[Callable[..., Any]], Any], f: Counted) -> Tuple[List[int], List[Any]]:
    """Runs of ``f`` per call, over :data:`CALLS` calls, and each call's result or exception."""
    runs, outcomes = [], []
    for _ in range(CALLS):
        before = f.runs
        try:
            outcomes.append(call(f))
        except Exception as error:  # noqa: BLE001 - compared below
            outcomes.append(error)
        runs.append(f.runs - before)
    return runs, outcomes


def _library() -> Any:
    """The transform library whose operators the transform backends run: torch.func on
    torch >= 2.0 (where the functorch package is a deprecated alias of it), else functorch."""
    try:
        import torch.func

        return torch.func
    except ImportError:  # torch 1.13
        import functorch

        return functorch


def _expected_eager_runs(op: str, kind: str, automatic: bool) -> List[int]:
    """Runs per call on the autograd backend and in automatic mode."""
    if op != "vmap":
        return [1] * CALLS
    if kind == "raising":
        # automatic: the error escaped the transform, so the loop retries it once (and
        # re-raises the user's error from eager code); nothing is remembered of a failure
        return [2 if automatic else 1] * CALLS
    if automatic and kind == "plain":
        return [1] * CALLS  # the transform
    if automatic:
        # the transform refuses the Function on the first call (after one run); the loop
        # takes every sample, and later calls go straight to it
        return [1 + BATCH] + [BATCH] * (CALLS - 1)
    return [BATCH] * CALLS  # the loop: once per sample


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPERATORS)
def test_function_runs_once_per_call(backend: Optional[str], op: str, kind: str) -> None:
    x = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    f = Counted(kind, op in _SCALAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ta.BackendFallbackWarning)
        runs, outcomes = _counts(lambda g: _ours(op, g, x, backend), f)
    if kind == "raising":
        assert all(type(o) is ValueError for o in outcomes), outcomes
    if backend is None or not REGISTRY.get(backend).is_transform:
        if kind != "raising":
            assert not any(isinstance(o, Exception) for o in outcomes), outcomes
        assert runs == _expected_eager_runs(op, kind, backend is None), runs
        return
    library = _library()
    if op == "linearize" and not hasattr(library, "linearize"):
        pytest.skip(f"{backend} has no linearize on torch {torch.__version__}")
    if op == "linearize" and kind != "raising":
        # one run per call on every backend (torch.func.linearize runs it twice: once
        # plainly and once traced), products from that run
        assert runs == [1] * CALLS, runs
        return
    if op == "jacobian_auto":
        # jacrev counts the outputs on the first call, jacfwd takes the later ones
        expected, theirs = [], []
        for name in ("jacobian_reverse",) + ("jacobian_forward",) * (CALLS - 1):
            g = Counted(kind, False)
            r, o = _counts(lambda h, name=name: _theirs(name, library, h, x), g)
            expected.append(r[0])
            theirs.append(o[0])
    else:
        g = Counted(kind, op in _SCALAR)
        expected, theirs = _counts(lambda h: _theirs(op, library, h, x), g)
    refused = [isinstance(o, Exception) for o in theirs]
    if op == "jacobian_auto" and not refused[0] and refused[1]:
        # forward mode refused: reverse mode from then on, decided on the first call
        assert not any(isinstance(o, Exception) for o in outcomes[1:]), outcomes
        assert runs == [expected[0]] * CALLS, (runs, expected)
        return
    assert runs == expected, (runs, expected)
    for ours, their in zip(outcomes, theirs):
        assert isinstance(ours, Exception) == isinstance(their, Exception), (ours, their)


def _eager_column_loop(f: Callable[..., Any], x: torch.Tensor, seed: int) -> torch.Tensor:
    """An independent reference: one eager call of ``f`` (seeded), its rows by autograd.grad."""
    torch.manual_seed(seed)
    with torch.enable_grad():
        p = x.detach().requires_grad_(True)
        out = f(p)
        rows = [torch.autograd.grad(out[i], p, retain_graph=True)[0] for i in range(out.numel())]
    return torch.stack(rows)


def _random_tall(n_in: int) -> Tuple[Callable[..., Any], torch.Tensor]:
    grid = torch.linspace(0, 1, 20, dtype=F64)

    def f(p: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(20, dtype=F64)
        return p[0] * grid + p[1] * noise + p[2] + (p[3:] ** 2).sum() * grid**2

    return f, torch.arange(1.0, n_in + 1, dtype=F64)


@pytest.mark.parametrize("n_in", [3, 8])
def test_automatic_jacobian_of_a_random_function_through_every_cached_choice(
    backend: Optional[str], n_in: int
) -> None:
    """Calls 1, 2, 3, ...: one draw per call, as one eager call makes, and the right values."""
    f, p = _random_tall(n_in)
    jac = ta.jacobian(f, mode="auto", backend=backend)
    for seed in range(5):
        expected = _eager_column_loop(f, p, seed)
        after_eager = torch.rand(3, dtype=F64)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            result = jac(p)
        torch.testing.assert_close(result, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.rand(3, dtype=F64), after_eager)


def test_automatic_jacobian_of_a_random_function_after_a_remembered_fallback() -> None:
    """A function the transforms refuse (old-style Function) and that draws: calls >= 3."""
    grid = torch.linspace(0, 1, 20, dtype=F64)
    runs: List[int] = []

    def f(p: torch.Tensor) -> torch.Tensor:
        runs.append(1)
        return OldStyleExp.apply(p[0] * grid) + p[1] * torch.rand(20, dtype=F64) + p[2]

    p = torch.tensor([0.5, 2.0, 3.0], dtype=F64)
    jac = ta.jacobian(f, mode="auto")
    for seed in range(4):
        expected = _eager_column_loop(f, p, seed)
        after_eager = torch.rand(3, dtype=F64)
        torch.manual_seed(seed)
        runs.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ta.BackendFallbackWarning)
            torch.testing.assert_close(jac(p), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.rand(3, dtype=F64), after_eager)
        assert len(runs) == 1, (seed, runs)
