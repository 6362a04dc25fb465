"""Finding a sparsity pattern numerically: :func:`detect_sparsity`.

The pattern is the union of the non-zero entries of the dense Jacobian (or
Hessian) at a few *probe* points: the given arguments and random
perturbations of them.  This is a numerical, not a structural, method, and
it is exact about what it can miss:

**An entry is missed exactly when that derivative is zero at every probe
point** (``== 0`` in the dtype of the arguments).  That happens when

1. the derivative vanishes on a whole region around the probes: piecewise
   definitions (``relu``, ``clamp``, ``abs`` near a kink, ``torch.where``
   masks), cutoffs (a pair potential's pairs farther apart than its cutoff at
   every probe), data-dependent indexing or control flow that would take
   another branch elsewhere -- the pattern describes the function *near the
   probes*;
2. it underflows: a contribution too small for the dtype (``exp(-800)``) is
   zero;
3. it is zero at the probes by coincidence: the derivative of ``x_0 * x_1``
   with respect to ``x_0`` is ``x_1``, zero if ``x_1 == 0`` at the given
   point.  The random perturbations make this practically impossible for
   analytic functions (it needs the probes on a set of measure zero), which
   is why more than one probe is used.

What it never does: miss an entry that is non-zero at one of the probes, or
report an entry that is zero at all of them (NaN counts as non-zero).  Each
probe costs one dense Jacobian or Hessian, so detect on a small instance of
a problem or once per configuration; for large systems with a known
structure (a neighbour list, a stencil), build the pattern from it.  To
verify a pattern at other points, pass ``check=True`` to
:func:`~tad_autograd.sparse_jacobian` / :func:`~tad_autograd.sparse_hessian`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..api.transforms import hessian as dense_hessian
from ..api.transforms import jacrev
from ..dispatch._checks import check_argnums_type, check_backend, check_differentiable

__all__ = ["detect_sparsity"]

#: The seed of the probes' private generator: the same points every call, no global draws.
PROBE_SEED = 20240517


def detect_sparsity(
    func: Callable[..., Any],
    *args: Any,
    argnums: int = 0,
    hessian: bool = False,
    probes: int = 3,
    scale: float = 0.1,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The sparsity pattern of ``func``'s Jacobian (or Hessian) near ``args``, as a bool tensor.

    Parameters
    ----------
    func : callable
        Returns one floating-point tensor (one element with ``hessian=True``).
    *args
        The arguments to probe at.
    argnums : int, optional
        The argument to differentiate: one tensor (default 0).
    hessian : bool, optional
        Detect the Hessian's pattern instead of the Jacobian's.
    probes : int, optional
        How many points: the given arguments, then ``probes - 1`` points
        ``x + scale * (|x| + 1) * u`` with ``u`` uniform in ``[-1, 1]`` drawn
        from a private generator with a fixed seed (the global random state
        is untouched and the result is reproducible).  Default 3.
    scale : float, optional
        The relative size of the perturbations.  Default 0.1.
    backend : str, optional
        As for :func:`~tad_autograd.jacrev`.

    Returns
    -------
    torch.Tensor
        bool, of shape ``(out.numel(), in.numel())`` (``(in.numel(),
        in.numel())`` for Hessians), on the arguments' device: ``True``
        where the derivative was non-zero at some probe.  See the module
        documentation for exactly when an entry can be missed.

    Raises
    ------
    ValueError
        ``probes`` not a positive int, ``scale`` negative.
    NotImplementedError
        Tuple ``argnums``, a pytree argument or output.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> def f(x):
    ...     return torch.stack([x[0] * x[1], x[1] ** 2, torch.sin(x[2])])
    >>> ta.detect_sparsity(f, torch.zeros(3))      # x[1] = 0 here, but not at the other probes
    tensor([[ True,  True, False],
            [False,  True, False],
            [False, False,  True]])
    """
    check_argnums_type(argnums)
    if not isinstance(argnums, int):
        raise NotImplementedError(
            f"detect_sparsity: argnums must be an int (one tensor argument), got {argnums!r}"
        )
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"detect_sparsity: probes must be a positive int, got {probes!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale < 0:
        raise ValueError(f"detect_sparsity: scale must be a number >= 0, got {scale!r}")
    name = check_backend(backend)
    check_differentiable(args, argnums, "detect_sparsity")
    x = args[argnums]
    if not isinstance(x, torch.Tensor):
        raise NotImplementedError(
            f"detect_sparsity: the argument at argnums={argnums} must be one tensor, got "
            f"{type(x).__name__}"
        )
    i = argnums % len(args)
    derivative = (
        dense_hessian(func, argnums, backend=name)
        if hessian
        else jacrev(func, argnums, backend=name)
    )
    generator = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
    pattern: Optional[torch.Tensor] = None
    for probe in range(probes):
        point = x.detach()
        if probe:
            u = torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1
            u = u.to(device=x.device, dtype=x.dtype)
            point = point + scale * (point.abs() + 1) * u
        d = derivative(*args[:i], point, *args[i + 1 :])
        if not isinstance(d, torch.Tensor):
            raise NotImplementedError(
                f"detect_sparsity: func must return one tensor, got a {type(d).__name__} "
                "of derivatives"
            )
        nonzero = (d.detach() != 0).reshape(-1, x.numel())
        pattern = nonzero if pattern is None else pattern | nonzero
    assert pattern is not None
    return pattern
