"""Structural steps of random programs: indexing, ``where``, views, stacking, custom Functions.

Like :mod:`tad_autograd.testing._programs.ops`, each ``op_*`` function draws one
step from the state of a :class:`~tad_autograd.testing._programs.builder.ProgramBuilder`
(``pb``), or returns ``None`` when it cannot.

Examples
--------
>>> _index_text(2, 1, "0")
'[:, 0]'
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, cast

import torch
from hypothesis import strategies as st

from ..functions import NewStyleSiLU, OldStyleSin
from .builder import ProgramBuilder
from .program import MAX_NUMEL, _broadcast, _index_text, _numel, _Step

__all__ = ["op_index", "op_where", "op_permute", "op_expand", "op_stack", "op_custom"]


def op_index(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick(lambda s: len(s.shape) >= 1)
    if src is None:
        return None
    s = pb.steps[src]
    nd = len(s.shape)
    d = pb.draw(st.integers(0, nd - 1))
    n = s.shape[d]
    kind = pb.draw(st.sampled_from(["int", "slice", "fancy"]))
    if kind == "int":
        i = pb.draw(st.integers(-n, n - 1))
        key = (slice(None),) * d + (i,)
        shape = s.shape[:d] + s.shape[d + 1 :]
        text = f"v{src}" + _index_text(nd, d, str(i))
    elif kind == "slice":
        start = pb.draw(st.integers(0, n - 1))
        stop = pb.draw(st.integers(start + 1, n))
        step = pb.draw(st.integers(1, 2))
        key = (slice(None),) * d + (slice(start, stop, step),)
        shape = s.shape[:d] + (len(range(start, stop, step)),) + s.shape[d + 1 :]
        text = f"v{src}" + _index_text(nd, d, f"{start}:{stop}" + (f":{step}" if step != 1 else ""))
    else:
        idx_list = pb.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
        shape = s.shape[:d] + (len(idx_list),) + s.shape[d + 1 :]
        if _numel(shape) > MAX_NUMEL:
            return None
        idx = torch.tensor(idx_list, dtype=torch.long, device=pb.device)
        name = pb.const("I", idx)
        key = tuple([slice(None)] * d + [cast(Any, idx)])
        text = f"v{src}" + _index_text(nd, d, f"{name}={idx_list}")
    return _Step(shape, s.bound, text, lambda vals, args, src=src, key=key: vals[src][key])


def op_where(pb: ProgramBuilder) -> Optional[_Step]:
    a = pb.pick_always()
    sa = pb.steps[a]
    b = pb.pick(
        lambda s: (
            s is not sa
            and _broadcast(sa.shape, s.shape) is not None
            and _numel(cast(Tuple[int, ...], _broadcast(sa.shape, s.shape))) <= MAX_NUMEL
        )
    )
    if b is None:
        return None
    sb = pb.steps[b]
    shape = cast(Tuple[int, ...], _broadcast(sa.shape, sb.shape))
    mask = torch.rand(shape, generator=pb.gen, device="cpu") < 0.5
    mask = mask.to(pb.device)
    name = pb.const("M", mask)
    return _Step(
        shape,
        max(sa.bound, sb.bound),
        f"where({name}, v{a}, v{b})",
        lambda vals, args, a=a, b=b, mask=mask: torch.where(mask, vals[a], vals[b]),
    )


def op_permute(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick(lambda s: len(s.shape) >= 2)
    if src is None:
        return None
    s = pb.steps[src]
    perm = tuple(pb.draw(st.permutations(range(len(s.shape)))))
    return _Step(
        tuple(s.shape[p] for p in perm),
        s.bound,
        f"v{src}.permute{perm}",
        lambda vals, args, src=src, perm=perm: vals[src].permute(perm),
    )


def op_expand(pb: ProgramBuilder) -> Optional[_Step]:
    src = pb.pick_always(lambda s: len(s.shape) < pb.max_ndim + 1)
    s = pb.steps[src]
    d = pb.draw(st.integers(0, len(s.shape)))
    k = pb.draw(st.integers(1, 3))
    shape = s.shape[:d] + (k,) + s.shape[d:]
    if _numel(shape) > MAX_NUMEL:
        return None
    return _Step(
        shape,
        s.bound,
        f"v{src}.unsqueeze({d}).expand({list(shape)})",
        lambda vals, args, src=src, d=d, shape=shape: vals[src].unsqueeze(d).expand(shape),
    )


def op_stack(pb: ProgramBuilder) -> Optional[_Step]:
    a = pb.pick_always()
    sa = pb.steps[a]
    if 2 * _numel(sa.shape) > MAX_NUMEL:
        return None
    b = pb.pick_always(lambda s: s.shape == sa.shape)
    d = pb.draw(st.integers(-len(sa.shape) - 1, len(sa.shape)))
    dp = d % (len(sa.shape) + 1)
    shape = sa.shape[:dp] + (2,) + sa.shape[dp:]
    return _Step(
        shape,
        max(sa.bound, pb.steps[b].bound),
        f"stack([v{a}, v{b}], dim={d})",
        lambda vals, args, a=a, b=b, d=d: torch.stack([vals[a], vals[b]], dim=d),
    )


def op_custom(pb: ProgramBuilder) -> Optional[_Step]:
    styles = (["new"] if pb.use_new else []) + (["old"] if pb.old_style_functions else [])
    if not styles:
        return None
    style = pb.draw(st.sampled_from(styles))
    src = pb.pick_always()
    s = pb.steps[src]
    if style == "old":
        pb.flags.add("old_style_function")
        return _Step(
            s.shape,
            min(s.bound, 1.0),
            f"OldStyleSin.apply(v{src})",
            lambda vals, args, src=src: OldStyleSin.apply(vals[src]),  # type: ignore[no-untyped-call]
        )
    pb.flags.add("new_style_function")
    return _Step(
        s.shape,
        s.bound,
        f"NewStyleSiLU.apply(v{src})",
        lambda vals, args, src=src: NewStyleSiLU.apply(vals[src]),  # type: ignore[no-untyped-call]
    )
