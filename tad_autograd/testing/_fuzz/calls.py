"""Fuzzing what happens *between* and *inside* calls: counters, random draws, cached choices.

A :class:`CalledProgram` is ``f(x) = sin(x @ W)`` (``x`` of ``n`` elements,
``W`` ``n x m``: *tall* Jacobians when ``m > n``, *wide* when ``m < n``) with
features from :data:`CALL_FEATURES`:

``item``
    ``y * (1.5 + 0 * y.sum().item())``: no function transform takes it, so
    automatic mode needs (and remembers) its fallback;
``old_style``
    ``OldStyleSin.apply(y)``: an old-style ``autograd.Function``, likewise;
``random``
    ``y * (1 + rand_like(y) / 4)`` from the caller's global generator.

Every call of ``f`` is counted (a captured side effect).  Two checks here
(and ``linearize`` after the primal changed in
:mod:`~tad_autograd.testing._fuzz.linearize`):

* :func:`check_counted_calls`: one operator of :data:`COUNTED_OPERATORS` is
  built once per backend and automatic mode and called three times (the first
  call and the calls that reuse a cached choice or a remembered fallback);
  each returns the row-loop reference's value, and ``f`` runs once per call on
  ``autograd`` and in automatic mode (``vmap``, ``vmap(jacrev)``: once per sample
  on ``autograd``, once or once per sample in automatic mode),
  as often as ``torch.func`` itself runs it on an explicit transform backend;
* :func:`check_random_calls`: a random program through :data:`RANDOM_OPERATORS`
  (``jacobian(mode="auto")`` on tall and wide shapes, ...) called three times,
  each from a known seed: each call succeeds (explicit transform backends may
  refuse ``item``/``old_style``), equals the reference computed from the same
  seed, and leaves the generator exactly where one eager call of ``f`` leaves it;

Examples
--------
>>> from hypothesis import find
>>> p = find(called_programs(), lambda p: "random" in p.features)
>>> _ = p.f(p.x)
>>> len(p.calls)
1
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence

import torch
from hypothesis import strategies as st

from ...errors import BackendFallbackWarning
from ..functions import OldStyleSin
from ..operators import direct_ops, ref_jacrev, transform_backends
from .support import Backends, assert_close_in_dtype, backends_and_auto, call_quietly, describe

__all__ = [
    "CALLS",
    "CALL_FEATURES",
    "COUNTED_OPERATORS",
    "RANDOM_OPERATORS",
    "CalledProgram",
    "called_programs",
    "counted_cases",
    "random_cases",
    "check_counted_calls",
    "check_random_calls",
]

CALL_FEATURES = ("item", "old_style", "random")
#: Features no function transform accepts (automatic mode falls back).
UNTRANSFORMABLE = frozenset({"item", "old_style"})
COUNTED_OPERATORS = (
    "jacrev",
    "jacfwd",
    "jacobian_auto",
    "jacobian_forward",
    "jacobian_reverse",
    "hessian",
    "grad",
    "grad_and_value",
    "vjp",
    "jvp",
    "linearize",
    "hvp",
    "vmap",
    "jacfwd_jacrev",
    "vmap_jacrev",
)
RANDOM_OPERATORS = ("jacobian_auto", "jacrev", "jacfwd_same", "grad", "vjp", "vmap_same")
#: How many times each case calls the built operator.
CALLS = 3


class CalledProgram:
    """``f(x) = sin(x @ W)`` with features; ``calls`` counts the calls of ``f``."""

    def __init__(self, n: int, m: int, features: Sequence[str], seed: int, dtype: torch.dtype):
        self.n, self.m, self.dtype = n, m, dtype
        self.features = frozenset(features)
        gen = torch.Generator().manual_seed(seed)

        def uniform(*shape: int) -> torch.Tensor:
            return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)

        self.W = uniform(n, m)
        self.x = uniform(n)
        self.batch = uniform(2, n)
        self.c = uniform(m)
        self.t = uniform(n)
        self.tangents = [uniform(n) for _ in range(CALLS)]
        self.calls: List[int] = []

    def f(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(1)
        y = torch.sin(x @ self.W.to(x.dtype))
        if "old_style" in self.features:
            y = OldStyleSin.apply(y)  # type: ignore[no-untyped-call]
        if "item" in self.features:
            y = y * (1.5 + 0.0 * float(y.sum().item()))
        if "random" in self.features:
            y = y * (1 + 0.25 * torch.rand_like(y))
        return y

    def s(self, x: torch.Tensor) -> torch.Tensor:
        return (self.f(x) * self.c.to(x.dtype)).sum()

    @property
    def untransformable(self) -> bool:
        return bool(self.features & UNTRANSFORMABLE)

    def __repr__(self) -> str:
        shape = "tall" if self.m > self.n else ("wide" if self.m < self.n else "square")
        return (
            f"CalledProgram(f(x) = sin(x @ W), then in order: OldStyleSin.apply if old_style, "
            f"* (1.5 + 0 * y.sum().item()) if item, * (1 + rand_like(y) / 4) if random; "
            f"features={sorted(self.features)}, n={self.n}, m={self.m} ({shape} Jacobian), "
            f"dtype={self.dtype},\n  x={self.x!r},\n  W={self.W!r})"
        )


@st.composite
def called_programs(
    draw: st.DrawFn,
    *,
    features: Sequence[str] = CALL_FEATURES,
    always: Sequence[str] = (),
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
) -> CalledProgram:
    """Random :class:`CalledProgram` objects (tall, wide and square Jacobians)."""
    n, m = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    chosen = {f for f in features if draw(st.booleans())} | set(always)
    return CalledProgram(
        n, m, sorted(chosen), draw(st.integers(0, 2**16)), draw(st.sampled_from(list(dtypes)))
    )


# -- operators -------------------------------------------------------------------------


def _library(op: str, p: CalledProgram, backend: Any) -> Callable[..., Any]:
    """Operator ``op`` of ``p`` on ``backend``, built once: a callable of the argument."""
    import tad_autograd as ta

    kw = {"backend": backend}
    if op in ("jacrev", "jacfwd", "hessian", "grad", "grad_and_value") or op.startswith("jacobian"):
        if op.startswith("jacobian"):
            return ta.jacobian(p.f, mode=op.split("_")[1], **kw)
        fn = p.s if op in ("hessian", "grad", "grad_and_value") else p.f
        return getattr(ta, op)(fn, **kw)  # type: ignore[no-any-return]
    if op == "jacfwd_jacrev":
        return ta.jacfwd(ta.jacrev(p.f, **kw), **kw)
    if op == "vmap_jacrev":
        return ta.vmap(ta.jacrev(p.f, **kw), **kw)
    if op == "jacfwd_same":
        return ta.jacfwd(p.f, randomness="same", **kw)
    if op in ("vmap", "vmap_same"):
        randomness = "same" if op == "vmap_same" else "error"
        return ta.vmap(p.f, randomness=randomness, **kw)
    if op == "vjp":

        def vjp(x: torch.Tensor) -> Any:
            out, fn = ta.vjp(p.f, x, **kw)
            return out, fn(p.c)

        return vjp
    if op == "jvp":
        return lambda x: ta.jvp(p.f, (x,), (p.t,), **kw)
    if op == "hvp":
        return lambda x: ta.hvp(p.s, (x,), (p.t,), **kw)
    if op == "linearize":

        def lin(x: torch.Tensor) -> Any:
            out, fn = ta.linearize(p.f, x, **kw)
            return (out,) + tuple(fn(t) for t in p.tangents[:2])

        return lin
    raise ValueError(f"unknown operator {op!r}")


def _direct_count(op: str, p: CalledProgram) -> Optional[int]:
    """How often ``torch.func`` (``functorch`` on 1.13) runs ``f`` for one call of ``op``."""
    direct = direct_ops()
    if direct is None:  # pragma: no cover
        return None
    tf = direct.mod
    x = p.x
    calls = {
        "jacrev": lambda: tf.jacrev(p.f)(x),
        "jacfwd": lambda: tf.jacfwd(p.f)(x),
        "jacobian_forward": lambda: tf.jacfwd(p.f)(x),
        "jacobian_reverse": lambda: tf.jacrev(p.f)(x),
        "jacobian_auto": lambda: tf.jacrev(p.f)(x),
        "hessian": lambda: tf.jacrev(tf.jacrev(p.s))(x),
        "grad": lambda: tf.grad(p.s)(x),
        "grad_and_value": lambda: tf.grad_and_value(p.s)(x),
        "vjp": lambda: tf.vjp(p.f, x)[1](p.c),
        "jvp": lambda: tf.jvp(p.f, (x,), (p.t,)),
        "hvp": lambda: tf.jvp(tf.grad(p.s), (x,), (p.t,)),
        "vmap": lambda: tf.vmap(p.f)(p.batch),
        "jacfwd_jacrev": lambda: tf.jacfwd(tf.jacrev(p.f))(x),
        "vmap_jacrev": lambda: tf.vmap(tf.jacrev(p.f))(p.batch),
    }
    if op == "linearize":
        if not hasattr(tf, "linearize"):
            return None

        def linearize() -> Any:
            jvp_fn = tf.linearize(p.f, x)[1]
            return [jvp_fn(t) for t in p.tangents[:2]]

        calls["linearize"] = linearize
    del p.calls[:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calls[op]()
    except Exception:  # noqa: BLE001 - torch.func refuses: no count to compare with
        return None
    finally:
        n = len(p.calls)
        del p.calls[:]
    return n


def _reference(op: str, p: CalledProgram, x: torch.Tensor) -> Any:
    """The row-loop reference of ``op`` at ``x`` (the caller seeds the generator)."""
    if op == "vmap_jacrev":
        return torch.stack([ref_jacrev(p.f)(x[b]).detach() for b in range(x.shape[0])])
    if op == "jacfwd_jacrev":
        return ref_jacrev(ref_jacrev(p.f))(x).detach()
    if op in ("vmap", "vmap_same"):
        if op == "vmap_same":  # one draw shared by every sample: replay it for each
            state = torch.get_rng_state()
            rows = []
            for b in range(x.shape[0]):
                torch.set_rng_state(state)
                rows.append(p.f(x[b]).detach())
            return torch.stack(rows)
        return torch.stack([p.f(x[b]).detach() for b in range(x.shape[0])])
    scalar = op in ("hessian", "grad", "grad_and_value", "hvp")
    box: List[torch.Tensor] = []

    def g(z: torch.Tensor) -> torch.Tensor:
        box.append(p.s(z) if scalar else p.f(z))
        return box[-1]

    if op == "hessian" or op == "hvp":
        h = ref_jacrev(ref_jacrev(g))(x).detach()
        if op == "hessian":
            return h
        return box[0].detach(), (h @ p.t,)
    jac = ref_jacrev(g)(x).detach()
    out = box[0].detach()
    if op == "grad":
        return jac
    if op == "grad_and_value":
        return jac, out
    if op == "vjp":
        return out, (p.c @ jac,)
    if op == "jvp":
        return out, jac @ p.t
    if op == "linearize":
        return (out,) + tuple(jac @ t for t in p.tangents[:2])
    return jac  # jacrev, jacfwd, jacobian_*, jacfwd_same


# -- counters -----------------------------------------------------------------------------


class CountedCase:
    def __init__(self, program: CalledProgram, op: str) -> None:
        self.program, self.op = program, op

    def __repr__(self) -> str:
        return f"CountedCase(op={self.op!r}, called {CALLS} times,\n  {self.program!r})"


@st.composite
def counted_cases(draw: st.DrawFn, ops: Sequence[str] = COUNTED_OPERATORS) -> CountedCase:
    """A deterministic :class:`CalledProgram` and one operator of :data:`COUNTED_OPERATORS`."""
    program = draw(called_programs(features=("item", "old_style")))
    return CountedCase(program, draw(st.sampled_from(list(ops))))


def check_counted_calls(case: CountedCase, backends: Backends = None) -> None:
    """Each of three calls returns the reference and runs ``f`` as often as it should.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(counted_cases(ops=("jacrev",)), lambda c: not c.program.features)
    >>> check_counted_calls(case, backends=["autograd"])
    """
    p, op = case.program, case.op
    batched = op in ("vmap", "vmap_jacrev")
    arg = p.batch if batched else p.x
    want = _reference(op, p, arg)
    direct = _direct_count(op, p)
    transforms = set(transform_backends())
    per_sample = arg.shape[0] if batched else 1
    for backend in backends_and_auto(backends):
        fn = _library(op, p, backend)
        for k in range(CALLS):
            what = f"{op}(backend={backend!r}), call {k + 1} of {CALLS}\n{case!r}"
            del p.calls[:]
            got, error = call_quietly(fn, arg.clone(), ignore=BackendFallbackWarning)
            n = len(p.calls)
            if error is not None:
                assert backend in transforms and p.untransformable, (
                    f"{what}: raised {describe(error)}"
                )
                break
            assert_close_in_dtype(got, want, p.dtype, what)
            if backend in transforms and op == "linearize":
                # once on every backend (torch.func.linearize runs it a second time, traced)
                assert n == 1, f"{what}: f ran {n} times, not once"
            elif backend in transforms:
                assert direct is None or n == direct, (
                    f"{what}: f ran {n} times; torch.func runs it {direct} times"
                )
            elif backend is None:
                allowed = {1, per_sample}
                assert n in allowed, f"{what}: f ran {n} times, not {sorted(allowed)}"
            else:
                assert n == per_sample, f"{what}: f ran {n} times, not {per_sample}"


# -- random draws through cached choices ----------------------------------------------------


class RandomCase:
    def __init__(self, program: CalledProgram, op: str, seed: int) -> None:
        self.program, self.op, self.seed = program, op, seed

    def __repr__(self) -> str:
        return (
            f"RandomCase(op={self.op!r}, called {CALLS} times from seeds {self.seed} + k,\n"
            f"  {self.program!r})"
        )


@st.composite
def random_cases(draw: st.DrawFn, ops: Sequence[str] = RANDOM_OPERATORS) -> RandomCase:
    """A :class:`CalledProgram` drawing random numbers and one of :data:`RANDOM_OPERATORS`."""
    program = draw(called_programs(features=("item", "old_style"), always=("random",)))
    return RandomCase(program, draw(st.sampled_from(list(ops))), draw(st.integers(0, 2**16)))


def check_random_calls(case: RandomCase, backends: Backends = None) -> None:
    """Three calls from known seeds: values of the same draws, the RNG moved as one call.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(random_cases(ops=("jacrev",)), lambda c: True)
    >>> check_random_calls(case, backends=["autograd"])
    """
    p, op = case.program, case.op
    arg = p.batch if op == "vmap_same" else p.x
    transforms = set(transform_backends())
    wants, states = [], []
    for k in range(CALLS):
        torch.manual_seed(case.seed + k)
        wants.append(_reference(op, p, arg))
        torch.manual_seed(case.seed + k)
        (p.f(arg[0]) if op == "vmap_same" else p.f(arg))  # one eager call
        states.append(torch.get_rng_state())
    for backend in backends_and_auto(backends):
        fn = _library(op, p, backend)
        for k in range(CALLS):
            what = f"{op}(backend={backend!r}), call {k + 1} of {CALLS} from seed {case.seed + k}"
            what += f"\n{case!r}"
            torch.manual_seed(case.seed + k)
            del p.calls[:]
            got, error = call_quietly(fn, arg.clone(), ignore=BackendFallbackWarning)
            if error is not None:
                assert backend in transforms and p.untransformable, (
                    f"{what}: raised {describe(error)}"
                )
                break
            assert_close_in_dtype(
                got, wants[k], p.dtype, what + "\n  (vs the reference from the seed)"
            )
            assert torch.equal(torch.get_rng_state(), states[k]), (
                f"{what}: the generator is not where one eager call of f leaves it"
            )
            if backend not in transforms and op != "vmap_same":
                assert len(p.calls) == 1, f"{what}: f ran {len(p.calls)} times, not once"
