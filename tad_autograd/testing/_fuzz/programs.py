"""Differential fuzzing: programs with hard features.

A :class:`FuzzProgram` wraps a :class:`~tad_autograd.testing.strategies.Program`
(smooth elementwise ops, matmuls, custom ``autograd.Function`` nodes) and adds,
each behind a flag shown in its ``repr``:

``item``
    ``.item()`` of an intermediate used as a Python scalar factor.
``control_flow``
    ``if y.sum() > 0: ... else: ...`` on an intermediate.
``inplace_captured``
    ``buf.copy_(y)`` or ``buf.zero_(); buf.add_(y)`` into a tensor created
    outside the function, which is then used.
``inplace_intermediate``
    in-place ``mul_``/``add_`` on an intermediate.
``random``
    ``torch.rand_like`` noise; ``seeded`` programs call ``torch.manual_seed``
    themselves (deterministic, so finite differences apply), ``global`` ones
    draw from the caller's generator.
``input_view`` / ``output_view``
    ``transpose``, ``narrow``, ``unsqueeze`` or ``as_strided`` views of the
    first argument / of the main output.
``io_dtype``
    float16/bfloat16 programs take and return that dtype and compute in float32.

:func:`fuzz_programs` draws such programs;
:func:`tad_autograd.testing._fuzz.case.fuzz_cases` draws a whole case: a
program, an operator (:data:`OPERATORS`), its argnums / in_dims / out_dims, a
calling context (:data:`CONTEXTS`) and an input kind (:data:`INPUT_KINDS`).
The checks live in
:mod:`tad_autograd.testing._fuzz.checks`; the independent references in
:mod:`tad_autograd.testing.operators`.

Profiles: ``tests/fuzz`` runs a few examples per property by default
(``TAD_AUTOGRAD_HYPOTHESIS_PROFILE=ci``) and >= 1000 with
``TAD_AUTOGRAD_HYPOTHESIS_PROFILE=thorough`` (see :func:`fuzz_settings`).

Examples
--------
>>> import torch
>>> from hypothesis import given, settings
>>> @settings(max_examples=5, deadline=None, database=None)
... @given(fuzz_programs(features=("item", "random")))
... def check(program):
...     program.reset()
...     out = program(*program.args)
>>> check()
"""

from __future__ import annotations

import os
from typing import Any, Dict, FrozenSet, Optional, Sequence

import torch
from hypothesis import settings
from hypothesis import strategies as st

from ...compat._pytree import tree_flatten, tree_unflatten
from ..reference import map_tensors
from ..strategies import Program, programs

__all__ = [
    "FEATURES",
    "UNTRANSFORMABLE",
    "OPERATORS",
    "VMAP_OPERATORS",
    "CONTEXTS",
    "INPUT_KINDS",
    "FuzzProgram",
    "fuzz_programs",
    "fuzz_settings",
]

FEATURES = (
    "item",
    "control_flow",
    "inplace_captured",
    "inplace_intermediate",
    "random",
    "input_view",
    "output_view",
)
#: Features a function transform may refuse (besides old-style Functions).
UNTRANSFORMABLE = frozenset({"item", "control_flow", "inplace_captured", "old_style_function"})
OPERATORS = (
    "jacrev",
    "jacrev_aux",
    "hessian",
    "jacrev_jacrev",
    "vmap",
    "vmap_jacrev",
    "jacrev_vmap",
    "vmap_hessian",
)
VMAP_OPERATORS = frozenset({"vmap", "vmap_jacrev", "jacrev_vmap", "vmap_hessian"})
CONTEXTS = ("plain", "no_grad", "enable_grad", "inference_mode")
INPUT_KINDS = ("plain", "leaf", "nonleaf", "view")


