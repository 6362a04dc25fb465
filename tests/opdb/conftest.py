"""The OpInfo sweep, run once per session and shared by the ``tests/opdb`` modules.

It needs ``expecttest`` (and, on torch 2.0, ``pyyaml``) to import PyTorch's
``op_db``; without them the tests are skipped.  The sweep runs in automatic
mode with no backend setting and no remembered fallbacks, whatever the
environment says.

Its report (counts per transform and backend, the known wrong results, the
errors) goes to a file in the temporary directory; a passing run prints
one line saying where.  ``--opdb-report`` prints it whole, and so does a run in
which a ``tests/opdb`` test fails.
"""

from __future__ import annotations

import getpass
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Tuple

import pytest
import torch
from _opdb_sweep import Sweep, run_sweep

from tad_autograd.dispatch._fallback import MEMORY
from tad_autograd.dispatch._settings import ENV_VAR, GLOBAL

#: The report's file and its text, once ``test_opdb_report`` has written it.
_REPORT = pytest.StashKey[Tuple[Path, str]]()


@pytest.fixture(scope="session")
def sweep() -> Sweep:
    pytest.importorskip("expecttest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torch.testing._internal.common_methods_invocations  # noqa: F401
        except ImportError as e:  # e.g. torch <= 2.0's torchgen needs PyYAML
            pytest.skip(f"op_db cannot be imported: {e!r} (pip install expecttest pyyaml)")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        GLOBAL.name = None
        MEMORY.clear()
        try:
            return run_sweep()
        finally:
            MEMORY.clear()


@pytest.fixture(scope="session")
def publish_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Write the sweep's report to a file; the terminal summary points to it.

    The file is in the temporary directory, one per user and torch version,
    overwritten by the next run (pytest's own numbered directories are removed
    after three runs).
    """

    def publish(text: str) -> None:
        version = torch.__version__.replace("+", "-")
        path = (
            Path(tempfile.gettempdir()) / f"tad_autograd-opdb-report-{_user()}-torch{version}.txt"
        )
        path.write_text(text + "\n", encoding="utf-8")
        request.config.stash[_REPORT] = (path, text)

    return publish


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return str(os.getuid()) if hasattr(os, "getuid") else "user"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    path, text = config.stash.get(_REPORT, None) or (None, None)
    if path is None:
        return
    failed = [
        r
        for kind in ("failed", "error")
        for r in terminalreporter.stats.get(kind, ())
        if getattr(r, "nodeid", "").startswith("tests/opdb/")
    ]
    if failed or config.getoption("--opdb-report"):
        terminalreporter.write_sep("-", "OpInfo sweep report")
        terminalreporter.write_line(text)
    terminalreporter.write_line(f"OpInfo sweep report: {path} (--opdb-report prints it)")
