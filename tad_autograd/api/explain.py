"""``explain()``: which backend a call would use, and why."""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional, Tuple, Union

import torch

from ..compat._torch_info import TORCH_VERSION
from ..compat.batching_defects import ACTIVE_DEFECTS
from ..compat.devices import device_type_of
from ..dispatch.automatic import plan
from ..dispatch.fallback import MEMORY
from ..dispatch.registry import REGISTRY
from ..dispatch.resolver import Resolution, resolve
from ..dispatch.settings import CONTEXT, ENV_VAR, GLOBAL
from ..eager._rows import last_rows_decision

__all__ = ["Explanation", "explain"]


class Explanation(NamedTuple):
    """What :func:`~tad_autograd.explain` found; ``str()`` gives the readable account.

    An immutable named tuple.

    Attributes
    ----------
    backend : str
        The backend a call would use.
    source : str
        The setting that decided (or ``"automatic"``).
    device_type : str
        The device type considered.
    lines : tuple of str
        The account: settings consulted, backends skipped and why, remembered
        fallbacks.
    strategy : str
        How ``jacrev``/``hessian``/``vmap`` calls run on the backend:
        ``"transform"``, ``"loop"`` or ``"eager-vectorised"``
        (``tad_autograd.dispatch.automatic``).
    rows : str
        How this thread's last automatic Jacobian of more than a few rows took
        them: ``"vectorised"``, or ``"looped: "`` and the cause (an op torch
        batches wrongly, or the custom Function whose backward calls one);
        ``""`` before any.
    """

    backend: str
    source: str
    device_type: str
    lines: Tuple[str, ...]
    strategy: str = ""
    rows: str = ""

    def __str__(self) -> str:
        return "\n".join(self.lines)


def explain(*args: Any, device: Optional[Union[str, torch.device]] = None) -> Explanation:
    """Tell which backend a call with ``args`` would use here, and why.

    Parameters
    ----------
    *args : Any
        The arguments the call would get (only their device matters).
    device : str or torch.device, optional
        Consider this device instead of the arguments'.

    Returns
    -------
    Explanation
        ``str()`` of it lists the settings consulted (``backend=`` argument
        aside), the backends skipped and why, and remembered fallbacks.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> with ta.use_backend("autograd"):
    ...     print(ta.explain(torch.zeros(3)).backend)
    autograd
    >>> "automatic" in str(ta.explain(device="meta"))
    True
    """
    if device is not None:
        device_type = torch.device(device).type
    else:
        device_type = device_type_of(args)
    context = CONTEXT.get()
    env = os.environ.get(ENV_VAR)
    resolution: Resolution = resolve(
        argument=None,
        context=context,
        global_setting=GLOBAL.name,
        environment=env,
        device_type=device_type,
        registry=REGISTRY,
    )
    lines = [
        f"tad_autograd would use backend {resolution.backend.name!r} for tensors on "
        f"{device_type!r} (torch {TORCH_VERSION}), decided by: {resolution.source}.",
        "Settings consulted, first that applies wins:",
        "  1. backend= argument of the transform: (per call; not visible here)",
        f"  2. use_backend block / enclosing transform: "
        f"{'none' if context is None else (context[0] or 'auto') + ' (' + context[1] + ')'}",
        f"  3. set_backend: {GLOBAL.name or 'not set'}",
        f"  4. {ENV_VAR}: {env if env else 'not set'}",
        "  5. automatic choice",
    ]
    lines += [f"  - {note}" for note in resolution.notes]
    decisions = plan(resolution.backend, resolution.automatic, resolution.candidates)
    lines.append(
        f"Strategy: {decisions.runs!r} on backend {resolution.backend.name!r} "
        "(every operator; fjacrev/fvmap always use 'transform')."
    )
    if decisions.vectorise_rows_above:
        lines.append(
            f"Automatic jacrev/hessian on {resolution.backend.name!r}: an eager forward pass, "
            "then one backward pass for a scalar output, a loop for a few rows, otherwise "
            f"one backward pass vectorised with {resolution.backend.name!r}'s vmap; "
            f"vmap loops over batches of at most {decisions.vmap_loops_up_to[0]} on the CPU and "
            f"{decisions.vmap_loops_up_to[1]} on an accelerator, and otherwise uses "
            f"{resolution.backend.name!r} directly.  grad, grad_and_value, vjp, jvp, "
            "linearize and hvp run eagerly (dual numbers for forward mode); jacfwd of more "
            f"than a few inputs vectorises its columns with {resolution.backend.name!r}."
        )
    rows = last_rows_decision() or ""
    if rows:
        lines.append(f"Rows of this thread's last automatic Jacobian: {rows}.")
    batching = [d for d in ACTIVE_DEFECTS if d.stage != "tangent"]
    tangent = [d for d in ACTIVE_DEFECTS if d.stage == "tangent"]
    if resolution.automatic and batching:
        lines.append(
            f"torch {TORCH_VERSION} batches these ops wrongly, so automatic mode never "
            "vectorises through them (a loop of backward passes, or the autograd backend's "
            "loop for a vmap, instead): "
            + "; ".join(f"{d.op} ({d.stage}: {d.what})" for d in batching)
        )
    if resolution.automatic and tangent:
        lines.append(
            f"torch {TORCH_VERSION}'s forward-mode formulas for these ops are wrong, so "
            "automatic mode (and the autograd backend) push no tangents through them "
            "(reverse mode instead): " + "; ".join(f"{d.op} ({d.what})" for d in tangent)
        )
    if decisions.fallback:
        lines.append(
            "If a function cannot be transformed, calls fall back in this order: "
            + " -> ".join(repr(name) for name in (decisions.backend,) + decisions.fallback)
        )
    remembered = MEMORY.describe()
    if remembered:
        lines.append("Remembered fallbacks:")
        lines += [f"  - {line}" for line in remembered]
    else:
        lines.append("No remembered fallbacks.")
    return Explanation(
        resolution.backend.name, resolution.source, device_type, tuple(lines), decisions.runs, rows
    )
