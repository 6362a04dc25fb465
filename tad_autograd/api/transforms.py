"""The public transforms: :func:`jacrev`, :func:`vmap`, :func:`hessian`, :func:`fjacrev`,
:func:`fvmap`.

Thin, documented functions over :mod:`tad_autograd.dispatch._transformed`; every
argument is checked here once, when the transform is built, and a transform
built again with the same plain arguments (ints, bools, ``None``, names) reuses
that check: users build transforms inside loops.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

from ..backends._operators import HESSIAN, JACREV, VMAP, Builds, Operator, Params
from ..dispatch._checks import (
    check_argnums_type,
    check_backend,
    check_chunk_size,
    check_in_dims_type,
    check_randomness,
)
from ..dispatch._registry import REGISTRY
from ..dispatch._transformed import Transformed
from ..eager._operand_checks import with_checked_outputs

__all__ = ["jacrev", "vmap", "hessian", "fjacrev", "fvmap"]

Argnums = Union[int, Tuple[int, ...]]


def transformed(
    op: Operator,
    func: Callable[..., Any],
    params: Params,
    backend: Optional[str],
    transforms_only: bool = False,
    *,
    kwargs_in_call: bool = False,
    check_outputs: bool = False,
    **dims: Any,
) -> Transformed:
    """``func`` transformed by ``op`` with ``params``, built on each backend as it is called.

    With ``check_outputs``, ``func``'s outputs are checked first, in ``op``'s name.

    Examples
    --------
    >>> import torch
    >>> transformed(JACREV, torch.sin, Params(), None, argnums=0)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """
    build = _build_function(op, params, check_outputs)
    return Transformed(op, func, build, backend, transforms_only, kwargs_in_call, **dims)


Build = Callable[[Builds, Callable[..., Any]], Callable[..., Any]]


def _build_function(op: Operator, params: Params, check_outputs: bool = False) -> Build:
    """How a :class:`Transformed` builds ``op`` with ``params`` on what runs a call."""

    def build(b: Builds, f: Callable[..., Any]) -> Callable[..., Any]:
        if check_outputs:
            f = with_checked_outputs(f, params.has_aux, op.name)
        return b.build(op, f, params)

    return build


class _Prepared(NamedTuple):
    """What a transform's arguments decide, whatever the function: checked once."""

    registry_version: int
    build: Build
    backend: Optional[str]


#: By the public function's name and its arguments (ints, bools, None and strings only,
#: compared with their types: ``True == 1``, yet ``in_dims=True`` is an error).
_PREPARED: Dict[Tuple[Any, ...], _Prepared] = {}
_PREPARED_MAX = 256


def _simple(value: Any) -> bool:
    """An argument a prepared transform may be looked up by: None or a plain int."""
    return value is None or type(value) is int


def _prepared(key: Tuple[Any, ...]) -> Optional[_Prepared]:
    """The prepared transform for ``key``, if its arguments were checked under this registry."""
    entry = _PREPARED.get(key)
    if entry is not None and entry.registry_version == REGISTRY.version:
        return entry
    return None


def _prepare(
    key: Optional[Tuple[Any, ...]], op: Operator, params: Params, backend: Optional[str]
) -> _Prepared:
    """Prepare (and, for a ``key``, remember) a transform whose arguments were just checked."""
    entry = _Prepared(REGISTRY.version, _build_function(op, params), backend)
    if key is not None:
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        _PREPARED[key] = entry
    return entry


def _jacrev(
    func: Callable[..., Any],
    argnums: Argnums,
    has_aux: bool,
    chunk_size: Optional[int],
    backend: Optional[str],
    transforms_only: bool,
    name: str,
) -> Transformed:
    key = None
    if (
        type(argnums) is int
        and type(has_aux) is bool
        and _simple(chunk_size)
        and (backend is None or type(backend) is str)
    ):
        key = (name, argnums, has_aux, chunk_size, backend)
        entry = _prepared(key)
        if entry is not None:
            return Transformed(
                JACREV, func, entry.build, entry.backend, transforms_only, False, argnums
            )
    check_argnums_type(argnums)
    check_chunk_size(chunk_size, name)
    if not isinstance(has_aux, bool):
        raise TypeError(f"{name}: has_aux must be a bool, got {has_aux!r}")
    params = Params(argnums, has_aux, chunk_size)
    entry = _prepare(key, JACREV, params, check_backend(backend))
    return Transformed(JACREV, func, entry.build, entry.backend, transforms_only, False, argnums)


