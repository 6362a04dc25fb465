"""Sparse Jacobians and Hessians: sparsity patterns, detection, colourings,
compression and decompression, and the callables ``sparse_jacobian`` and
``sparse_hessian`` return.
"""
