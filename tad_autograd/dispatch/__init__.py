"""Which backend and strategy run a call: settings, registry, resolver, the
transformed callable with its structural fallback, the strategies, and the
argument checks shared by every backend.
"""
