"""PyTorch's OpInfo database under every transform (CONTRACT §3, §7).

Every differentiable op of ``op_db`` (its first ``SAMPLES_PER_OP`` float64
CPU samples within the bounds of ``_opdb_cases``) runs under ``jacrev``,
``vmap``, ``vmap(jacrev)``, ``jacfwd`` and ``jvp`` on every available backend
and in automatic mode, against independent references (forward mode against
the reverse-mode row loop); ``conftest.py`` runs the sweep once.  ``vmap``
runs over a batch of three samples with ``randomness="error"``: a random op
must raise or agree.  The rules, one test each and per transform:

* the explicit ``"autograd"`` backend agrees with the independent reference
  wherever that works (an error is a failure);
* an explicit function-transform backend agrees or raises; a wrong number is
  allowed only for an op of ``BATCHING_DEFECTS`` on this torch
  (``test_opdb_defects`` checks that those really are wrong);
* automatic mode agrees everywhere: never an error, never a wrong number (a
  ``BackendFallbackWarning`` is allowed and counted).

"Agrees" means close to the reference, or to central finite differences where
the reference itself is not (``agree-fd``).

Forward mode is also run with torch's own dual numbers (the ``forward_ad``
pseudo-mode of the sweep, no library), which tells torch's forward-mode
formula for an op from its batching.  A few kinds of forward-mode failure are
known and not yet worked around by the library; :data:`PENDING` describes
them, the rules let exactly those cells pass, ``test_opdb_counts`` lists them,
and ``test_pending_failures_still_occur`` fails once a kind no longer occurs
(then delete its entry, and the rules are strict again).  Any other
forward-mode failure fails the rules: in particular a batched forward mode
that is wrong where the dual numbers are right (a ``BATCHING_DEFECTS`` entry).
"""

from __future__ import annotations

from typing import List, Tuple

import pytest
from _opdb_pending import PENDING, pending
from _opdb_sweep import (
    TRANSFORMS,
    CaseResult,
    Outcome,
    Sweep,
    known_defect,
    suggested_entry,
)

pytestmark = pytest.mark.slow


def _lines(cells: List[Tuple[CaseResult, Outcome]], transform: str, backend: str | None) -> str:
    return "\n".join(
        f"  {r.case.label}: {o.kind}: {o.detail}\n    repro: {r.case.repro(transform, backend)}"
        for r, o in cells
    )


def _not_pending(
    cells: List[Tuple[CaseResult, Outcome]], transform: str, mode: str
) -> List[Tuple[CaseResult, Outcome]]:
    return [(r, o) for r, o in cells if pending(r, o, transform, mode) not in PENDING]


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_autograd_backend_agrees(sweep: Sweep, transform: str) -> None:
    """``backend="autograd"`` agrees wherever the reference works: no error, no wrong number."""
    bad = _not_pending(sweep.cells(transform, "autograd", "error", "wrong"), transform, "autograd")
    assert not bad, (
        f"{transform} with backend='autograd' failed on {len(bad)} ops of op_db "
        f"(torch {sweep.torch_version}):\n" + _lines(bad, transform, "autograd")
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transform_backend_wrong_only_where_known(
    sweep: Sweep, transform_backend: str, transform: str
) -> None:
    """A transform backend agrees or raises; a wrong number only for a known batching defect."""
    unknown = [
        (r, o)
        for r, o in _not_pending(
            sweep.cells(transform, transform_backend, "wrong"), transform, transform_backend
        )
        if known_defect(r.case.name) is None
    ]
    assert not unknown, (
        f"{transform} with backend={transform_backend!r} gave wrong results on {len(unknown)} ops "
        f"of op_db that are not in BATCHING_DEFECTS for torch {sweep.torch_version}: add it to "
        "BATCHING_DEFECTS (tad_autograd/batching_defects.py), so that automatic mode does not "
        "vectorise through it, or widen an entry's since/fixed_in:\n"
        + _lines(unknown, transform, transform_backend)
        + "\nsuggested entries:\n"
        + "\n".join(f"  {suggested_entry(r)}," for r in dict.fromkeys(r for r, _ in unknown))
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_automatic_mode_agrees(sweep: Sweep, transform: str) -> None:
    """Automatic mode agrees wherever the reference works: never an error, never wrong."""
    bad = _not_pending(sweep.cells(transform, "auto", "error", "wrong"), transform, "auto")
    assert not bad, (
        f"{transform} in automatic mode failed on {len(bad)} ops of op_db "
        f"(torch {sweep.torch_version}):\n" + _lines(bad, transform, None)
    )


def test_pending_failures_still_occur(sweep: Sweep) -> None:
    """Each :data:`PENDING` kind still occurs on this torch; else delete its entry."""
    seen = {
        pending(r, o, t, m)
        for t in TRANSFORMS
        for m in sweep.modes
        for r, o in sweep.cells(t, m, "error", "wrong")
    }
    stale = sorted(set(PENDING) - seen)
    assert not stale, (
        f"PENDING kinds that no longer occur on torch {sweep.torch_version}: {stale}; delete "
        "them from tests/opdb/test_opdb_rules.py so that the rules are strict again"
    )
