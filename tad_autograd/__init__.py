"""tad_autograd: every derivative operator and ``vmap``, the same on every torch.

One import gives PyTorch users ``jacrev``, ``jacfwd``, ``jacobian``, ``grad``,
``grad_and_value``, ``vjp``, ``jvp``, ``linearize``, ``hessian``, ``hvp`` and
``vmap`` that behave as
:mod:`torch.func` does (and ``graph_jacobian`` for tensors that already carry
a graph), on torch 1.13 to the current release, on any device,
through any function (custom ``autograd.Function`` classes, ``.item()`` and
in-place updates included).  A resolver picks the fastest correct backend at call
time; see :func:`explain` for why.

Examples
--------
>>> import torch, tad_autograd as ta
>>> ta.jacrev(lambda x: (x ** 2).sum())(torch.tensor([1.0, 2.0]))
tensor([2., 4.])
"""

import importlib
from typing import TYPE_CHECKING, Any, List

from . import api
from .api.explain import explain as explain
from .api.operators import *  # noqa: F403
from .api.products import *  # noqa: F403
from .api.transforms import *  # noqa: F403
from .compat.tensor_kinds import is_batched, is_transformed
from .dispatch._registry import available_backends, register_backend, unregister_backend
from .dispatch._settings import get_backend, set_backend, use_backend
from .errors import BackendFallbackWarning, BackendUnavailableError, UnknownBackendError

if TYPE_CHECKING:  # imported on first use (see __getattr__), for type checkers here
    from .sparse.api import sparse_hessian, sparse_jacobian
    from .sparse.colouring import colouring, colouring_lower_bound
    from .sparse.detection import detect_sparsity

__version__ = "0.1.0"

__all__ = [
    "sparse_jacobian",
    "sparse_hessian",
    "detect_sparsity",
    "colouring",
    "colouring_lower_bound",
    "set_backend",
    "get_backend",
    "use_backend",
    "available_backends",
    "register_backend",
    "unregister_backend",
    "is_transformed",
    "is_batched",
    "BackendFallbackWarning",
    "UnknownBackendError",
    "BackendUnavailableError",
]
__all__ += api.__all__


#: Public names whose modules load on first use: sparse Jacobians and Hessians
#: are needed by few programs, and importing them costs about a fifth of the import.
_LAZY = {
    "sparse_jacobian": ".sparse.api",
    "sparse_hessian": ".sparse.api",
    "colouring": ".sparse.colouring",
    "colouring_lower_bound": ".sparse.colouring",
    "detect_sparsity": ".sparse.detection",
}


def __getattr__(name: str) -> Any:
    """Import a lazily loaded public name (PEP 562) and keep it in the package."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
