"""The fuzzer's summary: how often a reported, not yet fixed library bug was recognised.

``tad_autograd.testing.fuzz_pending.PENDING`` lists them; a failure it does not
explain fails its test as usual.
"""

from __future__ import annotations

import pytest

from tad_autograd.testing.fuzz_pending import PENDING_HITS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if PENDING_HITS:
        terminalreporter.section("reported library bugs the fuzzer ran into (fuzz_pending)")
        for name, n in PENDING_HITS.most_common():
            terminalreporter.write_line(f"{n:6d} x {name}")
