"""Fuzz cases for the derivative products, and the finite-difference check of forward mode.

:func:`product_cases` draws :class:`~tad_autograd.testing._fuzz.case.FuzzCase`
objects for one operator of
:data:`~tad_autograd.testing._fuzz.products.PRODUCT_OPERATORS`: a program with
hard features (:func:`~tad_autograd.testing._fuzz.programs.fuzz_programs`), its
``argnums``, tangents and cotangents, ``has_aux``, ``jacobian``'s ``mode``,
``jacfwd``'s ``randomness``, a ``chunk_size``, a calling context and an input
kind.  :func:`check_forward_finite_differences` validates the forward-mode
reference (the row loop times the tangents) with central finite differences
in float64.

Which programs each operator gets, and why:

* ``jacobian`` and ``jacfwd_jacrev`` get no random programs: ``jacobian`` has
  no ``randomness`` argument and is called twice, ``jacfwd_jacrev`` would need
  ``randomness`` settings for two transforms (``jacfwd`` covers randomness);
* ``jacfwd`` of a random program runs with ``randomness="error"`` (every
  backend must raise ``RuntimeError``, as :func:`torch.func.jacfwd` does) or
  ``"same"`` (one draw for every column: the row-loop Jacobian); never
  ``"different"``, whose columns see different draws and so are no Jacobian;
* ``linearize`` gets seeded random programs only: its ``jvp_fn`` evaluates the
  function again (as :func:`torch.func.linearize` replays its trace), so a
  function drawing fresh numbers from the caller's generator on each call has
  no single linearisation to compare with.

Examples
--------
>>> from hypothesis import given, settings
>>> @settings(max_examples=3, deadline=None, database=None)
... @given(product_cases("jvp"))
... def check(case):
...     nums = case.argnums if isinstance(case.argnums, tuple) else (case.argnums,)
...     assert len(case.tangents) == len(nums)  # one per differentiated argument
>>> check()
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence

import torch
from hypothesis import strategies as st

from ...compat._pytree import tree_flatten, tree_unflatten
from ..operators import REFERENCE, ref_jacrev
from ..reference import map_tensors
from .case import FuzzCase
from .products import FORWARD_OPERATORS, PRODUCT_OPERATORS, build_product, scalarised
from .programs import CONTEXTS, FEATURES, INPUT_KINDS, FuzzProgram, fuzz_programs
from .support import argnum_positions, fixed_seed

__all__ = ["product_cases", "expects_random_error", "check_forward_finite_differences"]

#: Operators with a ``has_aux`` argument.
HAS_AUX = frozenset({"grad", "grad_and_value", "vjp", "jvp", "jacfwd", "jacobian"})
#: Operators with a ``chunk_size`` argument.
CHUNKED = frozenset({"jacfwd", "jacobian", "jacfwd_jacrev"})
#: Operators that get no random programs.
NO_RANDOM = frozenset({"jacobian", "jacfwd_jacrev"})
#: Operators that take half-precision programs now and then.
HALF = frozenset({"grad", "vjp", "jvp", "jacfwd"})

_SEED = 1234
_FD_EPS = 1e-6


def _uniform(like: torch.Tensor, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    values = torch.rand(like.shape, generator=gen, dtype=torch.float64) * 2 - 1
    return values.to(dtype=dtype, device=like.device)


def _outputs(program: FuzzProgram) -> Any:
    """The program's output at its example arguments (the caller's generator untouched)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        program.reset()
        out = program(*program.args)
    program.reset()
    return out


