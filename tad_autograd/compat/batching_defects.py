"""Ops whose batching rule or forward-mode formula gives wrong values on some torch releases.

Automatic mode is never less correct than plain autograd:
where the installed torch is known to vectorise an op wrongly, automatic mode
does not vectorise through it; where torch's forward-mode formula for an op
(its dual numbers, what :func:`torch.func.jvp` and ``jacfwd`` push tangents
through) is wrong, automatic mode and the autograd backend take forward-mode
products from reverse mode instead, whose backward formulas are right.  Each
:class:`BatchingDefect` names the op, the torch releases it is wrong on, how
it shows in a forward graph (the autograd node class names the eager
strategy sees when it walks the graph), which torch callables produce it
(what a call watches for) and, where only some arguments are wrong, which.

Where this package corrects torch's batching of an op at its source (a right
rule registered in the installed torch, :mod:`~tad_autograd.compat._batching_fixes`),
the op's entry no longer applies: :data:`ACTIVE_DEFECTS` leaves it out and
:func:`corrected` names it.

The table is produced and checked by the project's OpInfo differential test
(``tests/opdb``): on every torch of the matrix it runs each op under
``jacrev``, ``vmap``, ``vmap(jacrev)``, ``jacfwd`` and ``jvp`` on the
transform backends and with torch's plain dual numbers, compares with a row
loop of :func:`torch.autograd.grad` and finite differences, and fails when a
wrong result is missing from this table or an entry here no longer
reproduces.

Examples
--------
>>> from tad_autograd.compat._torch_info import Version
>>> [d.op for d in defects_for(Version("2.13.0")) if d.stage != "tangent"]
['cdist']
>>> [d.op for d in defects_for(Version("2.13.0")) if d.stage == "tangent"][:2]
['scatter_reduce.prod', 'cholesky_inverse']
>>> [d.op for d in ACTIVE_DEFECTS if d.stage == "derivative"] == (
...     [] if "cdist" in corrected() else ["cdist"]
... )
True
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, NamedTuple, Optional, Tuple, Union

from ._batching_fixes import CORRECTED
from ._torch_info import TORCH_VERSION, Version, cache

__all__ = [
    "BatchingDefect",
    "BATCHING_DEFECTS",
    "defects_for",
    "corrected",
    "ACTIVE_DEFECTS",
    "defective_nodes",
    "defective_callables",
    "callables_of",
    "argument_is",
    "keyword_given",
]

#: ``when`` of an entry: whether a call's ``(args, kwargs)`` is one that is wrong.
Condition = Callable[[Tuple[Any, ...], Dict[str, Any]], bool]


def argument_is(position: int, keyword: str, value: str) -> Condition:
    """A ``when`` condition: the argument at ``position`` (or named ``keyword``) is ``value``.

    Positions count ``self`` of a method, as :meth:`~torch.Tensor.__torch_function__` sees it.

    Examples
    --------
    >>> prod = argument_is(4, "reduce", "prod")
    >>> prod((None, 0, None, None, "prod"), {}), prod((None, 0, None, None), {"reduce": "sum"})
    (True, False)
    """

    def condition(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        given = args[position] if len(args) > position else kwargs.get(keyword)
        return isinstance(given, str) and given == value

    return condition


def keyword_given(keyword: str) -> Condition:
    """A ``when`` condition: the keyword-only argument ``keyword`` is given and not ``None``.

    Examples
    --------
    >>> keyword_given("options")((), {"options": 1}), keyword_given("options")((), {})
    (True, False)
    """
    return lambda args, kwargs: kwargs.get(keyword) is not None


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
        of the op itself is wrong (automatic mode does not ``vmap`` it);
        ``"tangent"``: torch's forward-mode formula for the op is wrong, batched
        or not (automatic mode and the autograd backend push no tangent through
        it: their forward-mode products come from reverse mode).
    when : callable or None
        ``when(args, kwargs)``: whether a call of one of ``callables`` is one of
        the wrong ones (e.g. only ``reduce="prod"``); ``None``: every call.
    variants : tuple of str
        The OpInfo variants (``op.variant``) that show the defect, where one
        entry stands for several; empty: the OpInfo op ``op`` itself.
    """

    op: str
    since: str
    fixed_in: Optional[str]
    nodes: FrozenSet[str]
    callables: Tuple[str, ...]
    what: str
    stage: str = "derivative"
    when: Optional[Condition] = None
    variants: Tuple[str, ...] = ()

    def opinfo_names(self) -> Tuple[str, ...]:
        """The OpInfo names (``op.name`` or ``op.name.variant``) the entry stands for.

        Examples
        --------
        >>> [d.opinfo_names() for d in BATCHING_DEFECTS if d.op == "cdist"]
        [('cdist',)]
        """
        return tuple(f"{self.op}.{v}" for v in self.variants) or (self.op,)

    def matches(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        """Whether a call with ``args`` and ``kwargs`` is one of the wrong ones."""
        return self.when is None or self.when(args, kwargs)

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
    BatchingDefect(
        op="scatter_reduce.prod",
        since="1.13",
        fixed_in=None,
        nodes=frozenset(),  # its backward formula is right
        callables=(
            "torch.scatter_reduce",
            "torch.Tensor.scatter_reduce",
            "torch._C._VariableFunctions.scatter_reduce",
            "torch.ops.aten.scatter_reduce",
            "torch.ops.aten.scatter_reduce.two",
        ),
        what=(
            "with reduce='prod' the dual output has no tangent at all (forward mode gives "
            "zeros), include_self True or False: J t of 0.72 and 1.57 read as 0 on a 5-element "
            "input; in the OpInfo sweep 1.3 to 7.96 absolute error of jvp (8.88 of jacfwd), on "
            "torch 1.13.1, 2.0.0 and 2.13.0 (the in-place scatter_reduce_ raises instead)"
        ),
        stage="tangent",
        when=argument_is(4, "reduce", "prod"),
    ),
    BatchingDefect(
        op="cholesky_inverse",
        since="1.13",
        fixed_in=None,
        nodes=frozenset(),  # its backward formula is right
        callables=(
            "torch.cholesky_inverse",
            "torch.Tensor.cholesky_inverse",
            "torch._C._VariableFunctions.cholesky_inverse",
            "torch.ops.aten.cholesky_inverse",
            "torch.ops.aten.cholesky_inverse.default",
        ),
        what=(
            "the tangent is wrong, upper or not: 11% (2 x 2 factor, upper=False), 4% "
            "(upper=True) and 20% (3 x 3) relative error of J t against the reverse-mode row "
            "loop and central finite differences, which agree to 1e-11; in the OpInfo sweep "
            "(5 x 5 factors, well conditioned) 9e-6 to 1.9e-5 absolute; on torch 1.13.1, "
            "2.0.0 and 2.13.0"
        ),
        stage="tangent",
    ),
    BatchingDefect(
        op="logcumsumexp",
        since="2.1",  # 2.0 has no forward formula (it raises); 2.1 to 2.12 are not measured
        fixed_in=None,
        nodes=frozenset(),  # its backward formula is right
        callables=(
            "torch.logcumsumexp",
            "torch.Tensor.logcumsumexp",
            "torch._C._VariableFunctions.logcumsumexp",
            "torch.ops.aten.logcumsumexp",
            "torch.ops.aten.logcumsumexp.default",
        ),
        what=(
            "the tangent loses precision where the inputs span orders of magnitude: "
            "1.6e-6 relative error of J t in float64 (OpInfo sample 1, a 5 x 5 x 5 input "
            "from -8.6 to 1e4, dim=1) against the exact Jacobian exp(x_j - y_i), which the "
            "reverse-mode row loop matches to 2e-16; on torch 2.13.0"
        ),
        stage="tangent",
    ),
    BatchingDefect(
        op="nn.functional.linear_cross_entropy",
        since="2.13",  # the op is new in the measured releases
        fixed_in=None,
        nodes=frozenset(),  # its backward formula is right
        callables=("torch.nn.functional.linear_cross_entropy",),
        what=(
            "with chunking options (options=LinearCrossEntropyOptions(batch_chunk_size=2)) "
            "the tangent is wrong: J t off by 0.047 to 4.12 absolute, 100% relative, on the "
            "OpInfo variants 'chunked' and 'chunked_none' against the reverse-mode row "
            "loop and finite differences; options=None is right; on torch 2.13.0"
        ),
        stage="tangent",
        when=keyword_given("options"),
        variants=("chunked", "chunked_none"),
    ),
)