def fuzz_settings(ci_examples: int) -> settings:
    """Hypothesis settings: ``ci_examples`` examples, or 1000 in the ``thorough`` profile.

    Examples
    --------
    >>> fuzz_settings(7).max_examples in (7, 1000)
    True
    """
    thorough = os.environ.get("TAD_AUTOGRAD_HYPOTHESIS_PROFILE", "ci") == "thorough"
    return settings(max_examples=1000 if thorough else ci_examples)


class FuzzProgram:
    """A :class:`Program` with extra features; call it like the program.

    Attributes
    ----------
    base : Program
        The smooth program underneath (computed in float32/float64).
    features : frozenset of str
        Subset of :data:`FEATURES`, plus ``old_style_function`` /
        ``new_style_function`` when the base program holds one.
    options : dict
        Feature details (which view, which in-place form, random mode, seed).
    io_dtype : torch.dtype
        Dtype of the arguments and outputs (``base.dtype`` unless half).
    args : tuple
        Example arguments in ``io_dtype``.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import programs
    >>> base = find(programs(pytree_inputs=False, passthrough_args=False), lambda p: True)
    >>> p = FuzzProgram(base, {"control_flow"}, {})
    >>> p.reset()
    >>> p(*p.args).shape == base(*base.args).shape
    True
    """

    def __init__(
        self,
        base: Program,
        features: Any,
        options: Dict[str, Any],
        io_dtype: Optional[torch.dtype] = None,
    ) -> None:
        self.base = base
        flags = {
            f for f in ("old_style_function", "new_style_function") if getattr(base, f"has_{f}")
        }
        self.features: FrozenSet[str] = frozenset(features) | frozenset(flags)
        with torch.no_grad():
            self._main_shape = tree_flatten(base(*base.args))[0][-1].shape
        self.options = dict(options)
        self.io_dtype = io_dtype if io_dtype is not None else base.dtype
        self.args = self.cast_args(base.args, self.io_dtype)
        self.buffer: Optional[torch.Tensor] = None
        self.reset()

    # -- delegation for vmap_calls and friends -----------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def dtype(self) -> torch.dtype:
        return self.io_dtype

    @property
    def untransformable(self) -> bool:
        """Holds a feature a function transform may refuse."""
        return bool(self.features & UNTRANSFORMABLE)

    def with_io_dtype(self, dtype: torch.dtype) -> FuzzProgram:
        """The same program taking and returning ``dtype`` (e.g. float32 for a reference)."""
        return FuzzProgram(self.base, self.features, self.options, dtype)

    @staticmethod
    def cast_args(args: Any, dtype: torch.dtype) -> Any:
        return map_tensors(lambda t: t.to(dtype) if t.is_floating_point() else t, args)

    def reset(self) -> None:
        """Recreate the captured buffer (run before each top-level call)."""
        self.buffer = torch.zeros(self._main_shape, dtype=self.base.dtype, device=self.base.device)

    # -- evaluation ---------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        feats, opt = self.features, self.options
        values = list(args)
        if self.io_dtype != self.base.dtype:
            values = list(self.cast_args(tuple(values), self.base.dtype))
        if "input_view" in feats and isinstance(values[0], torch.Tensor):
            values[0] = _view(values[0], opt["input_view"], keep_shape=True)
        out = self.base(*values, **kwargs)
        leaves, spec = tree_flatten(out)
        y = leaves[-1]
        if "inplace_intermediate" in feats:
            t = y.clone()
            t.mul_(0.5)
            t.add_(torch.sin(y))
            y = t
        if "item" in feats:
            y = y * (1.5 + 0.0 * float(y.sum().item()))
        if "control_flow" in feats:
            y = torch.sin(y) if y.sum() > 0 else 0.5 * torch.cos(y)
        if "inplace_captured" in feats:
            if self.buffer is None:
                raise RuntimeError("FuzzProgram.reset() was not called")
            if opt.get("inplace") == "add":
                self.buffer.zero_()
                self.buffer.add_(y)
            else:
                self.buffer.copy_(y)
            y = torch.sin(y + self.buffer)
        if "random" in feats:
            if opt.get("random") == "seeded":
                torch.manual_seed(opt.get("seed", 0))
            y = y * (1 + 0.25 * torch.rand_like(y))
        if "output_view" in feats:
            y = _view(y, opt["output_view"], keep_shape=False)
        leaves[-1] = y
        out = tree_unflatten(leaves, spec)
        if self.io_dtype != self.base.dtype:
            out = self.cast_args(out, self.io_dtype)
        return out

    def __repr__(self) -> str:
        feats = sorted(self.features)
        return (
            f"FuzzProgram(features={feats}, options={self.options}, io_dtype={self.io_dtype}, "
            f"applied to the last output leaf y, in this order: input_view(x0), "
            f"inplace_intermediate, item, control_flow, inplace_captured, random, "
            f"output_view)\n{self.base!r}"
        )


