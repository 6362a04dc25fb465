"""Which device types the function-transform backends can be trusted on.

Every entry carries its evidence.  A device type missing from the table is
treated as unknown: automatic mode then uses the ``"autograd"`` backend,
which runs wherever ordinary autograd runs.  Users can still ask for a
transform backend explicitly on any device.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

__all__ = ["TRANSFORM_SUPPORT", "transforms_supported", "device_type_of"]

#: device type -> (function transforms supported?, evidence)
TRANSFORM_SUPPORT: Mapping[str, Tuple[bool, str]] = {
    "cpu": (True, "torch.func's own test suite runs on CPU (test/functorch)."),
    "cuda": (
        True,
        "torch.func's device-generic tests are instantiated for CUDA; ROCm builds "
        "also report device type 'cuda'.",
    ),
    "mps": (
        False,
        "documented broken: functorch never targeted MPS ('prototype', "
        "pytorch/functorch#1001) and vmap over MPS tensors still fails on ops "
        "such as mse_loss (pytorch/pytorch#140704).",
    ),
    "meta": (
        False,
        "unknown: no batching/grad-transform coverage is documented for meta "
        "tensors; ordinary autograd propagates shapes on meta.",
    ),
    "xla": (
        False,
        "unknown: torch_xla documents no support for torch.func transforms; "
        "functorch's level-tracking dispatch keys are not lowered by XLA.",
    ),
    "privateuseone": (
        False,
        "documented unsupported for out-of-tree backends (e.g. Ascend 'npu' "
        "registers through PrivateUse1); functorch has no batching rules for them.",
    ),
    "npu": (False, "Ascend NPU (torch_npu, a PrivateUse1 backend): see 'privateuseone'."),
    "xpu": (False, "unknown: torch.func's test suite is not instantiated for Intel XPU."),
    "hpu": (False, "unknown: Habana HPU documents no torch.func support."),
    "mtia": (False, "unknown: no public torch.func coverage."),
}


def transforms_supported(device_type: str) -> bool:
    """Tell whether function transforms are known to work on ``device_type``.

    Parameters
    ----------
    device_type : str
        A :attr:`torch.device.type` such as ``"cuda"``.

    Returns
    -------
    bool
        ``False`` for device types that are documented broken or unknown.

    Examples
    --------
    >>> transforms_supported("cuda"), transforms_supported("mps"), transforms_supported("new")
    (True, False, False)
    """
    entry = TRANSFORM_SUPPORT.get(device_type)
    return entry is not None and entry[0]


def device_type_of(args: Tuple[Any, ...], kwargs: Dict[str, Any] | None = None) -> str:
    """The device type of the first tensor among ``args`` (then ``kwargs``).

    Nested tuples, lists and dicts are searched.  Without any tensor, the
    default device type (``"cpu"`` unless changed with
    :func:`torch.set_default_device`).

    Examples
    --------
    >>> import torch
    >>> device_type_of((1.0, [torch.zeros(1)]))
    'cpu'
    """
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    found = _search(args) or (_search(tuple(kwargs.values())) if kwargs else None)
    if found is not None:
        return found
    get_default = getattr(torch, "get_default_device", None)
    return get_default().type if get_default is not None else "cpu"


def _search(tree: Any) -> str | None:
    if isinstance(tree, torch.Tensor):
        return tree.device.type
    if isinstance(tree, (tuple, list)):
        items: Any = tree
    elif isinstance(tree, dict):
        items = tree.values()
    else:
        return None
    for item in items:
        found = _search(item)
        if found is not None:
            return found
    return None
