"""The edgewatch service core: wire schema, configuration, the per-asset pipeline
and the faust worker that drives it.

Importing this package must stay light: the connectors import ``stream.wire`` and
``stream.topics`` and must not pull in faust. The worker lives in ``stream.worker``
and is imported only by the command line.
"""
