"""The command-line help of ``python -m tad_autograd`` and ``python -m benchmarks`` is plain text.

Their descriptions come from docstrings written in reStructuredText; a terminal shows
``double backticks`` literally, so the help must not contain them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [("tad_autograd", "--help"), ("benchmarks", "--help"), ("benchmarks", "--list")],
    ids=" ".join,
)
def test_help_is_plain_text(command: tuple) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    for mark in ("``", ":func:", ":mod:", ":class:"):
        assert mark not in proc.stdout, f"{mark!r} in the output of python -m {' '.join(command)}"
