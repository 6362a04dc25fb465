"""Forward-mode failures of the OpInfo sweep that the library does not yet work around.

Each kind of :data:`PENDING` is reported with figures; :func:`pending` tells
which kind a failing cell is, from what the sweep measured (never from an
op's name), so that ``test_opdb_rules`` lets exactly those cells pass and
``test_opdb_counts`` labels them.  Delete a kind once the library handles it
(``test_pending_failures_still_occur`` says when it no longer occurs).
"""

from __future__ import annotations

from _opdb_forward import FORWARD, FORWARD_AD
from _opdb_sweep import CaseResult, Outcome

#: Forward-mode failures the library does not yet work around (reported with figures).
PENDING = {
    "forward formula": (
        "jacfwd/jvp wrong where torch's own dual numbers are just as wrong: torch's "
        "forward-mode formula for the op is wrong (scatter_reduce with reduce='prod' drops the "
        "tangent; nn.functional.linear_cross_entropy with chunking options on 2.13; "
        "logcumsumexp and cholesky_inverse off by 1e-6 to 1e-5), on every backend; automatic "
        "mode and the autograd backend would need a table of such ops to go reverse"
    ),
}


def pending(r: CaseResult, o: Outcome, transform: str, mode: str) -> str | None:
    """The :data:`PENDING` kind a failing cell belongs to, if any."""
    if o.kind == "wrong" and inherited(r, transform, "wrong"):
        return "forward formula"
    return None


def inherited(result: CaseResult, transform: str, kind: str) -> bool:
    """Whether torch's own dual numbers (no library) fail the same way on the case.

    A forward-mode result that is wrong where plain :mod:`torch.autograd.forward_ad`
    is wrong too comes from torch's forward-mode formula for the op, which every
    backend pushing tangents inherits (not from batching it); the report lists them.
    The dual numbers run ``jvp`` only (one pass, along an irregular tangent): where
    ``J t`` is wrong, so is ``J``, and ``jacfwd`` is judged by it too.
    """
    o = result.outcomes.get(("jvp", FORWARD_AD))
    return transform in FORWARD and o is not None and o.kind == kind
