"""What the fuzzer's checks share: running a call, describing a failure, comparing trees.

Examples
--------
>>> import torch
>>> result, error = call_quietly(lambda x: 1 / x.item(), torch.zeros(()))
>>> result, type(error).__name__
(None, 'ZeroDivisionError')
>>> assert_leaves_close((torch.ones(2),), (torch.ones(2),), "f", rtol=0.0, atol=0.0)
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Type

import torch

from ...compat._pytree import tree_flatten
from ..compare import default_tolerances

__all__ = [
    "Backends",
    "CONTEXT_MANAGERS",
    "context",
    "fixed_seed",
    "argnum_positions",
    "backends_and_auto",
    "call_quietly",
    "describe",
    "leaf_message",
    "assert_leaves_close",
    "assert_close_in_dtype",
]

#: Which backends a check runs: names, ``None`` for automatic mode; ``None``
#: (the argument) for every available backend and automatic mode.
Backends = Optional[Sequence[Optional[str]]]

#: The calling contexts of the fuzzer, by name.
CONTEXT_MANAGERS = {
    "plain": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "enable_grad": torch.enable_grad,
    "inference_mode": torch.inference_mode,
}


def context(name: str) -> Any:
    """A fresh context manager for one of :data:`CONTEXT_MANAGERS`."""
    return CONTEXT_MANAGERS[name]()


@contextlib.contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Run the block from ``torch.manual_seed(seed)``, the caller's generator restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def argnum_positions(argnums: Any, n: int) -> List[int]:
    """``argnums`` (an int or a tuple, negatives allowed) as positions among ``n`` arguments."""
    return [a % n for a in ((argnums,) if isinstance(argnums, int) else argnums)]


def backends_and_auto(backends: Backends) -> List[Optional[str]]:
    """``backends``, or every available backend and ``None`` (automatic mode)."""
    import tad_autograd as ta

    return list(backends) if backends is not None else list(ta.available_backends()) + [None]


def call_quietly(
    fn: Callable[..., Any], *args: Any, ignore: Type[Warning] = Warning
) -> Tuple[Any, Optional[BaseException]]:
    """``(fn(*args), None)``, or ``(None, the exception)``; warnings of ``ignore`` silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ignore)
        try:
            return fn(*args), None
        except Exception as exc:  # judged by the caller
            return None, exc


def describe(exc: BaseException) -> str:
    """The exception's type, message and notes, for a failure report."""
    notes = "".join(f"\n  note: {n}" for n in getattr(exc, "__notes__", ()))
    return f"{type(exc).__name__}: {exc}{notes}"


def leaf_message(where: str, message: str) -> str:
    """``torch.testing.assert_close``'s message, prefixed with where it failed."""
    return f"{where}: {message}"


def assert_leaves_close(
    got: Any,
    want: Any,
    what: str,
    *,
    rtol: float,
    atol: float,
    convert: Optional[Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, ...]]] = None,
    check_dtype: bool = True,
) -> None:
    """``got`` has ``want``'s structure, a tensor of its shape at each leaf and its values.

    ``convert(got_leaf, want_leaf)`` may bring both leaves (detached) to the
    dtypes they are compared in; it may also assert on them.
    """
    g_leaves, g_spec = tree_flatten(got)
    w_leaves, w_spec = tree_flatten(want)
    assert g_spec == w_spec, f"{what}: structure {g_spec} != reference {w_spec}"
    for i, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        assert isinstance(g, torch.Tensor) and g.shape == w.shape, (
            f"{what}: leaf {i}: {type(g).__name__} {tuple(getattr(g, 'shape', ()))} != "
            f"reference {tuple(w.shape)}"
        )
        pair: Tuple[torch.Tensor, ...] = (g.detach(), w.detach())
        if convert is not None:
            pair = convert(*pair)
        torch.testing.assert_close(
            pair[0],
            pair[1],
            rtol=rtol,
            atol=atol,
            check_dtype=check_dtype,
            msg=functools.partial(leaf_message, f"{what}: leaf {i}"),
        )


def assert_close_in_dtype(got: Any, want: Any, dtype: torch.dtype, what: str) -> None:
    """:func:`assert_leaves_close` within the kit's default tolerances for ``dtype``."""
    rtol, atol = default_tolerances(dtype)
    assert_leaves_close(got, want, what, rtol=rtol, atol=atol)
