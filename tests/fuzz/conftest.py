"""Hypothesis profiles for the differential fuzzer (same names as ``tests/property``).

``ci`` (default): a few derandomized examples per property (see each test's
``fuzz_settings(n)``), about 60-90 s for the whole directory per torch version.
``thorough``: >= 1000 examples per property.  Choose with
``TAD_AUTOGRAD_HYPOTHESIS_PROFILE``.
"""

import os
import warnings as _warnings

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)

settings.register_profile("ci", max_examples=25, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("TAD_AUTOGRAD_HYPOTHESIS_PROFILE", "ci"))

with _warnings.catch_warnings():
    _warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:  # pragma: no cover - libcst not installed
        pass
