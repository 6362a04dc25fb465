"""Facts about the installed torch, computed once and without heavy imports."""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
from packaging.version import Version

__all__ = ["TORCH_VERSION", "module_exists"]

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
