"""Facts about the installed torch, computed once and without heavy imports.

This is the one place in the package that imports a ``Version`` class.
Recent torch releases import their vendored copy of ``packaging``
(``torch._vendor.packaging``) during ``import torch``, so taking ``Version``
from there costs nothing, while importing the top-level ``packaging.version``
costs several milliseconds.  Older releases (torch 1.13, 2.0) have no vendored
copy; there the ``packaging`` distribution (a dependency of this package)
supplies it.  Everything that compares versions takes ``Version`` from here:
two different ``Version`` classes do not compare with each other.

Examples
--------
>>> from tad_autograd._torch_info import TORCH_VERSION, Version
>>> TORCH_VERSION >= Version("1.13")
True
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch

try:
    from torch._vendor.packaging.version import Version
except ImportError:  # older torch (1.13, 2.0): no vendored packaging
    from packaging.version import Version  # type: ignore[assignment, no-redef, unused-ignore]

__all__ = [
    "TORCH_VERSION",
    "Version",
    "module_exists",
    "transforms_active",
]

#: The installed torch release, without local build tags (``2.13.0+cpu`` -> ``2.13.0``).
TORCH_VERSION: Version = Version(Version(torch.__version__.split("+")[0]).base_version)


@cache
def module_exists(name: str) -> bool:
    """Tell whether module ``name`` could be imported, without importing it.

    Parameters
    ----------
    name : str
        A top-level module name such as ``"functorch"``.

    Returns
    -------
    bool
        ``True`` when an import system finder knows the module.

    Examples
    --------
    >>> module_exists("torch")
    True
    >>> module_exists("no_such_module_xyz")
    False
    """
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_ARE_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)


def transforms_active() -> bool:
    """Whether a function transform (``vmap``, ``grad``, ...) is running around this call.

    Examples
    --------
    >>> transforms_active()
    False
    """
    return bool(_ARE_TRANSFORMS_ACTIVE()) if _ARE_TRANSFORMS_ACTIVE is not None else False
