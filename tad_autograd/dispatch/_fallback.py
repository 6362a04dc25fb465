"""Automatic fallback: the words for "this function cannot be transformed", and the one
memory of what failed.

Whether an automatic call is retried on the ``"autograd"`` backend is decided
structurally (:mod:`tad_autograd.compat._transform_failures`): any exception that
escaped a function transform is retried, whatever its message says.  The
known kinds of such errors in :data:`UNTRANSFORMABLE` only *word* the reason
in the warning (:func:`describe`) and the note on an explicit backend's error
(:func:`add_hint`); each is provoked for real by a test on every torch of the
matrix, and a torch release that rewords them changes nothing but the words.

The library's one memory of what failed (:data:`MEMORY`,
:mod:`tad_autograd.compat._memory`) remembers a successful retry under a
:class:`Fallback` key, so later calls go straight to the working backend and
the :class:`~tad_autograd.BackendFallbackWarning` is issued once per function;
``jacobian(mode="auto")`` remembers its choice of mode there too
(:mod:`tad_autograd.dispatch._mode_choice`), and eager forward mode whether
dual numbers work for a function.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple, Optional, Pattern, Tuple, Type

from ..compat._memory import MEMORY, Memory
from ..compat._torch_info import cache

__all__ = [
    "Untransformable",
    "UNTRANSFORMABLE",
    "recognise",
    "Fallback",
    "Memory",
    "MEMORY",
    "add_hint",
]

_log = logging.getLogger("tad_autograd")


class Untransformable(NamedTuple):
    """One kind of error that means a function cannot be transformed.

    An immutable named tuple.  ``pattern`` is the regular expression
    (searched in ``str(error)``); it is compiled on first use, so importing
    the library compiles nothing.

    Attributes
    ----------
    key : str
        A short, stable name for the kind of error.
    exception : type
        The exception class the error must be an instance of.
    pattern : str
        The regular expression searched in ``str(error)``.
    reason : str
        What the user's function does that cannot be transformed, for messages.
    """

    key: str
    exception: Type[BaseException]
    pattern: str
    reason: str

    def matches(self, error: BaseException) -> bool:
        """Whether ``error`` is this kind of error."""
        return (
            isinstance(error, self.exception)
            and _compiled(self.pattern).search(str(error)) is not None
        )


@cache
def _compiled(pattern: str) -> Pattern[str]:
    return re.compile(pattern, re.DOTALL)


def _entry(key: str, exception: Type[BaseException], pattern: str, reason: str) -> Untransformable:
    return Untransformable(key, exception, pattern, reason)


#: Every error recognised as "cannot be transformed", for torch 1.13, 2.0 and current.
UNTRANSFORMABLE: Tuple[Untransformable, ...] = (
    _entry(
        "function-without-setup-context",
        RuntimeError,
        r"In order to use an autograd\.Function with functorch transforms",
        "a custom autograd.Function without setup_context (old-style forward(ctx, ...))",
    ),
    _entry(
        "function-without-vmap-rule",
        RuntimeError,
        r"You tried to vmap over \w+, but it does not have vmap support",
        "a custom autograd.Function without a vmap rule",
    ),
    _entry(
        "function-under-functorch-1.13",
        RuntimeError,
        r"functorch functions \(vmap, grad, vjp, etc\.\) currently do not support the "
        r"use of autograd\.Function",
        "functorch before torch 2.0 cannot transform any custom autograd.Function",
    ),
    _entry(
        "item-under-vmap",
        RuntimeError,
        r"vmap: It looks like you're calling \.item\(\) on a Tensor|"
        r"Batching rule not implemented for aten::item",
        ".item() called under vmap",
    ),
    _entry(
        "data-dependent-control-flow",
        RuntimeError,
        r"vmap: It looks like you're attempting to use a Tensor in some "
        r"data-dependent control flow",
        "data-dependent Python control flow under vmap",
    ),
    _entry(
        "inplace-on-captured-tensor",
        RuntimeError,
        r"During a grad \(vjp, jvp, grad, etc\) transform, the function provided "
        r"attempted to call in-place operation",
        "an in-place update of a captured tensor",
    ),
    _entry(
        "inplace-under-vmap",
        RuntimeError,
        r"vmap: inplace arithmetic\(self, \*extra_args\) is not possible|"
        r"vmap: aten::\w+_\(self, \*extra_args\) is not possible",
        "an in-place update of an unbatched tensor with a batched one under vmap",
    ),
    _entry(
        "no-batching-rule",
        RuntimeError,
        r"Batching rule not implemented for \S+[.;] ?We could not generate a fallback|"
        r"vmap: We do not support batching operators that can (?:output|support) dynamic shape|"
        r"vmap: Attempted to vmap over `\w+` in torch\.\w+",
        "an operation without a batching rule (e.g. one with a data-dependent output shape)",
    ),
    _entry(
        "data-access-under-transform",
        RuntimeError,
        r"Cannot access data pointer of Tensor that doesn't have storage|"
        r"Cannot access storage of \w*TensorImpl",
        "raw data access (.numpy(), .tolist(), a data pointer) under a transform",
    ),
)


def recognise(error: BaseException) -> Optional[Untransformable]:
    """The :data:`UNTRANSFORMABLE` entry matching ``error``, or ``None``.

    Examples
    --------
    >>> recognise(RuntimeError("vmap: It looks like you're calling .item() on a Tensor."))
    ... # doctest: +ELLIPSIS
    Untransformable(key='item-under-vmap', ...)
    >>> recognise(ValueError("my own error")) is None
    True
    """
    for entry in UNTRANSFORMABLE:
        if entry.matches(error):
            return entry
    return None


def describe(error: BaseException) -> str:
    """Why a transform failed, in words: a recognised kind's reason, else the error's first line.

    Only wording: whether to fall back never depends on it.  A first line
    longer than 200 characters is shortened to its whole sentences that fit
    (at least the first), never cut inside a sentence or parentheses.

    Examples
    --------
    >>> describe(RuntimeError("vmap: It looks like you're calling .item() on a Tensor."))
    '.item() called under vmap'
    >>> describe(KeyError("unheard of"))
    "KeyError: 'unheard of'"
    >>> describe(RuntimeError("Could not run it. Maybe omitted (if " + "x" * 200 + "). More."))
    'RuntimeError: Could not run it.'
    """
    entry = recognise(error)
    if entry is not None:
        return entry.reason
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {_whole_sentences(lines[0]) if lines else ''}".rstrip(": ")


def _whole_sentences(line: str, limit: int = 200) -> str:
    """The whole sentences of ``line`` within ``limit`` characters, at least the first one."""
    if len(line) <= limit:
        return line
    ends = [
        m.end()
        for m in re.finditer(r"[.!?](?=\s|$)", line)
        if line.count("(", 0, m.end()) == line.count(")", 0, m.end())
    ]
    fitting = [end for end in ends if end <= limit]
    return line[: fitting[-1] if fitting else ends[0] if ends else len(line)]


_HINT = (
    "tad_autograd: backend={name!r} was chosen explicitly, so there is no automatic "
    "fallback; this function cannot be transformed ({reason}), and backend='autograd' "
    "would handle it."
)


def add_hint(error: BaseException, backend_name: str, entry: Untransformable) -> None:
    """Attach a note to ``error`` saying that ``backend='autograd'`` would work."""
    hint = _HINT.format(name=backend_name, reason=entry.reason)
    if hasattr(error, "add_note"):
        if hint not in getattr(error, "__notes__", ()):
            error.add_note(hint)
    elif error.args and isinstance(error.args[0], str) and hint not in error.args[0]:
        error.args = (f"{error.args[0]}\n{hint}",) + error.args[1:]


class Fallback(NamedTuple):
    """The key of a remembered fallback: the transforms of the call and its device type.

    Equal to the plain tuple ``(transforms, device)``.

    Examples
    --------
    >>> str(Fallback(("vmap", "jacrev"), "cpu"))
    'under vmap∘jacrev on cpu'
    """

    transforms: Tuple[str, ...]
    device: str

    def __str__(self) -> str:
        return f"under {'∘'.join(self.transforms)} on {self.device}"
