"""The public transforms and operators: what ``import tad_autograd`` exports.

``transforms`` (``jacrev``, ``vmap``, ``hessian``, ``fjacrev``, ``fvmap``),
``operators`` (``grad``, ``grad_and_value``, ``jacfwd``, ``jacobian``,
``graph_jacobian``), ``products`` (``vjp``, ``jvp``, ``linearize``, ``hvp``)
and ``explain``.
"""
