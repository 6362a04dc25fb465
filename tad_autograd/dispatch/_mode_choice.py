"""``jacobian(mode="auto")``: forward or reverse mode, chosen per input shapes.

Forward mode costs one pushforward per input element, reverse mode one
pullback per output element.  The input size is known before a call, the
output size only after one; so the first call with given input shapes runs
reverse mode (always applicable) and counts the outputs, and later calls
with those shapes run forward mode when the inputs are fewer.

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

import threading
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..compat._pytree import tree_flatten
from ..compat._rng import attempt, snapshot
from ..compat._torch_info import is_compiling, transforms_active
from ..compat._transform_failures import FORWARD_STAGES, DefectWatch
from ._transformed import transform_name

__all__ = ["ModeChoosingJacobian"]

_FORWARD, _REVERSE = "forward", "reverse"


class _Count:
    n: Optional[int] = None
    drew: bool = False


class ModeChoosingJacobian:
    """The callable :func:`tad_autograd.jacobian` returns for ``mode="auto"``.

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
        # per thread; while dynamo traces, a plain object (it cannot trace a thread-local)
        self._count: Any = _Count() if is_compiling() else threading.local()
        self._counted = make_reverse(self._counting(func, has_aux))  # learns the output size
        self._count.drew = False
        self._reverse = make_reverse(func)
        self._forward = make_forward(func)
        self._modes: Dict[Tuple[Any, ...], str] = {}

    def _counting(self, func: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
        """``func``, noting how many output elements it returned (per thread)."""
        count = self._count

        def counted(*args: Any) -> Any:
            if is_compiling():  # dynamo cannot read RNG states: reverse mode unless automatic
                result = func(*args)
                count.drew = True
            else:
                states = snapshot(func, args)
                result = func(*args)
                count.drew = states.changed()  # forward mode, randomness="error" would refuse
            output = result[0] if has_aux and isinstance(result, tuple) else result
            count.n = sum(t.numel() for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor))
            return result

        counted.__wrapped__ = func  # type: ignore[attr-defined]
        counted.__qualname__ = getattr(func, "__qualname__", "func")
        return counted

    def _key(self, args: Tuple[Any, ...]) -> Tuple[Tuple[Any, ...], int]:
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
        return self._modes.get(self._key(args)[0], _REVERSE)

    def __call__(self, *args: Any) -> Any:
        key, n_in = self._key(args)
        mode = self._modes.get(key) if n_in >= 0 else _REVERSE
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
                self._modes[key] = _REVERSE

            return attempt(
                run_forward,
                self.__wrapped__,
                args,
                on_failure=to_reverse,
                retry=lambda: self._reverse(*args),
            )
        if mode is not None:
            return self._reverse(*args)
        self._count.n, self._count.drew = None, False
        result = self._counted(*args)
        n_out = self._count.n
        if n_out is not None and n_in >= 0:
            forward = n_in < n_out and (self._automatic or not self._count.drew)
            self._modes[key] = _FORWARD if forward else _REVERSE
        return result
