"""Two threads differentiate one recorded graph at once (§12).

One thread takes a differentiable ``graph_jacobian`` (a loop of backward
passes that build a graph: the custom node guarded), the other a plain one
(a batched backward pass: the node watched).  Each pass's guard or watch
applies to its own thread only, both Jacobians are right (reference: a row
loop of ``torch.autograd.grad``), and the shared node is left exactly as it
was.  Events, not timings, make the passes overlap.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict

import pytest
import torch
from _helpers import assert_tree_close

import tad_autograd as ta

F64 = torch.float64
_WAIT = 20.0  # seconds: a bound against a hang, never reached when the passes overlap


def _reference(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    rows = [torch.autograd.grad(z[i], x, retain_graph=True)[0] for i in range(z.numel())]
    return torch.stack(rows)


def _identity(backward: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A custom Function: the identity, with ``backward`` run on its incoming gradient."""

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return x * 1.0

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return backward(g)

    return Identity


@pytest.mark.usefixtures("torch_cdist_rule")  # cdist batched wrongly: custom backwards watched
def test_two_threads_share_a_guarded_and_watched_node() -> None:
    b_in_pass, a_done = threading.Event(), threading.Event()

    def wait_for_b(g: torch.Tensor) -> torch.Tensor:  # until the batched pass runs
        b_in_pass.wait(_WAIT)
        return g

    def hold_for_a(g: torch.Tensor) -> torch.Tensor:  # the batched pass open until A ends
        b_in_pass.set()
        a_done.wait(_WAIT)
        return g

    # its (right, differentiable) backward happens to call cdist
    shared = _identity(lambda g: g + 0.0 * torch.cdist(g.reshape(1, -1), g.reshape(1, -1)).sum())
    wait, hold = _identity(wait_for_b), _identity(hold_for_a)
    x = torch.linspace(-1.0, 1.0, 8, dtype=F64).requires_grad_(True)
    y = shared.apply(x)
    before = dict(vars(y.grad_fn))
    za, zb = wait.apply(y) * 2.0, hold.apply(y) * 3.0
    results: Dict[str, Any] = {}

    def run(key: str, z: torch.Tensor, create_graph: bool) -> None:
        try:
            results[key] = ta.graph_jacobian(z, x, create_graph=create_graph)
        except Exception as error:  # reported below, with the thread it came from
            results[key] = error
        finally:
            if key == "a":
                a_done.set()

    threads = [
        threading.Thread(target=run, args=("a", za, True)),
        threading.Thread(target=run, args=("b", zb, False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b_in_pass.is_set() and a_done.is_set()
    for key, z in (("a", za), ("b", zb)):
        assert not isinstance(results[key], Exception), (key, results[key])
        assert_tree_close(results[key], _reference(z, x))
    after = dict(vars(y.grad_fn))
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
