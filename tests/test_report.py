"""``python -m tad_autograd``: content and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import tad_autograd as ta
from tad_autograd import report
from tad_autograd.backends.autograd import AutogradBackend
from tad_autograd.dispatch._registry import REGISTRY, unregister_backend


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
    assert "backend a call would use, per device type (setting: auto)" in text
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


def _run(*args: str, env_value: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TAD_AUTOGRAD_BACKEND"}
    if env_value is not None:
        env["TAD_AUTOGRAD_BACKEND"] = env_value
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "tad_autograd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_help_prints_usage_and_runs_nothing() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    assert "usage: python -m tad_autograd" in proc.stdout and "--json" in proc.stdout
    assert "self-check:" not in proc.stdout


def test_json_report_with_the_setting_in_force() -> None:
    proc = _run("--json", "--quick", env_value="autograd")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["setting"] == {"value": "autograd", "source": "TAD_AUTOGRAD_BACKEND", "error": None}
    assert {row["backend"] for row in data["choice_per_device_type"]} == {"autograd"}
    assert data["passed"] is True
    assert {r["backend"] for r in data["self_check"]} == {*ta.available_backends(), "auto"}
    assert all(r["seconds"] is None for r in data["self_check"] if "seconds" in r)
    names = {b["name"] for b in data["backends"]}
    assert names == set(REGISTRY.names())


def test_bogus_setting_is_reported_up_front_with_the_fix() -> None:
    proc = _run("--quick", env_value="bogus")
    assert proc.returncode == 2
    assert "ERROR: the backend setting cannot be used" in proc.stdout
    assert "unset TAD_AUTOGRAD_BACKEND" in proc.stdout
    assert "self-check" not in proc.stdout
