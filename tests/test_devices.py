"""Device types and the resolver: transforms only where they are known to work.

Every device type is simulated through the pure resolver, so no accelerator is
needed; where a device is really present (CUDA), one end-to-end check runs.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch

import tad_autograd as ta
from tad_autograd.compat._torch_info import Version
from tad_autograd.compat.devices import TRANSFORM_SUPPORT, device_type_of, transforms_supported
from tad_autograd.dispatch._registry import _default_registry
from tad_autograd.dispatch._resolver import Resolution, resolve

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
    x = torch.zeros(1, device="cpu")
    assert device_type_of((x,)) == "cpu"
    assert device_type_of((1, "a", [None, {"k": (x,)}])) == "cpu"
    assert device_type_of((), {"x": x}) == "cpu"
    assert device_type_of((3.0,)) == torch.empty(()).device.type  # no tensor: the default
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


# --------------------------------------------------------------------------- a real accelerator
# Runs wherever CUDA is present, whatever --device says: torch's default device
# is pinned to the CPU inside, so a tensor the library creates without naming
# a device would land on the wrong one and fail here.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cpu_default_device() -> Iterator[None]:
    """torch's default device is the CPU for the test, restored afterwards."""
    previous = torch.empty(()).device
    if hasattr(torch, "set_default_device"):
        torch.set_default_device("cpu")
    yield
    if hasattr(torch, "set_default_device"):
        torch.set_default_device(previous)


def _pair_energy(pos: torch.Tensor) -> torch.Tensor:
    d = (
        pos[:, None, :]
        - pos[None, :, :]
        + torch.eye(pos.shape[0], dtype=pos.dtype, device=pos.device)[..., None]
    )
    return (1.0 / (d * d).sum(-1)).triu(1).sum()


def _on(device: str, *tensors: torch.Tensor) -> tuple:
    return tuple(t.to(device) for t in tensors)


ACCELERATOR_CASES: dict = {
    "jacrev, one row per output": lambda d, b: ta.jacrev(torch.sin, backend=b)(
        *_on(d, torch.linspace(-1, 1, 4, dtype=torch.float64))
    ),
    "jacrev, pytree output, chunks": lambda d, b: ta.jacrev(
        lambda x, y: {"a": x.sin() * y.sum(), "b": (x @ y.T).exp()},
        argnums=(0, 1),
        chunk_size=3,
        backend=b,
    )(
        *_on(
            d,
            torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3),
            torch.ones(2, 3, dtype=torch.float64),
        )
    ),
    "forces": lambda d, b: ta.jacrev(_pair_energy, backend=b)(
        *_on(d, torch.arange(12, dtype=torch.float64).reshape(4, 3).sin() * 3)
    ),
    "hessian": lambda d, b: ta.hessian(_pair_energy, backend=b)(
        *_on(d, torch.arange(9, dtype=torch.float32).reshape(3, 3).cos() * 3)
    ),
    "vmap, out_dims and chunks": lambda d, b: ta.vmap(
        lambda x, y: (x * y).sum(0), in_dims=(1, None), out_dims=0, chunk_size=2, backend=b
    )(*_on(d, torch.arange(15.0).reshape(3, 5), torch.ones(3))),
    "vmap of jacrev": lambda d, b: ta.vmap(ta.jacrev(_pair_energy), backend=b)(
        *_on(d, torch.arange(72, dtype=torch.float64).reshape(6, 4, 3).sin() * 3)
    ),
}


@needs_cuda
@pytest.mark.parametrize("case", list(ACCELERATOR_CASES))
def test_cuda_results_stay_on_the_device_and_match_the_cpu(
    case: str, backend: str | None, cpu_default_device: None
) -> None:
    compute = ACCELERATOR_CASES[case]
    expected = compute("cpu", "autograd")
    actual = compute("cuda", backend)
    for a, e in zip(*(torch.utils._pytree.tree_flatten(t)[0] for t in (actual, expected))):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), e)


@needs_cuda
def test_cuda_automatic_choice_and_fallback(cpu_default_device: None) -> None:
    """Automatic mode transforms on CUDA and still falls back, right, for an old-style Function."""
    from _helpers import OldStyleExp

    x = torch.linspace(-1, 1, 5, dtype=torch.float64, device="cuda")
    assert ta.explain(x).backend != "autograd"

    def f(x: torch.Tensor) -> torch.Tensor:
        return OldStyleExp.apply(x).sum(0)

    batch = torch.stack([x, 2 * x, 3 * x])
    with pytest.warns(ta.BackendFallbackWarning):
        got = ta.vmap(ta.jacrev(f))(batch)
    torch.testing.assert_close(got, batch.exp())
    assert got.device.type == "cuda"


@needs_cuda
def test_cuda_jacobian_stays_differentiable_in_captured_parameters(
    backend: str | None, cpu_default_device: None
) -> None:
    w = torch.linspace(0.5, 1.5, 9, dtype=torch.float64, device="cuda").reshape(3, 3)
    w.requires_grad_(True)
    x = torch.linspace(-1, 1, 3, dtype=torch.float64, device="cuda")
    jac = ta.jacrev(lambda x: torch.tanh(w @ x), backend=backend)(x)
    (grad_w,) = torch.autograd.grad(jac.sum(), w)
    w_cpu = w.detach().cpu().requires_grad_(True)
    expected = torch.autograd.grad(
        ta.jacrev(lambda x: torch.tanh(w_cpu @ x), backend="autograd")(x.cpu()).sum(), w_cpu
    )[0]
    torch.testing.assert_close(grad_w.cpu(), expected)


@needs_cuda
@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_cuda_randomness_same_in_every_chunk(
    backend: str | None, chunk_size: int | None, cpu_default_device: None
) -> None:
    """torch's own chunking replays only the CPU generator; each CUDA chunk must draw alike too."""
    x = torch.zeros(5, 3, dtype=torch.float64, device="cuda")
    out = ta.vmap(
        lambda r: r + torch.rand_like(r), randomness="same", chunk_size=chunk_size, backend=backend
    )(x)
    assert torch.equal(out, out[:1].expand_as(out))


@needs_cuda
def test_cuda_random_draws_are_errors_by_default(
    backend: str | None, cpu_default_device: None
) -> None:
    x = torch.zeros(3, 2, device="cuda")
    with pytest.raises(RuntimeError, match="randomness"):
        ta.vmap(lambda r: r + torch.rand_like(r), backend=backend)(x)
