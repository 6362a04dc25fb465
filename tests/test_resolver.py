"""Unit tests of the pure resolver for torch 1.13.1, 2.0.0 and 2.13.0.

:func:`tad_autograd.dispatch._resolver.resolve` depends only on its arguments, so every
torch release and every installed/missing ``functorch`` can be simulated on
whatever torch runs the tests.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

import tad_autograd as ta
from tad_autograd.backends.autograd import AutogradBackend
from tad_autograd.backends.base import Availability, Backend
from tad_autograd.compat._torch_info import Version
from tad_autograd.dispatch._registry import REGISTRY, Registry, _default_registry
from tad_autograd.dispatch._resolver import Resolution, clear_cache, resolve, resolve_cached
from tad_autograd.dispatch._settings import (
    ENV_VAR,
    GLOBAL,
    ORIGIN_AUTOMATIC,
    ORIGIN_BLOCK,
    ORIGIN_EXPLICIT,
)
from tad_autograd.errors import BackendUnavailableError, UnknownBackendError

V113 = Version("1.13.1")
V200 = Version("2.0.0")
V213 = Version("2.13.0")
VERSIONS = [V113, V200, V213]

#: What automatic mode picks on a device where transforms work, per torch release.
AUTOMATIC = {V113: "functorch", V200: "func", V213: "func"}


def has(*modules: str) -> Callable[[str], bool]:
    """A fake ``module_exists`` that knows exactly ``modules``."""
    return lambda name: name in modules


WITH_FUNCTORCH = has("torch", "functorch")
WITHOUT_FUNCTORCH = has("torch")


def run(
    version: Version = V213,
    *,
    argument: Optional[str] = None,
    context: Optional[Tuple[Optional[str], str]] = None,
    global_setting: Optional[str] = None,
    environment: Optional[str] = None,
    device_type: str = "cpu",
    registry: Optional[Registry] = None,
    module_exists: Callable[[str], bool] = WITH_FUNCTORCH,
    transforms_only: bool = False,
) -> Resolution:
    return resolve(
        argument=argument,
        context=context,
        global_setting=global_setting,
        environment=environment,
        device_type=device_type,
        registry=registry if registry is not None else _default_registry(),
        torch_version=version,
        module_exists=module_exists,
        transforms_only=transforms_only,
    )


# --------------------------------------------------------------------------- automatic


@pytest.mark.parametrize("version", VERSIONS, ids=str)
def test_automatic_choice_per_version(version: Version) -> None:
    r = run(version)
    assert r.backend.name == AUTOMATIC[version]
    assert r.source == "automatic"
    assert r.automatic
    assert not r.inherited_automatic
    assert r.candidates[0] is r.backend
    assert r.candidates[-1].name == "autograd"


def test_fallback_order_113() -> None:
    assert [b.name for b in run(V113).candidates] == ["functorch", "autograd"]


@pytest.mark.parametrize("version", [V200, V213], ids=str)
def test_functorch_never_automatic_on_2x(version: Version) -> None:
    r = run(version, module_exists=WITH_FUNCTORCH)
    assert [b.name for b in r.candidates] == ["func", "autograd"]
    skipped = [n for n in r.notes if "'functorch'" in n]
    assert skipped and "never chosen automatically" in skipped[0]
    # ... even when torch.func is not there to take its place (a broken install)
    registry = _default_registry()
    registry.unregister("func")
    r = run(version, registry=registry)
    assert r.backend.name == "autograd"


def test_functorch_missing_on_113_gives_autograd() -> None:
    r = run(V113, module_exists=WITHOUT_FUNCTORCH)
    assert r.backend.name == "autograd"
    assert any("functorch package is not installed" in n for n in r.notes)
    assert any("torch.func needs torch >= 2.0, found 1.13.1" in n for n in r.notes)


@pytest.mark.parametrize("version", VERSIONS, ids=str)
@pytest.mark.parametrize("environment", [None, "", "auto"])
def test_auto_spellings_are_automatic(version: Version, environment: Optional[str]) -> None:
    assert run(version, environment=environment).backend.name == AUTOMATIC[version]
    assert run(version, argument="auto").backend.name == AUTOMATIC[version]
    assert run(version, context=(None, ORIGIN_BLOCK)).backend.name == AUTOMATIC[version]


def test_automatic_respects_priorities_of_new_backends() -> None:
    registry = _default_registry()

    class Mine(AutogradBackend):
        name = "mine"

    registry.register(Mine(), priority=1000)
    assert run(V213, registry=registry).backend.name == "mine"
    registry.register(Mine(), priority=1)
    assert [b.name for b in run(V213, registry=registry).candidates] == ["func", "autograd", "mine"]


# --------------------------------------------------------------------------- precedence

SETTINGS = ("argument", "context", "global_setting", "environment")


@pytest.mark.parametrize("version", [V113, V213], ids=str)
@pytest.mark.parametrize("winner", range(len(SETTINGS)))
def test_precedence(version: Version, winner: int) -> None:
    """argument > use_backend/enclosing transform > set_backend > env var > automatic."""
    names = {
        "argument": "autograd",
        "context": "functorch",
        "global_setting": "autograd",
        "environment": "functorch",
    }
    kwargs: Dict[str, Any] = {}
    for i, setting in enumerate(SETTINGS):
        if i < winner:
            continue  # the settings that would win are absent
        name = names[setting]
        kwargs[setting] = (name, ORIGIN_BLOCK) if setting == "context" else name
    r = run(version, **kwargs)
    expected = names[SETTINGS[winner]]
    assert r.backend.name == expected
    assert not r.automatic
    assert r.candidates == (r.backend,)
    assert (
        r.source
        == {
            "argument": "backend= argument",
            "context": ORIGIN_BLOCK,
            "global_setting": "set_backend",
            "environment": ENV_VAR,
        }[SETTINGS[winner]]
    )


def test_argument_auto_overrides_lower_settings() -> None:
    """backend='auto' as an argument means automatic, whatever else is set."""
    r = run(
        V213,
        argument="auto",
        context=("autograd", ORIGIN_BLOCK),
        global_setting="autograd",
        environment="autograd",
    )
    assert r.backend.name == "func" and r.automatic


def test_use_backend_auto_block_hides_global_and_env() -> None:
    r = run(V213, context=(None, ORIGIN_BLOCK), global_setting="autograd", environment="autograd")
    assert r.backend.name == "func" and r.automatic


def test_env_auto_falls_through_to_automatic() -> None:
    assert run(V213, environment="auto").automatic


@pytest.mark.parametrize("origin", [ORIGIN_EXPLICIT, ORIGIN_AUTOMATIC])
def test_enclosing_transform_is_inherited(origin: str) -> None:
    r = run(V213, context=("autograd", origin), global_setting="func")
    assert r.backend.name == "autograd"
    assert not r.automatic  # an inner transform never falls back on its own
    assert r.inherited_automatic == (origin == ORIGIN_AUTOMATIC)
    assert r.source == origin


def test_aliases() -> None:
    assert run(V213, argument="torch.func").backend.name == "func"
    assert run(V213, environment="torch.func").backend.name == "func"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("setting", SETTINGS)
def test_unknown_name_lists_known_names(setting: str) -> None:
    value: Any = ("jax", ORIGIN_BLOCK) if setting == "context" else "jax"
    with pytest.raises(UnknownBackendError) as info:
        run(V213, **{setting: value})
    message = str(info.value)
    assert "'jax'" in message
    for known in ("'func'", "'torch.func'", "'functorch'", "'autograd'", "'auto'"):
        assert known in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("setting", SETTINGS)
def test_func_unavailable_on_113(setting: str) -> None:
    value: Any = ("func", ORIGIN_BLOCK) if setting == "context" else "func"
    with pytest.raises(BackendUnavailableError) as info:
        run(V113, **{setting: value})
    message = str(info.value)
    assert "torch.func needs torch >= 2.0, found 1.13.1" in message
    assert "fix:" in message and "torch>=2.0" in message
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("version", VERSIONS, ids=str)
def test_functorch_unavailable_without_package(version: Version) -> None:
    with pytest.raises(BackendUnavailableError, match="functorch package is not installed") as info:
        run(version, argument="functorch", module_exists=WITHOUT_FUNCTORCH)
    assert "pip install functorch" in str(info.value)


@pytest.mark.parametrize("version", VERSIONS, ids=str)
def test_functorch_explicit_allowed_when_installed(version: Version) -> None:
    r = run(version, argument="functorch", module_exists=WITH_FUNCTORCH)
    assert r.backend.name == "functorch" and not r.automatic


def test_no_backend_at_all() -> None:
    registry = Registry()
    with pytest.raises(BackendUnavailableError, match="no backend can run"):
        run(V213, registry=registry)


def test_unavailable_third_party_backend_is_skipped_and_explained() -> None:
    class Broken(Backend):
        name = "broken"

        def availability(
            self, torch_version: Version = V213, module_exists: Any = None
        ) -> Availability:
            return Availability(False, "needs a GPU from the future", "buy one")

    registry = _default_registry()
    registry.register(Broken(), priority=10_000)
    r = run(V213, registry=registry)
    assert r.backend.name == "func"
    assert any("needs a GPU from the future" in n for n in r.notes)
    with pytest.raises(BackendUnavailableError, match="needs a GPU from the future.*fix: buy one"):
        run(V213, registry=registry, argument="broken")


# --------------------------------------------------------------------------- fjacrev / fvmap


@pytest.mark.parametrize("version", VERSIONS, ids=str)
def test_transforms_only_automatic(version: Version) -> None:
    r = run(version, transforms_only=True)
    assert r.backend.name == AUTOMATIC[version]
    assert all(b.is_transform for b in r.candidates)
    assert "autograd" not in [b.name for b in r.candidates]


def test_transforms_only_113_without_functorch_raises() -> None:
    with pytest.raises(BackendUnavailableError, match="no backend can run") as info:
        run(V113, transforms_only=True, module_exists=WITHOUT_FUNCTORCH)
    assert "fjacrev/fvmap take function-transform backends only" in str(info.value)


@pytest.mark.parametrize("setting", SETTINGS)
def test_transforms_only_rejects_autograd_setting(setting: str) -> None:
    value: Any = ("autograd", ORIGIN_BLOCK) if setting == "context" else "autograd"
    with pytest.raises(BackendUnavailableError, match="not a function-transform backend"):
        run(V213, transforms_only=True, **{setting: value})


def test_transforms_only_explicit_transform_backend() -> None:
    assert run(V213, argument="functorch", transforms_only=True).backend.name == "functorch"
    assert run(V113, argument="functorch", transforms_only=True).backend.name == "functorch"


@pytest.mark.parametrize("device_type", ["mps", "xla", "brand-new-accelerator"])
def test_transforms_only_on_unsupported_device_raises(device_type: str) -> None:
    with pytest.raises(BackendUnavailableError, match=device_type):
        run(V213, device_type=device_type, transforms_only=True)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def fresh_cache() -> Any:
    clear_cache()
    yield
    clear_cache()


def test_resolve_cached_returns_same_object(fresh_cache: Any) -> None:
    first = resolve_cached(None, "cpu", False)
    assert resolve_cached(None, "cpu", False) is first
    assert resolve_cached("autograd", "cpu", False) is resolve_cached("autograd", "cpu", False)
    assert resolve_cached("autograd", "cpu", False) is not first


def test_resolve_cached_matches_resolve(fresh_cache: Any) -> None:
    cached = resolve_cached(None, "cpu", False)
    fresh = resolve(
        argument=None,
        context=None,
        global_setting=None,
        environment=None,
        device_type="cpu",
        registry=REGISTRY,
    )
    assert cached.backend is fresh.backend
    assert cached.candidates == fresh.candidates


def test_resolve_cached_per_device_type(fresh_cache: Any) -> None:
    assert resolve_cached(None, "meta", False).backend.name == "autograd"
    assert resolve_cached(None, "cpu", False).backend.name != "autograd"


def test_resolve_cached_follows_live_settings(
    fresh_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    automatic = resolve_cached(None, "cpu", False)
    monkeypatch.setenv(ENV_VAR, "autograd")
    assert resolve_cached(None, "cpu", False).backend.name == "autograd"
    monkeypatch.delenv(ENV_VAR)
    assert resolve_cached(None, "cpu", False) is automatic
    ta.set_backend("autograd")
    try:
        assert resolve_cached(None, "cpu", False).source == "set_backend"
    finally:
        ta.set_backend("auto")
    with ta.use_backend("autograd"):
        assert resolve_cached(None, "cpu", False).source == ORIGIN_BLOCK
    assert resolve_cached(None, "cpu", False) is automatic


def test_cache_invalidated_when_registry_changes(fresh_cache: Any) -> None:
    before = resolve_cached(None, "cpu", False)

    class Preferred(AutogradBackend):
        name = "test-preferred"

    ta.register_backend(Preferred(), priority=10_000)
    try:
        after = resolve_cached(None, "cpu", False)
        assert after is not before
        assert after.backend.name == "test-preferred"
        assert resolve_cached(None, "cpu", False) is after
    finally:
        REGISTRY.unregister("test-preferred")
    again = resolve_cached(None, "cpu", False)
    assert again.backend.name == before.backend.name
    assert again is not after


def test_cache_invalidated_on_unregister(fresh_cache: Any) -> None:
    class Temp(AutogradBackend):
        name = "test-temp"

    ta.register_backend(Temp(), priority=10_000)
    try:
        assert resolve_cached(None, "cpu", False).backend.name == "test-temp"
    finally:
        REGISTRY.unregister("test-temp")
    assert resolve_cached(None, "cpu", False).backend.name != "test-temp"
    with pytest.raises(UnknownBackendError):
        resolve_cached("test-temp", "cpu", False)


def test_settings_do_not_leak() -> None:
    """Sanity check of the suite's own isolation (conftest resets the settings)."""
    assert GLOBAL.name is None
    assert ENV_VAR not in os.environ
