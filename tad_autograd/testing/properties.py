"""The property checks behind ``tests/property``, reusable on your own code.

Each ``check_*`` function takes a :class:`~tad_autograd.testing.Program`
or :class:`~tad_autograd.testing.VmapCall` (or anything with the
same attributes) and raises ``AssertionError`` with a readable report when the
property fails.  Wrap them in ``@given(...)`` to get property-based tests.

Examples
--------
>>> import torch
>>> from hypothesis import given, settings
>>> from tad_autograd.testing.strategies import programs
>>> from tad_autograd.testing.properties import check_jacrev_backends_agree
>>> @settings(max_examples=3, deadline=None, database=None)
... @given(programs())
... def test_jacrev(program):
...     check_jacrev_backends_agree(program)
>>> test_jacrev()
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from .agree import AUTO, assert_backends_agree
from .compare import assert_trees_close
from .operators import loop_backends, transform_backends
from .reference import flat_function, map_tensors, reference_jacobian

__all__ = [
    "transform_backends",
    "loop_backends",
    "check_jacrev_backends_agree",
    "check_hessian_backends_agree",
    "check_jacrev_jacrev_backends_agree",
    "check_vmap_backends_agree",
    "check_vmap_jacrev_backends_agree",
    "check_jacrev_vmap_backends_agree",
    "check_jacrev_matches_gradcheck",
    "check_vmap_matches_loop",
    "check_old_style_function",
]


def _against_reference(agreement: Any, expected: Any, label: str) -> None:
    """Every result of ``agreement`` equals the independent reference ``expected``
    (backend-vs-backend agreement alone proves nothing: func and functorch share code)."""
    for name, got in agreement.results.items():
        assert_trees_close(
            got, expected, actual_name=f"{label}({name})", expected_name=f"reference {label}"
        )


def _reference(op: str, func: Any, args: Any, **kw: Any) -> Any:
    from .operators import REFERENCE, build_operator

    out = build_operator(REFERENCE, op, func, **kw)(*args)
    return map_tensors(lambda t: t.detach(), out)


def _check_composition(
    op: str,
    label: str,
    func: Any,
    args: Any,
    backends: Optional[Sequence[str]],
    chunk_size: Optional[int] = None,
    **kw: Any,
) -> None:
    from .operators import LibraryOps, build_operator

    def transform(f: Callable[..., Any], backend: Optional[str]) -> Callable[..., Any]:
        return build_operator(LibraryOps(backend, chunk_size), op, f, **kw)

    transform.__name__ = label
    agreement = assert_backends_agree(
        func, *args, transform=transform, backends=_backends_for(func, backends)
    )
    _against_reference(agreement, _reference(op, func, args, **kw), label)


def _backends_for(program: Any, backends: Optional[Sequence[str]]) -> Optional[Sequence[str]]:
    if backends is not None:
        return backends
    if getattr(program, "has_old_style_function", False):
        return loop_backends() + (AUTO,)
    return None


def check_jacrev_backends_agree(
    program: Any, backends: Optional[Sequence[str]] = None, chunk_size: Optional[int] = None
) -> None:
    """Backends match the reference ``jacrev(program, program.argnums)(*program.args)``.

    Programs with an old-style ``autograd.Function`` are only run on the
    loop backends and ``"auto"`` unless ``backends`` is given.

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import programs
    >>> program = find(programs(), lambda p: p.num_args == 2)
    >>> check_jacrev_backends_agree(program, backends=["autograd", "auto"])
    """
    agreement = assert_backends_agree(
        program,
        *program.args,
        argnums=program.argnums,
        transform="jacrev",
        backends=_backends_for(program, backends),
        chunk_size=chunk_size,
    )
    expected = reference_jacobian(program, *program.args, argnums=program.argnums)
    _against_reference(agreement, expected, "jacrev")


def check_hessian_backends_agree(program: Any, backends: Optional[Sequence[str]] = None) -> None:
    """Backends match the reference ``hessian(program, program.argnums)(*program.args)``.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import find
    >>> from tad_autograd.testing import programs
    >>> float64 = programs(dtypes=[torch.float64], max_ops=3, max_side=2)
    >>> check_hessian_backends_agree(find(float64, lambda p: p.num_args == 2))
    """
    agreement = assert_backends_agree(
        program,
        *program.args,
        argnums=program.argnums,
        transform="hessian",
        backends=_backends_for(program, backends),
    )
    expected = _reference("hessian", program, program.args, argnums=program.argnums)
    _against_reference(agreement, expected, "hessian")


def check_jacrev_jacrev_backends_agree(
    program: Any, backends: Optional[Sequence[str]] = None
) -> None:
    """Backends match the reference ``jacrev(jacrev(program, a), a)(*args)``.

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import programs
    >>> smallest = find(programs(max_ops=3, max_side=2), lambda p: True)
    >>> check_jacrev_jacrev_backends_agree(smallest, backends=["autograd"])
    """
    a = program.argnums
    _check_composition(
        "jacrev_jacrev",
        "jacrev(jacrev)",
        program,
        program.args,
        backends,
        argnums=a,
        outer_argnums=a,
    )


def check_vmap_backends_agree(call: Any, backends: Optional[Sequence[str]] = None) -> None:
    """Backends match the reference ``vmap(call.func, ...)(*call.args, **call.kwargs)``.

    ``in_dims``, ``out_dims`` and ``chunk_size`` come from ``call.vmap_kwargs()``.

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import vmap_calls
    >>> check_vmap_backends_agree(find(vmap_calls(), lambda c: c.batch_size > 1))
    """
    agreement = assert_backends_agree(
        call.func,
        *call.args,
        transform="vmap",
        call_kwargs=call.kwargs,
        backends=_backends_for(call.func, backends),
        **call.vmap_kwargs(),
    )
    _against_reference(agreement, call.reference(), "vmap")


def check_vmap_jacrev_backends_agree(call: Any, backends: Optional[Sequence[str]] = None) -> None:
    """Backends match the reference ``vmap(jacrev(f, argnums), in_dims)(*args)``.

    ``call.kwargs`` are not used (``jacrev`` takes positional arguments only).

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing import vmap_calls
    >>> call = find(vmap_calls(with_kwargs=False), lambda c: c.chunk_size is not None)
    >>> check_vmap_jacrev_backends_agree(call)
    """
    _check_composition(
        "vmap_jacrev",
        "vmap(jacrev)",
        call.func,
        call.args,
        backends,
        call.chunk_size,
        argnums=call.func.argnums,
        in_dims=call.in_dims,
    )


def check_jacrev_vmap_backends_agree(call: Any, backends: Optional[Sequence[str]] = None) -> None:
    """Backends match the reference ``jacrev(vmap(f, in_dims, out_dims), argnums)(*args)``.

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import programs, vmap_calls
    >>> calls = vmap_calls(programs(max_args=1), with_kwargs=False)
    >>> check_jacrev_vmap_backends_agree(find(calls, lambda c: True), backends=["autograd"])
    """
    _check_composition(
        "jacrev_vmap",
        "jacrev(vmap)",
        call.func,
        call.args,
        backends,
        argnums=call.func.argnums,
        in_dims=call.in_dims,
        out_dims=call.out_dims,
    )


def check_jacrev_matches_gradcheck(program: Any, backend: Optional[str] = None) -> None:
    """``torch.autograd.gradcheck`` passes on the program (float64 only), and
    ``jacrev`` equals ``torch.autograd.functional.jacobian``.

    ``backend=None`` uses the automatic choice.

    Examples
    --------
    >>> import torch
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import programs
    >>> check_jacrev_matches_gradcheck(find(programs(dtypes=[torch.float64]), lambda p: True))
    """
    import tad_autograd as ta

    if program.dtype != torch.float64:
        raise ValueError(f"gradcheck needs float64, got {program.dtype}")
    flat_func, flat_in, _ = flat_function(program, program.args, program.argnums)
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in flat_in)
    assert torch.autograd.gradcheck(
        flat_func, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, raise_exception=True
    )
    expected = reference_jacobian(program, *program.args, argnums=program.argnums)
    got = ta.jacrev(program, argnums=program.argnums, backend=backend)(*program.args)
    assert_trees_close(
        got,
        expected,
        actual_name=f"jacrev(backend={backend!r})",
        expected_name="torch.autograd.functional.jacobian",
    )


def check_vmap_matches_loop(call: Any, backend: Optional[str] = None) -> None:
    """``vmap`` equals a Python loop over the batch (``call.reference()``).

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import vmap_calls
    >>> for backend in ("autograd", None):
    ...     check_vmap_matches_loop(find(vmap_calls(), lambda c: True), backend)
    """
    import tad_autograd as ta

    expected = call.reference()
    got = ta.vmap(call.func, backend=backend, **call.vmap_kwargs())(*call.args, **call.kwargs)
    assert_trees_close(
        got, expected, actual_name=f"vmap(backend={backend!r})", expected_name="Python loop"
    )


def _full_message(exc: BaseException) -> str:
    return "\n".join([str(exc)] + [str(n) for n in getattr(exc, "__notes__", ())])


def _mentions_autograd_backend(exc: BaseException) -> bool:
    msg = _full_message(exc)
    return 'backend="autograd"' in msg or "backend='autograd'" in msg


def check_old_style_function(program: Any, transform: str = "jacrev") -> None:
    """For a program with an old-style ``autograd.Function``: the loop backends
    and automatic mode agree with the reference, and every transform backend
    raises an error that points at ``backend="autograd"`` instead of returning
    a (possibly different) number.

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import programs
    >>> old_style = find(programs(old_style_functions=True), lambda p: p.has_old_style_function)
    >>> check_old_style_function(old_style, transform="vmap")
    """
    import tad_autograd as ta

    if transform == "jacrev":
        agreement = assert_backends_agree(
            program, *program.args, argnums=program.argnums, backends=loop_backends() + (AUTO,)
        )
        expected = reference_jacobian(program, *program.args, argnums=program.argnums)
        assert_trees_close(
            agreement.results[AUTO],
            expected,
            actual_name="jacrev(auto)",
            expected_name="torch.autograd.functional.jacobian",
        )

        def run(name: str) -> Any:
            return ta.jacrev(program, argnums=program.argnums, backend=name)(*program.args)
    elif transform == "vmap":
        args = program.args
        in_dims = tuple(0 if isinstance(a, torch.Tensor) else None for a in args)
        batched = tuple(
            a.unsqueeze(0).expand((2,) + a.shape) if isinstance(a, torch.Tensor) else a
            for a in args
        )
        if all(d is None for d in in_dims):
            return
        assert_backends_agree(
            program, *batched, transform="vmap", in_dims=in_dims, backends=loop_backends() + (AUTO,)
        )

        def run(name: str) -> Any:
            return ta.vmap(program, in_dims=in_dims, backend=name)(*batched)
    else:
        raise ValueError(f"transform must be 'jacrev' or 'vmap', got {transform!r}")

    if not program.has_old_style_function:
        return
    for name in transform_backends():
        try:
            run(name)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001
            if not _mentions_autograd_backend(exc):
                raise AssertionError(
                    f"{transform}(backend={name!r}) raised {type(exc).__name__} on an old-style "
                    f"autograd.Function, but neither the message nor its notes suggest "
                    f"backend='autograd':\n{_full_message(exc)}\nprogram: {program!r}"
                ) from exc
        else:
            raise AssertionError(
                f"backend {name!r} accepted an old-style autograd.Function "
                f"(it should raise a clear error):\nprogram: {program!r}"
            )
