"""Which backend runs a call, and how: the settings, the registry, the resolver,
automatic mode's composite backends and their decisions, the transformed
callable with its fallback, and the argument checks shared by every backend.

Its modules are internal; users reach them through the names exported by
:mod:`tad_autograd`.  The one name documented here is the environment variable
that names a backend.
"""

from ._settings import ENV_VAR

__all__ = ["ENV_VAR"]
