"""The ``"autograd"`` backend: plain :mod:`torch.autograd` and Python loops.

It uses nothing but :func:`torch.autograd.grad` and ordinary Python, so it
differentiates every function ordinary autograd can, including custom
``autograd.Function`` subclasses written the old way (``forward(ctx, ...)``),
``.item()`` calls, data-dependent control flow and in-place updates.  It is
slower than the transform backends for wide Jacobians (one backward pass per
output element) and as fast as any for gradients of scalars.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from .._batching import BatchedArgs, flatten_args, join_outputs, split_outputs
from .._pytree import flatten, tree_flatten, tree_unflatten, unflatten
from .._rng import RngStates
from .base import ArgnumsT, Backend, InDimsT, OutDimsT

__all__ = [
    "AutogradBackend",
    "VectorisedAutograd",
    "check_argnums",
    "check_outputs",
    "prepare_input",
]

_log = logging.getLogger("tad_autograd")


class AutogradBackend(Backend):
    """Jacobians by loops of :func:`torch.autograd.grad`; ``vmap`` by a loop.

    Examples
    --------
    >>> import torch
    >>> backend = AutogradBackend()
    >>> backend.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    >>> backend.vmap(torch.sum, 0, 0, "error", chunk_size=None)(torch.ones(3, 2))
    tensor([2., 2., 2.])
    """

    name = "autograd"
    is_transform = False

    def jacrev(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        def jacobian_fn(*args: Any) -> Any:
            return _jacrev(func, argnums, has_aux, args)

        return jacobian_fn

    def vmap(
        self,
        func: Callable[..., Any],
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            return _vmap(func, in_dims, out_dims, randomness, args, kwargs)

        return batched_fn


class VectorisedAutograd(AutogradBackend):
    """How a transform backend computes Jacobians when chosen automatically.

    An eager forward pass under ordinary autograd, then the Jacobian's rows:
    one backward pass for a scalar (forces from an energy), a short loop for
    a few rows, otherwise one backward pass vectorised over the rows with the
    transform backend's ``vmap``.  This is faster than ``jacrev`` on every
    size measured, and the forward pass is never transformed, so custom
    ``autograd.Function``s (old style included), ``.item()`` and in-place
    updates need no fallback.  ``vmap`` is the transform backend's own.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> from tad_autograd.registry import REGISTRY
    >>> auto = REGISTRY.get(ta.available_backends()[0]).for_automatic()
    >>> isinstance(auto, VectorisedAutograd)
    True
    >>> auto.jacrev(torch.sin, 0, has_aux=False, chunk_size=None)(torch.zeros(2))
    tensor([[1., 0.],
            [0., 1.]])
    """

    is_transform = True

    def __init__(self, transforms: Backend, vmap: Callable[..., Any]):
        self.transforms = transforms
        self.name = transforms.name
        self.aliases = transforms.aliases
        self._vmap = vmap

    def availability(self, *args: Any, **kwargs: Any) -> Any:
        return self.transforms.availability(*args, **kwargs)

    def supports_device(self, device_type: str) -> bool:
        return self.transforms.supports_device(device_type)

    def jacrev(
        self,
        func: Callable[..., Any],
        argnums: ArgnumsT,
        *,
        has_aux: bool,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        vmap = self._vmap
        transforms = self.transforms
        inside: List[Callable[..., Any]] = []  # the transform's jacrev, built on first need

        def jacobian_fn(*args: Any) -> Any:
            if _transforms_active():
                # Called inside a function transform (a vmap around it, or the user's
                # own torch.func transform): autograd cannot run there, the transform can.
                if not inside:
                    inside.append(
                        transforms.jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size)
                    )
                return inside[0](*args)
            return _jacrev(func, argnums, has_aux, args, vmap, chunk_size)

        return jacobian_fn

    def vmap(
        self,
        func: Callable[..., Any],
        in_dims: InDimsT,
        out_dims: OutDimsT,
        randomness: str,
        *,
        chunk_size: Optional[int],
    ) -> Callable[..., Any]:
        vectorised = self.transforms.vmap(
            func, in_dims, out_dims, randomness, chunk_size=chunk_size
        )
        context = (self.name, _eager_origin())

        def batched_fn(*args: Any, **kwargs: Any) -> Any:
            size = _batch_size_hint(in_dims, args)
            if size is None or size > _loop_max_batch(args[0]) or _transforms_active():
                return vectorised(*args, **kwargs)
            from ..settings import CONTEXT

            token = CONTEXT.set(context)  # the loop runs func eagerly
            try:
                return _vmap(func, in_dims, out_dims, randomness, args, kwargs)
            finally:
                CONTEXT.reset(token)

        return batched_fn

    def __repr__(self) -> str:
        return f"<VectorisedAutograd over {self.transforms!r}>"


def _transforms_active() -> bool:
    """Whether a functorch transform (vmap, grad, ...) is running around this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


