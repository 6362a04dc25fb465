"""The derivative products in the differential fuzzer: ``grad``, ``vjp``, ``jvp`` and friends.

:data:`PRODUCT_OPERATORS` are the operators with :mod:`torch.func`'s
signatures beyond ``jacrev``/``hessian``/``vmap``.  :func:`build_product`
turns one of them into a callable of the program's arguments in one of the
three namespaces of :mod:`~tad_autograd.testing.operators`:

* the reference: the row loop of ``torch.autograd.grad`` on the eager function
  (:func:`~tad_autograd.testing.operators.ref_jacrev`), contracted with
  the tangents (forward mode) or cotangents (reverse mode) in float64; the
  Hessian of ``hvp`` is the row loop of the row loop;
* ``torch.func`` (``functorch`` on 1.13) called directly: ``jacobian`` is its
  ``jacfwd`` or ``jacrev`` (``mode="auto"``: reverse on the first call, then
  forward where the inputs have fewer elements than the outputs and it runs),
  ``hvp`` is ``jvp`` of ``grad_and_value``, and ``linearize`` is ``jvp``;
* ``tad_autograd`` with one backend (``None``: automatic).

How each operator is called (``f`` the program, ``p`` the arguments at
``argnums``, bound into ``g(*p)``; ``t`` tangents shaped like ``p``; ``c``
cotangents shaped like ``f``'s output; ``s = sum((leaf * c).sum())`` over the
output leaves; ``aux = {"aux": s_or_last_leaf.sum() * w}`` with a captured
``w`` that requires grad):

* ``grad`` / ``grad_and_value``: ``op(s, argnums, has_aux=...)(*args)``;
* ``vjp``: ``(out, vjp_fn(c)[, aux])`` of ``vjp(g, *p, has_aux=...)``;
* ``jvp``: ``jvp(g, p, t, has_aux=...)``; ``linearize``: ``(out, jvp_fn(*t))``;
* ``jacfwd``: ``jacfwd(f, argnums, has_aux=..., randomness=...)(*args)``;
* ``jacobian``: two calls of one ``jacobian(f, argnums, mode=..., has_aux=...)``
  (in ``mode="auto"`` the first runs reverse mode, the second may run forward);
* ``hvp``: ``hvp(s o g, p, t)``;
* ``jacfwd_jacrev``: ``jacfwd(jacrev(f, argnums), outer_argnums)(*args)``
  (forward over reverse; the reference is the row loop of the row loop).

Examples
--------
>>> import torch
>>> from tad_autograd.testing.operators import REFERENCE
>>> x = torch.tensor([1.0, 2.0], dtype=torch.float64)
>>> t = (torch.tensor([1.0, 0.0], dtype=torch.float64),)
>>> out, jv = build_product(REFERENCE, "jvp", lambda x: x ** 3, argnums=0, tangents=t)(x)
>>> jv.detach()
tensor([3., 0.], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ...backends._operators import OPERATORS
from ...compat._pytree import tree_flatten, tree_unflatten
from ..operators import LibraryOps, ReferenceOps, ref_jacrev
from .support import argnum_positions

__all__ = [
    "PRODUCT_OPERATORS",
    "SCALAR_OPERATORS",
    "FORWARD_OPERATORS",
    "build_product",
    "products_of",
]

PRODUCT_OPERATORS = (
    "grad",
    "grad_and_value",
    "vjp",
    "jvp",
    "linearize",
    "jacfwd",
    "jacobian",
    "hvp",
    "jacfwd_jacrev",
)
#: Operators of the scalar ``s`` (the output leaves weighted by the cotangents, summed).
SCALAR_OPERATORS = frozenset({"grad", "grad_and_value", "hvp"})
#: Operators that take tangents: those evaluated at a point in forward mode.
FORWARD_OPERATORS = frozenset(op.name for op in OPERATORS if op.at_once and op.mode == "forward")

Fn = Callable[..., Any]


def _bound(func: Fn, args: Tuple[Any, ...], positions: Sequence[int]) -> Fn:
    """``g(*primals)``: ``func`` with the arguments at ``positions`` replaced, the rest bound."""

    def g(*primals: Any) -> Any:
        new_args = list(args)
        for p, v in zip(positions, primals):
            new_args[p] = v
        return func(*new_args)

    return g


def scalarised(func: Fn, cotangents: Any) -> Fn:
    """``s(*args) = sum over output leaves of (leaf * cotangent).sum()``."""
    weights = tree_flatten(cotangents)[0]

    def s(*args: Any) -> Any:
        leaves = tree_flatten(func(*args))[0]
        return sum((o * c).sum() for o, c in zip(leaves, weights))

    return s


def with_aux(func: Fn, w: torch.Tensor) -> Fn:
    """``func`` returning ``(output, {"aux": last output leaf summed, times w})``."""

    def f(*args: Any) -> Any:
        out = func(*args)
        return out, {"aux": tree_flatten(out)[0][-1].sum() * w}

    return f


# -- the reference: row loops of torch.autograd.grad, contracted in float64 ---------------


def _matrix(block: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
    return block.detach().to(torch.float64).reshape(n_out, n_in)


def _jvp_leaves(blocks: Any, outs: Sequence[Any], ins: Sequence[Any], tangents: Any) -> Any:
    t_leaves = tree_flatten(tangents)[0]
    result = []
    for o, row in zip(outs, blocks):
        acc = torch.zeros(o.numel(), dtype=torch.float64, device=o.device)
        for x, t, b in zip(ins, t_leaves, row):
            acc = acc + _matrix(b, o.numel(), x.numel()) @ t.detach().to(torch.float64).reshape(-1)
        result.append(acc.to(o.dtype).reshape(o.shape))
    return result


def _row_loop(func: Fn, primals: Tuple[Any, ...], has_aux: bool) -> Any:
    """The output, aux, output leaves and spec, input leaves and Jacobian blocks [out][in]."""
    box: List[Any] = []

    def g(*a: Any) -> Any:
        r = func(*a)
        box.append(r)
        return r

    jac = ref_jacrev(g, tuple(range(len(primals))), has_aux=has_aux)(*primals)
    out, aux = box[0] if has_aux else (box[0], None)
    if has_aux:
        jac = jac[0]
    out_leaves, out_spec = tree_flatten(out)
    in_leaves = tree_flatten(primals)[0]
    flat, n = tree_flatten(jac)[0], len(in_leaves)
    blocks = [flat[k * n : (k + 1) * n] for k in range(len(out_leaves))]
    return out, aux, out_leaves, out_spec, in_leaves, blocks


class _ReferenceProducts:
    name = "reference"

    def grad(self, f: Fn, argnums: Any, has_aux: bool) -> Any:
        return ref_jacrev(f, argnums, has_aux=has_aux)

    def grad_and_value(self, f: Fn, argnums: Any, has_aux: bool) -> Any:
        def fn(*args: Any) -> Any:
            box: List[Any] = []

            def g(*a: Any) -> Any:
                box.append(f(*a))
                return box[-1]

            result = ref_jacrev(g, argnums, has_aux=has_aux)(*args)
            return (result[0], box[0]) if has_aux else (result, box[0])

        return fn

    def vjp(self, f: Fn, *primals: Any, has_aux: bool = False) -> Any:
        out, aux, outs, _, ins, blocks = _row_loop(f, primals, has_aux)

        def vjp_fn(cotangents: Any) -> Any:
            c_leaves = tree_flatten(cotangents)[0]
            grads = []
            for i, x in enumerate(ins):
                acc = torch.zeros(x.numel(), dtype=torch.float64, device=x.device)
                for o, c, row in zip(outs, c_leaves, blocks):
                    c64 = c.detach().to(torch.float64).reshape(-1)
                    acc = acc + c64 @ _matrix(row[i], o.numel(), x.numel())
                grads.append(acc.to(x.dtype).reshape(x.shape))
            return tree_unflatten(grads, tree_flatten(primals)[1])

        return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)

    def jvp(self, f: Fn, primals: Any, tangents: Any, has_aux: bool = False) -> Any:
        out, aux, outs, spec, ins, blocks = _row_loop(f, tuple(primals), has_aux)
        jv = tree_unflatten(_jvp_leaves(blocks, outs, ins, tangents), spec)
        return (out, jv, aux) if has_aux else (out, jv)

    def linearize(self, f: Fn, *primals: Any) -> Any:
        out, _, outs, spec, ins, blocks = _row_loop(f, primals, False)
        return out, lambda *t: tree_unflatten(_jvp_leaves(blocks, outs, ins, t), spec)

    def jacfwd(self, f: Fn, argnums: Any, has_aux: bool, randomness: str) -> Any:
        return ref_jacrev(f, argnums, has_aux=has_aux)

    def jacobian(self, f: Fn, argnums: Any, mode: str, has_aux: bool) -> Any:
        return ref_jacrev(f, argnums, has_aux=has_aux)

    def hvp(self, f: Fn, primals: Any, tangents: Any) -> Any:
        box: List[Any] = []

        def g(*a: Any) -> Any:
            box.append(f(*a))
            return box[-1]

        everything = tuple(range(len(primals)))
        hessian = ref_jacrev(ref_jacrev(g, everything), everything)(*primals)
        ins, spec = tree_flatten(tuple(primals))
        flat, n = tree_flatten(hessian)[0], len(ins)
        rows = [flat[k * n : (k + 1) * n] for k in range(n)]
        return box[0], tree_unflatten(_jvp_leaves(rows, ins, ins, tangents), spec)


# -- torch.func / functorch, and the library ----------------------------------------------


class _DirectProducts:
    def __init__(self, mod: Any) -> None:
        self.mod = mod
        self.name = mod.__name__

    def grad(self, f: Fn, argnums: Any, has_aux: bool) -> Any:
        return self.mod.grad(f, argnums, has_aux=has_aux)

    def grad_and_value(self, f: Fn, argnums: Any, has_aux: bool) -> Any:
        return self.mod.grad_and_value(f, argnums, has_aux=has_aux)

    def vjp(self, f: Fn, *primals: Any, has_aux: bool = False) -> Any:
        return self.mod.vjp(f, *primals, has_aux=has_aux)

    def jvp(self, f: Fn, primals: Any, tangents: Any, has_aux: bool = False) -> Any:
        return self.mod.jvp(f, primals, tangents, has_aux=has_aux)

    def linearize(self, f: Fn, *primals: Any) -> Any:
        # jvp at each call, as tad_autograd's linearize on every backend: torch.func.linearize
        # (a make_fx trace; none in functorch 1.13) differs from torch.func.jvp itself (its
        # jvp_fn outputs of a linear function carry no graph, it accepts in-place updates of
        # captured tensors, returns zeros under inference_mode on 2.13 and raises on 2.0)
        out = f(*primals)
        return out, lambda *t: self.mod.jvp(f, primals, t)[1]

    def jacfwd(self, f: Fn, argnums: Any, has_aux: bool, randomness: str = "error") -> Any:
        # counted from the front: torch.func.jacfwd returns zeros for negative argnums
        def jacobian_fn(*args: Any) -> Any:
            nums = argnum_positions(argnums, len(args))
            nums_in = nums[0] if isinstance(argnums, int) else tuple(nums)
            return self.mod.jacfwd(f, nums_in, has_aux=has_aux, randomness=randomness)(*args)

        return jacobian_fn

    def jacobian(self, f: Fn, argnums: Any, mode: str, has_aux: bool) -> Any:
        forward = self.jacfwd(f, argnums, has_aux)
        reverse = self.mod.jacrev(f, argnums, has_aux=has_aux)
        if mode != "auto":
            return forward if mode == "forward" else reverse
        seen: List[bool] = []

        def auto(*args: Any) -> Any:
            # the documented choice: reverse mode on the first call with these shapes; later,
            # forward mode if the inputs have fewer elements than the outputs and it runs
            if seen and seen[0]:
                try:
                    return forward(*args)
                except Exception:  # noqa: BLE001 - not forward-differentiable: reverse mode
                    pass
            result = reverse(*args)
            if not seen:  # the Jacobian has (input elements) x (output elements) entries
                positions = argnum_positions(argnums, len(args))
                n_in = sum(x.numel() for p in positions for x in tree_flatten(args[p])[0])
                n_jac = sum(j.numel() for j in tree_flatten(result[0] if has_aux else result)[0])
                seen.append(n_in * n_in < n_jac)
            return result

        return auto

    def hvp(self, f: Fn, primals: Any, tangents: Any) -> Any:
        everything = tuple(range(len(primals)))
        gradient = self.mod.grad_and_value(f, everything)
        _, product, value = self.mod.jvp(gradient, primals, tangents, has_aux=True)
        return value, product


class _LibraryProducts:
    def __init__(self, backend: Optional[str], chunk_size: Optional[int]) -> None:
        import tad_autograd

        self.ta = tad_autograd
        self.kw = {"backend": backend}
        self.chunk_size = chunk_size
        self.name = f"tad_autograd(backend={backend!r})"

    def grad(self, f: Fn, argnums: Any, has_aux: bool) -> Any:
        return self.ta.grad(f, argnums, has_aux=has_aux, **self.kw)

    def grad_and_value(self, f: Fn, argnums: Any, has_aux: bool) -> Any:
        return self.ta.grad_and_value(f, argnums, has_aux=has_aux, **self.kw)

    def vjp(self, f: Fn, *primals: Any, has_aux: bool = False) -> Any:
        return self.ta.vjp(f, *primals, has_aux=has_aux, **self.kw)

    def jvp(self, f: Fn, primals: Any, tangents: Any, has_aux: bool = False) -> Any:
        return self.ta.jvp(f, primals, tangents, has_aux=has_aux, **self.kw)

    def linearize(self, f: Fn, *primals: Any) -> Any:
        return self.ta.linearize(f, *primals, **self.kw)

    def jacfwd(self, f: Fn, argnums: Any, has_aux: bool, randomness: str) -> Any:
        return self.ta.jacfwd(
            f,
            argnums,
            has_aux=has_aux,
            randomness=randomness,
            chunk_size=self.chunk_size,
            **self.kw,
        )

    def jacobian(self, f: Fn, argnums: Any, mode: str, has_aux: bool) -> Any:
        return self.ta.jacobian(
            f, argnums, mode=mode, has_aux=has_aux, chunk_size=self.chunk_size, **self.kw
        )

    def hvp(self, f: Fn, primals: Any, tangents: Any) -> Any:
        return self.ta.hvp(f, primals, tangents, **self.kw)


_REFERENCE = _ReferenceProducts()


def products_of(ns: Any) -> Any:
    """The products namespace of a fuzzer namespace (reference, direct or library)."""
    if isinstance(ns, ReferenceOps):
        return _REFERENCE
    if isinstance(ns, LibraryOps):
        return _LibraryProducts(ns.backend, ns.chunk_size)
    return _DirectProducts(ns.mod)


def build_product(
    ns: Any,
    op: str,
    func: Fn,
    *,
    argnums: Any = 0,
    has_aux: bool = False,
    mode: str = "auto",
    randomness: str = "error",
    tangents: Any = None,
    cotangents: Any = None,
    aux_weight: Optional[torch.Tensor] = None,
    outer_argnums: Any = 0,
) -> Fn:
    """Operator ``op`` of :data:`PRODUCT_OPERATORS` on ``func``, as a callable of its arguments.

    ``tangents`` (a tuple shaped like the arguments at ``argnums``) and
    ``cotangents`` (shaped like ``func``'s output) are in ``func``'s dtype;
    ``aux_weight`` is the ``w`` of the aux output (``has_aux=True``);
    ``outer_argnums`` those of the outer ``jacfwd`` of ``jacfwd_jacrev``.
    """
    if op not in PRODUCT_OPERATORS:
        raise ValueError(f"op must be one of {PRODUCT_OPERATORS}, got {op!r}")
    P = products_of(ns)
    f = scalarised(func, cotangents) if op in SCALAR_OPERATORS else func
    if has_aux:
        if aux_weight is None:
            raise ValueError("has_aux=True needs aux_weight")
        f = with_aux(f, aux_weight)

    def call(*args: Any) -> Any:
        if op in ("grad", "grad_and_value"):
            return getattr(P, op)(f, argnums, has_aux)(*args)
        if op == "jacfwd":
            return P.jacfwd(f, argnums, has_aux, randomness)(*args)
        if op == "jacfwd_jacrev":  # forward over reverse; ns.jacrev: the namespace's jacrev
            return P.jacfwd(ns.jacrev(f, argnums), outer_argnums, False, randomness)(*args)
        if op == "jacobian":
            jac = P.jacobian(f, argnums, mode, has_aux)
            return jac(*args), jac(*args)
        positions = argnum_positions(argnums, len(args))
        g, primals = _bound(f, args, positions), tuple(args[p] for p in positions)
        if op == "vjp":
            result = P.vjp(g, *primals, has_aux=has_aux)
            return (result[0], result[1](cotangents)) + tuple(result[2:])
        if op == "jvp":
            return P.jvp(g, primals, tuple(tangents), has_aux=has_aux)
        if op == "linearize":
            out, jvp_fn = P.linearize(g, *primals)
            return out, jvp_fn(*tangents)
        return P.hvp(g, primals, tuple(tangents))  # "hvp"

    return call
