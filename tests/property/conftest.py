"""Hypothesis profiles for the property tests.

``ci`` (default): about 25 examples per property, derandomized, no example
database, so the suite is fast and reproducible.  ``thorough``: >= 1000
examples per property.  Choose with ``TAD_AUTOGRAD_HYPOTHESIS_PROFILE``.
"""

import os
import warnings as _warnings

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)

PROFILE = os.environ.get("TAD_AUTOGRAD_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

# When a hypothesis test fails, its pytest plugin imports
# ``hypothesis.extra._patching`` (and so ``libcst``) inside the test's
# ``filterwarnings = error`` context; libcst's import emits a third-party
# DeprecationWarning (mypy_extensions.TypedDict) that would turn the failure
# report into an INTERNALERROR.  Import it here, once, outside that context.
with _warnings.catch_warnings():
    _warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - libcst not installed
        pass