def _view(x: torch.Tensor, kind: str, keep_shape: bool) -> torch.Tensor:
    if x.dim() == 0 and kind in ("transpose", "narrow"):
        kind = "unsqueeze"
    if kind == "transpose":
        v = x.transpose(0, -1)
        return v.transpose(0, -1) if keep_shape else v
    if kind == "narrow":
        n = x.shape[0] if keep_shape else max(1, x.shape[0] - 1)
        return x.narrow(0, 0, n)
    if kind == "unsqueeze":
        v = x.unsqueeze(0)
        return v.squeeze(0) if keep_shape else v
    if kind == "as_strided":
        return x.as_strided(x.shape, x.stride(), x.storage_offset())
    raise ValueError(f"unknown view kind {kind!r}")


@st.composite
def fuzz_programs(
    draw: st.DrawFn,
    *,
    features: Sequence[str] = FEATURES,
    old_style_functions: bool = True,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    half: bool = False,
    small: bool = False,
    pytree: bool = True,
) -> FuzzProgram:
    """Random :class:`FuzzProgram` objects.

    Parameters
    ----------
    features : sequence of str
        Features (from :data:`FEATURES`) that may be switched on.
    old_style_functions : bool
        Allow old-style ``autograd.Function`` nodes in the base program.
    dtypes : sequence of torch.dtype
        Compute dtypes (float32/float64).
    half : bool
        Sometimes make the program take and return float16 or bfloat16.
    small : bool
        Small programs (for second-order operators).
    pytree : bool
        Allow pytree arguments/outputs and a trailing int argument.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, deadline=None, database=None)
    ... @given(fuzz_programs(half=True))
    ... def check(p):
    ...     p.reset()
    ...     _ = p(*p.args)
    >>> check()
    """
    base = draw(
        programs(
            dtypes=[torch.float32] if half else dtypes,
            max_args=2 if small else 3,
            max_ops=3 if small else 5,
            max_side=2 if small else 3,
            pytree_inputs=pytree,
            pytree_outputs=pytree,
            passthrough_args=pytree,
            old_style_functions=old_style_functions,
        )
    )
    chosen = {f for f in features if draw(st.integers(0, 3)) == 3}  # shrinks to "off"
    options: Dict[str, Any] = {}
    if "input_view" in chosen:
        if isinstance(base.args[0], torch.Tensor):
            options["input_view"] = draw(
                st.sampled_from(["transpose", "narrow", "unsqueeze", "as_strided"])
            )
        else:
            chosen.discard("input_view")
    if "output_view" in chosen:
        options["output_view"] = draw(
            st.sampled_from(["transpose", "narrow", "unsqueeze", "as_strided"])
        )
    if "inplace_captured" in chosen:
        options["inplace"] = draw(st.sampled_from(["copy", "add"]))
    if "random" in chosen:
        options["random"] = draw(st.sampled_from(["seeded", "global"]))
        options["seed"] = draw(st.integers(0, 2**16))
    io_dtype = None
    if half and draw(st.booleans()):
        io_dtype = draw(st.sampled_from([torch.float16, torch.bfloat16]))
    return FuzzProgram(base, chosen, options, io_dtype)
