"""The cases of the OpInfo sweep: which op, which sample, which function of one tensor.

A case turns one OpInfo sample into ``f(x) = op(x, *sample.args, **sample.kwargs)``
(its floating-point outputs that autograd differentiates; through the op's
``gradcheck_wrapper``, as PyTorch's own derivative tests call it, so that
e.g. ``linalg.eigh`` sees a symmetric ``x + x.mH`` and masked ops zero their
masked-out outputs: a function whose derivative is defined in every
direction, which forward and reverse mode must agree on), with ``x`` the
sample's input in float64 and a batch of :data:`BATCH` samples built from it
for ``vmap``.  Random ops are made deterministic by seeding inside ``f``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

MAX_NUMEL = 200  # elements of the input, and of all outputs together
#: Samples per op (within the bounds); ``TAD_AUTOGRAD_OPDB_SAMPLES`` sets more for a long run.
SAMPLES_PER_OP = int(os.environ.get("TAD_AUTOGRAD_OPDB_SAMPLES", "3"))
MAX_SAMPLES = 8 * SAMPLES_PER_OP  # samples looked at per op for those within the bounds
MAX_DEFECT_SAMPLES = 48  # samples tried for an op of BATCHING_DEFECTS, until one reproduces
SEED = 1234
BATCH = 3


@dataclass
class Case:
    """One op on one sample input: ``f`` of one float64 tensor ``x``."""

    name: str  # OpInfo name, ``op.name`` or ``op.name.variant``
    sample_index: int
    op: Any
    sample: Any
    f: Callable[[torch.Tensor], Any]
    x: torch.Tensor
    random: bool  # draws random numbers (for the report: vmap runs with randomness="error")

    def __repr__(self) -> str:
        return f"<Case {self.label}>"

    @property
    def label(self) -> str:
        return self.name if self.sample_index == 0 else f"{self.name} (sample {self.sample_index})"

    def batch(self) -> torch.Tensor:
        """:data:`BATCH` samples for vmap: ``x``, ``0.9 x + 0.05`` and ``1.1 x``."""
        x = self.x.detach()
        return torch.stack([x, x * 0.9 + 0.05, x * 1.1])

    def repro(self, transform: str, backend: Optional[str]) -> str:
        """A one-line reproduction (the arguments of the sample are abbreviated)."""
        args = ", ".join(
            [f"x{tuple(self.x.shape)}"]
            + [
                f"<{type(a).__name__}{tuple(a.shape)}>" if torch.is_tensor(a) else repr(a)
                for a in self.sample.args
            ]
            + [f"{k}={v!r}" for k, v in self.sample.kwargs.items()]
        )
        kw = "" if backend is None else f", backend={backend!r}"
        call = {
            "jacrev": f"ta.jacrev(f{kw})(x)",
            "vmap": f"ta.vmap(f{kw})(xs)",
            "vmap(jacrev)": f"ta.vmap(ta.jacrev(f{kw}){kw})(xs)",
            "jacfwd": f"ta.jacfwd(f{kw}, randomness={'same' if self.random else 'error'!r})(x)",
            "jvp": f"ta.jvp(f, (x,), (t,){kw})",
        }[transform]
        wrapped = getattr(self.op.gradcheck_wrapper, "__name__", "") != "<lambda>"
        call_op = f"op.gradcheck_wrapper(op.op, {args})" if wrapped else f"op({args})"
        tangent = "t = torch.linspace(-1, 1.3, x.numel(), dtype=x.dtype).reshape(x.shape); "
        return (
            f"op = {{op_name(o): o for o in op_db}}[{self.name!r}]; f = lambda x: {call_op}; "
            f"xs = torch.stack([x, 0.9 * x + 0.05, 1.1 * x]); "
            f"{tangent if transform == 'jvp' else ''}{call}"
        )


def _seed() -> None:
    # Not torch.manual_seed: it also queues a CUDA seeding call, with a formatted stack.
    torch.random.default_generator.manual_seed(SEED)


def op_name(op: Any) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def load_op_db() -> List[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.testing._internal.common_methods_invocations import op_db
    return list(op_db)


def _output_leaves(out: Any) -> Optional[Tuple[torch.Tensor, ...]]:
    """The outputs as a tuple of tensors, or ``None`` if any output is not a tensor."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(out)
    return None


