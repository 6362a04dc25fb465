"""Library bugs the fuzzer has found and reported, not fixed yet: each recognised exactly.

When :func:`~tad_autograd.testing.fuzz_checks.check_case` finds a backend's
outcome wrong, :func:`pending_bug` says whether the failure is one of the
reported bugs in :data:`PENDING`: each entry holds a precise test of the
failure (the same call with the bug's trigger removed passes, or the result
differs from the reference only in the way the bug describes), so any other
failure on the same case still fails the test.  Every recognised failure is
counted in :data:`PENDING_HITS`, which ``tests/fuzz/conftest.py`` prints at
the end of the run.  Delete an entry once the library is fixed: the fuzzer is
strict about it again.

Examples
--------
>>> "float64 tangents" in PENDING
True
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Callable, Dict, FrozenSet, List, Optional

import torch

from .._pytree import tree_flatten, tree_unflatten
from .._torch_info import TORCH_VERSION
from .fuzz_case import FuzzCase

__all__ = ["PENDING", "PENDING_HITS", "pending_bug"]

#: The reported bugs, by name: what goes wrong, and a minimal reproducer.
PENDING: Dict[str, str] = {
    "requires_grad of products": (
        "requires_grad differs from torch.func's: vjp under no_grad/inference_mode returns an "
        "output that is a captured leaf requiring grad without requires_grad (torch.func: the "
        "leaf itself); jvp/linearize under no_grad of a custom autograd.Function of a captured "
        "leaf (torch.func.jvp's primal output requires grad); on the autograd backend and in "
        "automatic mode, results that do not depend on the inputs carry no graph where "
        "torch.func's carry the inputs' graph: hvp's H t of f = x * x, and jacfwd's, "
        "jacobian's (forward) and linearize's blocks of outputs linear in the inputs "
        "(jacfwd(lambda x, k: (x / k, x.sin()))(x, 1) with x requiring grad: [False, True], "
        "torch.func.jacfwd: [True, True])"
    ),
}

#: How often each entry of :data:`PENDING` was recognised in this process.
PENDING_HITS: Counter = Counter()  # type: ignore[type-arg]

_FORWARD = frozenset({"jvp", "linearize", "jacfwd", "jacobian", "hvp", "jacfwd_jacrev"})
#: Operators whose eager results lose the inputs' graph where they do not depend on them.
_GRAPHLESS_EAGER = frozenset({"hvp", "jacfwd", "jacobian", "linearize", "jacfwd_jacrev"})


def _negative(argnums: Any) -> bool:
    return any(a < 0 for a in ((argnums,) if isinstance(argnums, int) else argnums))


def _non_negative(argnums: Any, n: int) -> Any:
    if isinstance(argnums, int):
        return argnums % n
    return tuple(a % n for a in argnums)


def _float32_again(value: Any, expected: Any) -> Any:
    """``value`` with its float64 leaves cast to float32 where ``expected`` has float32
    (``value`` itself where there are none)."""
    leaves, spec = tree_flatten(value)
    wanted = tree_flatten(expected)[0]

    def wrong(v: Any, w: Any) -> bool:
        return (
            isinstance(v, torch.Tensor)
            and isinstance(w, torch.Tensor)
            and (v.dtype, w.dtype) == (torch.float64, torch.float32)
        )

    if len(leaves) != len(wanted) or not any(wrong(v, w) for v, w in zip(leaves, wanted)):
        return value
    return tree_unflatten(
        [v.to(torch.float32) if wrong(v, w) else v for v, w in zip(leaves, wanted)], spec
    )


def pending_bug(case: FuzzCase, backend: Optional[str], lib: Any, judged: Any) -> Optional[str]:
    """The :data:`PENDING` entries that explain a failed check of ``backend`` on ``case``.

    ``lib`` is the backend's outcome; ``judged`` (of
    :mod:`~tad_autograd.testing.fuzz_checks`) knows the reference, tells the kind of
    check an outcome fails (``failure(case, backend, outcome)``), runs the library
    again (``rerun``) and judges another case (``again(case)``).  The failure is
    explained when removing the triggers of some entries (one at a time, each at
    most once) leaves an outcome that passes every check; their names, joined by
    ``" + "``, are returned and counted.
    """
    names = _explain(case, backend, lib, judged, frozenset(_TRIGGERS))
    if not names:
        return None
    for name in names:
        PENDING_HITS[name] += 1
    return " + ".join(names)


def _explain(
    case: FuzzCase, backend: Optional[str], lib: Any, judged: Any, triggers: FrozenSet[str]
) -> Optional[List[str]]:
    kind = judged.failure(case, backend, lib)
    if kind is None:
        return []
    # failures of the outcome itself
    if kind == "value" and case.op in _FORWARD and "float64 tangents" in PENDING:
        cast = copy.copy(lib)
        cast.value = _float32_again(lib.value, judged.expected)
        if cast.value is not lib.value:
            rest = _explain(case, backend, cast, judged, triggers)
            if rest is not None:
                return ["float64 tangents", *rest]
    if kind == "requires_grad":
        got, want = judged.requires_grad(lib)
        only_lost = all(g == w or (w and not g) for g, w in zip(got, want))
        quiet = case.context in ("no_grad", "inference_mode")
        if (case.op in ("vjp", "jvp", "linearize") and quiet) or (
            case.op in _GRAPHLESS_EAGER and backend in ("autograd", None) and only_lost
        ):
            return _if_pending("requires_grad of products")
    # failures of a call: the same call without the trigger
    for name in sorted(triggers):
        fixed = _TRIGGERS[name](case, backend) if name in PENDING else None
        if fixed is not None:
            again = judged.again(fixed)
            rest = _explain(fixed, backend, again.rerun(fixed, backend), again, triggers - {name})
            if rest is not None:
                return [name, *rest]
    return None


def _if_pending(name: str) -> Optional[List[str]]:
    return [name] if name in PENDING else None


def _unchunked(case: FuzzCase) -> FuzzCase:
    fixed = copy.copy(case)
    fixed.chunk_size = None
    return fixed


def _without_chunks_of_one(case: FuzzCase, backend: Optional[str]) -> Optional[FuzzCase]:
    if backend != "functorch" or TORCH_VERSION.major >= 2 or case.chunk_size is None:
        return None
    return _unchunked(case) if case.op in ("jacfwd", "jacobian", "jacfwd_jacrev") else None


def _in_float32(case: FuzzCase, backend: Optional[str]) -> Optional[FuzzCase]:
    prog = case.program
    feats: FrozenSet[str] = getattr(prog, "features", frozenset())
    if prog.io_dtype not in (torch.float16, torch.bfloat16) or backend not in ("autograd", None):
        return None
    if not feats & {"old_style_function", "new_style_function"} or case.op not in _FORWARD:
        return None
    fixed = copy.copy(case)
    fixed.program = prog.with_io_dtype(torch.float32)
    fixed.args = prog.cast_args(case.args, torch.float32)
    return fixed


#: The entries whose trigger is a property of the call, and the call without it.
_TRIGGERS: Dict[str, Callable[[FuzzCase, Optional[str]], Optional[FuzzCase]]] = {
    "chunked jacfwd, functorch 1.13": _without_chunks_of_one,
    "forward-mode fallback in half precision": _in_float32,
}
