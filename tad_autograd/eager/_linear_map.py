"""``t -> J t`` from a recorded graph, in reverse mode: forward mode without dual numbers.

The eager forward mode's fallback (and ``linearize``): the function ran once
under ordinary autograd, and :func:`linear_map` turns its graph into a map
from input tangents to output tangents, callable many times.

* Over built-in ops, the double-vjp trick: ``J^T v`` is recorded with a graph
  for dummy cotangents ``v`` (:func:`~tad_autograd.eager._rows.transposed_graph`), and
  each product differentiates it with respect to ``v`` along ``t``.  Exact
  where torch differentiates the backward formulas right; where it cannot (an
  op whose backward has no derivative, such as ``cdist``'s) that raises, and
  where it does so wrongly (:mod:`~tad_autograd.eager._column_check`: ``u^T (J t)``
  differs from ``(J^T u)^T t``) the check fails; either way the map switches
  to rows for good.
* Rows of ``J`` by backward passes, computed once, where the graph holds a
  custom ``autograd.Function`` (its Python backward may compute outside
  autograd, so differentiating *through* it could silently miss terms) or the
  double-vjp trick raised.  If the rows raise too, that is the user's error.

Whether to switch never depends on an error's text: any exception of the
double-vjp trick sends the product to the rows, which decide.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence

import torch

from ._column_check import ReverseProbe
from ._engine import pair_products
from ._graph import has_custom_functions, reaches_inputs
from ._opaque_backward import custom_backwards_guarded
from ._rows import rows, transposed_graph

__all__ = ["linear_map", "matvec"]

_log = logging.getLogger("tad_autograd")

LinearMap = Callable[[List[torch.Tensor], bool], List[torch.Tensor]]


def linear_map(
    outputs: List[torch.Tensor], inputs: List[torch.Tensor], create_graph: bool
) -> LinearMap:
    """``t -> J t`` for each output, from the recorded graph, callable many times.

    The second argument of the map asks for a differentiable product.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> apply = linear_map([x ** 2], [x], create_graph=False)
    >>> apply([torch.tensor([1.0, 1.0])], False)
    [tensor([2., 4.])]
    """
    # an output that does not reach the inputs gets a zero product without a graph, as
    # torch.func's forward mode gives it (its graph may reach other leaves that require grad)
    reaching = [o.requires_grad and reaches_inputs(o, inputs) for o in outputs]
    live = [o for o, r in zip(outputs, reaching) if r]
    if not live:
        return lambda tangents, create: [torch.zeros_like(o.detach()) for o in outputs]
    by_rows = _ByRows(outputs, inputs, create_graph, reaching)
    if has_custom_functions(live):
        by_rows.jacobians()  # now: the graph may not outlive the caller's stand-ins
        return by_rows
    try:
        dummies, grads = transposed_graph(live, inputs)
    except Exception as error:  # structural: the rows decide whether it is the user's error
        _log.info("no double-vjp (%s: %s); taking the rows", type(error).__name__, error)
        return by_rows
    broken: List[bool] = []
    probe = ReverseProbe(dummies, grads)  # the dummies are random: J^T v is a plain vjp

    def by_double_vjp(tangents: List[torch.Tensor], create: bool) -> List[torch.Tensor]:
        if broken:
            return by_rows(tangents, create)
        pairs = [(g, t) for g, t in zip(grads, tangents) if g is not None and g.requires_grad]
        jv: Sequence[Optional[torch.Tensor]] = [None] * len(live)
        if pairs:
            try:
                with torch.enable_grad():
                    jv = pair_products(pairs, dummies, True, create)
            except Exception as error:  # structural: a backward formula without a derivative
                _log.info("double-vjp failed (%s: %s); rows", type(error).__name__, error)
                broken.append(True)
                return by_rows(tangents, create)
        products = [j if j is not None else torch.zeros_like(o.detach()) for o, j in zip(live, jv)]
        if not probe.agrees(products, tangents):  # a backward formula not differentiable
            _log.info("double-vjp products disagree with a plain vjp; taking the rows")
            broken.append(True)
            return by_rows(tangents, create)
        by_id = {id(o): j for o, j in zip(live, products)}
        return [by_id.get(id(o), torch.zeros_like(o.detach())) for o in outputs]

    return by_double_vjp


class _ByRows:
    """``t -> J t`` from the rows of ``J`` (backward passes), computed on first use."""

    def __init__(
        self,
        outputs: List[torch.Tensor],
        inputs: List[torch.Tensor],
        create_graph: bool,
        reaching: List[bool],
    ) -> None:
        self.outputs, self.inputs, self.create_graph = outputs, inputs, create_graph
        self.reaching = reaching  # per output: whether its graph reaches an input
        self._jacobians: Optional[List[List[List[torch.Tensor]]]] = None

    def jacobians(self) -> List[List[List[torch.Tensor]]]:
        """Per output, the rows of its real part (and of its imaginary part if complex).

        torch's backward pass of a complex function gives the gradient of a
        real one, so a complex output takes two sets of rows; a row ``g`` of a
        real ``y`` (the conjugate-convention gradient) gives
        ``dy = Re(sum(conj(g) * t))`` for real and complex inputs alike.
        """
        if self._jacobians is None:
            live = [o for o in self.outputs if o.requires_grad]
            with torch.enable_grad(), custom_backwards_guarded(live, self.create_graph):
                self._jacobians = [
                    [
                        rows(part, self.inputs, self.create_graph)
                        for part in ((o.real, o.imag) if o.is_complex() else (o,))
                    ]
                    if reaching
                    else []
                    for o, reaching in zip(self.outputs, self.reaching)
                ]
        return self._jacobians

    def __call__(self, tangents: List[torch.Tensor], create: bool) -> List[torch.Tensor]:
        result = []
        for o, parts in zip(self.outputs, self.jacobians()):
            if not parts:  # reaches no input: a zero product without a graph
                result.append(torch.zeros_like(o.detach()))
                continue
            totals = []
            for blocks in parts:
                total = torch.zeros(o.numel(), dtype=_REAL.get(o.dtype, o.dtype), device=o.device)
                for r, x, t in zip(blocks, self.inputs, tangents):
                    total = total + _row_products(r.reshape(o.numel(), x.numel()), t.reshape(-1))
                totals.append(total)
            total = torch.complex(totals[0], totals[1]) if o.is_complex() else totals[0]
            result.append(total.reshape(o.shape))
        return result


_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def _row_products(rows: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Each gradient row applied to ``vector``: ``Re(conj(g) . t)`` for complex rows (the
    conjugate-convention gradient of a real part), else :func:`matvec`."""
    if rows.is_complex():
        vector = vector if vector.is_complex() else vector.to(rows.dtype)
        return rows.real @ vector.real + rows.imag @ vector.imag
    return matvec(rows, vector.real if vector.is_complex() else vector)


def matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``matrix @ vector`` in ``matrix``'s dtype, half precisions accumulated in float32
    (which CPUs of torch < 2.1 also need: they have no half-precision ``addmv``)."""
    if matrix.dtype in (torch.float16, torch.bfloat16):
        return (matrix.float() @ vector.float()).to(matrix.dtype)
    return matrix @ vector.to(matrix.dtype)
