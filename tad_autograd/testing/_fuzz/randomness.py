"""Fuzzing ``vmap``'s ``randomness=`` semantics against a Python loop.

A random program ``g(*args) = (y * (1 + noise / 4), noise)`` with
``noise = torch.rand_like(y)`` (``y`` the main output of a smooth program)
is vmapped by every backend and automatic mode:

* ``"error"``: the call raises ``RuntimeError`` (as ``torch.func`` does);
* ``"same"``: every sample's noise equals one eager draw from the caller's
  generator, the values equal the loop's, and the generator ends where one
  eager call leaves it;
* ``"different"``: the noise lies in ``[0, 1)``, differs between samples, the
  values equal ``y_b * (1 + noise_b / 4)`` with ``y_b`` from the loop, and the
  generator moved.

Examples
--------
>>> from hypothesis import given, settings
>>> from tad_autograd.testing.strategies import programs, vmap_calls
>>> @settings(max_examples=2, deadline=None, database=None)
... @given(vmap_calls(programs(pytree_inputs=False), with_kwargs=False, random_out_dims=False))
... def test(call):
...     check_vmap_randomness(call, "same", backends=["autograd"])
>>> test()
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from ...compat._pytree import tree_flatten
from ..operators import transform_backends
from .support import Backends, assert_close_in_dtype, backends_and_auto

__all__ = ["check_vmap_randomness", "noisy"]

_SEED = 4321


def noisy(program: Callable[..., Any]) -> Callable[..., Any]:
    """``g(*args) = (y * (1 + noise / 4), noise)``, ``y`` the last output leaf of ``program``.

    Examples
    --------
    >>> import torch
    >>> out, noise = noisy(torch.sin)(torch.zeros(3))
    >>> bool(((noise >= 0) & (noise < 1)).all())
    True
    """

    def g(*args: Any) -> Any:
        y = tree_flatten(program(*args))[0][-1]
        noise = torch.rand_like(y)
        return y * (1 + noise / 4), noise

    return g


def check_vmap_randomness(call: Any, randomness: str, backends: Backends = None) -> None:
    """Check ``vmap(noisy(call.func), call.in_dims, randomness=...)`` on every backend.

    ``call`` is a :class:`~tad_autograd.testing.strategies.VmapCall` with
    ``out_dims=0`` and no kwargs.

    Examples
    --------
    >>> from hypothesis import find
    >>> from tad_autograd.testing.strategies import vmap_calls
    >>> call = find(vmap_calls(with_kwargs=False, random_out_dims=False),
    ...             lambda c: c.batch_size == 2)
    >>> check_vmap_randomness(call, "different", backends=["autograd", None])
    """
    import tad_autograd as ta

    backends = backends_and_auto(backends)
    g = noisy(call.func)
    # the loop reference of the deterministic part and one eager draw
    y_loop = call.reference(lambda *a: tree_flatten(call.func(*a))[0][-1], out_dims=0)
    torch.manual_seed(_SEED)
    _, one_draw = g(*call.sample_args(0))
    after_one = torch.get_rng_state()
    transforms = set(transform_backends())
    for backend in backends:
        what = f"vmap(randomness={randomness!r}, backend={backend!r})\n{call!r}"
        fn = ta.vmap(g, call.in_dims, 0, randomness, chunk_size=call.chunk_size, backend=backend)
        torch.manual_seed(_SEED)
        before = torch.get_rng_state()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("error")
            warnings.simplefilter("always", ta.BackendFallbackWarning)
            if randomness == "error":
                try:
                    fn(*call.args)
                except RuntimeError:
                    continue
                raise AssertionError(f"{what}: a random op under randomness='error' did not raise")
            out, noise = fn(*call.args)
        assert backend is None or not rec, f"{what}: explicit backend warned {rec}"
        assert noise.shape == (call.batch_size,) + one_draw.shape, f"{what}: noise shape"
        if randomness == "same":
            for b in range(call.batch_size):
                if backend is None or backend in transforms:
                    # torch.func fills a ``*_like`` draw in the batched tensor's memory order:
                    # the eager draw's numbers, possibly in another layout, the same per sample
                    # (automatic mode vectorises with the transform backend's vmap)
                    assert_close_in_dtype(
                        noise[b], noise[0], noise[b].dtype, f"{what}: sample {b} noise != sample 0"
                    )
                    assert_close_in_dtype(
                        noise[b].flatten().sort().values,
                        one_draw.flatten().sort().values,
                        noise[b].flatten().sort().values.dtype,
                        f"{what}: sample {b} noise is not one eager draw's numbers",
                    )
                    continue
                assert_close_in_dtype(
                    noise[b],
                    one_draw,
                    noise[b].dtype,
                    f"{what}: sample {b} noise != one eager draw",
                )
            assert torch.equal(torch.get_rng_state(), after_one), (
                f"{what}: RNG state is not where one eager draw leaves it"
            )
        else:
            assert bool(((noise >= 0) & (noise < 1)).all()), f"{what}: noise outside [0, 1)"
            if call.batch_size > 1 and noise[0].numel() > 0:
                flat = noise.reshape(call.batch_size, -1)
                for b in range(1, call.batch_size):
                    assert not torch.equal(flat[b], flat[0]), f"{what}: samples 0, {b} same noise"
            assert not torch.equal(torch.get_rng_state(), before), f"{what}: RNG never drawn"
        assert_close_in_dtype(
            out,
            y_loop * (1 + noise / 4),
            out.dtype,
            f"{what}: values != loop with the returned noise",
        )
