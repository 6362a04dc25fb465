"""The ``"functorch"`` backend: the ``functorch`` package.

``functorch`` was a standalone package for torch 1.11/1.12, is bundled with
torch 1.13 (the only function transforms there), and is a deprecated alias of
:mod:`torch.func` from torch 2.0 on.  There, its public functions emit a
``FutureWarning`` before calling the :mod:`torch._functorch` implementation;
this backend calls that implementation directly, so choosing it never shows
users a deprecation warning they did not cause.  It is never chosen
automatically on torch >= 2.0.

functorch 1.13 has no ``chunk_size``; the backend supplies it
(:mod:`tad_autograd.backends._chunking`).  No functorch release has
``linearize`` or ``hvp``: they are derived from ``jvp`` and ``grad_and_value``
(:mod:`tad_autograd.backends._derived`), as is ``jacfwd`` with a ``chunk_size``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Tuple

from ..compat._dual import forward_ad_ready
from ..compat._locks import TRANSFORM_LOCK, locked
from ..compat._torch_info import TORCH_VERSION, Version, cache, module_exists
from ._chunking import (
    checked_outputs,
    chunked_jacrev,
    chunked_vmap,
    jacrev_tensor_args_only,
    vmap_batch_of_one_guard,
    vmap_with_out_dims,
)
from ._derived import jacfwd_from_jvp
from .base import ArgnumsT, Availability, Backend, InDimsT, OutDimsT, positional_jvp

__all__ = ["FunctorchBackend"]

_DEPRECATED_FROM = Version("2.0")
#: functorch 1.13 keeps its transform levels process-wide, not per thread: two threads
#: transforming at once trip "INTERNAL ASSERT FAILED ... DynamicLayer.cpp", so calls
#: are serialised there (re-entrant, for nested transforms in one thread).
_SERIALISE = TORCH_VERSION < _DEPRECATED_FROM
_LOCK = TRANSFORM_LOCK  # shared with forward mode: one lock, no lock-order deadlock
#: torch 2.0's jacrev fails on non-tensor positional arguments (see jacrev_tensor_args_only).
_JACREV_NEEDS_TENSOR_ARGS = _DEPRECATED_FROM <= TORCH_VERSION < Version("2.1")


_Transform = Callable[..., Callable[..., Any]]


class _Transforms:
    """The library functions the backend calls (a plain class: cheaper to define at import)."""

    __slots__ = (
        "jacrev",
        "vjp",
        "vmap",
        "jvp",
        "jacfwd",
        "grad",
        "grad_and_value",
        "native_chunks",
    )

    def __init__(self, library: Any, vmap: _Transform, native_chunks: bool) -> None:
        self.jacrev: _Transform = library.jacrev
        self.vjp: Callable[..., Any] = library.vjp
        self.jvp: Callable[..., Any] = library.jvp
        self.jacfwd: _Transform = library.jacfwd
        self.grad: _Transform = library.grad
        self.grad_and_value: _Transform = library.grad_and_value
        self.vmap = vmap
        self.native_chunks = native_chunks


@cache
def _transforms() -> _Transforms:
    import functorch

    if TORCH_VERSION >= _DEPRECATED_FROM:
        # What functorch's functions call after their FutureWarning.
        from types import SimpleNamespace

        from torch._functorch import eager_transforms

        try:
            from torch._functorch.apis import grad, grad_and_value, vmap
        except ImportError:  # torch 2.0: all in eager_transforms; vmap is torch.vmap's
            from torch._functorch.eager_transforms import grad, grad_and_value  # type: ignore[attr-defined, no-redef, unused-ignore]
            from torch._functorch.vmap import vmap  # type: ignore[attr-defined, no-redef, unused-ignore]
        library = SimpleNamespace(
            jacrev=eager_transforms.jacrev,
            vjp=eager_transforms.vjp,
            jvp=eager_transforms.jvp,
            jacfwd=eager_transforms.jacfwd,
            grad=grad,
            grad_and_value=grad_and_value,
        )
        return _Transforms(library, vmap, True)
    native = "chunk_size" in inspect.signature(functorch.jacrev).parameters
    return _Transforms(functorch, vmap_batch_of_one_guard(functorch.vmap), native)


class FunctorchBackend(Backend):
    """Function transforms from the ``functorch`` package.

    Examples
    --------
    >>> import torch
    >>> backend = FunctorchBackend()
    >>> backend.jacrev(torch.sin, 0, has_aux=False, chunk_size=1)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    name = "functorch"
    is_transform = True

    def availability(
        self,
        torch_version: Version = TORCH_VERSION,
        module_exists: Callable[[str], bool] = module_exists,
    ) -> Availability:
        if not module_exists("functorch"):
            return Availability(
                False,
                f"the functorch package is not installed (torch {torch_version})",
                "pip install functorch matching your torch, or use backend='func' "
                "(torch >= 2.0) or backend='autograd'",
            )
        return Availability(True)

    def automatic_ok(self, torch_version: Version = TORCH_VERSION) -> Tuple[bool, str]:
        if torch_version >= _DEPRECATED_FROM:
            return False, (
                f"functorch is a deprecated alias of torch.func on torch {torch_version}; "
                "never chosen automatically"
            )
        return True, ""

    def vmap_primitive(self) -> Callable[..., Any]:
        vmap = _transforms().vmap
        if not _SERIALISE:
            return vmap

        def serialised_vmap(*args: Any, **kwargs: Any) -> Callable[..., Any]:
            return _serialised(vmap(*args, **kwargs))

        return serialised_vmap

    def jacrev(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        t = _transforms()
        if not t.native_chunks:  # functorch 1.13: say what outputs jacrev needs
            func = checked_outputs(func, has_aux, "jacrev")
        if chunk_size is None:
            if _JACREV_NEEDS_TENSOR_ARGS:
                jacobian_fn = jacrev_tensor_args_only(t.jacrev, func, argnums, has_aux=has_aux)
            else:
                jacobian_fn = t.jacrev(func, argnums, has_aux=has_aux)
        elif not t.native_chunks:
            jacobian_fn = chunked_jacrev(t.vjp, t.vmap, func, argnums, has_aux, chunk_size)
        elif _JACREV_NEEDS_TENSOR_ARGS:
            jacobian_fn = jacrev_tensor_args_only(
                t.jacrev, func, argnums, has_aux=has_aux, chunk_size=chunk_size
            )
        else:
            jacobian_fn = t.jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)
        return _serialised(jacobian_fn)

    def vmap(
        self,
        func: Callable[..., Any],
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        t = _transforms()
        if chunk_size is None:
            batched = vmap_with_out_dims(t.vmap, func, in_dims, out_dims, randomness)
        elif t.native_chunks:
            batched = vmap_with_out_dims(
                t.vmap, func, in_dims, out_dims, randomness, chunk_size=chunk_size
            )
        else:
            # functorch 1.13: a chunk of one sample needs a doubled batch
            vmap = vmap_batch_of_one_guard(t.vmap, every=True)
            batched = chunked_vmap(vmap, func, in_dims, out_dims, randomness, chunk_size)
        return _serialised(batched)

    def vjp(self, func: Callable[..., Any], primals: Tuple[Any, ...], *, has_aux: bool) -> Any:
        return _serialised(_transforms().vjp)(func, *primals, has_aux=has_aux)

    def jvp(
        self,
        func: Callable[..., Any],
        primals: Tuple[Any, ...],
        tangents: Tuple[Any, ...],
        *,
        has_aux: bool,
    ) -> Any:
        forward_ad_ready()
        with TRANSFORM_LOCK:  # dual levels are process-wide
            return _transforms().jvp(func, primals, tangents, has_aux=has_aux)

    def grad_and_value(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool
    ) -> Callable[..., Any]:
        return _serialised(_transforms().grad_and_value(func, argnums, has_aux=has_aux))

    def grad(
        self, func: Callable[..., Any], argnums: ArgnumsT, *, has_aux: bool
    ) -> Callable[..., Any]:
        return _serialised(_transforms().grad(func, argnums, has_aux=has_aux))

    def jacfwd(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        randomness: str,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        forward_ad_ready()
        if chunk_size is not None:  # no functorch jacfwd has chunk_size: vmap(jvp) in chunks
            if _transforms().native_chunks:  # torch >= 2.0
                return super().jacfwd(
                    func, argnums, has_aux=has_aux, randomness=randomness, chunk_size=chunk_size
                )
            # functorch 1.13: a chunk of one column of a scalar output needs a doubled batch
            vmap = vmap_batch_of_one_guard(self.vmap_primitive(), every=True)
            return jacfwd_from_jvp(
                positional_jvp(self),
                vmap,
                func,
                argnums,
                has_aux,
                randomness,
                chunk_size,
            )
        jacfwd = _transforms().jacfwd
        if _JACREV_NEEDS_TENSOR_ARGS:  # torch 2.0's jacfwd checks every argument's dtype too
            return locked(
                jacrev_tensor_args_only(
                    jacfwd, func, argnums, has_aux=has_aux, randomness=randomness
                )
            )
        return locked(jacfwd(func, argnums, has_aux=has_aux, randomness=randomness))


def _serialised(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run under the functorch lock on torch 1.13; ``fn`` itself elsewhere."""
    if not _SERIALISE:
        return fn

    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return locked
