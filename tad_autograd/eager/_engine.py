"""One backward pass of a scalar, straight into torch's autograd engine.

:func:`torch.autograd.grad` spends most of its Python time, for a scalar
output, on argument handling that the eager strategies have already done
(``grad_outputs`` made and validated by ``_make_grads``, overrides looked
up for tensor subclasses).  For plain tensors, :func:`scalar_grad` makes the
one call into the engine that ``torch.autograd.grad`` ends in:

* on the CPU, the engine itself (the backward pass runs in the calling
  thread, which sees every setting the caller made);
* on other devices, ``torch.autograd.graph._engine_run_backward`` where the
  installed torch has it, which first makes the caller's context (compiler
  settings) visible to the device threads that run the backward pass;
* with torch's autograd graph logging at DEBUG, for tensor subclasses, or
  while dynamo traces (``torch.compile`` knows ``torch.autograd.grad``, not the
  engine), :func:`torch.autograd.grad` (a ``__torch_function__`` mode sees the
  ops of the backward pass either way, not the ``grad`` call itself).

Examples
--------
>>> import torch
>>> x = torch.tensor([1.0, 2.0], requires_grad=True)
>>> scalar_grad((x * x).sum(), [x], retain=False, create_graph=False)
(tensor([2., 4.]),)
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ..compat._torch_info import is_compiling

__all__ = ["scalar_grad", "pair_products"]

_ENGINE: Any = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
_RUN_BACKWARD: Any = getattr(_ENGINE, "run_backward", None)
_RUN_WITH_CONTEXT: Any = getattr(torch.autograd.graph, "_engine_run_backward", None)  # >= 2.1
_GRAPH_LOG = logging.getLogger(torch.autograd.graph.__name__)


def scalar_grad(
    output: torch.Tensor, inputs: Sequence[torch.Tensor], retain: bool, create_graph: bool
) -> Tuple[Optional[torch.Tensor], ...]:
    """``torch.autograd.grad(output, inputs, retain_graph=retain, create_graph=...,
    allow_unused=True)`` for a one-element ``output`` that requires grad."""
    t_inputs = tuple(inputs)
    run = _RUN_BACKWARD if output.is_cpu else _RUN_WITH_CONTEXT
    if (
        run is None
        or is_compiling()
        or type(output) is not torch.Tensor
        or not all(type(x) is torch.Tensor for x in t_inputs)
        or _GRAPH_LOG.isEnabledFor(logging.DEBUG)
    ):
        return torch.autograd.grad(
            output, t_inputs, retain_graph=retain, create_graph=create_graph, allow_unused=True
        )
    result: Tuple[Optional[torch.Tensor], ...] = run(
        (output,), (torch.ones_like(output),), retain, create_graph, t_inputs, True, False
    )
    return result


def pair_products(
    pairs: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    retain: bool,
    create_graph: bool,
) -> Sequence[Optional[torch.Tensor]]:
    """The sum over ``(output, vector)`` pairs of ``vector^T d output / d inputs``, per input.

    One :func:`torch.autograd.grad` call (``allow_unused=True``: ``None`` for
    an input no output reaches); all ``None`` without pairs, so callers may
    drop the outputs that do not require grad first.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> pair_products([(x * x, torch.ones(2))], [x], False, False)
    (tensor([2., 4.]),)
    >>> pair_products([], [x], False, False)
    [None]
    """
    if not pairs:
        none: List[Optional[torch.Tensor]] = [None] * len(inputs)
        return none
    return torch.autograd.grad(
        [o for o, _ in pairs],
        list(inputs),
        [v for _, v in pairs],
        retain_graph=retain,
        create_graph=create_graph,
        allow_unused=True,
    )
