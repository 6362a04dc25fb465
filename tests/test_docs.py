"""Run every example of the documentation (``docs/*.rst``) and check the docs build.

* Each page's ``>>>`` examples run as one doctest (plain :mod:`doctest`, so
  this works on every torch of the matrix, 1.13 included).  Examples marked
  ``# doctest: +REQUIRES_TORCH2`` are skipped on torch < 2.0 (Sphinx hides the
  flag in the HTML).
* Python code must appear as ``>>>`` examples or as files under
  ``docs/examples/`` that a test here runs: a page with a ``code-block::
  python`` would hold an example nobody runs, so that fails.
* The API reference must document every public name.
* When Sphinx is installed, the HTML build must succeed with ``-W``.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tad_autograd as ta
from tad_autograd.compat._torch_info import TORCH_VERSION, Version

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
EXAMPLES = DOCS / "examples"

REQUIRES_TORCH2 = doctest.register_optionflag("REQUIRES_TORCH2")
TORCH2 = TORCH_VERSION >= Version("2.0")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Pages whose examples need an optional test dependency.
NEEDS = {"testing.rst": ("hypothesis",)}


def _doctest_for(page: Path) -> doctest.DocTest:
    text = page.read_text(encoding="utf-8")
    globs = {"__name__": f"docs_{page.stem}"}
    test = doctest.DocTestParser().get_doctest(text, globs, page.name, str(page), 0)
    for example in test.examples:
        if example.options.get(REQUIRES_TORCH2) and not TORCH2:
            example.options[doctest.SKIP] = True
    return test


def test_there_are_pages() -> None:
    names = {p.name for p in PAGES}
    for expected in (
        "index.rst",
        "getting_started.rst",
        "backends.rst",
        "matrix.rst",
        "vmap_safe.rst",
        "testing.rst",
        "migrating.rst",
        "benchmarks.rst",
        "sparse.rst",
        "api.rst",
        "semantics.rst",
    ):
        assert expected in names


# the examples print CPU tensors: with another default device (--device) their output differs
cpu_examples = pytest.mark.skipif(
    torch.empty(()).device.type != "cpu", reason="the documented outputs are CPU tensors"
)


@cpu_examples
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples(page: Path) -> None:
    for module in NEEDS.get(page.name, ()):
        pytest.importorskip(module)
    test = _doctest_for(page)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    torch.manual_seed(0)
    old_printoptions = torch._tensor_str.PRINT_OPTS.__dict__.copy()
    try:
        runner.run(test, out=_collect)
    finally:
        torch._tensor_str.PRINT_OPTS.__dict__.update(old_printoptions)
        torch.set_default_dtype(torch.float32)
        ta.set_backend("auto")
        os.environ.pop("TAD_AUTOGRAD_BACKEND", None)
        test.globs.clear()
    results = runner.summarize(verbose=False)
    if results.failed:
        pytest.fail(
            f"{page.name}: {results.failed} of {results.attempted} examples failed:\n"
            + "".join(_REPORT),
            pytrace=False,
        )
    _REPORT.clear()


_REPORT: list = []


def _collect(text: str) -> None:
    _REPORT.append(text)


_UNRUN_CODE = re.compile(
    r"^\s*\.\.\s+(code-block|code|sourcecode)::\s*(python|py|pycon|ipython)\s*$", re.M
)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_unexecuted_python(page: Path) -> None:
    found = _UNRUN_CODE.findall(page.read_text(encoding="utf-8"))
    assert not found, (
        f"{page.name} has a python code block; write it as >>> examples (run by this test "
        "file) or as a file under docs/examples/ that a test here runs"
    )


def _listed_by_directives(api: str) -> set:
    """The names that ``.. api-functions::`` directives of ``api`` document."""
    listed = set()
    for modules, exclude in re.findall(
        r"^\.\. api-functions:: (.+)\n(?:   :exclude: (.+)\n)?", api, re.M
    ):
        for module in modules.split():
            listed |= set(importlib.import_module(module).__all__) - set(exclude.split())
    return listed


def test_every_public_name_is_documented() -> None:
    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    from tad_autograd import testing

    listed = _listed_by_directives(api)
    assert {"jacrev", "vjp", "hvp"} <= listed and "graph_jacobian" not in listed
    for name in ta.__all__:
        pattern = rf"^\.\. auto\w+:: tad_autograd\.{name}$"
        assert name in listed or re.search(pattern, api, re.M), name
    for name in testing.__all__:
        pattern = rf"^\.\. auto\w+:: tad_autograd\.testing\.(\w+\.)?{name}$"
        assert re.search(pattern, api, re.M), name
    assert re.search(r"^\.\. autoclass:: tad_autograd\.backends\.Backend$", api, re.M)


def _pythonpath(env: dict) -> str:
    return os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def _pytest_subprocess(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = _pythonpath(env)
    env.pop("TAD_AUTOGRAD_BACKEND", None)
    ini = str(tmp_path / "pytest.ini")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            ini,
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@cpu_examples
@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("test_*.py")), ids=lambda p: p.name)
def test_example_test_files(example: Path, tmp_path: Path) -> None:
    """The example test modules shown in the docs pass under pytest with the plugin."""
    pytest.importorskip("hypothesis")
    plugin = ("-p", "tad_autograd.testing.plugin")
    proc = _pytest_subprocess(tmp_path, *plugin, "-q", "-rs", str(example))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _run_python(*args: str) -> subprocess.CompletedProcess:
    """``python *args`` in the checkout, importing it, in automatic mode; must exit 0."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _pythonpath(env)
    env.pop("TAD_AUTOGRAD_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_dftd3_example_runs() -> None:
    """``docs/examples/dftd3_forces.py`` (docs/dftd3.rst): a downstream model on every backend.

    The script asserts each result against its reference itself and prints the
    timings, never asserted (one round here, to keep the test short); it needs
    ``tad-dftd3``, from the ``docs`` extra.
    """
    pytest.importorskip(
        "tad_dftd3", reason="tad-dftd3 is not installed (it comes with the docs extra)"
    )
    proc = _run_python(str(EXAMPLES / "dftd3_forces.py"), "--rounds", "1")
    assert "automatic  correct: forces, hessian, vmap(hessian), parameter sweep" in proc.stdout
    # a passing run says what is expected to raise, and prints no "FAILED"
    assert "FAILED" not in proc.stdout
    assert "not expected" not in proc.stdout
    if TORCH2:
        assert proc.stdout.count("parameter sweep: raises, as expected") == len(
            [b for b in ta.available_backends() if b != "autograd"]
        )
    assert "timings" in proc.stdout


def test_readme_example_prints_what_it_shows() -> None:
    """The README's example runs and prints the energy its comment shows."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    shown = re.search(r"^# (E = .*)$", blocks[0], flags=re.M)
    assert shown, "the example shows what it prints in a comment"
    proc = _run_python("-c", blocks[0])
    assert proc.stdout.splitlines()[0] == shown.group(1)


def test_report_command_runs() -> None:
    """``python -m tad_autograd`` (getting started) runs and reports the torch version."""
    if not (ROOT / "tad_autograd" / "__main__.py").is_file():
        pytest.skip("tad_autograd/__main__.py is not written yet")
    env = dict(os.environ)
    env["PYTHONPATH"] = _pythonpath(env)
    proc = subprocess.run(
        [sys.executable, "-m", "tad_autograd"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert torch.__version__.split("+")[0] in proc.stdout


def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    """``python -m sphinx -n -W -b html docs <out>`` succeeds (where Sphinx is installed).

    Nitpicky (``-n``): every cross-reference resolves, to these pages or, through the
    inventories in ``docs/_intersphinx``, to Python's and torch's documentation.
    """
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    env = dict(os.environ)
    env.pop("TAD_DOCS_INTERSPHINX_ONLINE", None)  # never touch the network in tests
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-n",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # no reStructuredText markup may leak into the rendered text (e.g. ``Function``s)
    leaks = []
    for page in sorted((tmp_path / "html").rglob("*.html")):
        text = re.sub(r"<(pre|code)[^>]*>.*?</\1>", "", page.read_text(), flags=re.S)
        text = re.sub(r"<[^>]+>", "", text)
        for line in text.splitlines():
            if "``" in line:
                leaks.append(f"{page.name}: {line.strip()[:120]}")
    assert not leaks, "markup leaks into the rendered pages:\n" + "\n".join(leaks)


def test_operator_table_has_a_row_per_operator() -> None:
    from tad_autograd.backends._operators import HOW, OPERATORS

    assert list(HOW) == list(OPERATORS)
    assert all(len(how) == 4 and all(how) for how in HOW.values())