def _vmap(
    func: Callable[..., Any],
    in_dims: Any,
    out_dims: Any,
    randomness: str,
    chunk_size: Optional[int],
    backend: Optional[str],
    transforms_only: bool,
    name: str,
) -> Transformed:
    key = None
    if (
        _simple(in_dims)
        and _simple(out_dims)
        and _simple(chunk_size)
        and type(randomness) is str
        and (backend is None or type(backend) is str)
    ):
        key = (name, in_dims, out_dims, randomness, chunk_size, backend)
        entry = _prepared(key)
        if entry is not None:
            return Transformed(
                VMAP, func, entry.build, entry.backend, transforms_only, True, None, in_dims
            )
    check_randomness(randomness)
    check_in_dims_type(in_dims)
    check_chunk_size(chunk_size, name)
    params = Params(0, False, chunk_size, randomness, in_dims, out_dims)
    entry = _prepare(key, VMAP, params, check_backend(backend))
    return Transformed(VMAP, func, entry.build, entry.backend, transforms_only, True, None, in_dims)


def jacrev(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    has_aux: bool = False,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """Jacobian of ``func`` with respect to the arguments at ``argnums``, by reverse mode.

    Behaves as :func:`torch.func.jacrev` on every supported torch, whichever
    backend runs it (see :doc:`/backends`); its behaviour in every calling
    context, and where it differs from :mod:`torch.func`, is on
    :doc:`/semantics`.

    Parameters
    ----------
    func : callable
        Takes tensors (or pytrees of tensors) and returns a tensor or a pytree
        of tensors.  With ``has_aux=True`` it returns ``(output, aux)``.
    argnums : int or tuple of int, optional
        Which positional arguments to differentiate (negative values count from
        the end).  Default 0.
    has_aux : bool, optional
        ``func`` returns ``(output, aux)``; ``aux`` is returned undifferentiated.
    chunk_size : int, optional
        Compute the Jacobian this many rows at a time (less peak memory, same
        result).  ``None`` (default) computes all rows at once.
    backend : str, optional
        ``"func"``, ``"functorch"``, ``"autograd"``, a registered name, or
        ``None``/``"auto"`` (default) to follow the settings.

    Returns
    -------
    callable
        Takes the same arguments as ``func`` and returns the Jacobian: the
        output pytree, then (for tuple ``argnums``) a tuple over ``argnums``,
        then the input pytree; each leaf of shape ``out.shape + in.shape``.
        With ``has_aux=True``, ``(jacobian, aux)``.

    Raises
    ------
    RuntimeError
        Malformed ``argnums``.
    ValueError, TypeError
        ``chunk_size`` not ``None`` or a positive int.
    UnknownBackendError, BackendUnavailableError
        ``backend`` unknown or unavailable.

    Examples
    --------
    Forces of a harmonic "bond" are minus the gradient of its energy:

    >>> import torch, tad_autograd as ta
    >>> def energy(pos):
    ...     return 0.5 * ((pos[1] - pos[0]).norm() - 1.0) ** 2
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.5]], dtype=torch.float64)
    >>> -ta.jacrev(energy)(pos) + 0.0  # + 0.0 turns -0.0 into 0.0
    tensor([[ 0.0000,  0.0000,  0.5000],
            [ 0.0000,  0.0000, -0.5000]], dtype=torch.float64)
    """
    return _jacrev(func, argnums, has_aux, chunk_size, backend, False, "jacrev")


def fjacrev(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    has_aux: bool = False,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """:func:`jacrev` on a function-transform backend only, never the autograd loop.

    For code that relies on transform semantics (e.g. composing with
    ``torch.func`` directly).  No automatic fallback beyond transform
    backends; a setting naming ``"autograd"`` raises
    :class:`~tad_autograd.BackendUnavailableError`.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.fjacrev(torch.sin)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """
    return _jacrev(func, argnums, has_aux, chunk_size, backend, True, "fjacrev")


def vmap(
    func: Callable[..., Any],
    in_dims: Any = 0,
    out_dims: Any = 0,
    randomness: str = "error",
    *,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """Vectorise ``func`` over a batch dimension of its arguments.

    Behaves as :func:`torch.func.vmap` on every supported torch, whichever
    backend runs it.

    Parameters
    ----------
    func : callable
        The per-sample function.
    in_dims : int, None or tuple, optional
        The batch dimension of each positional argument: an int for all, or a
        (nested) tuple matching the arguments, ``None`` meaning "not
        batched".  Negative values count from the end.  Default 0.
    out_dims : int, None or tuple, optional
        Where the batch dimension goes in each output.  Default 0.
    randomness : {"error", "same", "different"}, optional
        ``"error"`` (default) raises on a random operation inside ``func``;
        ``"same"`` gives every sample the same random values;
        ``"different"`` independent ones.
    chunk_size : int, optional
        Process this many samples at a time.
    backend : str, optional
        As for :func:`jacrev`.

    Returns
    -------
    callable
        Takes the batched arguments (keyword arguments are passed through
        unbatched) and returns the batched outputs.

    Raises
    ------
    RuntimeError
        ``randomness`` not one of the three.
    ValueError, TypeError
        ``chunk_size`` not ``None`` or a positive int.

    Examples
    --------
    Pair distances of a batch of two-atom structures:

    >>> import torch, tad_autograd as ta
    >>> pos = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    ...                     [[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]]])
    >>> ta.vmap(lambda p: (p[1] - p[0]).norm())(pos)
    tensor([1., 5.])
    """
    return _vmap(func, in_dims, out_dims, randomness, chunk_size, backend, False, "vmap")


def fvmap(
    func: Callable[..., Any],
    in_dims: Any = 0,
    out_dims: Any = 0,
    randomness: str = "error",
    *,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """:func:`vmap` on a function-transform backend only, never a Python loop.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.fvmap(torch.sum)(torch.ones(3, 2))
    tensor([2., 2., 2.])
    """
    return _vmap(func, in_dims, out_dims, randomness, chunk_size, backend, True, "fvmap")


def hessian(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """Hessian of ``func`` by reverse-over-reverse differentiation.

    Equal to ``jacrev(jacrev(func, argnums), argnums)`` on one backend.

    Parameters
    ----------
    func : callable
        Usually returns a scalar (an energy).
    argnums : int or tuple of int, optional
        Which arguments to differentiate.  Default 0.
    chunk_size : int, optional
        Passed to both Jacobians.
    backend : str, optional
        As for :func:`jacrev`.

    Returns
    -------
    callable
        Returns the Hessian, each leaf of shape ``out.shape + in.shape + in.shape``.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.hessian(lambda x: (x ** 3).sum())(torch.tensor([1.0, 2.0]))
    tensor([[ 6.,  0.],
            [ 0., 12.]])
    """
    key = None
    if type(argnums) is int and _simple(chunk_size) and (backend is None or type(backend) is str):
        key = ("hessian", argnums, chunk_size, backend)
        entry = _prepared(key)
        if entry is not None:
            return Transformed(HESSIAN, func, entry.build, entry.backend, False, False, argnums)
    check_argnums_type(argnums)
    check_chunk_size(chunk_size, "hessian")
    params = Params(argnums, False, chunk_size)
    entry = _prepare(key, HESSIAN, params, check_backend(backend))
    return Transformed(HESSIAN, func, entry.build, entry.backend, False, False, argnums)
