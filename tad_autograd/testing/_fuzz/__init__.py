"""The library's own differential fuzzer (private; ``tests/fuzz`` runs it).

Built on the public kit (strategies, references, operator namespaces,
comparisons), never the reverse: nothing in :mod:`tad_autograd.testing`
outside this package imports it.  :mod:`.programs` draws programs with hard
features, :mod:`.case` and :mod:`.product_case` whole cases, :mod:`.checks`
and :mod:`.run` run them; :mod:`.calls`, :mod:`.opaque`, :mod:`.compiled`,
:mod:`.complex_inputs`, :mod:`.randomness` and :mod:`.graph` cover one kind
of call each.
"""
