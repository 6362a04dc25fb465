"""Public test kit: check your own functions against every backend.

* :mod:`tad_autograd.testing.strategies` - hypothesis strategies for random
  differentiable programs (:func:`programs`) and ``vmap`` calls
  (:func:`vmap_calls`);
* :func:`assert_backends_agree` - run ``jacrev``/``vmap``/``hessian`` with
  every available backend and assert the answers agree;
* :mod:`tad_autograd.testing.properties` - the property checks the library's
  own test suite runs, reusable on your functions;
* :mod:`tad_autograd.testing.plugin` - a pytest plugin (loaded through the
  ``pytest11`` entry point) with the ``autograd_backend`` fixture and the
  ``autograd_backends`` marker.

Importing this package needs ``hypothesis`` only for the strategies, which are
imported lazily.

Examples
--------
>>> import torch
>>> from tad_autograd.testing import assert_backends_agree
>>> x = torch.linspace(-1, 1, 4, dtype=torch.float64)
>>> _ = assert_backends_agree(lambda x: x.sin().cumsum(0), x)
"""

from __future__ import annotations

from typing import Any

from .agree import (
    AUTO,
    Agreement,
    assert_backends_agree,
    assert_trees_close,
    default_tolerances,
    reference_jacobian,
    reference_vmap,
)

__all__ = [
    "AUTO",
    "Agreement",
    "assert_backends_agree",
    "assert_trees_close",
    "default_tolerances",
    "reference_jacobian",
    "reference_vmap",
    "programs",
    "vmap_calls",
    "Program",
    "VmapCall",
]

_LAZY = {"programs", "vmap_calls", "Program", "VmapCall"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
