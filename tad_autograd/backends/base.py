"""The protocol every backend implements.

A backend is a small object: a ``name``, whether it can run on the installed
torch (and if not, why and what would fix it), which device types it
supports, and its operators, each with the exact semantics of its
:mod:`torch.func` namesake.  Every backend supplies the primitives -- ``vjp``,
``jvp``, ``vmap`` -- and ``jacrev`` and ``grad_and_value``; the other operators
(``grad``, ``jacfwd``, ``linearize``, ``hvp``) are derived from those here,
once for all backends (:mod:`tad_autograd.backends._derived`), and a backend overrides
one where its library has it natively.  ``hessian`` and the public argument
handling live in :mod:`tad_autograd.dispatch._transformed`.

Arguments reach a backend already checked where the check costs nothing per
call (``argnums`` type, ``chunk_size``, ``randomness``); the per-call checks
(``argnums`` range, ``in_dims`` structure, dtypes) are the backend's, with
the exception types :mod:`torch.func` uses.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

from ..compat._torch_info import TORCH_VERSION, Version, module_exists
from ..compat.devices import transforms_supported
from ._derived import grad_from_grad_and_value, hvp_from_jvp, jacfwd_from_jvp, linearize_from_jvp

__all__ = ["Availability", "Backend", "ArgnumsT", "Fn", "InDimsT", "OutDimsT"]

#: A function, as the operators take and return them.
Fn = Callable[..., Any]
ArgnumsT = Union[int, Tuple[int, ...]]
InDimsT = Any
OutDimsT = Any


class Availability(NamedTuple):
    """Whether a backend can run, and if not, why and what would fix it.

    An immutable named tuple.

    Attributes
    ----------
    ok : bool
        The backend can run here.
    reason : str
        If not, why (empty when it can).
    fix : str
        If not, what would make it run (empty when it can).

    Examples
    --------
    >>> Availability(False, "needs torch >= 2.0", "pip install 'torch>=2.0'")
    Availability(ok=False, reason='needs torch >= 2.0', fix="pip install 'torch>=2.0'")
    """

    ok: bool
    reason: str = ""
    fix: str = ""


class Backend:
    """Base class of the backends.

    Subclasses set the attributes ``name`` and ``is_transform`` and implement
    :meth:`availability`, :meth:`jacrev` and :meth:`vmap`.

    Attributes
    ----------
    name : str
        The name users pass as ``backend=``.
    aliases : tuple of str
        Other names accepted for this backend.
    is_transform : bool
        ``True`` for backends built on function transforms (``fjacrev`` and
        ``fvmap`` accept only these); ``False`` for the autograd loop.

    Examples
    --------
    >>> from tad_autograd.backends.autograd import AutogradBackend
    >>> AutogradBackend().supports_device("cpu")
    True
    """

    name: str = ""
    aliases: Tuple[str, ...] = ()
    is_transform: bool = True

    def availability(
        self,
        torch_version: Version = TORCH_VERSION,
        module_exists: Callable[[str], bool] = module_exists,
    ) -> Availability:
        """Tell whether this backend runs with ``torch_version``.

        Parameters
        ----------
        torch_version : Version
            The torch release to judge; the installed one by default (a
            ``Version`` from ``tad_autograd.compat._torch_info``).
        module_exists : callable
            ``module_exists(name) -> bool``; lets tests pretend a package is
            (not) installed.

        Returns
        -------
        Availability
        """
        return Availability(True)

    def automatic_ok(self, torch_version: Version = TORCH_VERSION) -> Tuple[bool, str]:
        """Whether automatic mode may choose this backend, and if not, why."""
        return True, ""

    def vmap_primitive(self) -> Optional[Fn]:
        """The transform library's own ``vmap(func, in_dims=0, ...)``, for internal batching.

        ``None`` for backends without function transforms.  The strategies
        batch backward passes with it (``tad_autograd.dispatch._automatic``).
        """
        return None

    def supports_device(self, device_type: str) -> bool:
        """Tell whether this backend handles tensors on ``device_type``.

        Transform backends consult the device table of
        :mod:`tad_autograd.compat.devices`; the autograd loop runs everywhere.
        """
        return (not self.is_transform) or transforms_supported(device_type)

    def jacrev(
        self, func: Fn, argnums: ArgnumsT, *, has_aux: bool, chunk_size: Optional[int]
    ) -> Fn:
        """Return ``func``'s reverse-mode Jacobian function."""
        raise NotImplementedError

    def vmap(
        self,
        func: Fn,
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Fn:
        """Return ``func`` vectorised over the dimensions ``in_dims``."""
        raise NotImplementedError

    # -- primitives and operators with torch.func's semantics ------------------------------

    def vjp(self, func: Fn, primals: Tuple[Any, ...], *, has_aux: bool) -> Any:
        """``torch.func.vjp(func, *primals, has_aux=has_aux)``: ``(output, vjp_fn[, aux])``."""
        raise NotImplementedError

    def jvp(
        self, func: Fn, primals: Tuple[Any, ...], tangents: Tuple[Any, ...], *, has_aux: bool
    ) -> Any:
        """``torch.func.jvp(func, primals, tangents, has_aux=has_aux)``."""
        raise NotImplementedError

    def grad_and_value(self, func: Fn, argnums: ArgnumsT, *, has_aux: bool) -> Fn:
        """``torch.func.grad_and_value(func, argnums, has_aux)``."""
        raise NotImplementedError

    def grad(self, func: Fn, argnums: ArgnumsT, *, has_aux: bool) -> Fn:
        """``torch.func.grad(func, argnums, has_aux)``; derived from :meth:`grad_and_value`."""
        return grad_from_grad_and_value(
            self.grad_and_value(func, argnums, has_aux=has_aux), has_aux
        )

    def jacfwd(
        self,
        func: Fn,
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        randomness: str,
        chunk_size: Optional[int],
    ) -> Fn:
        """``torch.func.jacfwd``, with ``chunk_size``; derived: ``vmap`` of :meth:`jvp`."""
        vmap = self.vmap_primitive()
        if vmap is None:
            raise NotImplementedError(f"{self.name}: jacfwd needs a vmap or its own jacfwd")
        return jacfwd_from_jvp(
            positional_jvp(self), vmap, func, argnums, has_aux, randomness, chunk_size
        )

    def linearize(self, func: Fn, primals: Tuple[Any, ...]) -> Tuple[Any, Fn]:
        """``torch.func.linearize(func, *primals)``; derived: ``vmap`` of :meth:`jvp`, once."""
        vmap = self.vmap_primitive()
        if vmap is None:
            raise NotImplementedError(f"{self.name}: linearize needs a vmap or its own linearize")
        return linearize_from_jvp(positional_jvp(self), vmap, func, primals)

    def hvp(self, func: Fn, primals: Tuple[Any, ...], tangents: Tuple[Any, ...]) -> Tuple[Any, Any]:
        """``(func(*primals), H @ tangents)``; derived: forward over reverse."""

        def grad_and_value(f: Fn, argnums: ArgnumsT) -> Fn:
            return self.grad_and_value(f, argnums, has_aux=False)

        return hvp_from_jvp(positional_jvp(self), grad_and_value, func, primals, tangents)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def positional_jvp(backend: Backend) -> Fn:
    """``backend.jvp`` with ``has_aux`` also positional, as the derived operators call it.

    Examples
    --------
    >>> import torch
    >>> from tad_autograd.backends.autograd import AutogradBackend
    >>> positional_jvp(AutogradBackend())(torch.sin, (torch.zeros(1),), (torch.ones(1),))
    (tensor([0.]), tensor([1.]))
    """

    def jvp(f: Fn, p: Any, t: Any, has_aux: bool = False) -> Any:
        return backend.jvp(f, p, t, has_aux=has_aux)

    return jvp
