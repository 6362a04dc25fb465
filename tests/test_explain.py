"""``explain()``: the answer and the reason in a few lines; the full picture on request.

By default at most six lines (the backend, the reason, the strategy, what
automatic mode does about failures and the ops torch gets wrong, the
remembered fallbacks), with no entry named twice; ``verbose=True`` adds the
settings, the table of ops the installed torch gets wrong (each once), the
device types and every remembered fallback.  For automatic mode and every
backend.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, List, Optional

import pytest
import torch
from _helpers import OldStyleExp

import tad_autograd as ta
from tad_autograd.compat._torch_info import Version
from tad_autograd.compat.batching_defects import ACTIVE_DEFECTS, BATCHING_DEFECTS, defects_for
from tad_autograd.compat.devices import TRANSFORM_SUPPORT

MAX_LINES = 6
#: The torch releases of the test matrix.
MATRIX = ("1.13.1", "2.0.0", "2.13.0")


@contextlib.contextmanager
def _setting(backend: Optional[str]) -> Iterator[None]:
    if backend is None:
        yield
    else:
        with ta.use_backend(backend):
            yield


def _mentions(text: str, op: str) -> int:
    """How often ``op`` is named in ``text`` as a whole name (not inside a longer one)."""
    return len(re.findall(rf"(?<![\w.]){re.escape(op)}(?![\w])", text))


def _repeated(lines: List[str]) -> List[str]:
    return sorted({line for line in lines if lines.count(line) > 1})


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_default_answer_is_short(backend: Optional[str], device: str) -> None:
    with _setting(backend):
        explanation = ta.explain(torch.zeros(3, device=device))
    text = str(explanation)
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, text
    assert lines[0].startswith(f"tad_autograd would use backend {explanation.backend!r}"), text
    assert f"Strategy: {explanation.strategy!r}" in text
    assert not _repeated(lines), text
    for defect in ACTIVE_DEFECTS:
        assert _mentions(text, defect.op) <= 1, (defect.op, text)
        if backend is None:  # automatic mode names what it avoids, once
            assert _mentions(text, defect.op) == 1, (defect.op, text)
    assert "Settings consulted" not in text and "Device types" not in text


def test_default_answer_names_the_reason() -> None:
    lines = str(ta.explain(torch.zeros(3))).splitlines()
    assert lines[1].startswith("Why: ") and "automatic choice" in lines[1]
    with ta.use_backend("autograd"):
        lines = str(ta.explain(torch.zeros(3))).splitlines()
    assert lines[1] == "Why: 'autograd' chosen by use_backend."
    assert "no fallback" in lines[3]


def test_verbose_gives_the_full_picture(backend: Optional[str]) -> None:
    with _setting(backend):
        short = ta.explain(torch.zeros(3))
        full = ta.explain(torch.zeros(3), verbose=True)
    assert full[:2] == short[:2] and full.strategy == short.strategy
    text = str(full)
    lines = text.splitlines()
    assert lines[:3] == list(short.lines[:3])
    assert "Settings consulted, first that applies wins:" in lines
    assert not _repeated(lines), _repeated(lines)
    for defect in ACTIVE_DEFECTS:  # the table lists each entry once, with what goes wrong
        rows = [line for line in lines if line.startswith(f"  - {defect.op}")]
        assert len(rows) == 1, (defect.op, rows)
        assert defect.what in rows[0]
    for device_type in TRANSFORM_SUPPORT:
        assert sum(line.startswith(f"  - {device_type}: ") for line in lines) == 1, device_type
    assert len(text) > len(str(short))


def test_the_defect_table_lists_no_entry_twice() -> None:
    """One entry per op; no two entries that apply to one torch cover a callable twice."""
    for version in MATRIX:
        seen = {}
        for d in defects_for(Version(version)):
            for callable_ in d.callables:
                key = (callable_, d.stage)
                assert key not in seen, (version, key, seen.get(key), d.op)
                seen[key] = d.op
    ops = [d.op for d in BATCHING_DEFECTS]
    assert len(ops) == len(set(ops)), ops
    names = [n for d in BATCHING_DEFECTS for n in d.opinfo_names()]
    assert len(names) == len(set(names)), names


def _exp_energy(x: torch.Tensor) -> torch.Tensor:
    return OldStyleExp.apply(x).sum()


def _other_energy(x: torch.Tensor) -> torch.Tensor:
    return OldStyleExp.apply(x).sum() * 2


def test_remembered_fallbacks_of_one_function() -> None:
    x = torch.ones(3, 2, dtype=torch.float64)
    assert "Remembered fallbacks for this function: none." in str(ta.explain(x, func=_exp_energy))
    assert "No remembered fallbacks." in str(ta.explain(x))
    with pytest.warns(ta.BackendFallbackWarning):
        ta.vmap(_exp_energy)(x)
    with pytest.warns(ta.BackendFallbackWarning):
        ta.vmap(_other_energy)(x)
    own = str(ta.explain(x, func=_exp_energy)).splitlines()
    assert len(own) <= MAX_LINES
    assert own[-1] == (
        "Remembered fallbacks for this function: _exp_energy under vmap on cpu: autograd."
    )
    assert str(ta.explain(x, func=ta.vmap(_exp_energy))).splitlines()[-1] == own[-1]
    assert "none" in str(ta.explain(x, func=torch.sin)).splitlines()[-1]
    every = str(ta.explain(x)).splitlines()[-1]
    assert "_exp_energy" in every and "_other_energy" in every
    verbose = str(ta.explain(x, verbose=True)).splitlines()
    assert verbose[-3:] == [
        "Remembered fallbacks:",
        "  - _exp_energy under vmap on cpu: autograd",
        "  - _other_energy under vmap on cpu: autograd",
    ]
