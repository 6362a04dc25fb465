"""Assertions shared by the contract tests."""

from __future__ import annotations

from typing import Any

import torch

from tad_autograd.compat._pytree import tree_flatten


def assert_tree_close(
    actual: Any, expected: Any, rtol: float | None = None, atol: float = 1e-12
) -> None:
    """Same pytree structure; each leaf through ``torch.testing.assert_close``.

    ``assert_close`` checks the shapes, dtypes and devices too; tolerances: ``rtol`` (default
    1e-10 for float64, 1e-5 otherwise) and ``atol`` (for float64; 1e-6 otherwise).
    """
    a_leaves, a_spec = tree_flatten(actual)
    e_leaves, e_spec = tree_flatten(expected)
    assert str(a_spec) == str(e_spec), f"structure differs:\n{a_spec}\n!=\n{e_spec}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        if not isinstance(e, torch.Tensor):
            assert a == e, f"leaf {i}: {a!r} != {e!r}"
            continue
        assert isinstance(a, torch.Tensor), f"leaf {i}: expected a tensor, got {type(a)}"
        f64 = e.dtype == torch.float64
        torch.testing.assert_close(
            a.detach(),
            e.detach(),
            rtol=rtol if rtol is not None else (1e-10 if f64 else 1e-5),
            atol=atol if f64 else 1e-6,
            msg=lambda m: f"leaf {i}: {m}",  # noqa: B023 - called (if at all) right here
        )


def reference_jacobian(func: Any, x: torch.Tensor) -> torch.Tensor:
    """d func / d x by a loop of ``torch.autograd.grad`` over the output's elements.

    An independent reference: plain autograd on the eager function, nothing of the library.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = func(x)
        rows = [
            torch.autograd.grad(out.reshape(-1)[i], x, retain_graph=True, allow_unused=True)[0]
            for i in range(out.numel())
        ]
    rows = [torch.zeros_like(x) if r is None else r for r in rows]
    return torch.stack(rows).reshape(out.shape + x.shape)


def reference_hessian(func: Any, x: torch.Tensor) -> torch.Tensor:
    """The Hessian of a scalar ``func`` by a loop over the rows of its create_graph gradient."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(func(x), x, create_graph=True)
        g = g.reshape(-1)
        rows = [torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(g.numel())]
    return torch.stack(rows).reshape(x.shape + x.shape)


class OldStyleExp(torch.autograd.Function):
    """exp(x) written the old way: forward(ctx, x); only plain autograd can transform it."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return grad * y


def make_new_style_exp() -> Any:
    """exp(x) with setup_context and generate_vmap_rule (torch >= 2.0 only)."""

    class NewStyleExp(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):  # type: ignore[override]
            return x.exp()

        @staticmethod
        def setup_context(ctx, inputs, output):  # type: ignore[override]
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, grad):  # type: ignore[override]
            (y,) = ctx.saved_tensors
            return grad * y

    return NewStyleExp
