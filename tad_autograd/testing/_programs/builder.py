"""The state of one random program while it is drawn, and the shapes it draws.

:class:`ProgramBuilder` holds the hypothesis ``draw`` function, the steps drawn
so far, the constants and the flags; the ``op_*`` functions of
:mod:`~tad_autograd.testing._programs.ops` and
:mod:`~tad_autograd.testing._programs.view_ops` each read it and add one step.

Examples
--------
>>> from hypothesis import find
>>> find(shapes(max_ndim=2), lambda s: len(s) == 2)
(1, 1)
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from hypothesis import strategies as st

from ..functions import NEW_STYLE_FUNCTIONS_SUPPORTED
from .program import MAX_NUMEL, _numel, _Step

__all__ = ["shapes", "ProgramBuilder"]


def shapes(
    *, max_ndim: int = 3, max_side: int = 3, max_numel: int = MAX_NUMEL
) -> st.SearchStrategy:
    """Tensor shapes, including 0-d and size-1 dimensions.

    Parameters
    ----------
    max_ndim, max_side : int
        Largest number of dimensions and largest size of one dimension.
    max_numel : int
        Largest number of elements.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10, database=None)
    ... @given(shapes(max_ndim=2))
    ... def check(shape):
    ...     assert len(shape) <= 2 and all(1 <= s <= 3 for s in shape)
    >>> check()
    """
    return (
        st.lists(st.integers(1, max_side), min_size=0, max_size=max_ndim)
        .map(tuple)
        .filter(lambda s: _numel(s) <= max_numel)
    )


class ProgramBuilder:
    """The state of one program while :func:`programs` draws it.

    Holds the hypothesis ``draw`` function, the steps drawn so far, the fixed
    constants (drawn from ``gen``, seeded by the program's seed) and the flags.
    The ``op_*`` functions of :mod:`~tad_autograd.testing._programs.ops` and
    :mod:`~tad_autograd.testing._programs.view_ops` each add one step.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import find, strategies as st
    >>> from tad_autograd.testing._programs.strategies import add_random_step
    >>> def one_step(draw):
    ...     pb = ProgramBuilder(draw, dtype=torch.float64, device="cpu", seed=0)
    ...     pb.steps.append(_Step((2,), 1.0, "x0", lambda vals, args: args[0]))
    ...     add_random_step(pb)
    ...     return pb.steps[-1]
    >>> step = find(st.composite(one_step)(), lambda s: True)
    >>> "v0" in step.text and step.bound <= 8.0
    True
    """

    def __init__(
        self,
        draw: st.DrawFn,
        *,
        dtype: torch.dtype,
        device: Union[str, torch.device],
        seed: int,
        max_ndim: int = 3,
        max_side: int = 3,
        new_style_functions: bool = True,
        old_style_functions: bool = False,
    ) -> None:
        self.draw = draw
        self.dtype = dtype
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        self.max_ndim = max_ndim
        self.max_side = max_side
        self.use_new = new_style_functions and NEW_STYLE_FUNCTIONS_SUPPORTED
        self.old_style_functions = old_style_functions
        self.steps: List[_Step] = []
        self.constants: Dict[str, torch.Tensor] = {}
        self.flags: Set[str] = set()

    def rand(self, shape: Sequence[int], low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        """Uniform values from the program's generator, drawn on the CPU, then moved."""
        t = torch.rand(shape, generator=self.gen, dtype=torch.float64, device="cpu")
        return (t * (high - low) + low).to(dtype=self.dtype, device=self.device)

    def const(self, prefix: str, value: torch.Tensor) -> str:
        """Record a constant (``W0``, ``M1``, ``I0`` ...) and return its name."""
        name = f"{prefix}{sum(1 for k in self.constants if k.startswith(prefix))}"
        self.constants[name] = value
        return name

    def draw_shape(self) -> Tuple[int, ...]:
        return tuple(self.draw(shapes(max_ndim=self.max_ndim, max_side=self.max_side)))

    def pick(self, pred: Callable[[_Step], bool] = lambda s: True) -> Optional[int]:
        cands = [k for k, s in enumerate(self.steps) if pred(s)]
        if not cands:
            return None
        return self.draw(st.sampled_from(cands))

    def pick_always(self, pred: Callable[[_Step], bool] = lambda s: True) -> int:
        """:func:`pick` where a candidate always exists (no predicate, or one `a` meets)."""
        chosen = self.pick(pred)
        assert chosen is not None
        return chosen

    def draw_dims(self, ndim: int) -> Tuple[int, ...]:
        dims = self.draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
        return tuple(d - ndim if self.draw(st.booleans()) else d for d in dims)
