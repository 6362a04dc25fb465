"""Whole fuzz cases: a program, an operator and how it is called.

:func:`fuzz_cases` draws :class:`FuzzCase` objects for one operator of
:data:`~tad_autograd.testing._fuzz.programs.OPERATORS`;
:func:`check_finite_differences` validates the row-loop reference of a case
with ``torch.autograd.gradcheck`` (float64 finite differences).

Examples
--------
>>> from hypothesis import find
>>> find(fuzz_cases("jacrev_vmap"), lambda case: True).op
'jacrev_vmap'
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from hypothesis import strategies as st

from ..reference import flat_function, map_tensors
from ..strategies import VmapCall, vmap_calls
from .programs import (
    CONTEXTS,
    FEATURES,
    INPUT_KINDS,
    OPERATORS,
    VMAP_OPERATORS,
    FuzzProgram,
    fuzz_programs,
)
from .support import fixed_seed

__all__ = ["FuzzCase", "fuzz_cases", "check_finite_differences"]

_SEED = 1234


class FuzzCase:
    """One fuzz case: a program, an operator and how it is called.

    Attributes
    ----------
    program : FuzzProgram
    op : str
        One of :data:`OPERATORS` or of
        :data:`~tad_autograd.testing._fuzz.products.PRODUCT_OPERATORS`.
    args : tuple
        Positional arguments (batched for the operators in :data:`VMAP_OPERATORS`).
    argnums, outer_argnums
        ``argnums`` of the (inner) ``jacrev``/``hessian``; ``outer_argnums``
        of the outer ``jacrev`` in ``jacrev_jacrev``.
    has_aux, mode, randomness, tangents, cotangents
        For the derivative products (:mod:`~tad_autograd.testing._fuzz.products`):
        ``tangents`` shaped like the arguments at ``argnums`` (a tuple),
        ``cotangents`` like the program's output.
    in_dims, out_dims, chunk_size
        For the ``vmap`` operators.
    context, input_kind : str
        From :data:`CONTEXTS` and :data:`INPUT_KINDS`.
    """

    def __init__(self, **kw: Any) -> None:
        self.program: FuzzProgram = kw.pop("program")
        self.op: str = kw.pop("op")
        self.args: Tuple[Any, ...] = kw.pop("args")
        self.argnums: Any = kw.pop("argnums")
        self.outer_argnums: Any = kw.pop("outer_argnums", 0)
        self.in_dims: Any = kw.pop("in_dims", 0)
        self.out_dims: Any = kw.pop("out_dims", 0)
        self.chunk_size: Optional[int] = kw.pop("chunk_size", None)
        self.has_aux: bool = kw.pop("has_aux", False)
        self.mode: str = kw.pop("mode", "auto")
        self.randomness: str = kw.pop("randomness", "error")
        self.tangents: Any = kw.pop("tangents", None)
        self.cotangents: Any = kw.pop("cotangents", None)
        self.context: str = kw.pop("context")
        self.input_kind: str = kw.pop("input_kind")
        if kw:
            raise TypeError(f"unknown FuzzCase fields {sorted(kw)}")

    def __repr__(self) -> str:
        shapes = map_tensors(lambda t: tuple(t.shape), self.args)
        products = ""
        if self.tangents is not None or self.cotangents is not None:
            products = (
                f"has_aux={self.has_aux!r}, mode={self.mode!r}, randomness={self.randomness!r},\n"
                f"  tangents={self.tangents!r},\n  cotangents={self.cotangents!r},\n  "
            )
        return (
            f"FuzzCase(op={self.op!r}, argnums={self.argnums!r}, {products}"
            f"outer_argnums={self.outer_argnums!r}, in_dims={self.in_dims!r}, "
            f"out_dims={self.out_dims!r}, chunk_size={self.chunk_size!r}, "
            f"context={self.context!r}, input_kind={self.input_kind!r}, arg_shapes={shapes},\n"
            f"  program={self.program!r})"
        )


@st.composite
def fuzz_cases(
    draw: st.DrawFn,
    op: str,
    *,
    features: Sequence[str] = FEATURES,
    contexts: Sequence[str] = CONTEXTS,
    input_kinds: Sequence[str] = INPUT_KINDS,
    half: bool = False,
) -> FuzzCase:
    """Random :class:`FuzzCase` objects for operator ``op``.

    Random programs are kept away from the operators that run the function
    under ``vmap`` (``hessian`` and the ``vmap`` compositions need
    ``randomness=`` settings, tested separately).

    Examples
    --------
    >>> from hypothesis import find
    >>> case = find(fuzz_cases("vmap_jacrev", contexts=("no_grad",)), lambda c: True)
    >>> case.context
    'no_grad'
    """
    if op not in OPERATORS:
        raise ValueError(f"op must be one of {OPERATORS}, got {op!r}")
    feats = [f for f in features if not (f == "random" and op not in ("jacrev", "jacrev_aux"))]
    small = op not in ("jacrev", "jacrev_aux", "vmap")
    prog = draw(fuzz_programs(features=feats, small=small, half=half))
    context = draw(st.sampled_from(list(contexts)))
    input_kind = draw(st.sampled_from(list(input_kinds)))
    kw: Dict[str, Any] = dict(program=prog, op=op, context=context, input_kind=input_kind)
    kw["argnums"] = prog.argnums
    if op in VMAP_OPERATORS:
        call: VmapCall = draw(
            vmap_calls(
                st.just(prog.base),
                with_kwargs=False,
                random_out_dims=op in ("vmap", "jacrev_vmap"),
                max_batch_size=3,
            )
        )
        kw.update(
            args=prog.cast_args(call.args, prog.io_dtype),
            in_dims=call.in_dims,
            out_dims=call.out_dims,
            chunk_size=call.chunk_size,
        )
    else:
        kw["args"] = prog.args
        kw["chunk_size"] = draw(st.one_of(st.none(), st.integers(1, 4)))
    if op == "jacrev_jacrev":
        kw["outer_argnums"] = draw(st.sampled_from(list(prog.base.tensor_argnums)))
    return FuzzCase(**kw)


def check_finite_differences(case: FuzzCase) -> None:
    """``torch.autograd.gradcheck`` (float64 finite differences) passes on the case's
    eager function, so the row-loop reference that :func:`check_case` compares
    every backend with is itself right.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import find
    >>> from tad_autograd.testing._fuzz.case import fuzz_cases
    >>> case = find(fuzz_cases("jacrev"), lambda c: c.program.dtype == torch.float64)
    >>> check_finite_differences(case)
    """
    prog = case.program
    if prog.dtype != torch.float64:
        raise ValueError(f"finite differences need float64, got {prog.dtype}")
    prog.reset()
    flat_func, flat_in, _ = flat_function(prog, case.args, case.argnums)

    def reseeded(*xs: Any) -> Any:
        prog.reset()  # a fresh captured buffer: no history from the previous evaluation
        with fixed_seed(_SEED):
            return flat_func(*xs)

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in flat_in)
    assert torch.autograd.gradcheck(
        reseeded, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, raise_exception=True
    ), f"gradcheck failed\n{case!r}"