#: Up to this batch size, an automatic ``vmap`` on the CPU loops (no transform overhead).
LOOP_MAX_BATCH = 2
#: The same on an accelerator, where each looped sample launches its own kernels.
LOOP_MAX_BATCH_ACCELERATOR = 1


def _loop_max_batch(first: torch.Tensor) -> int:
    """The largest batch an automatic ``vmap`` loops over, for a batch on ``first``'s device."""
    return LOOP_MAX_BATCH if first.device.type == "cpu" else LOOP_MAX_BATCH_ACCELERATOR


def _eager_origin() -> str:
    from ..settings import ORIGIN_AUTOMATIC_EAGER

    return ORIGIN_AUTOMATIC_EAGER


def _batch_size_hint(in_dims: Any, args: Tuple[Any, ...]) -> Optional[int]:
    """The batch size read off the first argument when that is cheap, else ``None``."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    dim = in_dims[0] if isinstance(in_dims, tuple) and in_dims else in_dims
    if type(dim) is not int or not -args[0].dim() <= dim < args[0].dim():
        return None
    return int(args[0].shape[dim])


# --------------------------------------------------------------------------- jacrev


def check_argnums(argnums: ArgnumsT, nargs: int) -> Tuple[int, ...]:
    """Normalise ``argnums`` against ``nargs`` positional arguments.

    Raises ``RuntimeError`` with :func:`torch.func.jacrev`'s wording.

    Examples
    --------
    >>> check_argnums(-1, 2)
    (1,)
    """
    nums = (argnums,) if isinstance(argnums, int) else argnums
    out = []
    for n in nums:
        if not -nargs <= n < nargs:
            raise RuntimeError(f"Got argnum={n}, but only {nargs} positional inputs")
        out.append(n % nargs)
    return tuple(out)


def prepare_input(x: Any, position: int) -> torch.Tensor:
    """A differentiable stand-in for input leaf ``x``.

    A tensor that already requires grad is viewed, so the Jacobian stays
    differentiable with respect to it; any other floating-point tensor is
    detached and made to require grad.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"argnums: the argument at position {position} must be a floating-point "
            f"tensor or a pytree of them, got {type(x)}"
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise RuntimeError(
            "only Tensors of floating point dtype can require gradients "
            f"(argument at position {position} has dtype {x.dtype})"
        )
    if x.requires_grad:
        return x.view_as(x)
    return x.detach().requires_grad_(True)


def check_outputs(leaves: Sequence[Any]) -> None:
    """Raise ``RuntimeError`` (as :func:`torch.func.vjp` does) for a non-tensor or empty output."""
    if len(leaves) == 0:
        raise RuntimeError(
            "jacrev(f, ...)(*args): expected f(*args) to return a tensor or a non-empty "
            "pytree of tensors, got no tensors (e.g. None)"
        )
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise RuntimeError(
                "jacrev(f, ...)(*args): expected f(*args) to return only tensors, "
                f"got unsupported type {type(leaf)}"
            )


def _depends_on_other_leaves(outputs: Sequence[torch.Tensor], ours: Set[int]) -> bool:
    """Whether the graph of ``outputs`` reaches a leaf requiring grad besides ``ours``.

    Then the Jacobian must itself be differentiable (``create_graph=True``),
    as it is under :mod:`torch.func`: e.g. forces whose energy depends on
    captured model parameters.
    """
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen: Set[Any] = set()
    push, mark = stack.append, seen.add
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is None or nxt in seen:
                continue
            mark(nxt)
            if type(nxt) is _ACCUMULATE_GRAD:
                if id(nxt.variable) not in ours:  # type: ignore[attr-defined]
                    return True
            else:
                push(nxt)
    return False


#: The graph node of a leaf tensor that requires grad.
_ACCUMULATE_GRAD = torch._C._functions.AccumulateGrad  # type: ignore[attr-defined]


_HAS_AUX_HINT = (
    "; with has_aux=True, func must return a tuple (output, aux) whose output is a "
    "tensor or a pytree of tensors (got {got})"
)


