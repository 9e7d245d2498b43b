"""The unit that travels from the receivers to storage: a *fragment*, the spans of one trace
from one request, as serialized OTLP ``TracesData`` bytes plus the few facts the sampler
decides on (see :mod:`collector.otlp`, which cuts requests into fragments).

It lives here, below both packages, so that processors (the sampler) and the collector
(queues, storage) share it while ``processors/`` never imports ``collector/``.
"""

from __future__ import annotations

from processors._wire import FRAGMENT_OVERHEAD, Fragment, RootInfo, Settled, stamp_source, total_size

__all__ = ["FRAGMENT_OVERHEAD", "Fragment", "RootInfo", "Settled", "Sourced", "stamp_source", "total_size"]
# Fragment and RootInfo are classes of the compiled extension (native/src/fragment.rs): one
# is made for every trace of every request, and the write-ahead log's packer and the
# sampler's buffer read them without an attribute lookup per field. Fragment(trace_id,
# payload, span_count, start_ns, end_ns, has_error, root, received_ns=now, source=None);
# RootInfo(service, name, start_ns, end_ns). Every field is readable and settable,
# ``Fragment.size`` is the payload plus FRAGMENT_OVERHEAD bytes (what it costs in a queue),
# and both compare equal by value. ``source`` is the (partition, offset) of the Kafka or
# write-ahead log record it came from; None before it has one. Settled(trace_id, source,
# count=1) is ``count`` fragments of one record that are done with (their traces dropped, or
# stored before), as the queue needs them to commit past the record: the sampler's buffer
# keeps no Fragment, so it reports these, one per run of fragments of the same record. A
# Fragment's ``count`` is 1. total_size(fragments) is the sum of their ``size``, and
# stamp_source(fragments, partition, offset) sets their ``source``: one call per request, not
# a Python step per trace.


Sourced = Fragment | Settled
"""What a queue's ``release`` takes: the ``source`` of a record and how many of its fragments (``count``)."""
