"""Running one fuzz case in one namespace: inputs of a kind, a calling context, side effects.

:func:`run_operator` builds the case's operator in a namespace of
:mod:`~tad_autograd.testing.operators` (the reference, ``torch.func``, or
``tad_autograd`` with one backend), calls it on fresh inputs of the case's
kind (:func:`prepare_inputs`) inside a calling context, and records the
value or the exception, the ``BackendFallbackWarning`` warnings, the
RNG state before and after, and every change to what the caller owns.
:mod:`~tad_autograd.testing._fuzz.checks` judges the outcomes.

Examples
--------
>>> import torch
>>> from hypothesis import find
>>> from tad_autograd.testing._fuzz.case import fuzz_cases
>>> from tad_autograd.testing.operators import REFERENCE
>>> case = find(fuzz_cases("jacrev", features=()), lambda c: True)
>>> outcome = run_operator(REFERENCE, case, case.program, case.args, "leaf", "no_grad")
>>> outcome.error is None and not outcome.side_effects
True
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch

from ...compat._pytree import tree_flatten
from ..operators import LibraryOps, build_operator
from ..reference import map_tensors
from . import support
from .case import FuzzCase
from .products import PRODUCT_OPERATORS, build_product

__all__ = ["Outcome", "prepare_inputs", "run_operator", "SEED"]

#: The seed of the global generator before every run.
SEED = 1234


def prepare_inputs(args: Any, kind: str) -> Tuple[Any, List[torch.Tensor]]:
    """Fresh copies of ``args`` of input ``kind``, and every tensor the caller owns.

    ``kind``: ``plain``, ``leaf`` (requires grad), ``nonleaf`` (``base * 1``),
    ``view`` (a strided slice of a bigger tensor).

    Examples
    --------
    >>> import torch
    >>> (x,), owned = prepare_inputs((torch.ones(2),), "view")
    >>> x.is_contiguous(), len(owned)
    (False, 2)
    """
    owned: List[torch.Tensor] = []

    def one(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        t = t.detach().clone()
        if kind == "leaf":
            t.requires_grad_(True)
        elif kind == "nonleaf":
            base = t.requires_grad_(True)
            owned.append(base)
            t = base * 1
        elif kind == "view":
            big = torch.stack([t, torch.zeros_like(t)], dim=-1)
            owned.append(big)
            t = big[..., 0]
        elif kind != "plain":
            raise ValueError(f"unknown input kind {kind!r}")
        owned.append(t)
        return t

    return map_tensors(one, args), owned


class Outcome:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.fallback_warnings: List[str] = []
        self.side_effects: List[str] = []
        self.rng_before: Optional[torch.Tensor] = None
        self.rng_after: Optional[torch.Tensor] = None
        #: The tensors the operator was called with (pytree leaves).
        self.inputs: List[torch.Tensor] = []


def _snapshot(owned: List[torch.Tensor]) -> List[Tuple[Any, ...]]:
    return [(t.detach().clone(), t.requires_grad, _grad(t), t._version) for t in owned]


def _grad(t: torch.Tensor) -> Optional[torch.Tensor]:
    if not t.is_leaf or t.grad is None:
        return None
    return t.grad.clone()


def _diff_snapshot(owned: List[torch.Tensor], snap: List[Tuple[Any, ...]]) -> List[str]:
    problems = []
    for i, (t, (val, rg, grad, ver)) in enumerate(zip(owned, snap)):
        if not torch.equal(t.detach(), val):
            problems.append(f"input tensor #{i} changed its values")
        if t.requires_grad != rg:
            problems.append(f"input tensor #{i}: requires_grad {rg} -> {t.requires_grad}")
        now = _grad(t)
        if (now is None) != (grad is None) or (
            now is not None and grad is not None and not torch.equal(now, grad)
        ):
            problems.append(f"input tensor #{i}: .grad changed")
        if t._version != ver:
            problems.append(f"input tensor #{i}: _version {ver} -> {t._version}")
    return problems


#: The start of torch's warning that an op has no batching rule (a slower loop).
_NO_BATCHING_RULE = "There is a performance drop because we have not yet implemented"


def _aux_param(case: FuzzCase, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(1.25, dtype=dtype, device=case.program.device, requires_grad=True)


def _operator(ns: Any, case: FuzzCase, program: Any, w: torch.Tensor) -> Callable[..., Any]:
    if case.op in PRODUCT_OPERATORS:

        def cast(tree: Any) -> Any:
            return program.cast_args(tree, program.io_dtype)

        return build_product(
            ns,
            case.op,
            program,
            argnums=case.argnums,
            has_aux=case.has_aux,
            mode=case.mode,
            randomness=case.randomness,
            tangents=cast(case.tangents),
            cotangents=cast(case.cotangents),
            aux_weight=w,
            outer_argnums=case.outer_argnums,
        )
    return build_operator(
        ns,
        case.op,
        _function(case, program, w),
        argnums=case.argnums,
        outer_argnums=case.outer_argnums,
        in_dims=case.in_dims,
        out_dims=case.out_dims,
    )


def _function(case: FuzzCase, program: Any, w: torch.Tensor) -> Callable[..., Any]:
    if case.op != "jacrev_aux":
        return program  # type: ignore[no-any-return]

    def with_aux(*args: Any) -> Any:
        out = program(*args)
        return out, {"aux": tree_flatten(out)[0][-1].sum() * w}

    return with_aux


def run_operator(
    ns: Any, case: FuzzCase, program: Any, args: Any, kind: str, context: str
) -> Outcome:
    """Run ``case``'s operator of ``program`` in namespace ``ns`` on ``args`` of input ``kind``
    inside calling ``context``; every exception is recorded, never raised."""
    from tad_autograd import BackendFallbackWarning

    res = Outcome()
    program.reset()
    call_args, owned = prepare_inputs(args, kind)
    res.inputs = [t for t in tree_flatten(call_args)[0] if isinstance(t, torch.Tensor)]
    w = _aux_param(case, program.io_dtype)
    fn = _operator(ns, case, program, w)
    snap = _snapshot(owned + [w])
    torch.manual_seed(SEED)
    res.rng_before = torch.get_rng_state()
    with support.context(context):
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        with warnings.catch_warnings(record=True) as rec:
            # torch's own warnings in the references are not the library's
            warnings.simplefilter("error" if isinstance(ns, LibraryOps) else "ignore")
            # torch's note that a batching rule is missing (slow, not wrong) is not a fault
            warnings.filterwarnings("ignore", _NO_BATCHING_RULE, UserWarning)
            warnings.simplefilter("always", BackendFallbackWarning)
            try:
                res.value = fn(*call_args)
            except Exception as exc:  # judged by the caller, never swallowed
                res.error = exc
        after = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    res.rng_after = torch.get_rng_state()
    if after != modes:
        res.side_effects.append(f"(grad mode, inference mode) {modes} -> {after}")
    res.side_effects += _diff_snapshot(owned + [w], snap)
    res.fallback_warnings = [str(r.message) for r in rec]
    return res
