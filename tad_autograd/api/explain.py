"""``explain()``: which backend a call would use, and why."""

from __future__ import annotations

import os
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from ..compat._torch_info import TORCH_VERSION
from ..compat.batching_defects import ACTIVE_DEFECTS, BatchingDefect, corrected
from ..compat.devices import TRANSFORM_SUPPORT, device_type_of
from ..dispatch._automatic import Plan, plan
from ..dispatch._fallback import MEMORY, Fallback
from ..dispatch._registry import REGISTRY
from ..dispatch._resolver import Resolution, resolve
from ..dispatch._settings import CONTEXT, ENV_VAR, GLOBAL
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
        The account, one line each: by default the answer and the reason in at
        most six lines; with ``verbose=True`` also the settings consulted, the
        ops the installed torch gets wrong, the device types and every
        remembered fallback.
    strategy : str
        How ``jacrev``/``hessian``/``vmap`` calls run on the backend:
        ``"transform"``, ``"loop"`` or ``"eager-vectorised"``
        (``tad_autograd.dispatch._automatic``).
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


#: What each strategy does, in a few words (the default account).
_STRATEGY_SHORT = {
    "transform": "the backend's own transforms",
    "loop": "an eager forward pass and a loop of backward passes; vmap loops over the batch",
    "compiled": "the backend's own transforms, which dynamo traces",
    "eager-vectorised": (
        "an eager forward pass, then one vectorised backward pass for the Jacobian's rows "
        "(a loop for a few rows); vmap loops over small batches"
    ),
}


def explain(
    *args: Any,
    device: Optional[Union[str, torch.device]] = None,
    func: Optional[Callable[..., Any]] = None,
    verbose: bool = False,
) -> Explanation:
    """Tell which backend a call with ``args`` would use here, and why.

    Parameters
    ----------
    *args : Any
        The arguments the call would get (only their device matters).
    device : str or torch.device, optional
        Consider this device instead of the arguments'.
    func : callable, optional
        The function the call would differentiate (or a transform of it): the
        account names the fallbacks remembered for it.
    verbose : bool
        Give the full picture: every setting consulted, what the strategy does
        for each operator, the ops the installed torch gets wrong and what goes
        wrong, the choice for every known device type, and every remembered
        fallback.

    Returns
    -------
    Explanation
        ``str()`` of it is the answer and the reason in at most six lines:
        backend, strategy, why, what automatic mode does about fallbacks and
        the ops torch gets wrong, and the remembered fallbacks (``func``'s, if
        given); with ``verbose=True``, the full picture.

    Examples
    --------
    >>> import torch, tad_autograd as ta
    >>> with ta.use_backend("autograd"):
    ...     print(ta.explain(torch.zeros(3)))  # doctest: +ELLIPSIS
    tad_autograd would use backend 'autograd' for tensors on 'cpu' (torch ...), decided by: ...
    Why: 'autograd' chosen by use_backend.
    Strategy: 'loop' (an eager forward pass and a loop of backward passes; ...).
    ...
    >>> len(str(ta.explain(torch.zeros(3))).splitlines()) <= 6
    True
    >>> "Device types" in str(ta.explain(device="meta", verbose=True))
    True
    """
    if device is not None:
        device_type = torch.device(device).type
    else:
        device_type = device_type_of(args)
    context = CONTEXT.get()
    env = os.environ.get(ENV_VAR)
    resolution = _resolve(context, env, device_type)
    backend = resolution.backend.name
    decisions = plan(resolution.backend, resolution.automatic, resolution.candidates)
    rows = last_rows_decision() or ""
    lines = [
        f"tad_autograd would use backend {backend!r} for tensors on "
        f"{device_type!r} (torch {TORCH_VERSION}), decided by: {resolution.source}.",
        "Why: " + "; ".join(_reasons(resolution)) + ".",
        f"Strategy: {decisions.runs!r} ({_STRATEGY_SHORT.get(decisions.runs, 'verbose=True')}).",
    ]
    if verbose:
        lines += _settings(context, env, resolution)
        lines += _strategy_details(resolution, decisions)
    lines.append(_automatic_line(resolution, verbose))
    if rows and resolution.automatic:
        lines.append(f"Rows of this thread's last automatic Jacobian: {rows}.")
    if verbose:
        lines += _defect_table()
        lines += _device_matrix(context, env)
    lines += _remembered(func, verbose)
    return Explanation(backend, resolution.source, device_type, tuple(lines), decisions.runs, rows)


def _resolve(context: Any, env: Optional[str], device_type: str) -> Resolution:
    return resolve(
        argument=None,
        context=context,
        global_setting=GLOBAL.name,
        environment=env,
        device_type=device_type,
        registry=REGISTRY,
    )


def _reasons(resolution: Resolution) -> Tuple[str, ...]:
    """The resolver's notes, less the last one of automatic mode (the answer itself)."""
    notes = resolution.notes
    if resolution.automatic and len(notes) > 1:
        notes = notes[:-1]
    return notes


def _settings(context: Any, env: Optional[str], resolution: Resolution) -> List[str]:
    chosen = "none" if context is None else f"{context[0] or 'auto'} ({context[1]})"
    return [
        "Settings consulted, first that applies wins:",
        "  1. backend= argument of the transform: (per call; not visible here)",
        f"  2. use_backend block / enclosing transform: {chosen}",
        f"  3. set_backend: {GLOBAL.name or 'not set'}",
        f"  4. {ENV_VAR}: {env if env else 'not set'}",
        "  5. automatic choice",
        *(f"  - {note}" for note in resolution.notes),
    ]


