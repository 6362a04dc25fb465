"""Checks of the operands of ``vjp``, ``jvp``, ``linearize``, ``hvp`` and ``grad``.

Every backend runs them before differentiating, so one mistake gets one
exception type everywhere: the type :mod:`torch.func` raises (``RuntimeError``
for structure, shape and dtype mismatches, for non-tensor tangents and
for non-scalar ``grad`` outputs, ``TypeError`` for non-tensor cotangents,
``ValueError`` for non-tensor primals), with a message naming what was
given and what is allowed.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..compat._pytree import tree_flatten

__all__ = [
    "check_cotangents",
    "check_primals",
    "check_primals_tangents",
    "check_scalar_output",
    "check_tensor_outputs",
    "check_output_dtypes",
    "split_aux",
    "with_checked_cotangents",
    "with_checked_outputs",
]


def check_primals(primals: Any, name: str) -> Tuple[List[torch.Tensor], Any]:
    """The leaves and spec of ``primals``: a tuple of floating-point tensors (or pytrees).

    A non-floating-point primal raises ``RuntimeError`` for ``vjp`` and
    ``ValueError`` for the forward-mode operators, as :mod:`torch.func` does.

    Examples
    --------
    >>> import torch
    >>> len(check_primals((torch.zeros(2), [torch.ones(1)]), "jvp")[0])
    2
    >>> check_primals(torch.zeros(2), "jvp")
    Traceback (most recent call last):
    ...
    RuntimeError: jvp(f, primals, ...): expected primals to be a tuple ...
    """
    if not isinstance(primals, tuple):
        raise RuntimeError(
            f"{name}(f, primals, ...): expected primals to be a tuple (f(*primals) must be "
            f"a valid call), got {type(primals).__name__}"
        )
    leaves, spec = tree_flatten(primals)
    if not leaves:
        raise RuntimeError(
            f"{name}(f, primals, ...): expected at least one primal tensor, got {primals!r}"
        )
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(
                f"{name}: every primal must be a tensor (or a pytree of tensors); leaf {i} "
                f"is {type(leaf)}"
            )
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise (RuntimeError if name == "vjp" else ValueError)(
                f"{name}: primal leaf {i} has dtype {leaf.dtype}; only Tensors of floating "
                "point or complex dtype can be differentiated"
            )
    return leaves, spec


def check_primals_tangents(
    primals: Any, tangents: Any, name: str
) -> Tuple[List[torch.Tensor], List[torch.Tensor], Any]:
    """Primal and tangent leaves with the primals' spec, checked pairwise.

    ``tangents`` must have the structure of ``primals``, and each tangent the
    shape, dtype and device of its primal.

    Examples
    --------
    >>> import torch
    >>> check_primals_tangents((torch.zeros(2),), (torch.zeros(3),), "jvp")
    Traceback (most recent call last):
    ...
    RuntimeError: jvp: tangent 0 has shape (3,), its primal (2,); they must be equal
    """
    if (
        type(primals) is tuple
        and type(tangents) is tuple
        and 0 < len(primals) == len(tangents)
        and all(
            type(p) is torch.Tensor
            and type(t) is torch.Tensor
            and p.is_floating_point()
            and p.shape == t.shape
            and p.dtype == t.dtype
            and p.device == t.device
            for p, t in zip(primals, tangents)
        )
    ):  # the common case: tuples of plain tensors that match
        return list(primals), list(tangents), tree_flatten(primals)[1]
    p_leaves, spec = check_primals(primals, name)
    if not isinstance(tangents, tuple):
        raise RuntimeError(
            f"{name}(f, primals, tangents): expected tangents to be a tuple like primals, "
            f"got {type(tangents).__name__}"
        )
    t_leaves, t_spec = tree_flatten(tangents)
    if t_spec != spec:
        raise RuntimeError(
            f"{name}(f, primals, tangents): expected primals and tangents to have the same "
            f"python structure, got primals {spec} and tangents {t_spec}"
        )
    for i, (p, t) in enumerate(zip(p_leaves, t_leaves)):
        if not isinstance(t, torch.Tensor):
            raise RuntimeError(
                f"{name}: tangents must be tensors (or pytrees of them) like the primals; "
                f"tangent {i} is {type(t)}"
            )
        if t.shape != p.shape:
            raise RuntimeError(
                f"{name}: tangent {i} has shape {tuple(t.shape)}, its primal "
                f"{tuple(p.shape)}; they must be equal"
            )
        if t.dtype != p.dtype or t.device != p.device:
            raise RuntimeError(
                f"{name}: tangent {i} has dtype {t.dtype} on {t.device}, its primal dtype "
                f"{p.dtype} on {p.device}; the dtype and device must be the primal's"
            )
    return p_leaves, t_leaves, spec


def check_cotangents(out_leaves: List[Any], out_spec: Any, cotangents: Any) -> List[Any]:
    """The leaves of ``vjp_fn``'s ``cotangents``, checked against the output's.

    As :mod:`torch.func`: another structure or shape raises ``RuntimeError``,
    a leaf that is not a tensor ``TypeError``.

    Examples
    --------
    >>> import torch
    >>> check_cotangents(*tree_flatten(torch.zeros(2)), 1.0)
    Traceback (most recent call last):
    ...
    TypeError: vjp_fn(cotangents): cotangent 0 must be a tensor shaped like output 0 (2,), ...
    """
    ct_leaves, ct_spec = tree_flatten(cotangents)
    if ct_spec != out_spec:
        raise RuntimeError(
            "vjp_fn(cotangents): expected cotangents to have the structure of the "
            f"function's output, {out_spec}; got {ct_spec}"
        )
    for i, (o, c) in enumerate(zip(out_leaves, ct_leaves)):
        if not isinstance(c, torch.Tensor):
            raise TypeError(
                f"vjp_fn(cotangents): cotangent {i} must be a tensor shaped like output {i} "
                f"{tuple(o.shape)}, got {type(c)}"
            )
        if c.shape != o.shape:
            raise RuntimeError(
                f"vjp_fn(cotangents): cotangent {i} has shape {tuple(c.shape)}; it must have "
                f"the shape of output {i}, {tuple(o.shape)}"
            )
    return ct_leaves


def with_checked_cotangents(result: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """``vjp``'s ``(output, vjp_fn[, aux])`` with ``vjp_fn`` checking its cotangents first.

    Examples
    --------
    >>> import torch
    >>> out, vjp_fn = with_checked_cotangents((torch.ones(2), lambda ct: (ct,)))
    >>> vjp_fn(torch.ones(3))
    Traceback (most recent call last):
    ...
    RuntimeError: vjp_fn(cotangents): cotangent 0 has shape (3,); it must have the shape ...
    """
    out_leaves, out_spec = tree_flatten(result[0])
    inner = result[1]

    def vjp_fn(cotangents: Any, *args: Any, **kwargs: Any) -> Any:
        check_cotangents(out_leaves, out_spec, cotangents)
        return inner(cotangents, *args, **kwargs)

    return (result[0], vjp_fn) + tuple(result[2:])


def check_scalar_output(output: Any, name: str) -> torch.Tensor:
    """``output`` if it is a real floating-point 0-dim tensor, else ``RuntimeError``.

    Examples
    --------
    >>> import torch
    >>> check_scalar_output(torch.ones(2), "grad")
    Traceback (most recent call last):
    ...
    RuntimeError: grad(f)(*args): expected f(*args) to return a scalar tensor, got a tensor ...
    """
    if not isinstance(output, torch.Tensor):
        raise RuntimeError(
            f"{name}(f)(*args): expected f(*args) to return a tensor, got {type(output)}"
        )
    if output.dim() != 0:
        raise RuntimeError(
            f"{name}(f)(*args): expected f(*args) to return a scalar tensor, got a tensor "
            f"with {output.dim()} dims (shape {tuple(output.shape)}); use vjp or jacrev for "
            "non-scalar outputs"
        )
    if not output.is_floating_point():
        raise RuntimeError(
            f"{name}(f)(*args): expected f(*args) to return a real floating-point tensor, "
            f"got dtype {output.dtype}"
        )
    return output


def check_tensor_outputs(leaves: Sequence[Any], name: str, operand: Optional[str] = None) -> None:
    """Outputs to differentiate: at least one, and tensors only (``RuntimeError``).

    ``operand``: the parameter the outputs were given as (``graph_jacobian``'s
    ``outputs``), for the message; ``None``: they were returned by ``f``.

    Examples
    --------
    >>> check_tensor_outputs([], "vjp")
    Traceback (most recent call last):
    ...
    RuntimeError: vjp(f, ...): expected f to return a tensor or a non-empty pytree of tensors...
    """
    if operand is None:
        call, expected = f"{name}(f, ...)", "expected f to return"
    else:
        call, expected = name, f"expected `{operand}` to hold"
    if not leaves:
        raise RuntimeError(
            f"{call}: {expected} a tensor or a non-empty pytree of tensors, got no tensors "
            "(e.g. None)"
        )
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            raise RuntimeError(
                f"{call}: {expected} only tensors, got unsupported type {type(leaf)} (output {i})"
            )


def check_output_dtypes(
    leaves: Sequence[torch.Tensor], name: str, real: bool, operand: Optional[str] = None
) -> None:
    """Output tensors to differentiate: floating-point, or complex unless ``real``.

    Integer and bool outputs raise ``RuntimeError`` (never a derivative of
    zeros), and so do complex ones where ``real`` (as :mod:`torch.func` does
    for the Jacobians).  ``operand`` as for :func:`check_tensor_outputs`.

    Examples
    --------
    >>> import torch
    >>> check_output_dtypes([torch.zeros(1, dtype=torch.complex64)], "vjp", False)
    >>> check_output_dtypes([torch.zeros(1, dtype=torch.complex64)], "jacfwd", True)
    Traceback (most recent call last):
    ...
    RuntimeError: jacfwd: Expected all outputs to be real but received complex tensor at ...
    """
    for i, leaf in enumerate(leaves):
        if leaf.is_floating_point() or (leaf.is_complex() and not real):
            continue
        if operand is not None:
            kind = "complex (only real outputs are differentiated, as by jacrev)"
            raise RuntimeError(
                f"{name}: every leaf of `{operand}` must be a real floating-point tensor; "
                f"leaf {i} is {kind if leaf.is_complex() else f'of dtype {leaf.dtype}'}"
            )
        if leaf.is_complex():
            raise RuntimeError(
                f"{name}: Expected all outputs to be real but received complex tensor at "
                f"flattened input idx: {i} (dtype {leaf.dtype}); use jvp or vjp for complex "
                "outputs"
            )
        raise RuntimeError(
            f"{name}(f, ...): All outputs of f must be floating-point or complex Tensors, "
            f"got Tensor with dtype {leaf.dtype} (output {i})"
        )


def split_aux(result: Any, name: str) -> Tuple[Any, Any]:
    """``(output, aux)`` of a ``has_aux`` function, checked (``RuntimeError``).

    Examples
    --------
    >>> import torch
    >>> split_aux(torch.zeros(1), "vjp")
    Traceback (most recent call last):
    ...
    RuntimeError: vjp(f, ..., has_aux=True): f must return a tuple (output, aux) whose output ...
    """
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RuntimeError(
            f"{name}(f, ..., has_aux=True): f must return a tuple (output, aux) whose output "
            f"is a tensor or a pytree of tensors, got {type(result).__name__}"
        )
    for leaf in tree_flatten(result[1])[0]:
        if not isinstance(leaf, torch.Tensor):
            raise RuntimeError(
                f"{name}(f, ..., has_aux=True): aux must be a tensor or a pytree of tensors, "
                f"got {type(leaf)}"
            )
    return result[0], result[1]


_SCALAR_OUTPUT = frozenset({"grad", "grad_and_value", "hvp"})
#: Operators whose outputs must be real, as in torch.func (functorch 1.13's jacfwd took them).
_REAL_OUTPUTS = frozenset({"jacfwd"})


def with_checked_outputs(func: Callable[..., Any], has_aux: bool, name: str) -> Callable[..., Any]:
    """``func``, raising ``RuntimeError`` for outputs ``name`` cannot differentiate.

    ``grad``/``grad_and_value``/``hvp`` need a real floating-point scalar,
    ``jacfwd`` real floating-point tensors, the others (``vjp``, ``jvp``,
    ``linearize``) floating-point or complex tensors: :mod:`torch.func`
    returns zeros for integer outputs in some, which the library never does.

    Examples
    --------
    >>> import torch
    >>> with_checked_outputs(lambda x: x.long(), False, "jacfwd")(torch.ones(1))
    Traceback (most recent call last):
    ...
    RuntimeError: jacfwd(f, ...): All outputs of f must be floating-point ... torch.int64 (output 0)
    """

    scalar = name in _SCALAR_OUTPUT

    def checked(*args: Any) -> Any:
        result = func(*args)
        output = split_aux(result, name)[0] if has_aux else result
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            if not scalar or output.dim() == 0:  # the common case, checked cheaply
                return result
        if not scalar:
            leaves = tree_flatten(output)[0]
            check_tensor_outputs(leaves, name)
            check_output_dtypes(leaves, name, name in _REAL_OUTPUTS)
        else:
            check_scalar_output(output, name)
        return result

    checked.__wrapped__ = func  # type: ignore[attr-defined]
    return checked
