"""The public transforms and operators: what ``import tad_autograd`` exports.

``transforms`` (``jacrev``, ``vmap``, ``hessian``, ``fjacrev``, ``fvmap``),
``operators`` (``grad``, ``grad_and_value``, ``jacfwd``, ``jacobian``,
``graph_jacobian``), ``products`` (``vjp``, ``jvp``, ``linearize``, ``hvp``)
and ``explain``.
"""

from . import operators, products, transforms
from .explain import explain
from .operators import *  # noqa: F403
from .products import *  # noqa: F403
from .transforms import *  # noqa: F403

#: What ``import tad_autograd`` exports from here: each module's operators, and ``explain``.
__all__ = ["explain"]
__all__.extend(transforms.__all__)
__all__.extend(operators.__all__)
__all__.extend(products.__all__)