def _strategy_details(resolution: Resolution, decisions: Plan) -> List[str]:
    name = resolution.backend.name
    lines = [
        f"Strategy {decisions.runs!r} runs every operator; fjacrev/fvmap always use 'transform'."
    ]
    if decisions.vectorise_rows_above:
        cpu, accelerator = decisions.vmap_loops_up_to
        lines.append(
            f"  jacrev/hessian: an eager forward pass, then one backward pass for a scalar "
            f"output, a loop for a few rows, otherwise one backward pass vectorised with "
            f"{name!r}'s vmap; vmap loops over batches of at most {cpu} on the CPU "
            f"and {accelerator} on an accelerator (the batch size read off a first "
            "argument that is a tensor batched along an int in_dims, with every output "
            f"batched), and otherwise uses {name!r} "
            "directly; grad, grad_and_value, vjp, jvp, linearize and hvp run eagerly (dual "
            f"numbers for forward mode); jacfwd of more than a few inputs vectorises its "
            f"columns with {name!r}."
        )
    return lines


def _op_list(defects: Sequence[BatchingDefect]) -> str:
    return ", ".join(dict.fromkeys(d.op for d in defects))


def _automatic_line(resolution: Resolution, verbose: bool) -> str:
    """What automatic mode does (or, for an explicit choice, does not do) about failures."""
    batching = [d for d in ACTIVE_DEFECTS if d.stage != "tangent"]
    tangent = [d for d in ACTIVE_DEFECTS if d.stage == "tangent"]
    more = "" if verbose else "; verbose=True says what goes wrong"
    if resolution.automatic:
        order = " -> ".join(repr(b.name) for b in resolution.candidates)
        line = (
            f"Automatic mode: a function that cannot be transformed falls back {order}"
            if len(resolution.candidates) > 1
            else "Automatic mode: no backend to fall back to"
        )
        avoided = []
        if batching:
            avoided.append(f"never vectorised through {_op_list(batching)}")
        if tangent:
            avoided.append(f"no tangents pushed through {_op_list(tangent)}")
        if avoided:
            line += f"; ops torch {TORCH_VERSION} gets wrong: " + ", ".join(avoided) + more
        return line + "."
    line = "Chosen explicitly: no fallback"
    if resolution.backend.is_transform:
        wrong = [f"{_op_list(batching)} (batched)"] if batching else []
        wrong += [f"{_op_list(tangent)} (tangents)"] if tangent else []
        if wrong:
            line += (
                f"; {resolution.backend.name!r} gives torch's own results also through ops "
                f"torch {TORCH_VERSION} gets wrong: " + ", ".join(wrong) + more
            )
    elif tangent:
        line += (
            f"; forward-mode products through {_op_list(tangent)} (wrong in torch "
            f"{TORCH_VERSION}'s forward mode) come from reverse mode" + more
        )
    return line + "."


def _defect_table() -> List[str]:
    fixed = sorted(corrected())
    if fixed:
        fixed_line = [
            f"Batching torch {TORCH_VERSION} gets wrong, corrected in it at import (a right "
            f"rule registered; vectorised on every path, torch.func's own calls too): "
            f"{', '.join(fixed)}."
        ]
    else:
        fixed_line = []
    if not ACTIVE_DEFECTS:
        return [f"torch {TORCH_VERSION} gets no known op wrong.", *fixed_line]
    lines = [
        f"Ops torch {TORCH_VERSION} gets wrong (derivative: automatic mode does not vectorise "
        "backward passes through them; forward: nor vmap them; tangent: automatic mode and "
        "the autograd backend push no tangents through them, reverse mode instead):"
    ]
    for d in ACTIVE_DEFECTS:
        variants = f" (OpInfo variants {', '.join(d.variants)})" if d.variants else ""
        lines.append(f"  - {d.op}{variants}, {d.stage}: {d.what}")
    return lines + fixed_line


def _device_matrix(context: Any, env: Optional[str]) -> List[str]:
    lines = ["Device types (the choice under the settings in force; transform support):"]
    for device_type, (supported, evidence) in TRANSFORM_SUPPORT.items():
        r = _resolve(context, env, device_type)
        name = plan(r.backend, r.automatic, r.candidates).runs
        support = "supported" if supported else "not trusted"
        lines.append(
            f"  - {device_type}: {r.backend.name!r} ({name!r}); transforms {support}: {evidence}"
        )
    return lines


def _remembered(func: Optional[Callable[..., Any]], verbose: bool) -> List[str]:
    """Remembered fallbacks: ``func``'s (and those of what it wraps), else all of them."""
    if func is not None:
        found: List[str] = []
        seen = set()
        while func is not None and id(func) not in seen:
            seen.add(id(func))
            found += MEMORY.describe(func, Fallback)
            func = getattr(func, "__wrapped__", None)
        entries = tuple(dict.fromkeys(found))
        if not entries:
            return ["Remembered fallbacks for this function: none."]
        if verbose:
            return ["Remembered fallbacks for this function:", *(f"  - {e}" for e in entries)]
        return ["Remembered fallbacks for this function: " + "; ".join(entries) + "."]
    entries = MEMORY.describe(kind=Fallback)
    if not entries:
        return ["No remembered fallbacks."]
    if verbose:
        return ["Remembered fallbacks:", *(f"  - {e}" for e in entries)]
    if len(entries) > 2:
        more = f"; and {len(entries) - 2} more (func= or verbose=True names them)"
        return ["Remembered fallbacks: " + "; ".join(entries[:2]) + more + "."]
    return ["Remembered fallbacks: " + "; ".join(entries) + "."]
