"""What ``import tad_autograd`` does, each check in a fresh interpreter.

* It imports neither ``functorch`` nor any ``torch.func`` / ``torch._functorch``
  module beyond those ``import torch`` itself already loads (on torch 2.x
  ``import torch`` loads ``torch.func``; on 1.13 it loads none of them).
* It emits no warning.
* Where ``import torch`` already loads torch's vendored ``packaging``, it does
  not import the top-level ``packaging`` (a few milliseconds).
* ``TAD_AUTOGRAD_BACKEND`` set *after* the import is honoured, by
  ``get_backend``, ``explain`` and the calls themselves.
* The time it adds to ``import torch`` is recorded (``-s`` shows it, and the
  junit XML has it as a property), never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest

from tad_autograd.dispatch._settings import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env_var: str | None = None) -> Dict[str, Any]:
    """Run ``code`` in a fresh interpreter (this one's executable); it prints JSON last."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if env_var is not None:
        env[ENV_VAR] = env_var
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


_FUNCTORCH_MODULES = """
def functorch_modules():
    return sorted(
        m for m in sys.modules
        if m == "functorch" or m.startswith("functorch.")
        or m == "torch.func" or m.startswith("torch.func.")
        or m == "torch._functorch" or m.startswith("torch._functorch.")
    )
"""


def test_import_adds_no_functorch_modules(record_property: Any) -> None:
    result = _run(
        "import sys, json, time, warnings\n"
        + _FUNCTORCH_MODULES
        + """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    import torch
    t1 = time.perf_counter()
    after_torch = functorch_modules()
    all_after_torch = set(sys.modules)
    import tad_autograd
    t2 = time.perf_counter()
print(json.dumps({
    "torch": torch.__version__,
    "vendored_packaging": "torch._vendor.packaging.version" in all_after_torch,
    "after_torch": after_torch,
    "after_tad": functorch_modules(),
    "added": sorted(set(sys.modules) - all_after_torch),
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "torch_s": t1 - t0,
    "tad_s": t2 - t1,
}))
"""
    )
    added = sorted(set(result["after_tad"]) - set(result["after_torch"]))
    assert added == [], f"import tad_autograd imported {added} (torch {result['torch']})"
    assert "functorch" not in result["after_tad"]
    assert not [
        m
        for m in result["added"]
        if not m.startswith("tad_autograd") and ("functorch" in m or m.startswith("torch.func"))
    ]
    assert result["warnings"] == [], result["warnings"]
    if result["vendored_packaging"]:
        assert "packaging" not in result["added"], "imported packaging; torch vendors it"
    # Recorded, never asserted: what the import adds to `import torch`.
    besides = [m for m in result["added"] if not m.startswith("tad_autograd")]
    record_property("import_torch_s", round(result["torch_s"], 4))
    record_property("import_tad_autograd_extra_s", round(result["tad_s"], 4))
    record_property("modules_added_besides_tad_autograd", besides)
    print(
        f"\nimport torch: {result['torch_s']:.3f} s; import tad_autograd adds "
        f"{result['tad_s'] * 1e3:.1f} ms and these modules besides its own: {besides}"
    )


def test_autograd_backend_call_imports_no_functorch() -> None:
    """Running the autograd backend needs no function-transform module."""
    result = _run(
        "import sys, json\n"
        + _FUNCTORCH_MODULES
        + """
import torch
before = functorch_modules()
import tad_autograd as ta
x = torch.ones(3)
ta.jacrev(torch.sin, backend="autograd")(x)
ta.vmap(torch.sin, backend="autograd")(torch.ones(2, 3))
ta.hessian(lambda t: (t ** 3).sum(), backend="autograd")(x)
print(json.dumps({"added": sorted(set(functorch_modules()) - set(before))}))
"""
    )
    assert result["added"] == []


_ENV_AFTER_IMPORT = """
import json, os, torch
import tad_autograd as ta

ENV = "TAD_AUTOGRAD_BACKEND"
assert ENV not in os.environ
out = {"initial": ta.get_backend(), "available": list(ta.available_backends())}

def inside(t):
    # the autograd loop runs f on plain tensors; transform backends under a transform level
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    seen.append((ta.get_backend(), None if active is None else bool(active())))
    return torch.sin(t)

x = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
want = torch.diag(torch.cos(x))
jac = ta.jacrev(inside)          # built before the variable is set
for name in [*ta.available_backends(), "auto"]:
    os.environ[ENV] = name
    seen = []
    ok = bool(torch.allclose(jac(x), want))
    seen_built = list(seen)
    seen = []
    ok = ok and bool(torch.allclose(ta.jacrev(inside)(x), want))
    out[name] = {
        "get_backend": ta.get_backend(),
        "explain": ta.explain(x).backend,
        "explain_text": str(ta.explain(x)),
        "ran_built_before": seen_built,
        "ran_built_after": list(seen),
        "correct": ok,
    }
os.environ[ENV] = "no_such_backend"
try:
    jac(x)
    out["unknown"] = "no error"
except Exception as e:
    out["unknown"] = type(e).__name__
del os.environ[ENV]
out["final"] = ta.get_backend()
print(json.dumps(out))
"""


def test_environment_variable_set_after_import_is_honoured() -> None:
    result = _run(_ENV_AFTER_IMPORT)
    assert result["initial"] == "auto"
    automatic = result["auto"]["explain"]
    for name in [*result["available"], "auto"]:
        r = result[name]
        expected = automatic if name == "auto" else name
        assert r["get_backend"] == name, (name, r)
        assert r["explain"] == expected, (name, r)
        if name != "auto":
            assert ENV_VAR in r["explain_text"], r["explain_text"]
        assert r["correct"], (name, r)
        for ran in (r["ran_built_before"], r["ran_built_after"]):
            assert ran and all(backend == expected for backend, _ in ran), (name, ran)
            active = {a for _, a in ran}
            if None not in active and name != "auto":
                # observable effect: only the transform backends run f under a transform
                # (automatic jacrev may run the forward eagerly whatever it chose)
                assert active == {expected != "autograd"}, (name, ran)
    assert result["unknown"] == "UnknownBackendError"
    assert result["final"] == "auto"


@pytest.mark.parametrize("name", ["autograd", "auto"])
def test_environment_variable_set_before_import(name: str) -> None:
    result = _run(
        """
import json, torch, tad_autograd as ta
print(json.dumps({"get": ta.get_backend(), "explain": ta.explain(torch.ones(1)).backend}))
""",
        env_var=name,
    )
    assert result["get"] == name
    if name != "auto":
        assert result["explain"] == name
