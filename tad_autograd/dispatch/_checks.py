"""The argument checks every transform makes, once for all backends.

The same mistake gets the same exception type in every backend, the type
:func:`torch.func` raises, with a message naming the parameter, what was
given and what is allowed.  The checks that cost nothing per call run when a
transform is built; :func:`check_differentiable` runs at each call, before any
backend sees the arguments.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from ..compat._pytree import tree_flatten
from ..compat._torch_info import inference_mode_enabled
from ..eager._grad_modes import inference_mode_derivatives
from ..eager._stand_ins import check_argnums
from ._settings import validated

__all__ = [
    "check_argnums_type",
    "check_chunk_size",
    "check_randomness",
    "check_backend",
    "check_in_dims_type",
    "check_differentiable",
    "check_has_aux",
    "check_flag",
    "check_inference_mode",
]

_RANDOMNESS = ("error", "different", "same")


def check_argnums_type(argnums: Any) -> None:
    """Raise ``RuntimeError`` (as :func:`torch.func.jacrev`) for a malformed ``argnums``."""
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        return
    if not isinstance(argnums, tuple):
        raise RuntimeError(
            f"argnums must be int or Tuple[int, ...], got: {type(argnums)} ({argnums!r})"
        )
    if len(argnums) == 0:
        raise RuntimeError("argnums must be non-empty, got argnums=()")
    for n in argnums:
        if not isinstance(n, int) or isinstance(n, bool):
            raise RuntimeError(
                f"argnums must be int or Tuple[int, ...], got: {argnums!r} containing {type(n)}"
            )
    if len(set(argnums)) != len(argnums):
        raise RuntimeError(f"argnums elements must be unique, got {argnums!r}")


def check_chunk_size(chunk_size: Any, transform: str) -> None:
    """``chunk_size`` must be ``None`` or a positive int."""
    if chunk_size is None:
        return
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise TypeError(
            f"{transform}: `chunk_size` must be None or a positive int, got "
            f"{chunk_size!r} of type {type(chunk_size).__name__}"
        )
    if chunk_size <= 0:
        raise ValueError(
            f"{transform}: `chunk_size` should be greater than 0 (None or a positive int), "
            f"got {chunk_size}"
        )


def check_randomness(randomness: Any) -> None:
    """``randomness`` must be one of ``"error"``, ``"different"``, ``"same"``."""
    if randomness not in _RANDOMNESS:
        raise RuntimeError(
            "Only allowed values for randomness are 'error', 'different', or 'same'. "
            f"Got randomness={randomness!r}"
        )


def check_in_dims_type(in_dims: Any) -> None:
    """Raise ``TypeError`` (as :func:`torch.func.vmap` does) for a bool anywhere in ``in_dims``.

    Examples
    --------
    >>> check_in_dims_type((0, None, (1, -1)))
    >>> check_in_dims_type((0, True))
    Traceback (most recent call last):
    ...
    TypeError: vmap: in_dims=(0, True) holds the bool True; expected an int or None ...
    """
    if in_dims is None or type(in_dims) is int:  # the common case, without flattening
        return
    for d in tree_flatten(in_dims)[0]:
        if isinstance(d, bool):
            raise TypeError(
                f"vmap: in_dims={in_dims!r} holds the bool {d!r}; expected an int or None for "
                "each input (a (potentially nested) tuple matching the inputs)"
            )


def check_backend(backend: Optional[str]) -> Optional[str]:
    """Validate a ``backend=`` argument now; return the canonical name (``None`` = automatic)."""
    return validated(backend, "backend")


def check_differentiable(
    args: Tuple[Any, ...],
    argnums: Any,
    name: str,
    complex_inputs: bool = False,
    integer_error: type = RuntimeError,
) -> None:
    """Check the arguments at ``argnums`` before any backend sees them.

    Raises the exception types :func:`torch.func.jacrev` raises on current
    torch (``RuntimeError`` for ``argnums`` out of range and for
    non-floating-point tensors, ``ValueError`` for non-tensors), so every
    backend and torch version reports a mistake alike.  Complex tensors are
    differentiable arguments of ``grad`` and ``grad_and_value`` (of a real
    scalar function); the Jacobian operators refuse them with
    ``RuntimeError``, as :mod:`torch.func` does.

    ``name`` words the messages; ``complex_inputs``: complex arguments are
    differentiable (``grad``, ``grad_and_value``); ``integer_error``: what an
    integer argument raises (``ValueError`` in forward mode, as torch.func).

    Examples
    --------
    >>> import torch
    >>> check_differentiable((torch.zeros(2, dtype=torch.complex64),), 0, "grad", True)
    >>> check_differentiable((torch.zeros(2, dtype=torch.complex64),), 0, "jacfwd")
    Traceback (most recent call last):
    ...
    RuntimeError: jacfwd: Expected all inputs to be real but received complex tensor ...
    """
    nargs = len(args)
    if type(argnums) is int and -nargs <= argnums < nargs:  # the common case, fast
        arg = args[argnums]
        if isinstance(arg, torch.Tensor) and arg.is_floating_point():
            if inference_mode_enabled():
                _check_inference_mode(name)
            return
    for n, position in zip(
        (argnums,) if isinstance(argnums, int) else argnums, check_argnums(argnums, nargs, name)
    ):
        arg = args[position]
        leaves = (arg,) if isinstance(arg, torch.Tensor) else tree_flatten(arg)[0]
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                raise ValueError(
                    f"{name}: the argument at argnums position {n} must be a floating-point "
                    f"tensor or a pytree of them; got {type(leaf)}. Thing passed to "
                    "transform API must be Tensor"
                )
            if leaf.is_complex():
                if complex_inputs:
                    continue
                raise RuntimeError(
                    f"{name}: Expected all inputs to be real but received complex tensor "
                    f"(dtype {leaf.dtype}) at argnums position {n}; {name} differentiates real "
                    "floating point inputs only (grad, grad_and_value, vjp and jvp take "
                    "complex ones)"
                )
            if not leaf.is_floating_point():
                # torch.func: ValueError for an integer or bool tensor in forward mode (jacfwd,
                # and hessian: jacfwd of jacrev), RuntimeError in reverse
                raise integer_error(
                    f"{name}: the argument at argnums position {n} has dtype {leaf.dtype}; "
                    "only Tensors of floating point or complex dtype can require gradients"
                )
    if inference_mode_enabled():
        _check_inference_mode(name)


def check_has_aux(has_aux: Any, name: str) -> None:
    """``has_aux`` must be a bool (``TypeError``)."""
    check_flag(has_aux, "has_aux", name)


def check_flag(value: Any, parameter: str, name: str) -> None:
    """A flag such as ``has_aux`` or ``create_graph`` must be a bool (``TypeError``).

    Examples
    --------
    >>> check_flag(None, "create_graph", "graph_jacobian")
    Traceback (most recent call last):
    ...
    TypeError: graph_jacobian: create_graph must be a bool, got None
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {parameter} must be a bool, got {value!r}")


def check_inference_mode(name: str) -> None:
    """Inside ``torch.inference_mode()``, raise where torch.func returns zeros (else nothing)."""
    if inference_mode_enabled():
        _check_inference_mode(name)


def _check_inference_mode(name: str) -> None:
    """Inside ``torch.inference_mode()``: fine where torch.func differentiates there, else raise."""
    if not inference_mode_derivatives():
        raise RuntimeError(
            f"{name}: cannot differentiate inside torch.inference_mode() with torch "
            f"{torch.__version__} (its function transforms silently return zeros there); "
            "use torch.no_grad() instead"
        )
