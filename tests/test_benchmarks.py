"""The benchmark runner's plumbing (``benchmarks/``): where it writes, how it compares.

No timing is asserted here (performance is measured, never
asserted in tests); these tests run no benchmark.
"""

from __future__ import annotations

import builtins
import os
from typing import Any, Dict

import pytest
import torch

from benchmarks import plot, report, run
from benchmarks.harness import compare
from benchmarks.problems import cluster
from tad_autograd.report import lennard_jones


def test_results_go_to_the_build_directory_unless_saved() -> None:
    build = os.path.join(run.REPO, "build", "benchmarks")
    docs = os.path.join(run.REPO, "docs", "benchmarks")
    assert run.default_prefix("cpu", quick=True) == os.path.join(build, "results-quick")
    assert run.default_prefix("cuda", quick=False) == os.path.join(build, "results-cuda")
    assert run.default_prefix("cpu", quick=False, save=True) == os.path.join(docs, "results")
    assert run.parse(["--quick"]).save is False
    assert run.parse(["--save"]).save is True


def test_save_and_out_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse(["--save", "--out", "/tmp/x"])
    assert "not allowed with" in capsys.readouterr().err


def test_compare_uses_assert_close_semantics() -> None:
    ref = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert compare(ref.clone(), ref, torch.float64) == (0.0, None)
    err, why = compare(ref.float() + 1e-6, ref, torch.float32)
    assert why is None and err is not None and err < 1e-4
    err, why = compare(ref + 1e-3, ref, torch.float64)
    assert why is not None and "> 1e-09" in why
    _, why = compare(torch.tensor([float("nan"), -2.0], dtype=torch.float64), ref, torch.float64)
    assert why is not None  # a NaN never matches
    err, why = compare(ref.float(), ref, torch.float64)
    assert err is None and why is not None and "dtype" in why
    err, why = compare(ref[:1], ref, torch.float64)
    assert err is None and why is not None and "shape" in why
    err, why = compare((1.0, -2.0), ref, torch.float64)
    assert err is None and why is not None and "tuple" in why


def test_the_benchmark_clusters_are_valid_lennard_jones_inputs() -> None:
    pos = cluster(100, seed=3)
    assert pos.shape == (100, 3) and pos.dtype == torch.float64
    assert float(torch.pdist(pos).min()) > 0.94
    assert torch.isfinite(lennard_jones(pos))


def _fixed_section() -> Dict[str, Any]:
    rec = {"status": "ok", "median_s": 2e-5, "q1_s": 1.9e-5, "q3_s": 2.1e-5, "rounds": 9}
    return {
        "kind": "fixed",
        "title": "Fixed cost",
        "target_us": 15.0,
        "methods": {"a": dict(rec, inner=10), "b": dict(rec, inner=20)},
        "auto_us": 30.0,
        "bare_us": 20.0,
        "fixed_us": 10.0,
        "fixed_of_medians_us": 10.5,
        "paired_ratio": 1.5,
        "noise_us": 0.2,
        "noise_paired_ratio": 1.01,
        "rounds": 9,
        "meta": {
            "mode": "quick",
            "device": "cpu",
            "torch": torch.__version__,
            "python": "3",
            "threads": 1,
            "cpus": 1,
            "backends": ["autograd"],
            "command": "python -m benchmarks --only fixed",
        },
    }


def test_the_report_shows_the_fixed_cost(tmp_path: Any) -> None:
    path = tmp_path / "r.md"
    report.write_markdown(str(path), {"sections": {"fixed": _fixed_section()}})
    text = path.read_text(encoding="utf-8")
    assert "| 10.0 µs | paired ratio 1.50x; A/A noise floor +0.2 µs, 1.01x | ≤ 15 µs |" in text
    assert "## fixed: Fixed cost" in text


def test_a_missing_matplotlib_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(plot.PlotUnavailable, match=r"pip install -e \"\.\[bench\]\""):
        plot.write_plot("unused.png", {"sections": {}})


def _tiny_config() -> Any:
    from benchmarks.config import Config
    from benchmarks.harness import Settings

    return Config(quick=True, dtypes=("float64",), settings=Settings(), log=lambda s: None)


#: methods that go through torch.func's transforms of a custom Function
_TRANSFORMS = {"tad:func", "tad:functorch", "peer:torch.func"}


def test_every_real_model_cell_matches_the_hand_loops() -> None:
    """Each method of the models section equals its cell's autograd.grad loops (not timed)."""
    pytest.importorskip("torch.func")
    from benchmarks.harness import AUTO, check
    from benchmarks.sections_models import OPERATORS, model_cells

    cells = model_cells(_tiny_config(), 4)
    assert {label.split(": ")[-1] for label, _, _ in cells} == set(OPERATORS)
    for label, methods, reference in cells:
        results = check(methods, reference, torch.float64)
        assert results[AUTO]["status"] == "ok", (label, results[AUTO])
        for name, rec in results.items():
            assert rec["status"] != "mismatch", (label, name, rec)
            if rec["status"] == "error":
                # torch.func cannot batch the generated vmap rule under a Hessian's
                # forward-over-reverse; automatic mode falls back and is correct
                assert "generated vmap" in label and "hessian" in label, (label, name, rec)
                assert name in _TRANSFORMS, (label, name, rec)


def test_the_third_field_derivative_loop_is_symmetric_and_matches_finite_differences() -> None:
    from benchmarks import problems_models as pm
    from benchmarks.sections_models import nested_grad_loop

    pos = pm.geometry(4)
    energy = pm.mlp_potential()

    def e(field: torch.Tensor) -> torch.Tensor:
        return energy(pos, field)

    field = pm.field()
    d3 = nested_grad_loop(e, field, 3)
    assert d3.shape == (3, 3, 3)
    torch.testing.assert_close(d3, d3.permute(1, 0, 2))
    torch.testing.assert_close(d3, d3.permute(0, 2, 1))
    h = 1e-4
    for k in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[k] = h
        fd = (nested_grad_loop(e, field + step, 2) - nested_grad_loop(e, field - step, 2)) / (2 * h)
        torch.testing.assert_close(d3[..., k], fd, atol=1e-6, rtol=1e-5)


def test_compiled_operators_give_the_eager_results_in_one_graph() -> None:
    """torch.compile(op(f), fullgraph=True) of each operator, written three ways (not timed)."""
    from benchmarks.sections_compile import OPERATORS, compile_lines, compile_row, unavailable

    why = unavailable()
    if why is not None:
        pytest.skip(why)
    rows = [compile_row(op, _tiny_config(), "eager", budget_s=0.0) for op in OPERATORS]
    for row in rows:
        for impl, rec in row["ways"].items():
            assert "error" not in rec, (row["operator"], impl, rec)
            assert (rec["graphs"], rec["breaks"]) == (1, 0), (row["operator"], impl, rec)
            assert rec["max_abs_diff_vs_torch_func"] < 1e-12, (row["operator"], impl, rec)
            assert rec["eager_max_abs_diff_vs_torch_func"] < 1e-12, (row["operator"], impl, rec)
    text = "\n".join(compile_lines({"title": "t", "rows": rows}))
    assert text.count("| 1 / 0 |") == 3 * len(OPERATORS)
