"""``python -m tad_autograd``: content and exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import tad_autograd as ta
from tad_autograd import report
from tad_autograd.backends.autograd import AutogradBackend
from tad_autograd.registry import unregister_backend


def test_report_runs_and_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "tad_autograd"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert torch.__version__ in text
    for name in ("func", "functorch", "autograd"):
        assert name in text
    assert "automatic choice per device type" in text
    assert "old-style autograd.Function" in text
    assert "self-check: PASSED" in text
    for name in ta.available_backends():
        assert any(line.strip().startswith(name) and "ms" in line for line in text.splitlines())


class _WrongBackend(AutogradBackend):
    name = "wrong"

    def jacrev(self, func, argnums, *, has_aux, chunk_size):
        inner = super().jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)
        return lambda *args: inner(*args) * (1 + 1e-6)


def test_report_fails_when_backends_disagree(capsys: pytest.CaptureFixture[str]) -> None:
    ta.register_backend(_WrongBackend(), priority=1)
    try:
        assert report.main([]) == 1
    finally:
        unregister_backend("wrong")
    text = capsys.readouterr().out
    assert "DISAGREE" in text and "self-check: FAILED" in text
