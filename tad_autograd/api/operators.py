"""The gradient and forward-mode transforms: :func:`grad`, :func:`grad_and_value`,
:func:`jacfwd` and :func:`jacobian`; and :func:`graph_jacobian`, the Jacobian
of tensors that already carry a graph.

Thin, documented functions over :mod:`tad_autograd.dispatch._transformed` (see
:mod:`tad_autograd.api.transforms` for ``jacrev``, ``vmap`` and ``hessian``); every
argument is checked here once, when the transform is built.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ..backends._operators import GRAD, GRAD_AND_VALUE, JACFWD, Builds, Params
from ..compat._dual import forward_ad_ready
from ..dispatch._checks import (
    check_argnums_type,
    check_backend,
    check_chunk_size,
    check_flag,
    check_has_aux,
    check_randomness,
)
from ..dispatch._mode_choice import ModeChoosingJacobian
from ..dispatch._transformed import Transformed
from ..eager._jacobian import graph_jacobian as _graph_jacobian
from ..eager._operand_checks import with_checked_outputs
from ..eager._tangent_dtypes import OutputDtypes
from .transforms import Argnums, jacrev, transformed

__all__ = ["grad", "grad_and_value", "jacfwd", "jacobian", "graph_jacobian"]

_MODES = ("auto", "forward", "reverse")


def grad(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    has_aux: bool = False,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """Gradient of a scalar-valued ``func`` with respect to the arguments at ``argnums``.

    Behaves as :func:`torch.func.grad` on every supported torch and backend.

    Parameters
    ----------
    func : callable
        Returns a 0-dim real floating-point tensor (with ``has_aux=True``,
        ``(output, aux)``).
    argnums : int or tuple of int, optional
        Which positional arguments to differentiate (floating-point or
        complex tensors).  Default 0.
    has_aux : bool, optional
        ``func`` returns ``(output, aux)``; ``aux`` comes back undifferentiated.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    callable
        Returns the gradient, shaped like the arguments at ``argnums`` (a
        tuple for tuple ``argnums``); with ``has_aux=True``, ``(gradient, aux)``.
        For a complex argument ``z``, torch's conjugate-convention gradient
        ``df/d(Re z) + i df/d(Im z)``.

    Raises
    ------
    RuntimeError
        ``func`` does not return a scalar tensor; malformed ``argnums``.

    Examples
    --------
    Forces are minus the gradient of the energy:

    >>> import torch, tad_autograd as ta
    >>> energy = lambda pos: ((pos[1] - pos[0]) ** 2).sum()
    >>> -ta.grad(energy)(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    tensor([[ 2., -0.],
            [-2., -0.]])
    """
    check_argnums_type(argnums)
    check_has_aux(has_aux, "grad")
    name = check_backend(backend)
    params = Params(argnums, has_aux)
    return transformed(GRAD, func, params, name, check_outputs=True, argnums=argnums)


def grad_and_value(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    has_aux: bool = False,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """The gradient of a scalar-valued ``func`` and its value, from one evaluation.

    Behaves as :func:`torch.func.grad_and_value`.

    Returns
    -------
    callable
        Returns ``(gradient, value)``; with ``has_aux=True``,
        ``(gradient, (value, aux))``.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> ta.grad_and_value(lambda x: (x ** 2).sum())(torch.tensor([1.0, 2.0]))
    (tensor([2., 4.]), tensor(5.))
    """
    check_argnums_type(argnums)
    check_has_aux(has_aux, "grad_and_value")
    name = check_backend(backend)
    params = Params(argnums, has_aux)
    return transformed(GRAD_AND_VALUE, func, params, name, check_outputs=True, argnums=argnums)


def jacfwd(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    has_aux: bool = False,
    randomness: str = "error",
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """Jacobian of ``func`` by forward mode: one pushforward per input element.

    Behaves as :func:`torch.func.jacfwd`, with a ``chunk_size`` on every
    backend.  Cheaper than :func:`~tad_autograd.jacrev` when the inputs have
    fewer elements than the outputs (tall Jacobians).  Functions with no
    forward-AD rule (a custom ``autograd.Function`` without ``jvp``) work on
    the autograd backend and in automatic mode.

    Parameters
    ----------
    func, argnums, has_aux
        As for :func:`~tad_autograd.jacrev`.
    randomness : {"error", "same", "different"}, optional
        Random operations in ``func``: raise (default), the same draws for
        every input element, or independent ones.
    chunk_size : int, optional
        Push this many basis vectors at a time.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    callable
        Returns the Jacobian with :func:`~tad_autograd.jacrev`'s structure.

    Examples
    --------
    The derivative of a 3-component dipole-like response with respect to a field:

    >>> import torch, tad_autograd as ta
    >>> alpha = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    >>> ta.jacfwd(lambda field: alpha @ field)(torch.zeros(3))
    tensor([[2., 0., 0.],
            [0., 3., 0.],
            [0., 0., 4.]])
    """
    check_argnums_type(argnums)
    check_has_aux(has_aux, "jacfwd")
    check_randomness(randomness)
    check_chunk_size(chunk_size, "jacfwd")
    name = check_backend(backend)
    return _jacfwd(func, argnums, has_aux, randomness, chunk_size, name, False)


def _jacfwd(
    func: Callable[..., Any],
    argnums: Argnums,
    has_aux: bool,
    randomness: str,
    chunk_size: Optional[int],
    backend: Optional[str],
    transforms_only: bool,
) -> Transformed:
    forward_ad_ready()

    def build(s: Builds, f: Callable[..., Any]) -> Callable[..., Any]:
        note = OutputDtypes()  # the output dtypes, from the function to its Jacobian
        checked = note.recording(with_checked_outputs(f, has_aux, "jacfwd"), has_aux)

        def make(nums: Argnums) -> Callable[..., Any]:
            fn = s.build(JACFWD, checked, Params(nums, has_aux, chunk_size, randomness))
            return note.fixing(fn, has_aux)

        if all(n >= 0 for n in ((argnums,) if isinstance(argnums, int) else argnums)):
            return make(argnums)
        # torch.func.jacfwd returns zeros for a negative argnums: count from the front
        by_count: Dict[int, Callable[..., Any]] = {}

        def jacobian_fn(*args: Any) -> Any:
            fn = by_count.get(len(args))
            if fn is None:
                fn = by_count[len(args)] = make(_from_the_front(argnums, len(args)))
            return fn(*args)

        return jacobian_fn

    return Transformed(
        JACFWD, func, build, backend, transforms_only, kwargs_in_call=False, argnums=argnums
    )


def _from_the_front(argnums: Argnums, nargs: int) -> Argnums:
    """``argnums`` with negative entries counted from the front (checked in range already)."""
    if isinstance(argnums, int):
        return argnums % nargs
    return tuple(n % nargs for n in argnums)


def jacobian(
    func: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    mode: str = "auto",
    has_aux: bool = False,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
) -> Callable[..., Any]:
    """Jacobian of ``func`` by forward or reverse mode, whichever is cheaper.

    Parameters
    ----------
    func, argnums, has_aux, chunk_size, backend
        As for :func:`~tad_autograd.jacrev`.
    mode : {"auto", "forward", "reverse"}, optional
        ``"reverse"`` is :func:`~tad_autograd.jacrev`, ``"forward"``
        :func:`~tad_autograd.jacfwd`.  ``"auto"`` (default) uses forward mode
        when the differentiated inputs have fewer elements than the outputs
        and the function runs under forward mode, reverse mode otherwise.  It
        learns the output size on the first call with given input shapes
        (which runs reverse mode).  The function runs once per call: in
        automatic mode forward mode takes the columns from one recorded
        forward pass (random draws included); on an explicit backend a
        function that drew random numbers stays in reverse mode, and one that
        fails under forward mode is switched to reverse mode for good.

    Returns
    -------
    callable
        Returns the Jacobian with :func:`~tad_autograd.jacrev`'s structure.

    Raises
    ------
    ValueError
        ``mode`` not one of the three.

    Examples
    --------
    A tall Jacobian (2 inputs, 50 outputs) goes forward from the second call on:

    >>> import torch, tad_autograd as ta
    >>> grid = torch.linspace(0, 1, 50)
    >>> jac = ta.jacobian(lambda p: p[0] * torch.exp(-p[1] * grid))
    >>> jac(torch.tensor([1.0, 2.0])).shape
    torch.Size([50, 2])
    >>> jac(torch.tensor([1.0, 2.0])).shape
    torch.Size([50, 2])
    """
    if mode not in _MODES:
        raise ValueError(f"jacobian: mode must be one of {_MODES}, got {mode!r}")
    if mode == "reverse":
        return jacrev(func, argnums, has_aux=has_aux, chunk_size=chunk_size, backend=backend)
    if mode == "forward":
        return jacfwd(func, argnums, has_aux=has_aux, chunk_size=chunk_size, backend=backend)
    check_argnums_type(argnums)
    check_has_aux(has_aux, "jacobian")
    check_chunk_size(chunk_size, "jacobian")
    name = check_backend(backend)

    def make_reverse(f: Callable[..., Any]) -> Callable[..., Any]:
        return jacrev(f, argnums, has_aux=has_aux, chunk_size=chunk_size, backend=name)

    def make_forward(f: Callable[..., Any]) -> Callable[..., Any]:
        if name is None:  # columns of one eager pass with its draws, as reverse mode's rows
            return _jacfwd(f, argnums, has_aux, "same", chunk_size, None, False)
        # jacfwd's randomness="error": a function that draws stays in reverse mode
        return _jacfwd(f, argnums, has_aux, "error", chunk_size, name, False)

    return ModeChoosingJacobian(
        func, argnums, has_aux, make_reverse, make_forward, automatic=name is None
    )


def graph_jacobian(
    outputs: Any,
    inputs: Any,
    *,
    create_graph: bool = False,
    retain_graph: bool = True,
    chunk_size: Optional[int] = None,
) -> Any:
    """The Jacobian of tensors that already carry a graph, with respect to tensors in it.

    Where :func:`~tad_autograd.jacrev` differentiates a function, this
    differentiates results computed earlier under ordinary autograd (an
    energy and the positions it came from), as a loop of
    :func:`torch.autograd.grad` calls would, but vectorised: the rows come
    from backward passes batched by the autograd engine
    (``torch.autograd.grad(..., is_grads_batched=True)``), and from a loop of
    backward passes where the graph holds an op whose batched derivative the
    installed torch is known to get wrong, a custom ``autograd.Function``
    (whose backward may hide one), or where the batched pass fails.

    Parameters
    ----------
    outputs : Tensor or pytree of Tensors
        Real floating-point tensors computed from ``inputs``.  An output
        without a graph (a constant) has a zero Jacobian.
    inputs : Tensor or pytree of Tensors
        Floating-point or complex tensors that require grad (leaves or not).
        An input the outputs do not depend on gets zeros, as in
        :func:`torch.func.jacrev`.
    create_graph : bool, optional
        Record the derivative's own graph, so the result can be
        differentiated again (a Hessian from a gradient).  Default ``False``.
        A custom Function whose backward cannot be differentiated then makes
        that later derivative raise instead of silently missing terms.
    retain_graph : bool, optional
        Keep the graph of ``outputs`` for further backward passes.  Default
        ``True`` (unlike :func:`torch.autograd.grad`); ``False`` frees it with
        the last backward pass, after which another derivative through it
        raises torch's error.
    chunk_size : int, optional
        Batch at most this many rows per backward pass to bound memory
        (``None``: all at once).  The result is the same.

    Returns
    -------
    Tensor or pytree of Tensors
        For each output leaf, a structure like ``inputs`` of blocks shaped
        ``out.shape + in.shape``; a plain tensor for a tensor output and a
        tensor input.  It requires grad when ``create_graph=True`` and the
        derivative depends on a tensor that requires grad.

    Raises
    ------
    RuntimeError
        An output that is not a real floating-point tensor (integer and bool
        outputs never give zeros), an integer input, an input that does not
        require grad (no graph can lead to it, as in
        :func:`torch.autograd.grad`), outputs computed inside
        :class:`torch.inference_mode` (which records no graph), a graph already
        freed.
    ValueError
        An input leaf that is not a tensor; ``chunk_size`` not positive.
    TypeError
        ``chunk_size`` not an int; ``create_graph`` or ``retain_graph`` not a bool.

    Notes
    -----
    Inside :class:`torch.no_grad` the derivative is still computed; inside
    :class:`torch.inference_mode`, too, for outputs recorded outside it (the
    result is an ordinary tensor).
    The other calling contexts are as for every operator
    (:ref:`semantics-contexts`).

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> pos = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    >>> forces = -torch.autograd.grad((pos ** 2).sum(), pos, create_graph=True)[0]
    >>> ta.graph_jacobian(forces, pos).shape  # the (negative) Hessian
    torch.Size([2, 2, 2, 2])
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> jac = ta.graph_jacobian({"sq": x ** 2, "sum": x.sum()}, (x,))
    >>> jac["sq"][0]
    tensor([[2., 0.],
            [0., 4.]])
    >>> jac["sum"][0]
    tensor([1., 1.])
    """
    check_flag(create_graph, "create_graph", "graph_jacobian")
    check_flag(retain_graph, "retain_graph", "graph_jacobian")
    check_chunk_size(chunk_size, "graph_jacobian")
    return _graph_jacobian(outputs, inputs, create_graph, retain_graph, chunk_size)
