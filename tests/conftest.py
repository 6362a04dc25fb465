"""Shared fixtures: every contract test runs once per backend.

``backend`` is parametrized over every registered backend; a backend that
cannot run with the installed torch is skipped with the reason.

``--device cuda`` (or ``TAD_AUTOGRAD_TEST_DEVICE=cuda``) runs the suite on
another device: it becomes torch's default device (torch >= 2.0), so every
tensor the tests and the property strategies create lives there.  Run it on
``tests`` alone: the doctests print CPU tensors.
"""

from __future__ import annotations

import os
import time
import warnings as _warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

import tad_autograd as ta
from tad_autograd.dispatch._fallback import MEMORY
from tad_autograd.dispatch._registry import REGISTRY
from tad_autograd.dispatch._settings import ENV_VAR, GLOBAL

ALL_BACKENDS = REGISTRY.names()

# Hypothesis profiles of the property tests and the fuzzer.  ``ci`` (default): few
# derandomized examples per property, no example database, so the suite is fast and
# reproducible.  ``thorough``: >= 1000 examples per property.  Choose with
# TAD_AUTOGRAD_HYPOTHESIS_PROFILE.
_HYPOTHESIS = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_HYPOTHESIS)
settings.register_profile("thorough", max_examples=1000, **_HYPOTHESIS)
settings.load_profile(os.environ.get("TAD_AUTOGRAD_HYPOTHESIS_PROFILE", "ci"))

# When a hypothesis test fails, its pytest plugin imports ``hypothesis.extra._patching``
# (and so ``libcst``) inside the test's ``filterwarnings = error`` context; libcst's import
# emits a third-party DeprecationWarning that would turn the failure report into an
# INTERNALERROR.  Import it here, once, outside that context.
with _warnings.catch_warnings():
    _warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - libcst not installed
        pass
DEVICE_ENV_VAR = "TAD_AUTOGRAD_TEST_DEVICE"

#: Where every test is marked ``slow`` (the fuzzer, torch.compile; the OpInfo
#: sweep marks its own modules): ``python -m pytest -m "not slow"`` leaves them out.
SLOW_PATHS = (Path(__file__).parent / "fuzz", Path(__file__).parent / "test_compile.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get(DEVICE_ENV_VAR, "cpu"),
        help=f"torch device the tests create their tensors on (default ${DEVICE_ENV_VAR} or cpu)",
    )
    parser.addoption(
        "--opdb-report",
        action="store_true",
        help="print the OpInfo sweep's report (tests/opdb) at the end; it is always written to "
        "a file, whose path is printed, and printed whenever a tests/opdb test fails",
    )


@pytest.hookimpl(trylast=True)  # after the terminal reporter is registered
def pytest_configure(config: pytest.Config) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.option.verbose <= 0:
        config.pluginmanager.register(_GroupProgress(reporter), "tad-autograd-group-progress")
    _use_device(config)


class _GroupProgress:
    """Progress as one line per group of tests: a directory of ``tests``, the doctests.

    pytest's own progress (a character per test, a line per file) makes
    hundreds of lines for the whole suite.  Here a passing or skipped test
    prints nothing of its own: a group prints its name when it starts, pytest's
    ``F``/``E``/``x`` for each test that fails, errors or fails as expected,
    and its counts when it ends.  Everything else is pytest's own: failures in
    full at the end, skip reasons with ``-rs``; ``-v`` gives a line per test.
    """

    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter
        reporter.showfspath = False
        self.group: str | None = None
        self.counts: Counter[str] = Counter()
        self.started = 0.0
        self.finished = 0
        self.collected = 1
        self.marked = False

    @staticmethod
    def group_of(nodeid: str) -> str:
        parts = nodeid.split("::")[0].split("/")
        return "/".join(parts[:2]) if parts[0] == "tests" and len(parts) > 2 else parts[0]

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        if hasattr(report, "wasxfail"):
            return None
        if report.passed and report.when == "call":
            return "passed", "", "PASSED"
        if report.skipped:
            return "skipped", "", "SKIPPED"  # the word for -rs
        return None

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        group = self.group_of(nodeid)
        if group != self.group:
            self._end_group()
            self.group, self.started = group, time.perf_counter()
            self.reporter.ensure_newline()
            self.reporter.write(f"{group} ", flush=True)
            self.reporter.currentfspath = group  # a letter or a line after it starts a new line

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail"):
            kind = "xfailed" if report.skipped else "xpassed"
        elif report.when == "call":
            kind = report.outcome
        elif report.failed:
            kind = "error"
        elif report.skipped:
            kind = "skipped"
        else:
            return
        self.counts[kind] += 1
        self.marked = self.marked or kind not in ("passed", "skipped")  # pytest wrote a letter

    def pytest_runtest_logfinish(self) -> None:
        self.finished += 1

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = max(len(session.items), 1)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self) -> Iterator[Any]:
        try:
            return (yield)
        finally:
            self._end_group()

    def _end_group(self) -> None:
        if self.group is None:
            return
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        seconds = time.perf_counter() - self.started
        self.reporter.write(
            f"{' ' if self.marked else ''}{counts or 'nothing ran'} in {seconds:.0f} s "
            f"[{100 * self.finished // self.collected:3d}%]",
            flush=True,
        )
        self.group, self.counts, self.marked = None, Counter(), False


