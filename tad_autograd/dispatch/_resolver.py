"""Which backend runs a call, as a pure function.

:func:`resolve` depends only on its arguments: the settings, the device
type, the registry, the torch version and a module-existence probe, so it can
be tested for any torch release and any device type without either.
:func:`resolve_cached` is what the transforms call: the same decision,
remembered per (settings, device type), so a repeated call costs one dict
look-up.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from ..backends.base import Backend
from ..compat._torch_info import TORCH_VERSION, Version, is_compiling, module_exists
from ..errors import BackendUnavailableError, UnknownBackendError
from ._registry import REGISTRY, Registry
from ._settings import (
    CONTEXT,
    ENV_VAR,
    GLOBAL,
    ORIGIN_AUTOMATIC,
    ORIGIN_AUTOMATIC_EAGER,
    ORIGIN_AUTOMATIC_LOOP,
    read_env,
)

__all__ = ["Resolution", "resolve", "resolve_cached", "resolve_in", "clear_cache"]

_log = logging.getLogger("tad_autograd")


class Resolution(NamedTuple):
    """The outcome of resolving a call.

    An immutable named tuple.

    Attributes
    ----------
    backend : Backend
        The backend that runs the call.
    source : str
        Which setting decided: ``"backend= argument"``, ``"use_backend"``, an
        enclosing transform, ``"set_backend"``, ``"TAD_AUTOGRAD_BACKEND"`` or
        ``"automatic"``.
    automatic : bool
        Chosen automatically: only then may a call fall back.
    inherited_automatic : bool
        Inherited from an enclosing transform that chose automatically; its
        errors go up to that transform unchanged.
    inherited_eager : bool
        That enclosing transform runs its function eagerly (not under a
        function transform), so the automatic strategy may be used again.
    candidates : tuple of Backend
        In automatic mode, the fallback order (``backend`` first).
    notes : tuple of str
        What was consulted and what was skipped, and why.
    """

    backend: Backend
    source: str
    automatic: bool
    inherited_automatic: bool = False
    inherited_eager: bool = False
    candidates: Tuple[Backend, ...] = ()
    notes: Tuple[str, ...] = ()


def resolve(
    *,
    argument: Optional[str],
    context: Optional[Tuple[Optional[str], str]],
    global_setting: Optional[str],
    environment: Optional[str],
    device_type: str,
    registry: Registry,
    torch_version: Version = TORCH_VERSION,
    module_exists: Callable[[str], bool] = module_exists,
    transforms_only: bool = False,
) -> Resolution:
    """Decide which backend runs a call, following the documented order of rules.

    Parameters
    ----------
    argument : str or None
        The transform's ``backend=`` argument.
    context : tuple or None
        The innermost :func:`use_backend` setting as ``(name or None, origin)``.
    global_setting : str or None
        The :func:`set_backend` setting.
    environment : str or None
        The value of ``TAD_AUTOGRAD_BACKEND``.
    device_type : str
        The device type of the call's tensors.
    registry : Registry
        The registered backends.
    torch_version : Version
        The torch release to decide for (a ``Version`` from
        ``tad_autograd.compat._torch_info``).
    module_exists : callable
        ``module_exists(name) -> bool``.
    transforms_only : bool
        For ``fjacrev``/``fvmap``: only function-transform backends qualify.

    Returns
    -------
    Resolution

    Raises
    ------
    UnknownBackendError
        A setting names no known backend.
    BackendUnavailableError
        The chosen backend cannot run, or no backend qualifies.

    Examples
    --------
    >>> from tad_autograd.compat._torch_info import Version
    >>> from tad_autograd.dispatch._registry import REGISTRY
    >>> r = resolve(argument=None, context=None, global_setting=None, environment=None,
    ...             device_type="cpu", registry=REGISTRY, torch_version=Version("1.13.1"),
    ...             module_exists=lambda name: True)
    >>> r.backend.name, r.source
    ('functorch', 'automatic')
    """
    notes = []
    name: Optional[str] = None
    source = "automatic"
    inherited_automatic = inherited_eager = False
    if argument is not None and argument != "auto":
        name, source = argument, "backend= argument"
    else:
        if argument == "auto":
            notes.append("backend='auto' argument: automatic choice")
        elif context is not None:
            name, source = context
            inherited_eager = source == ORIGIN_AUTOMATIC_EAGER
            inherited_automatic = inherited_eager or source == ORIGIN_AUTOMATIC
            if name is None and source == ORIGIN_AUTOMATIC_LOOP:
                notes.append(
                    "a sample of an automatic vmap's loop (after its transform failed): "
                    "automatic choice"
                )
            elif name is None:
                notes.append("use_backend('auto') block: automatic choice")
        elif global_setting is not None:
            name, source = global_setting, "set_backend"
        elif environment and environment != "auto":
            name, source = environment, ENV_VAR
        else:
            notes.append(
                "no backend= argument, use_backend block, set_backend or "
                f"{ENV_VAR}: automatic choice"
            )

    transform_note = "fjacrev/fvmap take function-transform backends only"
    if name is not None:
        try:
            backend = registry.get(name)
        except UnknownBackendError as error:
            raise UnknownBackendError(f"{source}={name!r}: {error}") from None
        availability = backend.availability(torch_version, module_exists)
        if not availability.ok:
            raise BackendUnavailableError(
                f"backend {name!r} (chosen by {source}) is unavailable: "
                f"{availability.reason}; fix: {availability.fix}"
            )
        if transforms_only and not backend.is_transform:
            raise BackendUnavailableError(
                f"backend {name!r} (chosen by {source}) is not a function-transform "
                f"backend, and {transform_note}; use jacrev/vmap, or choose one of "
                f"{[b.name for b in registry.backends() if b.is_transform]}"
            )
        notes.append(f"{backend.name!r} chosen by {source}")
        return Resolution(
            backend, source, False, inherited_automatic, inherited_eager, (backend,), tuple(notes)
        )

    candidates = []
    for priority, backend in registry.priorities():
        label = f"{backend.name!r} (priority {priority})"
        availability = backend.availability(torch_version, module_exists)
        if not availability.ok:
            notes.append(f"skipped {label}: {availability.reason}")
            continue
        if transforms_only and not backend.is_transform:
            notes.append(f"skipped {label}: {transform_note}")
            continue
        ok, why = backend.automatic_ok(torch_version)
        if not ok:
            notes.append(f"skipped {label}: {why}")
            continue
        if not backend.supports_device(device_type):
            notes.append(
                f"skipped {label}: function transforms are not known to work on "
                f"device type {device_type!r}"
            )
            continue
        candidates.append(backend)
    if not candidates:
        raise BackendUnavailableError(
            f"no backend can run on device type {device_type!r} with torch "
            f"{torch_version}: " + "; ".join(notes)
        )
    notes.append(f"automatic choice for device type {device_type!r}: {candidates[0].name!r}")
    return Resolution(
        candidates[0], "automatic", True, False, False, tuple(candidates), tuple(notes)
    )


_CACHE: Dict[Tuple[Any, ...], Resolution] = {}
_CACHE_VERSION = [-1]


def clear_cache() -> None:
    """Forget every remembered resolution (done automatically when the registry changes)."""
    _CACHE.clear()


def resolve_cached(argument: Optional[str], device_type: str, transforms_only: bool) -> Resolution:
    """:func:`resolve` with the live settings, remembered per settings and device type.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> resolve_cached("autograd", "cpu", False).backend.name
    'autograd'
    """
    return resolve_in(argument, CONTEXT.get(), device_type, transforms_only)


def resolve_in(
    argument: Optional[str],
    context: Optional[Tuple[Optional[str], str]],
    device_type: str,
    transforms_only: bool,
) -> Resolution:
    """:func:`resolve_cached` with the innermost setting ``context`` given (as under dynamo)."""
    key = (
        argument,
        context,
        GLOBAL.name,
        read_env(),
        device_type,
        transforms_only,
    )
    if _CACHE_VERSION[0] != REGISTRY.version:
        _CACHE.clear()
        _CACHE_VERSION[0] = REGISTRY.version
    resolution = _CACHE.get(key)
    if resolution is not None:
        return resolution
    resolution = resolve(
        argument=key[0],
        context=key[1],
        global_setting=key[2],
        environment=key[3],
        device_type=device_type,
        registry=REGISTRY,
        transforms_only=transforms_only,
    )
    if not is_compiling():  # dynamo cannot trace a Logger
        _log.debug("resolved backend %r (%s)", resolution.backend.name, "; ".join(resolution.notes))
    _CACHE[key] = resolution
    return resolution
