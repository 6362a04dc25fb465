"""How an automatic strategy tells that a call failed *inside* a function transform.

The automatic fallback (CONTRACT §3) is structural: an exception that left a
function transform (``vmap``, or a transform library's ``jacrev`` nested in
one) is retried on the autograd backend, whatever its message says; an
exception from eager code (the user's function run under plain autograd) is
the user's own and propagates.  The strategies that run a transform mark
what escapes it with :func:`mark_inside_transform`; the fallback asks
:func:`failed_inside_transform`.

:class:`DefectWatch` is the other source of such failures: while an automatic
strategy runs a transform library's ``jacrev`` inside a transform, it raises
:class:`DefectiveBatchingError` when the function calls an op whose batched
derivative the installed torch gets wrong, so the enclosing automatic call
retries on plain autograd instead of returning a wrong number.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from torch.overrides import TorchFunctionMode

from .batching_defects import ACTIVE_DEFECTS, defective_callables

__all__ = [
    "mark_inside_transform",
    "failed_inside_transform",
    "DefectiveBatchingError",
    "DefectWatch",
]

_MARK = "_tad_autograd_inside_transform"

#: The stages of the installed torch's defects (asked on hot paths, so computed once).
_STAGES = frozenset(d.stage for d in ACTIVE_DEFECTS)


def mark_inside_transform(error: BaseException) -> None:
    """Record that ``error`` escaped a function transform.

    Examples
    --------
    >>> error = RuntimeError("any words at all")
    >>> mark_inside_transform(error)
    >>> failed_inside_transform(error)
    True
    """
    try:
        setattr(error, _MARK, True)
    except (AttributeError, TypeError):  # pragma: no cover - exceptions without a __dict__
        pass


def failed_inside_transform(error: BaseException) -> bool:
    """Whether ``error`` escaped a function transform (see :func:`mark_inside_transform`).

    Examples
    --------
    >>> failed_inside_transform(ValueError("the user's own error"))
    False
    """
    return bool(getattr(error, _MARK, False))


class DefectiveBatchingError(RuntimeError):
    """A function calls an op whose batched derivative the installed torch computes wrongly.

    Raised only inside automatic strategies, which then loop or retry on plain
    autograd; users see it as the reason of a fallback warning, or as the error
    of an automatic ``jacrev`` run inside a function transform the library does
    not control (``torch.func.vmap(ta.jacrev(f))``), which cannot fall back.

    Examples
    --------
    >>> str(DefectiveBatchingError("cdist", "wrong values")).startswith("torch")
    True
    """

    def __init__(self, op: str, what: str) -> None:
        import torch

        super().__init__(
            f"torch {torch.__version__} computes the batched derivative of {op} wrongly "
            f"({what}); tad_autograd does not vectorise through it. Inside a function "
            "transform of your own (e.g. torch.func.vmap around tad_autograd.jacrev) it "
            "cannot fall back: use tad_autograd.vmap, or backend='autograd'"
        )
        self.op = op


class DefectWatch(TorchFunctionMode):
    """A torch function mode that raises :class:`DefectiveBatchingError` on a defective op.

    Examples
    --------
    >>> import torch
    >>> with DefectWatch():
    ...     _ = torch.sin(torch.zeros(1))
    >>> DefectWatch.needed() == bool(ACTIVE_DEFECTS)
    True
    """

    def __init__(self, stage: Optional[str] = None) -> None:
        super().__init__()
        self._callables = defective_callables(stage)

    @staticmethod
    def needed(stage: Optional[str] = None) -> bool:
        """Whether the installed torch has any defect (of ``stage``, if given) to watch for."""
        return bool(_STAGES) if stage is None else stage in _STAGES

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Tuple[Any, ...],
        args: Tuple[Any, ...] = (),
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        defect = self._callables.get(func)
        if defect is not None:
            raise DefectiveBatchingError(defect.op, defect.what)
        return func(*args, **(kwargs or {}))