def defects_for(torch_version: Version = TORCH_VERSION) -> Tuple[BatchingDefect, ...]:
    """The defects of torch's own rules on ``torch_version`` (the installed torch by default),
    corrected here or not."""
    return tuple(d for d in BATCHING_DEFECTS if d.applies_to(torch_version))


def corrected() -> FrozenSet[str]:
    """The ops (``BatchingDefect.op``) whose batching this package corrected in the installed
    torch, at import: their entries do not apply to it.

    Examples
    --------
    >>> corrected() <= {d.op for d in defects_for()}
    True
    """
    return CORRECTED


#: The defects of the installed torch, less those corrected at import.
ACTIVE_DEFECTS: Tuple[BatchingDefect, ...] = tuple(
    d for d in defects_for() if d.op not in CORRECTED
)


def defective_nodes() -> FrozenSet[str]:
    """Autograd node class names of the installed torch's defective ops.

    Examples
    --------
    >>> isinstance(defective_nodes(), frozenset)
    True
    """
    return _NODES


_NODES: FrozenSet[str] = frozenset(
    n for d in ACTIVE_DEFECTS if d.stage == "derivative" for n in d.nodes
)

#: A stage, or several.
Stages = Union[str, Tuple[str, ...]]


@cache
def defective_callables(stage: Optional[Stages] = None) -> Dict[Callable[..., Any], BatchingDefect]:
    """The torch callables of the installed torch's defective ops, each with its defect.

    Only those of ``stage`` (``"derivative"``, ``"forward"`` or ``"tangent"``, or a
    tuple of them) if given.  Resolved on first use.

    Examples
    --------
    >>> import torch
    >>> torch.cholesky_inverse in defective_callables() or not ACTIVE_DEFECTS
    True
    >>> torch.cholesky_inverse in defective_callables("derivative")
    False
    >>> torch.cdist in defective_callables() or "cdist" in corrected()
    True
    """
    return callables_of(ACTIVE_DEFECTS, stage)


def callables_of(
    defects: Tuple[BatchingDefect, ...], stage: Optional[Stages] = None
) -> Dict[Callable[..., Any], BatchingDefect]:
    """The torch callables of ``defects`` (those of ``stage`` if given), each with its defect.

    Examples
    --------
    >>> import torch
    >>> cdist = [d for d in BATCHING_DEFECTS if d.op == "cdist"]
    >>> callables_of(tuple(cdist))[torch.cdist].op, callables_of(tuple(cdist), "tangent")
    ('cdist', {})
    """
    import torch

    stages = (stage,) if isinstance(stage, str) else stage
    found = {}
    for defect in defects:
        if stages is not None and defect.stage not in stages:
            continue
        for dotted in defect.callables:
            obj: Any = torch
            for part in dotted.split(".")[1:]:
                obj = getattr(obj, part, None)
            if obj is not None:
                found[obj] = defect
    return found