def _jacrev(
    func: Callable[..., Any],
    argnums: ArgnumsT,
    has_aux: bool,
    args: Tuple[Any, ...],
    vmap: Optional[Callable[..., Any]] = None,
    chunk_size: Optional[int] = None,
) -> Any:
    outer_grad = torch.is_grad_enabled()
    nargs = len(args)
    new_args = list(args)
    in_specs: Optional[List[Any]] = None  # None: argnums is an int and its argument a tensor
    sizes = [1]
    if (
        isinstance(argnums, int)
        and -nargs <= argnums < nargs
        and isinstance(args[argnums], torch.Tensor)
    ):
        # the common case (forces, Jacobians of one tensor): no pytree bookkeeping
        p = argnums % nargs
        x = prepare_input(args[p], p)
        new_args[p] = x
        inputs = [x]
        external = args[p].requires_grad
    else:
        in_specs, sizes, inputs, external = _prepare_inputs(argnums, args, new_args)

    if outer_grad:
        result = func(*new_args)
    else:
        with torch.enable_grad():
            result = func(*new_args)
    if has_aux:
        result, aux = _split_aux(result)
    if isinstance(result, torch.Tensor):
        out_leaves, out_spec = [result], None
    else:
        out_leaves, out_spec = tree_flatten(result)
        check_outputs(out_leaves)

    if outer_grad and not external:
        if nargs > 1:
            external = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if not external:
            live = out_leaves if out_spec is None else [o for o in out_leaves if o.requires_grad]
            ours = {id(inputs[0])} if len(inputs) == 1 else {id(x) for x in inputs}
            external = _depends_on_other_leaves(live, ours)
    create_graph = outer_grad and external

    if out_spec is None and len(inputs) == 1 and (vmap is None or result.numel() <= LOOP_MAX_ROWS):
        # one tensor in and out, a scalar (an energy) or a few rows: one backward pass or a
        # short loop of them, nothing to vectorise or regroup
        jac = _rows(result, inputs, create_graph, retain=create_graph)[0]
        jacobian = jac if in_specs is None else unflatten_jacobian([jac], argnums, in_specs, sizes)
    else:
        per_output = None
        rows = sum(o.numel() for o in out_leaves if o.requires_grad)
        if vmap is not None and rows > LOOP_MAX_ROWS:
            per_output = _vectorised_rows(out_leaves, inputs, create_graph, vmap, chunk_size)
        if per_output is None:
            last = len(out_leaves) - 1
            per_output = [
                _rows(o, inputs, create_graph, retain=create_graph or k < last)
                for k, o in enumerate(out_leaves)
            ]
        if in_specs is None:
            nested = [jac[0] for jac in per_output]
        else:
            nested = [unflatten_jacobian(jac, argnums, in_specs, sizes) for jac in per_output]
        jacobian = unflatten(nested, out_spec)
    if has_aux:
        if not create_graph:
            aux_leaves, aux_spec = tree_flatten(aux)
            aux = tree_unflatten([a.detach() for a in aux_leaves], aux_spec)
        return jacobian, aux
    return jacobian


def _prepare_inputs(
    argnums: ArgnumsT, args: Tuple[Any, ...], new_args: List[Any]
) -> Tuple[List[Any], List[int], List[torch.Tensor], bool]:
    """Differentiable stand-ins for the (pytree) arguments at ``argnums``, put into ``new_args``.

    Returns the input specs, the number of leaves per argument, all stand-in
    leaves, and whether any original leaf requires grad.
    """
    in_specs = []
    sizes = []
    inputs: List[torch.Tensor] = []
    external = False
    for p in check_argnums(argnums, len(args)):
        leaves, spec = flatten(args[p])
        prepared = [prepare_input(leaf, p) for leaf in leaves]
        external = external or any(leaf.requires_grad for leaf in leaves)
        new_args[p] = unflatten(prepared, spec)
        in_specs.append(spec)
        sizes.append(len(prepared))
        inputs.extend(prepared)
    return in_specs, sizes, inputs, external


def unflatten_jacobian(
    jac: List[torch.Tensor], argnums: ArgnumsT, in_specs: List[Any], sizes: List[int]
) -> Any:
    """One output's Jacobian leaves (one per input leaf) as the argnums tuple of input pytrees."""
    per_arg = []
    start = 0
    for spec, count in zip(in_specs, sizes):
        per_arg.append(unflatten(jac[start : start + count], spec))
        start += count
    return per_arg[0] if isinstance(argnums, int) else tuple(per_arg)


