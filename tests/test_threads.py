"""Concurrent calls from many threads are safe on every torch, backend and automatic mode (§6).

Inputs are large enough to take every path of automatic mode: the eager
forward with a vectorised backward (16 rows), the batch loop (batch 2) and
the transform (batch 8), and nested transforms (``vmap(jacrev)``).  torch
1.13's functorch keeps its transform levels process-wide, so those calls must
be serialised by the library; without that, threads hit ``INTERNAL ASSERT
FAILED ... DynamicLayer.cpp`` or return wrong values.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Tuple

import pytest
import torch

import tad_autograd as ta

N_THREADS = 8
ROUNDS = 6
W = torch.linspace(-1.0, 1.0, 16 * 16, dtype=torch.float64).reshape(16, 16)


def model(x: torch.Tensor) -> torch.Tensor:
    """A 16-row function of a 16-vector."""
    return torch.tanh(W @ x) * x.sum()


def reference_jacobian(x: torch.Tensor) -> torch.Tensor:
    """A row loop of ``torch.autograd.grad`` on the eager function (independent of the library)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    rows = [torch.autograd.grad(out[i], x, retain_graph=True)[0] for i in range(out.numel())]
    return torch.stack(rows)


CASES: List[Tuple[str, Callable[[Optional[str]], Callable[[torch.Tensor], Any]], int]] = [
    ("jacrev", lambda b: ta.jacrev(model, backend=b), 0),
    ("vmap(jacrev) batch 2", lambda b: ta.vmap(ta.jacrev(model), backend=b), 2),
    ("vmap(jacrev) batch 8", lambda b: ta.vmap(ta.jacrev(model), backend=b), 8),
    ("jacfwd", lambda b: ta.jacfwd(model, backend=b), 0),
    ("jacobian", lambda b: ta.jacobian(model, backend=b), 0),
    (
        "jvp columns",  # each column of the Jacobian as a jvp
        lambda b: (
            lambda x: torch.stack(
                [ta.jvp(model, (x,), (e,), backend=b)[1] for e in torch.eye(16, dtype=x.dtype)], 1
            )
        ),
        0,
    ),
    (
        "vjp rows",
        lambda b: (
            lambda x: torch.stack(
                [ta.vjp(model, x, backend=b)[1](e)[0] for e in torch.eye(16, dtype=x.dtype)]
            )
        ),
        0,
    ),
    ("vmap(jacfwd) batch 8", lambda b: ta.vmap(ta.jacfwd(model), backend=b), 8),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_threads_get_right_answers(backend: Optional[str], case: Any) -> None:
    name, build, batch = case
    torch.manual_seed(0)
    inputs = [
        torch.rand((batch, 16) if batch else (16,), dtype=torch.float64) for _ in range(N_THREADS)
    ]
    expected = [
        torch.stack([reference_jacobian(s) for s in x]) if batch else reference_jacobian(x)
        for x in inputs
    ]
    errors: List[BaseException] = []
    results: List[List[torch.Tensor]] = [[] for _ in range(N_THREADS)]
    barrier = threading.Barrier(N_THREADS, timeout=120)

    def work(k: int) -> None:
        try:
            fn = build(backend)
            barrier.wait()
            for _ in range(ROUNDS):
                results[k].append(fn(inputs[k]))
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), f"{name}: a thread hung"
    if errors:
        raise errors[0]
    for k in range(N_THREADS):
        where = f"{name}, thread {k}, backend {backend}"
        for got in results[k]:
            torch.testing.assert_close(got, expected[k], msg=lambda m: f"{where}: {m}")  # noqa: B023
