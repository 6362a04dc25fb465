"""Facts about the installed torch and shims over its versions: version flags,
locks, RNG snapshots, dual numbers, pytrees, the batching-defect table and
watch, device support and tensor kinds.
"""
