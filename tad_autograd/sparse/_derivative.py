"""The callable that :func:`~tad_autograd.sparse_jacobian` and ``sparse_hessian`` return.

It holds the pattern, its colouring and the transformed compressed function
(built once, so automatic mode remembers a fallback per operator), and at
each call checks the argument, computes the compressed product, decompresses
it and builds the COO result.  See :mod:`tad_autograd.sparse.api` for the
documented behaviour.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..api.operators import jacfwd
from ..api.transforms import hessian, jacrev
from ..compat._pytree import tree_flatten
from ..compat._torch_info import transforms_active
from ..compat.tensor_kinds import is_batched
from ..dispatch._checks import check_differentiable
from ..dispatch._transformed import transform_name
from ._build import compare_with_dense, coo_result, seed_matrix
from ._decompression import Decompression, direct_plan, substitution_plan
from .colouring import colour_count, colouring_lower_bound
from .patterns import Pattern, describe_shape

__all__ = ["SparseDerivative"]


_UNBATCHABLE = (
    "{name} returns a sparse tensor, which torch's vmap cannot batch; vmap its .values "
    "(dense, vectorised) or vmap it with backend='autograd' (a loop), as automatic mode does"
)


def _batched(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
    """Whether an argument is batched by a ``vmap`` running now."""
    return any(is_batched(leaf) for leaf in tree_flatten((args, kwargs))[0])


class SparseDerivative:
    """The callable that :func:`~tad_autograd.sparse_jacobian` and
    :func:`~tad_autograd.sparse_hessian` return.

    Call it with ``func``'s arguments to get the sparse derivative;
    :meth:`~tad_autograd.sparse.api.SparseDerivative.values` gives its values
    alone, a dense tensor that ``vmap`` batches.

    Attributes
    ----------
    pattern : Pattern
        The pattern in normal form (symmetrised for Hessians).
    mode : str
        ``"forward"`` (``J S``), ``"reverse"`` (``S^T J``) or ``"hessian"`` (``S^T H``).
    kind : str
        The colouring: ``"column"``, ``"row"``, ``"symmetric"`` or ``"star"``.
    colours : torch.Tensor
        The colour of each column (forward, Hessians) or row (reverse): the
        ``colouring=`` given, or the one computed.
    n_colours : int
        How many compressed products a call computes: the largest colour + 1.
    lower_bound : int
        :func:`~tad_autograd.colouring_lower_bound` of the pattern for ``kind``.
    """

    def __init__(
        self,
        name: str,
        func: Callable[..., Any],
        pattern: Pattern,
        argnums: int,
        mode: str,
        kind: str,
        colours: torch.Tensor,
        chunk_size: Optional[int],
        check: bool,
        backend: Optional[str],
        given: bool = False,
    ) -> None:
        self.__wrapped__ = func
        self.__name__ = transform_name(name, func)
        self._name = name
        self.pattern = pattern
        self.mode = mode
        self.kind = kind
        self.colours = colours
        self.n_colours = colour_count(colours)
        self._given = given  # the caller's colouring: its length must fit the call
        self._argnums = argnums
        self._check = check
        self._backend = backend
        self._chunk_size = chunk_size
        index = pattern.rows if mode == "reverse" else pattern.cols
        self._present = torch.unique(index)
        self._plans: Dict[Tuple[int, int], Decompression] = {}
        self._seeds: Dict[Tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        self._local = threading.local()  # the output size a reverse-mode call saw
        if mode == "reverse":
            self._compressed = jacrev(
                self._reduced, argnums, chunk_size=chunk_size, backend=backend
            )
        elif mode == "forward":
            self._compressed = jacfwd(self._pushed, 0, chunk_size=chunk_size, backend=backend)
        else:
            self._gradient = jacrev(self._scalar, argnums, backend=backend)
            self._compressed = jacrev(
                self._reduced, argnums, chunk_size=chunk_size, backend=backend
            )

    @functools.cached_property
    def lower_bound(self) -> int:
        """:func:`~tad_autograd.colouring_lower_bound` of the pattern (computed when first read)."""
        kind = "symmetric" if self.kind in ("symmetric", "star") else self.kind
        return colouring_lower_bound(self.pattern, kind=kind)

    def __repr__(self) -> str:
        return (
            f"<tad_autograd {self.__name__}: {self.pattern.nnz} entries, {self.n_colours} "
            f"{self.kind} colours ({self.mode}), backend={self._backend or 'auto'}>"
        )

    # --------------------------------------------------------------- the compressed functions

    def _seed(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The seed matrix for ``n`` rows in ``like``'s dtype and device.

        Only a seed built outside function transforms (and inference mode) is
        kept: one built inside a transform belongs to it (a grad transform
        wraps the tensors it creates), and another thread must never see it
        while that transform runs.  Calls build the seeds they will need before entering their
        transform, so the compressed function finds them kept.
        """
        key = (n, like.dtype, like.device)
        seed = self._seeds.get(key)
        if seed is None:
            seed = seed_matrix(n, self.colours, self._present, like.dtype, like.device)
            if not (transforms_active() or torch.is_inference_mode_enabled()):
                self._seeds[key] = seed
        return seed

    def _output(self, y: Any) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise NotImplementedError(
                f"{self._name}: func must return one tensor, got {type(y).__name__}; "
                "differentiate one output at a time"
            )
        if not y.is_floating_point():
            raise RuntimeError(
                f"{self._name}: func returned a tensor of dtype {y.dtype}; only floating-point "
                "outputs have derivatives"
            )
        return y

    def _reduced(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``S^T f(x)`` (reverse mode) or ``S^T grad f(x)`` (Hessians): one entry per colour."""
        if self.mode == "hessian":
            y = self._gradient(*args, **kwargs).reshape(-1)
        else:
            y = self._output(self.__wrapped__(*args, **kwargs)).reshape(-1)
            n_in = args[self._argnums].numel()
            self.pattern.check_fits((y.numel(), n_in), "the Jacobian of func")
            self._local.n_out = y.numel()
        reduced: torch.Tensor = y @ self._seed(y.numel(), y)
        return reduced

    def _scalar(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self._output(self.__wrapped__(*args, **kwargs))
        if y.numel() != 1:
            raise RuntimeError(
                f"sparse_hessian: func must return a scalar (one element), got shape "
                f"{describe_shape(y.shape)}"
            )
        return y

    def _pushed(self, c: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``f(x + S c)``: its Jacobian at ``c = 0`` is ``J S``."""
        i = self._argnums % len(args)
        x = args[i]
        shifted = x + (self._seed(x.numel(), x) @ c).reshape(x.shape)
        return self._output(self.__wrapped__(*args[:i], shifted, *args[i + 1 :], **kwargs))

    # --------------------------------------------------------------- a call

    def _plan(self, shape: Tuple[int, int]) -> Decompression:
        plan = self._plans.get(shape)
        if plan is None:
            colours = self.colours.tolist()
            size = shape[0] if self.mode == "reverse" else shape[1]
            if self._given and len(colours) != size:
                what = "row" if self.mode == "reverse" else "column"
                raise ValueError(
                    f"{self._name}: colouring has {len(colours)} colours, but the "
                    f"{'Hessian' if self.mode == 'hessian' else 'Jacobian'} of func has "
                    f"{size} {what}s (shape {describe_shape(shape)}): one colour per {what}"
                )
            sized = Pattern(self.pattern.rows, self.pattern.cols, shape)
            if self.kind == "symmetric":
                plan = substitution_plan(sized, colours)
            elif self.mode == "forward":
                plan = direct_plan(sized, colours, "column", "colour_minor")
            else:
                kind = "row" if self.mode == "reverse" else self.kind
                plan = direct_plan(sized, colours, kind, "colour_major")
            self._plans[shape] = plan
        return plan

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if _batched(args, kwargs):
            raise NotImplementedError(_UNBATCHABLE.format(name=self._name))
        values, shape = self._values(args, kwargs)
        result = coo_result(self.pattern, values, shape)
        if self._check:
            self._compare(result, args, kwargs, shape)
        return result

    def values(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The derivative's values alone: ``self(*args, **kwargs).values()``, a dense tensor.

        Shape ``(nnz,)``, in the order of the result's ``indices()`` (the
        pattern's entries sorted row by row).  Unlike the sparse result it can
        be batched: ``vmap(d.values)`` computes a batch of values, vectorised
        where the backend transforms; every sample's values sit at the same
        ``indices()``.

        Examples
        --------
        >>> import torch
        >>> import tad_autograd as ta
        >>> band = (torch.arange(4)[:, None] - torch.arange(4)).abs() <= 1
        >>> jac = ta.sparse_jacobian(torch.sin, band)
        >>> xs = torch.linspace(0, 1, 8, dtype=torch.float64).reshape(2, 4)
        >>> values = ta.vmap(jac.values)(xs)                        # (batch, nnz)
        >>> values.shape, torch.equal(values[1], jac(xs[1]).values())
        (torch.Size([2, 10]), True)
        """
        if self._check and _batched(args, kwargs):
            raise NotImplementedError(
                f"{self._name}(check=True).values cannot be batched: the comparison with the "
                "dense derivative reads its values; vmap an operator built without check=True"
            )
        values, shape = self._values(args, kwargs)
        if self._check:
            self._compare(coo_result(self.pattern, values, shape), args, kwargs, shape)
        return values

    def _values(
        self, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """The values in the pattern's order and the derivative's flat shape."""
        argnums = self._argnums
        check_differentiable(args, argnums, self._name)
        x = args[argnums]
        if not isinstance(x, torch.Tensor):
            raise NotImplementedError(
                f"{self._name}: the argument at argnums={argnums} must be one tensor, got "
                f"{type(x).__name__}; pass its leaves one at a time"
            )
        n_in = x.numel()
        if self.mode == "hessian":
            self.pattern.check_fits((n_in, n_in), "the Hessian of func")
        if self.n_colours == 0:  # an empty pattern: nothing to differentiate (check=True: verify)
            return self._empty(args, kwargs, n_in)
        if self.mode == "forward":
            self._seed(n_in, x)  # built here, outside the transform, and kept
            c0 = torch.zeros(self.n_colours, dtype=x.dtype, device=x.device)
            out = self._compressed(c0, *args, **kwargs)
            n_out = out.numel() // self.n_colours
            self.pattern.check_fits((n_out, n_in), "the Jacobian of func")
            compressed = out.reshape(n_out, self.n_colours)
        else:
            if self.mode == "hessian":
                self._seed(n_in, x)
            compressed = self._compressed(*args, **kwargs).reshape(self.n_colours, n_in)
            n_out = n_in if self.mode == "hessian" else self._local.n_out
            self._seed(n_out, compressed)  # the next call's, kept (a first call's was not)
        shape = (n_out, n_in)
        return self._plan(shape)(compressed), shape

    def _empty(
        self, args: Tuple[Any, ...], kwargs: Dict[str, Any], n_in: int
    ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = args[self._argnums]
        if self.mode == "hessian":
            n_out = n_in
        else:
            with torch.no_grad():
                n_out = self._output(self.__wrapped__(*args, **kwargs)).numel()
            self.pattern.check_fits((n_out, n_in), "the Jacobian of func")
        return torch.zeros(0, dtype=x.dtype, device=x.device), (n_out, n_in)

    def _compare(
        self,
        result: torch.Tensor,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        shape: Tuple[int, int],
    ) -> None:
        size, name = self._chunk_size, self._backend
        if self.mode == "hessian":
            dense = hessian(self.__wrapped__, self._argnums, chunk_size=size, backend=name)
            what = "Hessian"
        else:
            dense = jacrev(self.__wrapped__, self._argnums, chunk_size=size, backend=name)
            what = "Jacobian"
        full = dense(*args, **kwargs).reshape(shape)
        compare_with_dense(result, full, self.pattern, self._name, what)