def _make_f(op: Any, sample: Any, single: bool, kept: Tuple[int, ...]) -> Callable[..., Any]:
    args, kwargs = sample.args, sample.kwargs
    wrapper = op.gradcheck_wrapper

    def f(x: torch.Tensor) -> Any:
        _seed()  # random ops draw the same numbers in every evaluation
        out = wrapper(op.op, x, *args, **kwargs)
        return out if single else tuple(out[i] for i in kept)

    return f


class _SeededOps(TorchDispatchMode):
    """Notes whether an aten op tagged ``nondeterministic_seeded`` runs."""

    seen = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):
            self.seen = True
        return func(*args, **(kwargs or {}))


def _is_random(op: Any, sample: Any, x: torch.Tensor) -> bool:
    """Whether the op draws random numbers.

    OpInfo's random ops seed themselves and restore the generator, so neither
    two calls nor the generator's state tell: the dispatched aten ops do.
    """
    mode = _SeededOps()
    with torch.no_grad(), mode:
        op(x.clone(), *sample.args, **sample.kwargs)
    return mode.seen


def make_case(op: Any, index: int, sample: Any) -> Tuple[Optional[Case], str]:
    """A case for ``sample``, or ``None`` and why the sample does not fit the bounds."""
    x = sample.input
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None, "input not a float tensor"
    if x.layout != torch.strided:
        return None, "input not a strided tensor"
    if not 0 < x.numel() <= MAX_NUMEL:
        return None, f"input numel not in 1..{MAX_NUMEL}"
    try:
        with torch.enable_grad():
            _seed()
            x_in = x.detach().clone().requires_grad_(True)
            out = op.gradcheck_wrapper(op.op, x_in, *sample.args, **sample.kwargs)
        leaves = _output_leaves(out)
        if leaves is None:
            return None, "output not tensors"
        # Outputs an op declares non-differentiable (native_group_norm's mean and rstd) get
        # zeros from autograd but the true derivative from torch.func: left out.
        kept = tuple(i for i, o in enumerate(leaves) if o.is_floating_point() and o.requires_grad)
        if not kept:
            return None, "no differentiable floating-point tensor output"
        if not 0 < sum(leaves[i].numel() for i in kept) <= MAX_NUMEL:
            return None, f"output numel not in 1..{MAX_NUMEL}"
        random = _is_random(op, sample, x)
    except Exception:
        return None, "op fails"
    single = isinstance(out, torch.Tensor)
    f = _make_f(op, sample, single, kept)
    return Case(op_name(op), index, op, sample, f, x.detach().clone(), random), ""


def iter_cases(op: Any, limit: int) -> Iterator[Tuple[Optional[Case], str]]:
    """Cases from the op's first ``limit`` float64 CPU samples; ``(None, why)`` for misfits."""
    _seed()
    # The generator itself: OpInfo.sample_inputs wraps it in a tracker that walks the
    # stack (inspect.stack, reading source files) on every call, slow under pytest.
    samples = iter(op.sample_inputs_func(op, "cpu", torch.float64, False))
    for index in range(limit):
        try:
            sample = next(samples)
        except StopIteration:
            return
        yield make_case(op, index, sample)


def why_not_swept(op: Any) -> Optional[str]:
    """Why the op is not swept at all, or ``None``."""
    if not op.supports_autograd:
        return "no autograd"
    try:
        if torch.float64 not in op.supported_dtypes("cpu"):
            return "no float64"
    except Exception:
        return "dtype query failed"
    return None


def graph_nodes(case: Case) -> Tuple[FrozenSet[str], FrozenSet[str]]:
    """Autograd node class names in the op's forward graph and in its create_graph gradient."""

    def walk(roots: List[Any]) -> FrozenSet[str]:
        seen: Dict[int, Any] = {}
        stack = [r for r in roots if r is not None]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen[id(node)] = node
            stack.extend(n for n, _ in node.next_functions if n is not None)
        return frozenset(type(n).__name__ for n in seen.values())

    x = case.x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = _output_leaves(case.f(x)) or ()
        forward = walk([o.grad_fn for o in out])
        total = sum((o * torch.randn_like(o)).sum() for o in out)
        (g,) = torch.autograd.grad(total, x, create_graph=True, allow_unused=True)
    backward = walk([g.grad_fn]) if g is not None else frozenset()
    return forward, backward