def _split_aux(result: Any) -> Tuple[Any, Any]:
    """``(output, aux)`` from a ``has_aux`` function's result, checked."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RuntimeError(
            "jacrev(f, ...)(*args): output of function f should be a tuple: "
            "(output, aux) if has_aux is True" + _HAS_AUX_HINT.format(got=type(result).__name__)
        )
    for leaf in tree_flatten(result[1])[0]:
        if not isinstance(leaf, torch.Tensor):
            raise RuntimeError(
                "jacrev(f, ..., has_aux=True): aux must be a tensor or a pytree of "
                f"tensors. Expected tensors, got unsupported type {type(leaf)}"
            )
    return result[0], result[1]


#: Up to this many Jacobian rows, a loop of backward passes beats one vectorised pass.
LOOP_MAX_ROWS = 4


def _vectorised_rows(
    outputs: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Callable[..., Any],
    chunk_size: Optional[int],
) -> Optional[List[List[torch.Tensor]]]:
    """All Jacobian rows by ``vmap`` over one backward pass; ``None`` if it cannot be vectorised.

    Returns, per output, the list of d output / d input (shaped
    ``output.shape + input.shape``).  A backward that cannot be batched
    (e.g. a custom ``autograd.Function`` whose backward calls ``.item()``)
    is recognised and left to the row loop.
    """
    from ..fallback import recognise

    try:
        return _batched_rows(outputs, inputs, create_graph, vmap, chunk_size)
    except RuntimeError as error:
        if recognise(error) is None:
            raise
        _log.info("backward pass not vectorisable (%s); using a loop of backward passes", error)
        return None


def _batched_rows(
    outputs: List[torch.Tensor],
    inputs: List[torch.Tensor],
    create_graph: bool,
    vmap: Callable[..., Any],
    chunk_size: Optional[int],
) -> List[List[torch.Tensor]]:
    """The work of :func:`_vectorised_rows`, ``chunk_size`` rows per ``vmap`` call."""
    live = [o for o in outputs if o.requires_grad]
    numels = [o.numel() for o in live]
    total = sum(numels)
    step = total if chunk_size is None else chunk_size
    if len(outputs) == 1 and len(live) == 1 and len(inputs) == 1 and step >= total:
        # the common case (one tensor in, one out, no chunks): nothing to split or join
        return [[_all_rows(live[0], inputs[0], create_graph, vmap)]]

    def vjp(*cotangents: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(
            live,
            inputs,
            cotangents,
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
        return tuple(g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs))

    batched = vmap(vjp)
    pieces: List[List[torch.Tensor]] = [[] for _ in inputs]
    with torch.enable_grad():
        for start in range(0, total, step):
            size = min(step, total - start)
            for piece, rows in zip(pieces, batched(*_basis(live, numels, start, size))):
                piece.append(rows)
    per_input = [torch.cat(p) if len(p) > 1 else p[0] for p in pieces]
    result = []
    offsets = [sum(numels[:i]) for i in range(len(numels))]
    live_index = {id(o): i for i, o in enumerate(live)}
    for o in outputs:
        if id(o) not in live_index:
            result.append([o.new_zeros(o.shape + x.shape, dtype=x.dtype) for x in inputs])
            continue
        i = live_index[id(o)]
        start, n = offsets[i], numels[i]
        result.append(
            [
                rows[start : start + n].reshape(o.shape + x.shape)
                for rows, x in zip(per_input, inputs)
            ]
        )
    return result


def _all_rows(
    output: torch.Tensor, x: torch.Tensor, create_graph: bool, vmap: Callable[..., Any]
) -> torch.Tensor:
    """d output / d x, shaped ``output.shape + x.shape``, by ``vmap`` over one backward pass."""

    def vjp(cotangent: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(
            output, x, cotangent, retain_graph=True, create_graph=create_graph, allow_unused=True
        )
        return torch.zeros_like(x) if g is None else g

    n = output.numel()
    basis = torch.eye(n, dtype=output.dtype, device=output.device)
    if output.dim() != 1:
        basis = basis.view((n,) + output.shape)
    rows: torch.Tensor
    if torch.is_grad_enabled():
        rows = vmap(vjp)(basis)
    else:
        with torch.enable_grad():
            rows = vmap(vjp)(basis)
    return rows if output.dim() == 1 else rows.reshape(output.shape + x.shape)


def _basis(
    outputs: List[torch.Tensor], numels: List[int], start: int, size: int
) -> List[torch.Tensor]:
    """Rows ``start:start + size`` of the identity over all output elements, split per output.

    Examples
    --------
    >>> import torch
    >>> [b.tolist() for b in _basis([torch.zeros(2), torch.zeros(1)], [2, 1], 1, 2)]
    [[[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]]]
    """
    basis = []
    offset = 0
    for o, n in zip(outputs, numels):
        b = o.new_zeros((size, n))
        k = start - offset  # row r of the chunk has its one in column r + k of this output
        if -size < k < n:
            b.diagonal(k).fill_(1)
        basis.append(b.view((size,) + o.shape))
        offset += n
    return basis


def _rows(
    output: torch.Tensor, inputs: List[torch.Tensor], create_graph: bool, retain: bool = True
) -> List[torch.Tensor]:
    """d output / d input for each input, shaped ``output.shape + input.shape``."""
    n = output.numel()
    if n == 0 or not output.requires_grad:
        return [
            output.new_zeros(output.shape + x.shape, dtype=x.dtype, device=x.device) for x in inputs
        ]
    # create_graph is only ever asked for with grad mode on: a scalar needs no enable_grad
    if n == 1:  # no grad_outputs: torch checks a given one's shape in Python
        grads = torch.autograd.grad(
            output, inputs, retain_graph=retain, create_graph=create_graph, allow_unused=True
        )
        if output.dim() == 0:  # the gradient already has the Jacobian's shape
            return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs)]
        return [
            (g if g is not None else torch.zeros_like(x)).reshape(output.shape + x.shape)
            for g, x in zip(grads, inputs)
        ]
    columns: List[List[Optional[torch.Tensor]]] = [[] for _ in inputs]
    with torch.enable_grad():  # the row slices must be part of the graph, even under no_grad
        flat = output.reshape(-1)
        for j in range(n):
            grads = torch.autograd.grad(
                flat[j],
                inputs,
                retain_graph=retain or j < n - 1,
                create_graph=create_graph,
                allow_unused=True,
            )
            for col, g in zip(columns, grads):
                col.append(g)
    out = []
    for x, col in zip(inputs, columns):
        if all(g is None for g in col):
            out.append(output.new_zeros(output.shape + x.shape, dtype=x.dtype, device=x.device))
            continue
        filled = [g if g is not None else torch.zeros_like(x) for g in col]
        out.append(torch.stack(filled).reshape(output.shape + x.shape))
    return out


# --------------------------------------------------------------------------- vmap

_RANDOM_MESSAGE = (
    "vmap: called random operation while in randomness error mode. Please either "
    "use the 'same' or 'different' randomness flags on vmap or perform the "
    "randomness operation out of vmap"
)


def _vmap(
    func: Callable[..., Any],
    in_dims: InDimsT,
    out_dims: OutDimsT,
    randomness: str,
    args: Tuple[Any, ...],
    kwargs: Dict[str, Any],
) -> Any:
    batched = flatten_args(func, in_dims, args)
    devices = {leaf.device for leaf in batched.leaves if isinstance(leaf, torch.Tensor)}
    states = RngStates(devices)
    try:
        if batched.size == 0:
            return _empty_batch(func, out_dims, batched, kwargs)
        samples = []
        dims: List[Optional[int]] = []
        spec = None
        for b in range(batched.size):
            if randomness == "same" and b > 0:
                states.restore()  # every element draws what the first drew
            output = func(*batched.sample(b), **kwargs)
            leaves, leaf_dims, leaf_spec = split_outputs(func, out_dims, output)
            if spec is None:
                dims, spec = leaf_dims, leaf_spec
            elif leaf_spec != spec:
                raise ValueError(
                    f"vmap: the outputs of batch elements 0 and {b} have different "
                    f"structures ({spec} and {leaf_spec})"
                )
            samples.append(leaves)
        if randomness == "error" and states.changed():
            raise RuntimeError(_RANDOM_MESSAGE)
    except BaseException:
        states.restore()
        raise
    return join_outputs(samples, dims, spec, torch.stack)


def _empty_batch(
    func: Callable[..., Any], out_dims: OutDimsT, batched: BatchedArgs, kwargs: Dict[str, Any]
) -> Any:
    """Batch size 0: run one zero-filled element for the output shapes only."""
    output = func(*batched.placeholder(), **kwargs)
    leaves, dims, spec = split_outputs(func, out_dims, output)
    joined = []
    for leaf, d in zip(leaves, dims):
        if d is None:
            joined.append(leaf)
        else:
            joined.append(
                leaf.detach().unsqueeze(d % (leaf.dim() + 1)).narrow(d % (leaf.dim() + 1), 0, 0)
            )
    return tree_unflatten(joined, spec)
