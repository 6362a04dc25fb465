"""PyTorch's OpInfo database under every transform.

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
  allowed only for an op of ``BATCHING_DEFECTS`` on this torch, and one whose
  forward-mode formula is wrong (stage ``"tangent"``) only under ``jacfwd`` and
  ``jvp`` (``test_opdb_defects`` checks that those really are wrong);
* automatic mode agrees everywhere: never an error, never a wrong number (a
  ``BackendFallbackWarning`` is allowed and counted).

"Agrees" means close to the reference, or to central finite differences where
the reference itself is not (``agree-fd``).

Forward mode is also run with torch's own dual numbers (the ``forward_ad``
pseudo-mode of the sweep, no library), which tells torch's forward-mode
formula for an op (wrong there too: a ``"tangent"`` entry, which automatic mode
and the autograd backend avoid by taking reverse mode) from its batching
(wrong where the dual numbers are right: a batching entry).
"""

from __future__ import annotations

from typing import List, Tuple

import pytest
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


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_autograd_backend_agrees(sweep: Sweep, transform: str) -> None:
    """``backend="autograd"`` agrees wherever the reference works: no error, no wrong number."""
    bad = sweep.cells(transform, "autograd", "error", "wrong")
    assert not bad, (
        f"{transform} with backend='autograd' failed on {len(bad)} ops of op_db "
        f"(torch {sweep.torch_version}):\n" + _lines(bad, transform, "autograd")
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transform_backend_wrong_only_where_known(
    sweep: Sweep, transform_backend: str, transform: str
) -> None:
    """A transform backend agrees or raises; a wrong number only for a known defect."""
    unknown = [
        (r, o)
        for r, o in sweep.cells(transform, transform_backend, "wrong")
        if known_defect(r.case.name, transform) is None
    ]
    assert not unknown, (
        f"{transform} with backend={transform_backend!r} gave wrong results on {len(unknown)} ops "
        f"of op_db that are not in BATCHING_DEFECTS for torch {sweep.torch_version}: add it to "
        "BATCHING_DEFECTS (tad_autograd/compat/batching_defects.py), so that automatic mode "
        "does not vectorise through it (stage 'tangent' where the forward_ad cell is wrong too: "
        "torch's forward-mode formula), or widen an entry's since/fixed_in:\n"
        + _lines(unknown, transform, transform_backend)
        + "\nsuggested entries:\n"
        + "\n".join(f"  {suggested_entry(r)}," for r in dict.fromkeys(r for r, _ in unknown))
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_automatic_mode_agrees(sweep: Sweep, transform: str) -> None:
    """Automatic mode agrees wherever the reference works: never an error, never wrong."""
    bad = sweep.cells(transform, "auto", "error", "wrong")
    assert not bad, (
        f"{transform} in automatic mode failed on {len(bad)} ops of op_db "
        f"(torch {sweep.torch_version}):\n" + _lines(bad, transform, None)
    )
