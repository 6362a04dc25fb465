"""Independent references and operator namespaces for the differential fuzzer.

Three namespaces expose the same ``jacrev`` / ``hessian`` / ``vmap`` calls so
that one operator table (:func:`build_operator`) runs a
fuzz case (``FuzzCase``) on each:

* ``REFERENCE`` - no ``tad_autograd`` backend at all: ``jacrev`` is a row
  loop of ``torch.autograd.grad`` on the eager function (``create_graph=True``,
  so it composes), ``hessian`` is ``jacrev(jacrev)``, ``vmap`` a Python loop;
* :func:`direct_ops` - ``torch.func`` (torch >= 2.0) or ``functorch`` (1.13),
  called directly;
* :class:`LibraryOps` - ``tad_autograd`` with one backend (``None``: automatic).

Examples
--------
>>> import torch
>>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
>>> REFERENCE.jacrev(lambda x: x.sin().sum(), 0)(x).detach()
tensor([ 0.5403, -0.4161], dtype=torch.float64)
>>> build_operator(REFERENCE, "hessian", lambda x: (x ** 3).sum(), argnums=0)(x).detach()
tensor([[ 6.,  0.],
        [ 0., 12.]], dtype=torch.float64)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..compat._pytree import tree_flatten, tree_unflatten
from .reference import reference_vmap

__all__ = [
    "REFERENCE",
    "ReferenceOps",
    "LibraryOps",
    "direct_ops",
    "build_operator",
    "ref_jacrev",
    "ref_rows",
    "transform_backends",
    "loop_backends",
]


def _positions(argnums: Any, n: int) -> List[int]:
    single = isinstance(argnums, int)
    return [a % n for a in ((argnums,) if single else argnums)]


def ref_rows(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> List[Any]:
    """Per output, d output / d input for each input (``out.shape + in.shape``): one
    ``torch.autograd.grad`` per output element (``create_graph=True``, the graph kept).

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    >>> ref_rows([x * 3], [x])[0][0].detach()
    tensor([[3., 0.],
            [0., 3.]], dtype=torch.float64)
    """
    result = []
    with torch.enable_grad():
        for o in outputs:
            flat_o = o.reshape(-1)
            per_in: List[List[torch.Tensor]] = [[] for _ in inputs]
            for k in range(flat_o.numel()):
                grads: Any = [None] * len(inputs)
                if flat_o.requires_grad:
                    grads = torch.autograd.grad(
                        flat_o[k], inputs, retain_graph=True, create_graph=True, allow_unused=True
                    )
                for i, (g, x) in enumerate(zip(grads, inputs)):
                    per_in[i].append(torch.zeros_like(x) if g is None else g)
            result.append(
                [
                    torch.stack(rows).reshape(o.shape + x.shape)
                    if rows
                    else torch.zeros(o.shape + x.shape, dtype=x.dtype, device=x.device)
                    for rows, x in zip(per_in, inputs)
                ]
            )
    return result


def ref_jacrev(func: Callable[..., Any], argnums: Any = 0, *, has_aux: bool = False) -> Any:
    """``jacrev`` as a row loop of ``torch.autograd.grad`` (``create_graph=True``).

    Returns the structure ``torch.func.jacrev`` returns: output pytree, then the
    argnums tuple (when a tuple), then the input pytree.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, dtype=torch.float64)
    >>> ref_jacrev(lambda a, b: {"y": a * b}, (0, 1))(x, 2 * x)["y"][1].detach()
    tensor([[1., 0.],
            [0., 1.]], dtype=torch.float64)
    """

    def wrapper(*args: Any) -> Any:
        positions = _positions(argnums, len(args))
        with torch.enable_grad():
            new_args = list(args)
            specs, inputs, counts = [], [], []
            for p in positions:
                leaves, spec = tree_flatten(args[p])
                fresh = [
                    x.view_as(x) if x.requires_grad else x.detach().requires_grad_() for x in leaves
                ]
                new_args[p] = tree_unflatten(fresh, spec)
                specs.append(spec)
                counts.append(len(fresh))
                inputs.extend(fresh)
            out = func(*new_args)
            aux = None
            if has_aux:
                out, aux = out
            out_leaves, out_spec = tree_flatten(out)
            rows_per_out = []
            for blocks in ref_rows(out_leaves, inputs):
                per_arg, k = [], 0
                for spec, c in zip(specs, counts):
                    per_arg.append(tree_unflatten(blocks[k : k + c], spec))
                    k += c
                rows_per_out.append(per_arg[0] if isinstance(argnums, int) else tuple(per_arg))
            jac = tree_unflatten(rows_per_out, out_spec)
        return (jac, aux) if has_aux else jac

    return wrapper


class ReferenceOps:
    """Operator namespace built on :func:`ref_jacrev` and a Python-loop ``vmap``."""

    name = "reference"

    def jacrev(self, f: Callable[..., Any], argnums: Any, has_aux: bool = False) -> Any:
        return ref_jacrev(f, argnums, has_aux=has_aux)

    def hessian(self, f: Callable[..., Any], argnums: Any) -> Any:
        return ref_jacrev(ref_jacrev(f, argnums), argnums)

    def vmap(self, f: Callable[..., Any], in_dims: Any, out_dims: Any = 0) -> Any:
        return reference_vmap(f, in_dims=in_dims, out_dims=out_dims)


REFERENCE = ReferenceOps()


class _DirectOps:
    def __init__(self, mod: Any, name: str) -> None:
        self.mod = mod
        self.name = name

    def jacrev(self, f: Callable[..., Any], argnums: Any, has_aux: bool = False) -> Any:
        return self.mod.jacrev(f, argnums, has_aux=has_aux)

    def hessian(self, f: Callable[..., Any], argnums: Any) -> Any:
        # reverse-over-reverse, as the library's hessian; torch.func.hessian is
        # forward-over-reverse, whose blocks carry graphs differently
        return self.mod.jacrev(self.mod.jacrev(f, argnums), argnums)

    def vmap(self, f: Callable[..., Any], in_dims: Any, out_dims: Any = 0) -> Any:
        if _moves_batch_dim(out_dims):
            # torch (1.13 to 2.13 at least) mishandles a non-zero out_dims for an output that
            # does not depend on the batch: garbage, or a segmentation fault that would take
            # the test process down (jacrev(vmap(f, out_dims=-2)) on 2.13); torch.func is no
            # reference there, the row loop is
            def unsupported(*args: Any, **kwargs: Any) -> Any:
                raise DirectUnsupported(f"torch.func.vmap with out_dims={out_dims!r}")

            return unsupported
        return self.mod.vmap(f, in_dims, out_dims)


class DirectUnsupported(RuntimeError):
    """A call torch.func is known to get wrong or crash on: no torch.func reference for it."""


def _moves_batch_dim(out_dims: Any) -> bool:
    """Whether ``out_dims`` puts a batch dimension anywhere but first."""
    if isinstance(out_dims, (tuple, list)):
        return any(_moves_batch_dim(d) for d in out_dims)
    return isinstance(out_dims, int) and not isinstance(out_dims, bool) and out_dims != 0


@functools.cache
def direct_ops() -> Optional[_DirectOps]:
    """``torch.func`` (torch >= 2.0) or ``functorch`` (torch 1.13) as a namespace.

    Examples
    --------
    >>> direct_ops().name in ("torch.func", "functorch")
    True
    """
    try:
        import torch.func as tf

        return _DirectOps(tf, "torch.func")
    except ImportError:  # torch 1.13
        pass
    try:
        import functorch
    except ImportError:  # pragma: no cover
        return None
    return _DirectOps(functorch, "functorch")


class LibraryOps:
    """``tad_autograd`` with one ``backend`` (``None`` = automatic) and ``chunk_size``."""

    def __init__(self, backend: Optional[str], chunk_size: Optional[int] = None) -> None:
        self.backend = backend
        self.chunk_size = chunk_size
        self.name = f"tad_autograd(backend={backend!r})"

    def jacrev(self, f: Callable[..., Any], argnums: Any, has_aux: bool = False) -> Any:
        import tad_autograd as ta

        return ta.jacrev(
            f, argnums, has_aux=has_aux, chunk_size=self.chunk_size, backend=self.backend
        )

    def hessian(self, f: Callable[..., Any], argnums: Any) -> Any:
        import tad_autograd as ta

        return ta.hessian(f, argnums, chunk_size=self.chunk_size, backend=self.backend)

    def vmap(self, f: Callable[..., Any], in_dims: Any, out_dims: Any = 0) -> Any:
        import tad_autograd as ta

        return ta.vmap(f, in_dims, out_dims, chunk_size=self.chunk_size, backend=self.backend)


def build_operator(
    ns: Any,
    op: str,
    f: Callable[..., Any],
    *,
    argnums: Any = 0,
    outer_argnums: Any = 0,
    in_dims: Any = 0,
    out_dims: Any = 0,
) -> Callable[..., Any]:
    """The callable operator ``op`` of ``f`` in namespace ``ns``.

    ``op`` is one of ``"jacrev"``, ``"jacrev_aux"``, ``"hessian"``,
    ``"jacrev_jacrev"``, ``"vmap"``, ``"vmap_jacrev"``, ``"jacrev_vmap"`` and
    ``"vmap_hessian"`` (the outer transform first).

    For ``"jacrev_aux"``, ``f`` must already return ``(output, aux)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(2, 3, dtype=torch.float64)
    >>> build_operator(REFERENCE, "vmap_jacrev", torch.sin)(x).shape
    torch.Size([2, 3, 3])
    """
    if op == "jacrev":
        return ns.jacrev(f, argnums)  # type: ignore[no-any-return]
    if op == "jacrev_aux":
        return ns.jacrev(f, argnums, has_aux=True)  # type: ignore[no-any-return]
    if op == "hessian":
        return ns.hessian(f, argnums)  # type: ignore[no-any-return]
    if op == "jacrev_jacrev":
        return ns.jacrev(ns.jacrev(f, argnums), outer_argnums)  # type: ignore[no-any-return]
    if op == "vmap":
        return ns.vmap(f, in_dims, out_dims)  # type: ignore[no-any-return]
    if op == "vmap_jacrev":
        return ns.vmap(ns.jacrev(f, argnums), in_dims)  # type: ignore[no-any-return]
    if op == "jacrev_vmap":
        return ns.jacrev(ns.vmap(f, in_dims, out_dims), argnums)  # type: ignore[no-any-return]
    if op == "vmap_hessian":
        return ns.vmap(ns.hessian(f, argnums), in_dims)  # type: ignore[no-any-return]
    raise ValueError(f"unknown operator {op!r}")


def _available_backends(transforms: bool) -> Tuple[str, ...]:
    """The available backends that are (``transforms``) or are not function transforms."""
    import tad_autograd as ta

    from ..dispatch._registry import REGISTRY

    return tuple(
        n
        for n in ta.available_backends()
        if getattr(REGISTRY.get(n), "is_transform", True) == transforms
    )


def transform_backends() -> Tuple[str, ...]:
    """Available backends built on function transforms (``is_transform``).

    Examples
    --------
    >>> "autograd" in transform_backends()
    False
    """
    return _available_backends(True)


def loop_backends() -> Tuple[str, ...]:
    """Available backends that are not function transforms: :func:`transform_backends`'s
    complement among :func:`tad_autograd.available_backends`.

    Examples
    --------
    >>> import tad_autograd as ta
    >>> sorted(loop_backends() + transform_backends()) == sorted(ta.available_backends())
    True
    """
    return _available_backends(False)
