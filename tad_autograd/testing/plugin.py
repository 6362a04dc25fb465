"""pytest plugin: run tests once per available ``tad_autograd`` backend.

Loaded automatically through the ``pytest11`` entry point when
``tad_autograd`` is installed.  It provides

* the fixture ``autograd_backend``: parametrized over
  ``tad_autograd.available_backends()``; it yields the backend name and runs
  the test inside ``tad_autograd.use_backend(name)``;
* the marker ``@pytest.mark.autograd_backends("func", "autograd")``: restricts
  that parametrization to the named backends (named backends that are not
  available on this installation are reported as skipped, with the reason;
  unknown names are a collection error).

Loading the plugin twice (entry point plus ``-p tad_autograd.testing.plugin``
or ``pytest_plugins = ["tad_autograd.testing.plugin"]``) is harmless: the
second registration is skipped.

Examples
--------
A test module using it::

    import pytest
    import torch
    import tad_autograd as ta

    def test_sin(autograd_backend):
        x = torch.zeros(3)
        assert torch.equal(ta.jacrev(torch.sin)(x), torch.eye(3))

    @pytest.mark.autograd_backends("func", "autograd")
    def test_only_some(autograd_backend):
        assert ta.get_backend() == autograd_backend
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, List

import pytest

#: Name the ``pytest11`` entry point registers the plugin under.
ENTRY_POINT_NAME = "tad_autograd"
#: Module name (used by ``-p`` and ``pytest_plugins``).
MODULE_NAME = __name__
FIXTURE = "autograd_backend"
MARKER = "autograd_backends"

__all__ = ["autograd_backend", "register", "ENTRY_POINT_NAME", "FIXTURE", "MARKER"]


def register(pluginmanager: Any) -> None:
    """Register this plugin unless it is already registered (under any name).

    For a ``conftest.py`` that wants the plugin whether or not ``tad_autograd``
    is installed with its entry point::

        def pytest_configure(config):
            from tad_autograd.testing import plugin
            plugin.register(config.pluginmanager)

    Examples
    --------
    >>> import pluggy
    >>> pm = pluggy.PluginManager("pytest")
    >>> register(pm); register(pm)
    >>> pm.has_plugin(ENTRY_POINT_NAME)
    True
    """
    module = sys.modules[__name__]
    if pluginmanager.is_registered(module):
        return
    if pluginmanager.has_plugin(ENTRY_POINT_NAME) or pluginmanager.has_plugin(MODULE_NAME):
        return
    pluginmanager.register(module, ENTRY_POINT_NAME)


def pytest_addhooks(pluginmanager: Any) -> None:
    # Called when this module is registered.  Block the *other* name this
    # module could be loaded under, so that loading it both through the entry
    # point and through -p / pytest_plugins does not register it twice (which
    # pluggy rejects with "Plugin already registered under a different name").
    name = pluginmanager.get_name(sys.modules[__name__])
    for other in (ENTRY_POINT_NAME, MODULE_NAME):
        if (
            other != name
            and not pluginmanager.has_plugin(other)
            and hasattr(pluginmanager, "set_blocked")
        ):
            pluginmanager.set_blocked(other)


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): run the '{FIXTURE}' fixture only for these tad_autograd backends "
        "(unavailable ones are skipped with the reason)",
    )


def _unavailable_reason(name: str) -> str:
    from ..dispatch._registry import REGISTRY

    try:
        backend = REGISTRY.get(name)
    except Exception as exc:  # unknown name
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: {exc}") from None
    availability = backend.availability()
    ok = getattr(
        availability,
        "ok",
        availability[0] if isinstance(availability, tuple) else bool(availability),
    )
    if ok:
        return ""
    reason = getattr(availability, "reason", "") or (
        availability[1] if isinstance(availability, tuple) else ""
    )
    return f"backend {name!r} is unavailable: {reason}"


def pytest_generate_tests(metafunc: Any) -> None:
    if FIXTURE not in metafunc.fixturenames:
        return
    import tad_autograd as ta

    available = ta.available_backends()
    marker = metafunc.definition.get_closest_marker(MARKER)
    params: List[Any] = []
    if marker is None:
        params = list(available)
    else:
        if not marker.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} needs at least one backend name")
        for name in marker.args:
            if name in available:
                params.append(name)
            else:
                reason = _unavailable_reason(name)
                if reason:
                    params.append(
                        pytest.param(name, marks=pytest.mark.skip(reason=reason), id=name)
                    )
                else:  # an alias of an available backend, e.g. "torch.func"
                    params.append(name)
    metafunc.parametrize(
        FIXTURE, params, indirect=True, ids=[p if isinstance(p, str) else p.id for p in params]
    )


@pytest.fixture
def autograd_backend(request: Any) -> Iterator[str]:
    """The name of a ``tad_autograd`` backend; the test runs inside ``use_backend(name)``.

    Parametrized over ``tad_autograd.available_backends()`` (or the names of
    an ``@pytest.mark.autograd_backends(...)`` marker).
    """
    import tad_autograd as ta

    name = getattr(request, "param", None)
    if name is None:  # pragma: no cover - parametrization is always added
        pytest.fail(f"fixture {FIXTURE!r} was not parametrized")
    with ta.use_backend(name):
        yield name
