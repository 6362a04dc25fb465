"""Benchmarks of tad_autograd against its peers (CONTRACT §8).

Run ``python -m benchmarks --quick`` (under 3 minutes) or ``python -m benchmarks``
(full grid) from the repository root; see ``benchmarks/README.md``.
"""
