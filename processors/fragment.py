"""The unit that travels from the receivers to storage: a *fragment*, the spans of one trace
from one request, as serialized OTLP ``TracesData`` bytes plus the few facts the sampler
decides on (see :mod:`collector.otlp`, which cuts requests into fragments).

It lives here, below both packages, so that processors (the sampler) and the collector
(queues, storage) share it while ``processors/`` never imports ``collector/``.
"""

from __future__ import annotations

from processors._wire import FRAGMENT_OVERHEAD, Fragment, RootInfo, Settled

__all__ = ["FRAGMENT_OVERHEAD", "Fragment", "RootInfo", "Settled", "Sourced"]
# Fragment and RootInfo are classes of the compiled extension (native/src/fragment.rs): one
# is made for every trace of every request, and the write-ahead log's packer and the
# sampler's buffer read them without an attribute lookup per field. Fragment(trace_id,
# payload, span_count, start_ns, end_ns, has_error, root, received_ns=now, source=None);
# RootInfo(service, name, start_ns, end_ns). Every field is readable and settable,
# ``Fragment.size`` is the payload plus FRAGMENT_OVERHEAD bytes (what it costs in a queue),
# and both compare equal by value. ``source`` is the (partition, offset) of the Kafka or
# write-ahead log record it came from; None before it has one. Settled(trace_id, source) is
# a fragment that is done with (its trace dropped, or stored before), as the queue needs it
# to commit past its record: the sampler's buffer keeps no Fragment, so it reports these.


Sourced = Fragment | Settled
"""What a queue's ``release`` takes: anything with the ``source`` of its record."""