def _use_device(config: pytest.Config) -> None:
    device = torch.device(config.getoption("--device"))
    if device.type == "cpu":
        return
    if not hasattr(torch, "set_default_device"):
        raise pytest.UsageError(f"--device {device} needs torch >= 2.0 (torch.set_default_device)")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # no such device in this build or machine
        raise pytest.UsageError(f"--device {device}: {error}") from None
    torch.set_default_device(device)


@pytest.fixture(params=[*ALL_BACKENDS, None], ids=[*ALL_BACKENDS, "auto"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """A backend name, or ``None`` for automatic choice; unavailable ones are skipped."""
    name = request.param
    if name is None:
        return None
    availability = REGISTRY.get(name).availability()
    if not availability.ok:
        pytest.skip(f"backend {name!r} unavailable: {availability.reason}")
    return name


@pytest.fixture(params=[b for b in ALL_BACKENDS if REGISTRY.get(b).is_transform])
def transform_backend(request: pytest.FixtureRequest) -> str:
    """A function-transform backend name; skipped where unavailable."""
    name = request.param
    availability = REGISTRY.get(name).availability()
    if not availability.ok:
        pytest.skip(f"backend {name!r} unavailable: {availability.reason}")
    return name


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts in automatic mode with no remembered fallbacks."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    GLOBAL.name = None
    MEMORY.clear()
    yield
    GLOBAL.name = None
    MEMORY.clear()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(d) for d in SLOW_PATHS):
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config: pytest.Config) -> str:
    lines = [
        f"torch {torch.__version__}; tad_autograd backends available: {ta.available_backends()}; "
        f"test device: {config.getoption('--device')}"
    ]
    for b in REGISTRY.backends():
        a = b.availability()
        if not a.ok:
            lines.append(f"  unavailable: {b.name}: {a.reason}")
    if os.environ.get(ENV_VAR):
        lines.append(f"  {ENV_VAR}={os.environ[ENV_VAR]}")
    return "\n".join(lines)


@pytest.fixture
def torch_cdist_rule(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch's own batching rule of cdist's backward (wrong) and its table entry active, as
    on a torch the package does not correct: the rule registered at import is removed for
    the test and registered again after it."""
    import importlib

    import tad_autograd.compat._batching_fixes as fixes
    import tad_autograd.compat._transform_failures as failures
    import tad_autograd.compat.batching_defects as table

    if "cdist" not in fixes.CORRECTED:  # torch's rule is in force already
        yield
        return
    explain = importlib.import_module("tad_autograd.api.explain")  # (a function shadows it)
    entry = next(d for d in table.BATCHING_DEFECTS if d.op == "cdist")
    active = (entry, *table.ACTIVE_DEFECTS)
    for module in (table, explain, failures):
        monkeypatch.setattr(module, "ACTIVE_DEFECTS", active)
    monkeypatch.setattr(table, "_NODES", table._NODES | entry.nodes)

    def callables(stage: Any = None) -> Any:
        return table.callables_of(active, stage)

    monkeypatch.setattr(failures, "defective_callables", callables)
    monkeypatch.setattr(failures, "_WATCH_CALLABLES", {})
    monkeypatch.setattr(failures, "_STAGES", failures._STAGES | {entry.stage})
    fixes._uninstall()
    try:
        yield
    finally:
        fixes._LIBRARY = None
        assert fixes._install() == fixes.CORRECTED
