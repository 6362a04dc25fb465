"""The ``"func"`` backend: :mod:`torch.func` (torch >= 2.0)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from ..compat._dual import forward_ad_ready
from ..compat._locks import TRANSFORM_LOCK, locked
from ..compat._torch_info import (
    TORCH_VERSION,
    Version,
    function_transforms,
    is_compiling,
    module_exists,
)
from ..eager._opaque_backward import opaque_backwards_refused
from ._chunking import jacrev_tensor_args_only, vmap_with_out_dims
from .base import ArgnumsT, Availability, Backend, Fn, InDimsT, OutDimsT

__all__ = ["FuncBackend"]

_MINIMUM = Version("2.0")


_JACREV_NEEDS_TENSOR_ARGS = _MINIMUM <= TORCH_VERSION < Version("2.1")


def _locked_unless_compiling(fn: Fn) -> Fn:
    """``fn`` under :data:`TRANSFORM_LOCK`, except while dynamo traces it into a graph
    (dynamo cannot take a lock)."""
    run_locked = locked(fn)

    def run(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_compiling() else run_locked(*args, **kwargs)

    return run


class _RefusingDerivatives:
    """The derivative transforms of a backend's library (``library()``), each derivative
    refusing to be differentiated again through an opaque custom Function
    (:func:`~tad_autograd.eager._opaque_backward.opaque_backwards_refused`): ``jacrev``,
    ``jacfwd``, ``grad`` and ``grad_and_value`` return such derivatives, ``vjp`` and ``jvp``
    compute one.  The library is looked up on each call (imported on first use); ``vmap``
    is no derivative and is not here."""

    __slots__ = ("_library",)

    def __init__(self, library: Callable[[], Any]) -> None:
        self._library = library

    def _derivative(self, transform: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Fn:
        return opaque_backwards_refused(getattr(self._library(), transform)(*args, **kwargs))

    def jacrev(self, *args: Any, **kwargs: Any) -> Fn:
        return self._derivative("jacrev", args, kwargs)

    def jacfwd(self, *args: Any, **kwargs: Any) -> Fn:
        return self._derivative("jacfwd", args, kwargs)

    def grad(self, *args: Any, **kwargs: Any) -> Fn:
        return self._derivative("grad", args, kwargs)

    def grad_and_value(self, *args: Any, **kwargs: Any) -> Fn:
        return self._derivative("grad_and_value", args, kwargs)

    def vjp(self, *args: Any, **kwargs: Any) -> Any:
        return opaque_backwards_refused(self._library().vjp)(*args, **kwargs)

    def jvp(self, *args: Any, **kwargs: Any) -> Any:
        return opaque_backwards_refused(self._library().jvp)(*args, **kwargs)


class FuncBackend(Backend):
    """Function transforms from :mod:`torch.func`.

    The fastest backend where it works; :mod:`torch.func` is imported only
    when the backend first runs.  ``linearize`` is derived from ``vmap`` of
    ``jvp`` (:mod:`tad_autograd.backends._derived`): one run of the function gives the
    output and the Jacobian.  :func:`torch.func.linearize` runs the function
    twice (the second time traced with ``make_fx``, which refuses
    data-dependent Python), so its products do not see the output's random
    draws.

    Examples
    --------
    >>> import torch
    >>> backend = FuncBackend()
    >>> if backend.availability().ok:  # torch >= 2.0
    ...     jac = backend.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    ...     assert torch.equal(jac, torch.eye(2))
    >>> backend.availability().ok or "torch.func needs" in backend.availability().reason
    True
    """

    name = "func"
    aliases: Tuple[str, ...] = ("torch.func",)
    is_transform = True

    def __init__(self) -> None:
        #: :meth:`transforms`' derivative transforms, whose derivatives raise where an outer
        #: transform differentiates them again through a custom Function whose backward (or
        #: ``jvp``) computes outside autograd; every operator but ``vmap`` takes them.
        self._derivatives = _RefusingDerivatives(self.transforms)

    def availability(
        self,
        torch_version: Version = TORCH_VERSION,
        module_exists: Callable[[str], bool] = module_exists,
    ) -> Availability:
        if torch_version < _MINIMUM:
            return Availability(
                False,
                f"torch.func needs torch >= 2.0, found {torch_version}",
                "upgrade torch (pip install 'torch>=2.0') or use "
                "backend='functorch' or backend='autograd'",
            )
        return Availability(True)

    def transforms(self) -> Any:
        """The library the operators call: ``jacrev``, ``jacfwd``, ``vjp``, ``jvp``,
        ``grad``, ``grad_and_value`` and ``vmap`` with :mod:`torch.func`'s signatures
        (``jacrev`` and ``vmap`` with ``chunk_size``); :mod:`torch.func` itself here."""
        return function_transforms()

    def vmap_primitive(self) -> Fn:
        vmap: Fn = self.transforms().vmap
        return vmap

    def jacrev(
        self, func: Fn, argnums: ArgnumsT, *, has_aux: bool, chunk_size: Optional[int]
    ) -> Fn:
        jacrev = self._derivatives.jacrev
        if _JACREV_NEEDS_TENSOR_ARGS:  # torch 2.0: see _chunking.jacrev_tensor_args_only
            return jacrev_tensor_args_only(
                jacrev, func, argnums, has_aux=has_aux, chunk_size=chunk_size
            )
        return jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)

    def vjp(self, func: Fn, primals: Tuple[Any, ...], *, has_aux: bool) -> Any:
        return self._derivatives.vjp(func, *primals, has_aux=has_aux)

    def jvp(
        self, func: Fn, primals: Tuple[Any, ...], tangents: Tuple[Any, ...], *, has_aux: bool
    ) -> Any:
        forward_ad_ready()
        jvp = self._derivatives.jvp
        if is_compiling():  # traced into the graph, where dynamo cannot take a lock
            return jvp(func, primals, tangents, has_aux=has_aux)
        with TRANSFORM_LOCK:  # dual levels are process-wide
            return jvp(func, primals, tangents, has_aux=has_aux)

    def grad_and_value(self, func: Fn, argnums: ArgnumsT, *, has_aux: bool) -> Fn:
        return self._derivatives.grad_and_value(func, argnums, has_aux=has_aux)

    def grad(self, func: Fn, argnums: ArgnumsT, *, has_aux: bool) -> Fn:
        return self._derivatives.grad(func, argnums, has_aux=has_aux)

    def jacfwd(
        self,
        func: Fn,
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        randomness: str,
        chunk_size: Optional[int],
    ) -> Fn:
        forward_ad_ready()
        if chunk_size is not None:  # torch.func.jacfwd has no chunk_size: vmap(jvp) in chunks
            # (each chunk's jvp is :meth:`jvp`, whose derivative refuses as the others do)
            return super().jacfwd(
                func, argnums, has_aux=has_aux, randomness=randomness, chunk_size=chunk_size
            )
        jacfwd = self._derivatives.jacfwd
        if _JACREV_NEEDS_TENSOR_ARGS:  # torch 2.0's jacfwd checks every argument's dtype too
            return locked(
                jacrev_tensor_args_only(
                    jacfwd, func, argnums, has_aux=has_aux, randomness=randomness
                )
            )
        fn = jacfwd(func, argnums, has_aux=has_aux, randomness=randomness)
        return _locked_unless_compiling(fn)  # dual levels are process-wide

    def vmap(
        self,
        func: Fn,
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Fn:
        return vmap_with_out_dims(
            self.transforms().vmap, func, in_dims, out_dims, randomness, chunk_size=chunk_size
        )
