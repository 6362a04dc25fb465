"""Ops whose batching rule gives wrong values on some torch releases (CONTRACT §3).

Automatic mode is never less correct than plain autograd: where the
installed torch is known to vectorise an op wrongly, automatic mode does not
vectorise through it.  Each :class:`BatchingDefect` names the op, the torch
releases it is wrong on, how it shows in a forward graph (the autograd node
class names the eager strategy sees when it walks the graph) and which torch
callables produce it (what a call running inside a function transform
watches for).

The table is produced and checked by the project's OpInfo differential test
(``tests/opdb``): on every torch of the matrix it runs each op under
``jacrev``, ``vmap`` and ``vmap(jacrev)`` on the transform backends, compares
with a row loop of :func:`torch.autograd.grad` and finite differences, and
fails when a wrong result is missing from this table or an entry here no
longer reproduces.

Examples
--------
>>> from tad_autograd._torch_info import Version
>>> [d.op for d in defects_for(Version("2.13.0"))]
['cdist']
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable, Dict, FrozenSet, NamedTuple, Optional, Tuple

from ._torch_info import TORCH_VERSION, Version

__all__ = [
    "BatchingDefect",
    "BATCHING_DEFECTS",
    "defects_for",
    "ACTIVE_DEFECTS",
    "defective_nodes",
    "defective_callables",
]


class BatchingDefect(NamedTuple):
    """One op whose batched derivative is wrong on a range of torch releases.

    An immutable named tuple.

    Attributes
    ----------
    op : str
        The OpInfo name of the op (``op.name`` or ``op.name.variant``).
    since : str
        The first torch release known to be wrong (inclusive).
    fixed_in : str or None
        The first torch release known to be right again (exclusive end), or
        ``None`` while no fixed release is known.
    nodes : frozenset of str
        Autograd node class names that reveal the op in a forward graph.
    callables : tuple of str
        Dotted names of the torch callables that run the op (``torch.cdist``).
    what : str
        What goes wrong, as measured (for messages and the docs).
    stage : str
        ``"derivative"``: the batched derivative is wrong (automatic mode does
        not vectorise backward passes through the op); ``"forward"``: ``vmap``
        of the op itself is wrong (automatic mode does not ``vmap`` it).
    """

    op: str
    since: str
    fixed_in: Optional[str]
    nodes: FrozenSet[str]
    callables: Tuple[str, ...]
    what: str
    stage: str = "derivative"

    def applies_to(self, torch_version: Version) -> bool:
        """Whether ``torch_version`` is in the defect's range."""
        if torch_version < Version(self.since):
            return False
        return self.fixed_in is None or torch_version < Version(self.fixed_in)


#: Every known defect, on any torch release of the matrix.
BATCHING_DEFECTS: Tuple[BatchingDefect, ...] = (
    BatchingDefect(
        op="cdist",
        since="1.13",
        fixed_in=None,
        nodes=frozenset({"CdistBackward0", "CdistBackwardBackward0"}),
        callables=(
            "torch.cdist",
            "torch.functional.cdist",
            "torch._C._VariableFunctions.cdist",
            "torch.ops.aten.cdist",
            "torch.ops.aten.cdist.default",
            "torch.ops.aten._cdist_forward",
            "torch.ops.aten._cdist_forward.default",
            "torch.ops.aten._cdist_backward",
            "torch.ops.aten._cdist_backward.default",
        ),
        what=(
            "the batched backward of cdist (vmap over its vjp, as in jacrev) gives wrong "
            "values: 2.6 absolute error against finite differences on a 5 x 3 input; "
            "in the OpInfo sweep 2.0 (jacrev and vmap(jacrev) of cdist with p=1, OpInfo "
            "sample 16: 5 x 5 x 2 and 5 x 6 x 2 inputs) on torch 1.13.1, 2.0.0 and 2.13.0"
        ),
    ),
    BatchingDefect(
        op="nn.functional._scaled_dot_product_attention",
        since="1.13",
        fixed_in="2.0",  # renamed: the public scaled_dot_product_attention below
        nodes=frozenset(),  # wrong under vmap of the forward only; its derivatives are right
        callables=(
            "torch.nn.functional._scaled_dot_product_attention",
            "torch._C._nn._scaled_dot_product_attention",
        ),
        what=(
            "vmap with dropout_p > 0 ignores randomness='error' and draws a different "
            "dropout mask for each sample: the first sample equals an eager call, the "
            "others differ by up to 17.8 (OpInfo sample 1, a 5 x 4 x 6 query, dropout_p=0.5)"
        ),
        stage="forward",
    ),
    BatchingDefect(
        op="nn.functional.scaled_dot_product_attention",
        since="2.0",
        fixed_in="2.13",  # raises on 2.13.0; releases 2.1 to 2.12 are not measured
        nodes=frozenset(),  # wrong under vmap of the forward only; its derivatives are right
        callables=(
            "torch.nn.functional.scaled_dot_product_attention",
            "torch._C._nn.scaled_dot_product_attention",
        ),
        what=(
            "vmap with dropout_p > 0 ignores randomness='error' and draws a different "
            "dropout mask for each sample: the first sample equals an eager call, the "
            "others differ by up to 17.8 (OpInfo sample 1, a 4 x 3 x 8 query, dropout_p=0.5)"
        ),
        stage="forward",
    ),
)


def defects_for(torch_version: Version = TORCH_VERSION) -> Tuple[BatchingDefect, ...]:
    """The defects that apply to ``torch_version`` (the installed torch by default)."""
    return tuple(d for d in BATCHING_DEFECTS if d.applies_to(torch_version))


#: The defects of the installed torch.
ACTIVE_DEFECTS: Tuple[BatchingDefect, ...] = defects_for()


def defective_nodes() -> FrozenSet[str]:
    """Autograd node class names of the installed torch's defective ops.

    Examples
    --------
    >>> isinstance(defective_nodes(), frozenset)
    True
    """
    return _NODES


_NODES: FrozenSet[str] = frozenset(n for d in ACTIVE_DEFECTS for n in d.nodes)


@cache
def defective_callables(stage: Optional[str] = None) -> Dict[Callable[..., Any], BatchingDefect]:
    """The torch callables of the installed torch's defective ops, each with its defect.

    Only those of ``stage`` (``"derivative"`` or ``"forward"``) if given.  Resolved on
    first use.

    Examples
    --------
    >>> import torch
    >>> torch.cdist in defective_callables() or not ACTIVE_DEFECTS
    True
    """
    import torch

    found = {}
    for defect in ACTIVE_DEFECTS:
        if stage is not None and defect.stage != stage:
            continue
        for dotted in defect.callables:
            obj: Any = torch
            for part in dotted.split(".")[1:]:
                obj = getattr(obj, part, None)
            if obj is not None:
                found[obj] = defect
    return found
