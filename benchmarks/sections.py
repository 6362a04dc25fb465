"""The benchmark sections, by name: timing grids and the special measurements.

Each section is a function of a :class:`~benchmarks.config.Config` returning
a JSON-able dict; ``python -m benchmarks --list`` prints the first line of
each one's docstring.  They live in one module per family:

* :mod:`benchmarks.sections_grid` — forces, jacobian, hessian, vmap;
* :mod:`benchmarks.sections_operators` — modes (forward vs reverse), operators, hvp;
* :mod:`benchmarks.sections_pairs` — dispatch, autograd, fallback;
* :mod:`benchmarks.sections_fixed` — the fixed cost of a pre-built automatic call;
* :mod:`benchmarks.sections_sparse` — sparse Jacobians and Hessians by colouring vs dense;
* :mod:`benchmarks.sections_process` — import, memory (fresh interpreters);
* :mod:`benchmarks.sections_models` — real-model energies (tight binding, dispersion, MLP);
* :mod:`benchmarks.sections_compile` — ``torch.compile`` of the operators vs eager.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from benchmarks.config import REPO, Config
from benchmarks.sections_compile import section_compile
from benchmarks.sections_fixed import section_fixed
from benchmarks.sections_grid import section_forces, section_hessian, section_jacobian, section_vmap
from benchmarks.sections_models import section_models
from benchmarks.sections_operators import section_hvp, section_modes, section_operators
from benchmarks.sections_pairs import section_autograd, section_dispatch, section_fallback
from benchmarks.sections_process import section_import, section_memory
from benchmarks.sections_sparse import section_sparse

__all__ = ["REPO", "SECTIONS", "Config"]

SECTIONS: Dict[str, Callable[[Config], Dict[str, Any]]] = {
    "forces": section_forces,
    "jacobian": section_jacobian,
    "hessian": section_hessian,
    "vmap": section_vmap,
    "modes": section_modes,
    "operators": section_operators,
    "hvp": section_hvp,
    "sparse": section_sparse,
    "dispatch": section_dispatch,
    "fixed": section_fixed,
    "autograd": section_autograd,
    "fallback": section_fallback,
    "import": section_import,
    "memory": section_memory,
    "models": section_models,
    "compile": section_compile,
}
