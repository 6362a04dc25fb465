"""The OpInfo sweep, run once per session and shared by the ``tests/opdb`` modules.

It needs ``expecttest`` (and, on torch 2.0, ``pyyaml``) to import PyTorch's
``op_db``; without them the tests are skipped.  The sweep runs in automatic
mode with no backend setting and no remembered fallbacks, whatever the
environment says.
"""

from __future__ import annotations

import warnings

import pytest
from _opdb_sweep import Sweep, run_sweep

from tad_autograd.dispatch.fallback import MEMORY
from tad_autograd.dispatch.settings import ENV_VAR, GLOBAL


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
