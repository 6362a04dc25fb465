"""Benchmarks of tad_autograd against its peers.

Run ``python -m benchmarks --quick`` (about 2.5 minutes on 2 busy CPU cores) or
``python -m benchmarks`` (full grid) from the repository root; results go to
``build/benchmarks/`` (``--save``: ``docs/benchmarks/``); see ``benchmarks/README.md``.
"""
