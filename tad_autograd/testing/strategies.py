"""Hypothesis strategies that build random differentiable programs.

A *program* is a small random function of several tensor (or pytree-of-tensor)
arguments, assembled from a little expression language: smooth elementwise ops,
matmuls and linear maps with fixed random weights, reductions, broadcasting,
indexing and slicing, ``torch.where`` with a fixed mask, norms kept away from
their kinks, view ops and, optionally, custom ``torch.autograd.Function`` nodes.
Every program carries example arguments, ``argnums`` to differentiate with
respect to, and flags describing what it contains.  Its ``repr`` is readable
pseudo-code, so hypothesis failure reports show exactly what was run.

Values are kept finite and O(1) (every intermediate has a static magnitude
bound, see ``BOUND_MAX``), so float32 comparisons at ``rtol=1e-5`` are
meaningful.

This module gathers the public names; the code lives in the modules
``functions`` (the custom ``autograd.Function`` classes) and ``vmap_call``
(:class:`~tad_autograd.testing.VmapCall`,
:func:`~tad_autograd.testing.vmap_calls`) of ``tad_autograd.testing``, and in
its private ``_programs`` package (:class:`~tad_autograd.testing.Program`,
:func:`~tad_autograd.testing.programs` and the smaller strategies, with the
steps they draw).

Examples
--------
>>> import torch
>>> from hypothesis import given, settings
>>> from tad_autograd.testing.strategies import programs
>>> @settings(max_examples=5, deadline=None, database=None)
... @given(programs(dtypes=[torch.float64]))
... def check(program):
...     out = program(*program.args)
...     assert program.dtype == torch.float64
>>> check()
"""

from __future__ import annotations

from ._programs.builder import shapes
from ._programs.program import BOUND_MAX, MAX_NUMEL, Program  # noqa: F401 - the bounds stay importable
from ._programs.strategies import argnums_for, float_dtypes, programs
from .functions import NEW_STYLE_FUNCTIONS_SUPPORTED, NewStyleSiLU, OldStyleSin
from .vmap_call import VmapCall, vmap_calls

__all__ = [
    "NEW_STYLE_FUNCTIONS_SUPPORTED",
    "OldStyleSin",
    "NewStyleSiLU",
    "Program",
    "VmapCall",
    "shapes",
    "float_dtypes",
    "argnums_for",
    "programs",
    "vmap_calls",
]
