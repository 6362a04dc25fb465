"""Backends: one module per backend, each a small class following :class:`Backend`.

Importing this package imports neither ``functorch`` nor :mod:`torch.func`;
each backend imports its library the first time it runs.
"""

from .base import Availability, Backend

__all__ = ["Availability", "Backend"]
