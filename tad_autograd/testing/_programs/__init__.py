"""The random-program generator behind :func:`tad_autograd.testing.programs`.

Private: :mod:`tad_autograd.testing.strategies` is its public face.
:mod:`.program` holds the drawn program, :mod:`.builder` the state while it is
drawn, :mod:`.ops` and :mod:`.view_ops` the steps, :mod:`.strategies` the
``programs`` strategy that puts them together.
"""
