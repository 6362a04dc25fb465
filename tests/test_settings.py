"""Settings, precedence and errors for names."""

from __future__ import annotations

import pytest
import torch

import tad_autograd as ta
from tad_autograd.dispatch._settings import ENV_VAR


def used_backend(**kwargs):
    seen = []

    def f(x):
        seen.append(ta.get_backend())
        return x * 2

    ta.jacrev(f, **kwargs)(torch.ones(2))
    return seen[0]


def automatic_choice() -> str:
    return ta.explain(torch.ones(1)).backend


def test_default_is_auto() -> None:
    assert ta.get_backend() == "auto"
    assert used_backend() == automatic_choice()


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "autograd")
    assert ta.get_backend() == "autograd"
    assert used_backend() == "autograd"
    ta.set_backend(automatic_choice())
    assert used_backend() == automatic_choice()
    with ta.use_backend("autograd"):
        assert used_backend() == "autograd"
        with ta.use_backend(automatic_choice()):
            assert used_backend() == automatic_choice()
        assert used_backend(backend=automatic_choice()) == automatic_choice()
    ta.set_backend(None)
    assert used_backend() == "autograd"


def test_env_var_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    f = ta.jacrev(lambda x: x.sum())
    f(torch.ones(2))
    monkeypatch.setenv(ENV_VAR, "autograd")
    assert ta.explain(torch.ones(1)).source == ENV_VAR
    monkeypatch.setenv(ENV_VAR, "auto")
    assert ta.explain(torch.ones(1)).source == "automatic"


def test_use_backend_auto_restores_automatic() -> None:
    ta.set_backend("autograd")
    with ta.use_backend("auto"):
        assert ta.get_backend() == "auto"
        assert used_backend() == automatic_choice()
    assert ta.get_backend() == "autograd"


def test_alias_torch_func() -> None:
    if "func" not in ta.available_backends():
        pytest.skip("torch.func unavailable")
    with ta.use_backend("torch.func"):
        assert ta.get_backend() == "func"


@pytest.mark.parametrize(
    "call",
    [
        lambda: ta.set_backend("jax"),
        lambda: ta.use_backend("jax").__enter__(),
        lambda: ta.jacrev(torch.sin, backend="jax"),
        lambda: ta.vmap(torch.sin, backend="jax"),
        lambda: ta.hessian(torch.sin, backend="jax"),
    ],
)
def test_unknown_name_everywhere(call) -> None:
    with pytest.raises(ta.UnknownBackendError, match="known:.*'autograd'"):
        call()
    assert ta.get_backend() == "auto"


def test_unknown_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "jax")
    with pytest.raises(ta.UnknownBackendError, match="jax"):
        ta.jacrev(torch.sin)(torch.zeros(1))


def test_unknown_backend_is_value_error() -> None:
    assert issubclass(ta.UnknownBackendError, ValueError)
    assert issubclass(ta.BackendUnavailableError, RuntimeError)
    assert issubclass(ta.BackendFallbackWarning, UserWarning)


def test_fjacrev_refuses_loop_backend() -> None:
    with pytest.raises(ta.BackendUnavailableError, match="function-transform"):
        ta.fjacrev(torch.sin, backend="autograd")(torch.zeros(2))
    with ta.use_backend("autograd"), pytest.raises(ta.BackendUnavailableError):
        ta.fvmap(torch.sin)(torch.zeros(2))


def test_fjacrev_automatic_is_a_transform() -> None:
    seen = []

    def f(x):
        seen.append(ta.get_backend())
        return x.sin()

    ta.fjacrev(f)(torch.zeros(2))
    assert seen[0] in ("func", "functorch")


def test_available_backends_order() -> None:
    names = ta.available_backends()
    assert names[-1] == "autograd"
    assert list(names) == sorted(names, key=["func", "functorch", "autograd"].index)


def test_setting_restored_after_exception() -> None:
    with ta.use_backend("autograd"):
        with pytest.raises(ZeroDivisionError):
            ta.jacrev(lambda x: 1 / 0)(torch.zeros(1))
        assert ta.get_backend() == "autograd"
    assert ta.get_backend() == "auto"
