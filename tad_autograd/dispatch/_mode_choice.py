"""``jacobian(mode="auto")``: forward or reverse mode, chosen per input shapes.

Forward mode costs one pushforward per input element, reverse mode one
pullback per output element.  The input size is known before a call, the
output size only after one; so the first call with given input shapes runs
reverse mode (always applicable), reads the output size off its Jacobian,
and later calls with those shapes run forward mode when the inputs are fewer.
The choice is remembered in the library's one failure memory, like automatic
mode's fallbacks.

The function runs once per call, so the choice is made before it runs:

* automatic mode's forward mode records one eager forward pass and takes
  the columns from its graph (outside function transforms), which nothing
  in the function can refuse; random draws happen once, as in reverse mode;
* on an explicitly chosen backend, forward mode is :func:`jacfwd` with
  ``randomness="error"``: a function that drew random numbers in the counting
  call stays in reverse mode.  A function that fails under forward mode for
  another reason (a custom ``autograd.Function`` without a ``jvp``, an op
  without a forward-AD rule) is run in reverse mode on that call, with the
  random generators restored, and stays there: the decision rests on whether
  forward mode raised, never on what it said.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

from ..compat._memory import MEMORY
from ..compat._pytree import tree_flatten
from ..compat._rng import attempt, snapshot
from ..compat._torch_info import is_compiling, transforms_active
from ..compat._transform_failures import FORWARD_STAGES, DefectWatch
from ._transformed import transform_name

__all__ = ["ModeChoosingJacobian"]

_FORWARD, _REVERSE = "forward", "reverse"

#: A leaf of the differentiated inputs: shape, dtype, device type.
_Leaf = Tuple[Tuple[int, ...], torch.dtype, str]


def _output_elements(jacobian: Any, inputs: Tuple[_Leaf, ...]) -> Optional[int]:
    """How many elements the function returned, read off its reverse-mode Jacobian.

    Its leaves are one per (output leaf, input leaf), output-major, each
    shaped ``output.shape + input.shape``.

    Examples
    --------
    >>> import torch
    >>> x = ((2,), torch.float32, "cpu")
    >>> _output_elements((torch.zeros(3, 4, 2), torch.zeros(5, 2)), (x,))
    17
    """
    leaves = tree_flatten(jacobian)[0]
    if (
        not inputs
        or len(leaves) % len(inputs)
        or not all(isinstance(leaf, torch.Tensor) for leaf in leaves)
    ):
        return None
    first = len(inputs[0][0])
    total = 0
    for leaf in leaves[:: len(inputs)]:
        total += int(torch.Size(leaf.shape[: leaf.dim() - first]).numel())
    return total


class ModeChoosingJacobian:
    """The callable :func:`tad_autograd.jacobian` returns for ``mode="auto"``.

    The choice per input shapes is remembered in the failure memory
    (:data:`~tad_autograd.compat._memory.MEMORY`), under this callable.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> jac = ta.jacobian(lambda x: torch.cat([x, x, x]))
    >>> jac(torch.ones(2)).shape, jac(torch.ones(2)).shape
    (torch.Size([6, 2]), torch.Size([6, 2]))
    >>> jac.mode_for(torch.ones(2))
    'forward'
    """

    def __init__(
        self,
        func: Callable[..., Any],
        argnums: Any,
        has_aux: bool,
        make_reverse: Callable[[Callable[..., Any]], Callable[..., Any]],
        make_forward: Callable[[Callable[..., Any]], Callable[..., Any]],
        automatic: bool = False,
    ) -> None:
        self.__wrapped__ = func
        self.__name__ = transform_name("jacobian", func)
        self._argnums = argnums
        self._has_aux = has_aux
        self._automatic = automatic
        self._reverse = make_reverse(func)
        self._forward = make_forward(func)

    def _key(self, args: Tuple[Any, ...]) -> Tuple[Tuple[_Leaf, ...], int]:
        """Shapes, dtypes and devices of the differentiated leaves, and their element count."""
        argnums = self._argnums
        if type(argnums) is int and -len(args) <= argnums < len(args):
            x = args[argnums]
            if isinstance(x, torch.Tensor):  # the common case, without pytree flattening
                return ((tuple(x.shape), x.dtype, x.device.type),), x.numel()
        nums = (argnums,) if isinstance(argnums, int) else argnums
        key, total = [], 0
        for n in nums:
            if not (isinstance(n, int) and -len(args) <= n < len(args)):
                return (), -1  # malformed: reverse mode raises the error
            for leaf in tree_flatten(args[n])[0]:
                if isinstance(leaf, torch.Tensor):
                    key.append((tuple(leaf.shape), leaf.dtype, leaf.device.type))
                    total += leaf.numel()
        return tuple(key), total

    def mode_for(self, *args: Any) -> str:
        """The mode a call with ``args`` would use (``"reverse"`` until outputs are counted)."""
        return MEMORY.recall(self, ("mode", self._key(args)[0])) or _REVERSE

    def __call__(self, *args: Any) -> Any:
        if is_compiling():  # dynamo traces no weak references: reverse mode, nothing remembered
            return self._reverse(*args)
        key, n_in = self._key(args)
        mode = MEMORY.recall(self, ("mode", key)) if n_in >= 0 else _REVERSE
        if mode == _FORWARD:
            if self._automatic and not transforms_active():
                # columns from one eager pass with its draws (as reverse mode): nothing to fail
                return self._forward(*args)

            def run_forward(states: Any) -> Any:
                # vmap of the function itself, and its tangents
                if DefectWatch.needed(FORWARD_STAGES):
                    with DefectWatch(FORWARD_STAGES):
                        return self._forward(*args)
                return self._forward(*args)

            def to_reverse(error: Exception) -> None:
                # not forward-differentiable here: reverse mode, from now on
                MEMORY.remember(self, ("mode", key), _REVERSE)

            return attempt(
                run_forward,
                self.__wrapped__,
                args,
                on_failure=to_reverse,
                retry=lambda: self._reverse(*args),
            )
        if mode is not None:
            return self._reverse(*args)
        # the first call with these inputs: reverse mode, and its result tells the output
        # size; random draws (which forward mode with randomness="error" would refuse)
        # are told by the generators
        states = snapshot(self.__wrapped__, args)
        result = self._reverse(*args)
        jacobian = result[0] if self._has_aux and isinstance(result, tuple) else result
        n_out = _output_elements(jacobian, key)
        if n_out is not None:
            forward = n_in < n_out and (self._automatic or not states.changed())
            MEMORY.remember(self, ("mode", key), _FORWARD if forward else _REVERSE)
        return result
