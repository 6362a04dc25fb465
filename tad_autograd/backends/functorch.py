"""The ``"functorch"`` backend: the ``functorch`` package.

``functorch`` was a standalone package for torch 1.11/1.12, is bundled with
torch 1.13 (the only function transforms there), and is a deprecated alias of
:mod:`torch.func` from torch 2.0 on.  There, its public functions emit a
``FutureWarning`` before calling the :mod:`torch._functorch` implementation;
this backend calls that implementation directly, so choosing it never shows
users a deprecation warning they did not cause.  It is never chosen
automatically on torch >= 2.0.

The backend is the ``"func"`` backend over another library: on torch >= 2.0
that implementation, on torch 1.13 the ``functorch`` package with its shims
in place -- ``chunk_size`` supplied (:mod:`tad_autograd.backends._chunking`),
the batch-of-one bug guarded, calls serialised across threads.  No functorch
release has ``linearize`` or ``hvp``: they are derived from ``jvp`` and
``grad_and_value`` (:mod:`tad_autograd.backends._derived`), as is ``jacfwd``
with a ``chunk_size``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Optional, Tuple

from ..compat._locks import TRANSFORM_LOCK
from ..compat._torch_info import TORCH_VERSION, Version, cache, module_exists
from ._chunking import checked_outputs, chunked_jacrev, chunked_vmap, vmap_batch_of_one_guard
from .base import ArgnumsT, Availability, Fn, InDimsT, OutDimsT
from .func import FuncBackend

__all__ = ["FunctorchBackend"]

_DEPRECATED_FROM = Version("2.0")
#: functorch 1.13 keeps its transform levels process-wide, not per thread: two threads
#: transforming at once trip "INTERNAL ASSERT FAILED ... DynamicLayer.cpp", so calls
#: are serialised there (re-entrant, for nested transforms in one thread).
_SERIALISE = TORCH_VERSION < _DEPRECATED_FROM
_LOCK = TRANSFORM_LOCK  # shared with forward mode: one lock, no lock-order deadlock


@cache
def _transforms() -> Any:
    """functorch's transforms with :mod:`torch.func`'s signatures (see the module docstring)."""
    if TORCH_VERSION >= _DEPRECATED_FROM:
        # What functorch's functions call after their FutureWarning.
        from torch._functorch import eager_transforms

        try:
            from torch._functorch.apis import grad, grad_and_value, vmap
        except ImportError:  # torch 2.0: all in eager_transforms; vmap is torch.vmap's
            from torch._functorch.eager_transforms import grad, grad_and_value  # type: ignore[attr-defined, no-redef, unused-ignore]
            from torch._functorch.vmap import vmap  # type: ignore[attr-defined, no-redef, unused-ignore]
        return SimpleNamespace(
            jacrev=eager_transforms.jacrev,
            vjp=eager_transforms.vjp,
            jvp=eager_transforms.jvp,
            jacfwd=eager_transforms.jacfwd,
            grad=grad,
            grad_and_value=grad_and_value,
            vmap=vmap,
            native_chunks=True,
        )
    import functorch

    return _shimmed(functorch)


def _shimmed(functorch: Any) -> SimpleNamespace:
    """functorch 1.13 with ``chunk_size``, its batch-of-one bug guarded, serialised."""
    # a chunk of one sample (any batch the library makes) needs a doubled batch
    vmap = vmap_batch_of_one_guard(functorch.vmap, every=True)

    def batched(
        func: Fn,
        in_dims: InDimsT = 0,
        out_dims: OutDimsT = 0,
        randomness: str = "error",
        *,
        chunk_size: Optional[int] = None,
    ) -> Fn:
        if chunk_size is None:
            return _serialised(vmap(func, in_dims, out_dims, randomness))
        return _serialised(chunked_vmap(vmap, func, in_dims, out_dims, randomness, chunk_size))

    def jacrev(
        func: Fn, argnums: ArgnumsT = 0, *, has_aux: bool = False, chunk_size: Optional[int] = None
    ) -> Fn:
        func = checked_outputs(func, has_aux, "jacrev")  # say what outputs jacrev needs
        if chunk_size is None:
            return _serialised(functorch.jacrev(func, argnums, has_aux=has_aux))
        return _serialised(chunked_jacrev(functorch.vjp, vmap, func, argnums, has_aux, chunk_size))

    def serialised(transform: Callable[..., Fn]) -> Fn:
        return lambda *args, **kwargs: _serialised(transform(*args, **kwargs))

    return SimpleNamespace(
        jacrev=jacrev,
        vjp=_serialised(functorch.vjp),
        jvp=functorch.jvp,
        jacfwd=functorch.jacfwd,
        grad=serialised(functorch.grad),
        grad_and_value=serialised(functorch.grad_and_value),
        vmap=batched,
        native_chunks=False,
    )


class FunctorchBackend(FuncBackend):
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
    aliases: Tuple[str, ...] = ()
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

    def transforms(self) -> Any:
        return _transforms()


def _serialised(fn: Fn) -> Fn:
    """``fn`` run under the functorch lock on torch 1.13; ``fn`` itself elsewhere."""
    if not _SERIALISE:
        return fn

    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return locked
