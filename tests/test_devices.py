"""Device types and the resolver (CONTRACT §3): transforms only where they are known to work.

Every device type is simulated through the pure resolver, so no accelerator is
needed; where a device is really present (CUDA), one end-to-end check runs.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import tad_autograd as ta
from tad_autograd._torch_info import Version
from tad_autograd.devices import TRANSFORM_SUPPORT, device_type_of, transforms_supported
from tad_autograd.registry import _default_registry
from tad_autograd.resolver import Resolution, resolve

VERSIONS = [Version("1.13.1"), Version("2.0.0"), Version("2.13.0")]
TRANSFORMS = {"1.13.1": "functorch", "2.0.0": "func", "2.13.0": "func"}
DEVICE_TYPES = sorted(TRANSFORM_SUPPORT) + ["brand-new-accelerator"]


def _has_functorch(name: str) -> bool:
    return name in ("torch", "functorch")


def _resolve(
    version: Version,
    device_type: str,
    *,
    argument: str | None = None,
    module_exists: Callable[[str], bool] = _has_functorch,
) -> Resolution:
    return resolve(
        argument=argument,
        context=None,
        global_setting=None,
        environment=None,
        device_type=device_type,
        registry=_default_registry(),
        torch_version=version,
        module_exists=module_exists,
    )


def test_table_entries_carry_evidence() -> None:
    assert {"cpu", "cuda", "mps"} <= set(TRANSFORM_SUPPORT)
    for device_type, (supported, evidence) in TRANSFORM_SUPPORT.items():
        assert isinstance(supported, bool), device_type
        assert isinstance(evidence, str) and len(evidence) > 20, device_type
    assert TRANSFORM_SUPPORT["cpu"][0] and TRANSFORM_SUPPORT["cuda"][0]
    assert not TRANSFORM_SUPPORT["mps"][0]


@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_transforms_supported_matches_table(device_type: str) -> None:
    expected = TRANSFORM_SUPPORT.get(device_type, (False, ""))[0]
    assert transforms_supported(device_type) is expected


@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_automatic_choice_per_device(version: Version, device_type: str) -> None:
    r = _resolve(version, device_type)
    if transforms_supported(device_type):
        assert r.backend.name == TRANSFORMS[str(version)]
        assert [b.name for b in r.candidates][-1] == "autograd"
    else:
        assert r.backend.name == "autograd"
        assert [b.name for b in r.candidates] == ["autograd"]
        assert any(
            f"not known to work on device type {device_type!r}" in note for note in r.notes
        ), r.notes
    assert r.automatic


@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_explicit_choice_is_honoured_on_any_device(version: Version, device_type: str) -> None:
    """Users may still ask for a transform backend on a device the table does not trust."""
    name = TRANSFORMS[str(version)]
    r = _resolve(version, device_type, argument=name)
    assert r.backend.name == name and not r.automatic
    assert _resolve(version, device_type, argument="autograd").backend.name == "autograd"


@pytest.mark.parametrize("device_type", DEVICE_TYPES)
def test_autograd_backend_supports_every_device(device_type: str) -> None:
    assert _default_registry().get("autograd").supports_device(device_type)


def test_device_type_of() -> None:
    x = torch.zeros(1)
    assert device_type_of((x,)) == "cpu"
    assert device_type_of((1, "a", [None, {"k": (x,)}])) == "cpu"
    assert device_type_of((), {"x": x}) == "cpu"
    assert device_type_of((3.0,)) == "cpu"
    meta = torch.zeros(1, device="meta")
    assert device_type_of((meta, x)) == "meta"
    assert device_type_of(([meta], x)) == "cpu"  # a bare tensor argument wins over a nested one


def test_meta_tensors_run_on_autograd() -> None:
    """Automatic mode picks the loop on a device type without documented transform support."""
    x = torch.zeros(3, device="meta", requires_grad=False)
    explanation = ta.explain(x)
    assert explanation.backend == "autograd"
    assert explanation.device_type == "meta"
    jac = ta.jacrev(torch.sin)(x)
    assert jac.shape == (3, 3) and jac.device.type == "meta"


def test_explain_with_device_argument() -> None:
    assert ta.explain(device="meta").backend == "autograd"
    assert ta.explain(device=torch.device("cpu")).backend != "autograd"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_end_to_end() -> None:
    x = torch.randn(4, device="cuda", dtype=torch.float64)
    assert ta.explain(x).backend != "autograd"
    for backend in ta.available_backends():
        jac = ta.jacrev(torch.sin, backend=backend)(x)
        assert jac.device == x.device
        torch.testing.assert_close(jac, torch.diag(x.cos()))