@st.composite
def product_cases(
    draw: st.DrawFn,
    op: str,
    *,
    features: Sequence[str] = FEATURES,
    contexts: Sequence[str] = CONTEXTS,
    input_kinds: Sequence[str] = INPUT_KINDS,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    half: bool = True,
) -> FuzzCase:
    """Random :class:`FuzzCase` objects for the product operator ``op``.

    ``half``: a quarter of the cases of the operators in :data:`HALF` take
    and return float16 or bfloat16.

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(product_cases("jacobian", half=False), lambda c: c.mode == "forward")
    >>> case.cotangents is not None
    True
    """
    if op not in PRODUCT_OPERATORS:
        raise ValueError(f"op must be one of {PRODUCT_OPERATORS}, got {op!r}")
    feats = [f for f in features if not (f == "random" and op in NO_RANDOM)]
    use_half = half and op in HALF and torch.float32 in dtypes and draw(st.integers(0, 3)) == 0
    small = op in ("hvp", "jacfwd_jacrev")
    prog = draw(fuzz_programs(features=feats, small=small, half=use_half, dtypes=dtypes))
    if op == "linearize" and prog.options.get("random") == "global":
        options = {**prog.options, "random": "seeded"}
        prog = FuzzProgram(prog.base, prog.features, options, prog.io_dtype)
    random = "random" in prog.features
    kw: Any = dict(program=prog, op=op, args=prog.args, argnums=prog.argnums)
    kw["has_aux"] = op in HAS_AUX and draw(st.booleans())
    if op == "jacobian":
        kw["mode"] = draw(st.sampled_from(["auto", "forward", "reverse"]))
    if op == "jacfwd":
        kw["randomness"] = draw(
            st.sampled_from(["error", "same"] if random else ["error", "same", "different"])
        )
    if op in CHUNKED:
        kw["chunk_size"] = draw(st.one_of(st.none(), st.integers(1, 4)))
    if op == "jacfwd_jacrev":
        kw["outer_argnums"] = draw(st.sampled_from(list(prog.base.tensor_argnums)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    positions = argnum_positions(prog.argnums, len(prog.args))
    kw["tangents"] = tuple(
        map_tensors(lambda t: _uniform(t, gen, prog.io_dtype), prog.args[p]) for p in positions
    )
    kw["cotangents"] = map_tensors(lambda t: _uniform(t, gen, prog.io_dtype), _outputs(prog))
    kw["context"] = draw(st.sampled_from(list(contexts)))
    kw["input_kind"] = draw(st.sampled_from(list(input_kinds)))
    return FuzzCase(**kw)


def expects_random_error(case: FuzzCase) -> bool:
    """Whether every backend must raise: ``jacfwd(randomness="error")`` of a random program."""
    return (
        case.op == "jacfwd"
        and case.randomness == "error"
        and "random" in getattr(case.program, "features", ())
    )


def check_forward_finite_differences(case: FuzzCase) -> None:
    """The reference of a float64 ``jvp``/``linearize``/``hvp`` case equals central finite
    differences along its tangents (of the output, or of the row-loop gradient for ``hvp``).

    Every evaluation starts from the same seed and a fresh captured buffer, so
    random and in-place programs are the same function each time.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import find
    >>> case = find(product_cases("jvp", dtypes=(torch.float64,)), lambda c: True)
    >>> check_forward_finite_differences(case)
    """
    prog = case.program
    if prog.io_dtype != torch.float64 or case.op not in FORWARD_OPERATORS:
        raise ValueError(f"needs a float64 case of {sorted(FORWARD_OPERATORS)}, got {case.op!r}")
    args = tuple(case.args)
    positions = argnum_positions(case.argnums, len(args))
    scalar = scalarised(prog, case.cotangents)
    everything = tuple(range(len(positions)))

    def evaluate(step: float) -> List[torch.Tensor]:
        shifted = list(args)
        for p, t in zip(positions, case.tangents):
            leaves, spec = tree_flatten(args[p])
            moved = [x + step * d for x, d in zip(leaves, tree_flatten(t)[0])]
            shifted[p] = tree_unflatten(moved, spec)
        prog.reset()
        with fixed_seed(_SEED):
            if case.op != "hvp":
                return [o.detach() for o in tree_flatten(prog(*shifted))[0]]

            def bound(*primals: Any) -> Any:
                new_args = list(shifted)
                for p, v in zip(positions, primals):
                    new_args[p] = v
                return scalar(*new_args)

            gradient = ref_jacrev(bound, everything)(*(shifted[p] for p in positions))
            return [g.detach() for g in tree_flatten(gradient)[0]]

    plus, minus = evaluate(_FD_EPS), evaluate(-_FD_EPS)
    numerical = [(a - b) / (2 * _FD_EPS) for a, b in zip(plus, minus)]
    if "control_flow" in getattr(prog, "features", ()) and _branch_flips(evaluate, numerical):
        return  # a data-dependent branch switches within the step: no derivative to compare
    prog.reset()
    with fixed_seed(_SEED):
        product = build_product(
            REFERENCE,
            case.op,
            prog,
            argnums=case.argnums,
            tangents=case.tangents,
            cotangents=case.cotangents,
        )(*args)[1]
    analytic = [p.detach() for p in tree_flatten(product)[0]]
    assert len(analytic) == len(numerical), f"{len(analytic)} != {len(numerical)} leaves\n{case!r}"
    for i, (a, n) in enumerate(zip(analytic, numerical)):
        where = f"{case.op} reference, leaf {i} vs finite differences"
        torch.testing.assert_close(a, n, rtol=1e-4, atol=1e-6, msg=_message(where, case))


def _branch_flips(
    evaluate: Callable[[float], List[torch.Tensor]], numerical: List[torch.Tensor]
) -> bool:
    """Whether differences over a quarter of the step disagree with ``numerical``: the
    program's ``if`` on a value that is zero up to rounding took the other branch."""
    quarter = _FD_EPS / 4
    finer = [(a - b) / (2 * quarter) for a, b in zip(evaluate(quarter), evaluate(-quarter))]
    return not all(
        torch.allclose(f, n, rtol=1e-3, atol=1e-4, equal_nan=True) for f, n in zip(finer, numerical)
    )


def _message(where: str, case: FuzzCase) -> Callable[[str], str]:
    return lambda m: f"{where}: {m}\n{case!r}"
