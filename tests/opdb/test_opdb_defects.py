"""The table of known-wrong batching rules stays true to the installed torch.

Every entry of ``tad_autograd.compat.batching_defects.BATCHING_DEFECTS`` that applies
to the installed torch (``ACTIVE_DEFECTS``) must reproduce in the OpInfo sweep (a batching entry: a
transform backend gives a wrong number; a ``"tangent"`` entry: torch's own
dual numbers give a wrong ``jvp``; adjudicated against the autograd reference
and finite differences), and must name autograd nodes that appear in the op's
graph and torch callables that exist, one of which the defect watch sees on a
reproducing sample (called with arguments its ``when`` condition picks);
otherwise the entry is stale.  The sweep tries
further samples of a table op until one reproduces (``MAX_DEFECT_SAMPLES``).
Wrong results missing from the table fail in ``test_opdb_rules``.

An entry whose op the package corrects in the installed torch (``corrected()``) is
out of ``ACTIVE_DEFECTS``: ``test_opdb_rules`` finds the op right on every path, and
here its entry must still describe torch's own rule, restored for the test.
"""

from __future__ import annotations

from typing import List

import pytest
from _opdb_cases import graph_nodes
from _opdb_sweep import CaseResult, Sweep, reproduces, resolves, run_case

from tad_autograd.compat._transform_failures import DefectiveBatchingError, DefectWatch
from tad_autograd.compat.batching_defects import (
    ACTIVE_DEFECTS,
    BatchingDefect,
    corrected,
    defects_for,
)

pytestmark = pytest.mark.slow


def _swept(sweep: Sweep, name: str) -> List[CaseResult]:
    return [r for r in sweep.results if r.case.name == name]


def _reproducing(sweep: Sweep, defect: BatchingDefect, name: str) -> List[CaseResult]:
    stage = "tangent" if defect.stage == "tangent" else "batching"
    return [r for r in _swept(sweep, name) if reproduces(r, stage)]


def test_defects_of_this_torch_reproduce(sweep: Sweep) -> None:
    """Each entry for this torch gives a wrong result on a transform backend; else it is stale.

    An entry that stands for several OpInfo variants must reproduce on each.
    """
    stale = []
    for d in ACTIVE_DEFECTS:
        for name in d.opinfo_names():
            swept = _swept(sweep, name)
            if not swept:
                stale.append(f"  {name}: not in the sweep (no such op, or no sample within bounds)")
            elif not _reproducing(sweep, d, name):
                tangent = d.stage == "tangent"
                where = "torch's dual numbers" if tangent else "every transform backend"
                stale.append(
                    f"  {name} ({d.stage}): {where} agreed (or raised) on the "
                    f"{len(swept)} samples tried: {[r.case.label for r in swept]}"
                )
    assert not stale, (
        f"BATCHING_DEFECTS entries for torch {sweep.torch_version} that do not reproduce "
        "(stale: narrow since/fixed_in or remove them):\n" + "\n".join(stale)
    )


def test_defect_entries_name_graph_nodes_and_callables(sweep: Sweep) -> None:
    """An entry's callables exist and its nodes appear in the op's graph.

    Where the batched backward is wrong (the defect shows under ``jacrev``), one
    of the nodes must be in the forward graph, where the eager strategy looks.
    An entry wrong only under ``vmap`` of the forward may name no nodes.
    """
    problems = []
    for d in ACTIVE_DEFECTS:
        for dotted in d.callables:
            if not dotted.startswith("torch.") or not resolves(dotted):
                problems.append(f"  {d.op}: callable {dotted!r} does not resolve from torch")
        if not d.callables:
            problems.append(f"  {d.op}: no callables")
        for name in d.opinfo_names():
            cases = _reproducing(sweep, d, name)
            if cases:  # else stale: test_defects_of_this_torch_reproduce says so
                problems += _undescribed(d, name, cases)
    assert not problems, (
        f"BATCHING_DEFECTS entries for torch {sweep.torch_version} that do not describe the op:\n"
        + "\n".join(problems)
    )


@pytest.mark.usefixtures("torch_cdist_rule")
def test_corrected_entries_describe_torchs_own_rule(sweep: Sweep) -> None:
    """An op the package corrects: under torch's own rule, restored, the sweep's samples of
    the op reproduce the entry again (so the entry, and the correction, are still needed)."""
    stale = []
    for d in defects_for():
        if d.op not in corrected():
            continue
        assert d.op == "cdist", "the torch_cdist_rule fixture restores cdist's rule only"
        for name in d.opinfo_names():
            again = [run_case(r.case, sweep.backends) for r in _swept(sweep, name)]
            if not any(reproduces(r, "batching") for r in again):
                stale.append(f"  {name}: right under torch's own rule on {len(again)} samples")
    assert not stale, "corrected entries that torch's own rule no longer gets wrong:\n" + "\n".join(
        stale
    )


def _undescribed(d: BatchingDefect, name: str, cases: List[CaseResult]) -> List[str]:
    """What entry ``d`` misses about OpInfo op ``name``, which reproduces on ``cases``."""
    problems = []
    try:
        with DefectWatch(d.stage):
            cases[0].case.f(cases[0].case.x.clone())
        problems.append(f"  {name}: the defect watch does not see it on {cases[0].case.label}")
    except DefectiveBatchingError:
        pass
    forward, backward = graph_nodes(cases[0].case)
    missing = d.nodes - forward - backward
    if missing:
        problems.append(
            f"  {name}: {sorted(missing)} in neither the forward graph {sorted(forward)} nor "
            f"the create_graph gradient graph {sorted(backward)}"
        )
    in_jacrev = any(
        o.kind == "wrong" and t == "jacrev" for r in cases for (t, _), o in r.outcomes.items()
    )
    if in_jacrev and not d.nodes & forward:
        problems.append(
            f"  {name}: its batched backward is wrong, yet none of {sorted(d.nodes)} is in "
            f"the forward graph {sorted(forward)}"
        )
    return problems
