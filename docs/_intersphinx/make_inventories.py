"""Write the small intersphinx inventories shipped with the docs.

The build cannot rely on reaching docs.python.org or docs.pytorch.org (CI
sandboxes and offline machines), and with ``-W`` an unreachable inventory
fails the build.  So ``docs/conf.py`` reads these files instead: they list
only the objects the pages and docstrings link to, with their real URLs.
Add an entry here when a page links to a new Python or PyTorch object, then
run ``python docs/_intersphinx/make_inventories.py``.

Format: Sphinx inventory version 2 (a four-line header, then zlib-compressed
lines ``name domain:role priority uri dispname``; ``-`` as dispname means
"same as the name").  Below, ``$`` in a uri stands for the name and is
expanded before writing.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

PYTHON = [
    ("contextvars.ContextVar", "py:class", "library/contextvars.html#$"),
    ("contextlib.contextmanager", "py:function", "library/contextlib.html#$"),
    ("doctest", "py:module", "library/doctest.html#module-$"),
    ("warnings", "py:module", "library/warnings.html#module-$"),
    ("warnings.filterwarnings", "py:function", "library/warnings.html#$"),
    ("warnings.simplefilter", "py:function", "library/warnings.html#$"),
    ("warnings.catch_warnings", "py:class", "library/warnings.html#$"),
    ("logging", "py:module", "library/logging.html#module-$"),
    ("UserWarning", "py:exception", "library/exceptions.html#$"),
    ("DeprecationWarning", "py:exception", "library/exceptions.html#$"),
    ("FutureWarning", "py:exception", "library/exceptions.html#$"),
    ("ValueError", "py:exception", "library/exceptions.html#$"),
    ("TypeError", "py:exception", "library/exceptions.html#$"),
    ("RuntimeError", "py:exception", "library/exceptions.html#$"),
    ("AssertionError", "py:exception", "library/exceptions.html#$"),
    ("callable", "py:function", "library/functions.html#$"),
    ("NotImplementedError", "py:exception", "library/exceptions.html#$"),
]

TORCH = [
    ("torch.func", "py:module", "func.html#module-$"),
    ("torch.func.jacrev", "py:function", "generated/$.html#$"),
    ("torch.func.jacfwd", "py:function", "generated/$.html#$"),
    ("torch.func.vmap", "py:function", "generated/$.html#$"),
    ("torch.func.hessian", "py:function", "generated/$.html#$"),
    ("torch.func.grad", "py:function", "generated/$.html#$"),
    ("torch.func.vjp", "py:function", "generated/$.html#$"),
    ("torch.func.functional_call", "py:function", "generated/$.html#$"),
    ("torch.func.jvp", "py:function", "generated/$.html#$"),
    ("torch.func.linearize", "py:function", "generated/$.html#$"),
    ("torch.func.grad_and_value", "py:function", "generated/$.html#$"),
    ("torch.func.stack_module_state", "py:function", "generated/$.html#$"),
    ("torch.func.functionalize", "py:function", "generated/$.html#$"),
    ("torch.vmap", "py:function", "generated/$.html#$"),
    ("torch.autograd", "py:module", "autograd.html#module-$"),
    ("torch.autograd.Function", "py:class", "autograd.html#$"),
    ("torch.autograd.grad", "py:function", "generated/$.html#$"),
    ("torch.autograd.functional.jacobian", "py:function", "generated/$.html#$"),
    ("torch.autograd.functional.hessian", "py:function", "generated/$.html#$"),
    ("torch.autograd.functional", "py:module", "autograd.html#module-$"),
    ("torch.autograd.functional.vjp", "py:function", "generated/$.html#$"),
    ("torch.autograd.functional.jvp", "py:function", "generated/$.html#$"),
    ("torch.autograd.functional.hvp", "py:function", "generated/$.html#$"),
    ("torch.autograd.functional.vhp", "py:function", "generated/$.html#$"),
    ("torch.autograd.forward_ad", "py:module", "autograd.html#module-$"),
    (
        "torch.autograd.gradcheck",
        "py:function",
        "generated/torch.autograd.gradcheck.gradcheck.html#$",
    ),
    (
        "torch.autograd.gradgradcheck",
        "py:function",
        "generated/torch.autograd.gradcheck.gradgradcheck.html#torch.autograd.gradcheck.gradgradcheck",
    ),
    ("torch.where", "py:function", "generated/$.html#$"),
    ("torch.compile", "py:function", "generated/$.html#$"),
    ("torch.Generator", "py:class", "generated/$.html#$"),
    ("torch.testing.assert_close", "py:function", "testing.html#$"),
    ("torch.Tensor", "py:class", "tensors.html#$"),
    ("torch.Tensor.item", "py:method", "generated/$.html#$"),
    ("torch.device", "py:class", "tensor_attributes.html#$"),
    ("torch.device.type", "py:attribute", "tensor_attributes.html#torch.device"),
    ("torch.dtype", "py:class", "tensor_attributes.html#$"),
    ("torch.set_default_device", "py:function", "generated/$.html#$"),
    ("torch.no_grad", "py:class", "generated/$.html#$"),
    ("torch.inference_mode", "py:class", "generated/$.html#$"),
    (
        "notes/extending.func",
        "std:doc",
        "notes/extending.func.html",
        "Extending torch.func with autograd.Function",
    ),
    ("func.migrating", "std:doc", "func.migrating.html", "Migrating from functorch to torch.func"),
]


def write(path: Path, project: str, version: str, entries: list) -> None:
    lines = []
    for entry in entries:
        name, role, uri = entry[:3]
        display = entry[3] if len(entry) > 3 else "-"
        lines.append(f"{name} {role} 1 {uri.replace('$', name)} {display}\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))


if __name__ == "__main__":
    write(HERE / "python.inv", "Python", "3", PYTHON)
    write(HERE / "torch.inv", "PyTorch", "stable", TORCH)
