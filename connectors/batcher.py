"""Samples from the connectors, cut into reading batches and written to the spool.

faust costs a fixed ~0.1 ms per Kafka message, so one message per sample could
never keep up: the sink collects each asset's samples for ``batch_interval_s``
(or until ``max_batch_samples``) and writes them as one wire-schema reading
batch. Nothing here touches the network; the spool forwarder sends what is
written, in order, when the broker is reachable.

A batch's ``seq`` is the spool index it was written at: unique and increasing
for the life of the spool (also across restarts), so a consumer can drop a
duplicate that an at-least-once resend after a crash produced by (asset, seq).
Per asset the numbers are increasing but not contiguous.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from connectors.base import ConnectorEvent
from stream.topics import TopicNames
from stream.wire import ReadingBatch, encode_message, encode_reading_batch

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    tags: list[str] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    qualities: list[int] = field(default_factory=list)


class SpoolingSink:
    """The ``SampleSink`` of `edgewatch connect`: per-asset batching into the spool.

    Called from the connectors' event loop only (not thread-safe by itself);
    the spool it writes to is thread-safe, so the forwarder thread reads it.
    """

    def __init__(self, spool, topics: TopicNames, batch_interval_s: float = 0.5, max_batch_samples: int = 50_000):
        self.spool = spool
        self.topics = topics
        self.batch_interval_s = batch_interval_s
        self.max_batch_samples = max_batch_samples
        self._pending: dict[str, _Pending] = {}
        self.samples_in = 0
        self.batches_out = 0
        self.events_out = 0

    def put_samples(self, asset_id, tag_ids, ts_us, values, qualities) -> None:
        pending = self._pending.get(asset_id)
        if pending is None:
            pending = self._pending[asset_id] = _Pending()
        pending.tags.extend(tag_ids)
        pending.ts_us.extend(ts_us)
        pending.values.extend(values)
        pending.qualities.extend(qualities)
        self.samples_in += len(tag_ids)
        if len(pending.tags) >= self.max_batch_samples:
            self._flush_asset(asset_id)

    def put_event(self, event: ConnectorEvent) -> None:
        # The samples collected before the event go first, so that a consumer
        # reading both topics sees the Bad-quality gap marker no later than the event.
        for asset_id in event.assets:
            self._flush_asset(asset_id)
        self.spool.append(self.topics.events, event.device.encode(), encode_message(event.to_message()))
        self.events_out += 1

    def flush(self) -> None:
        """Write every asset's pending samples to the spool now."""
        for asset_id in list(self._pending):
            self._flush_asset(asset_id)

    def _flush_asset(self, asset_id: str) -> None:
        pending = self._pending.pop(asset_id, None)
        if pending is None or not pending.tags:
            return
        tags: dict[str, int] = {}
        tag_index = np.fromiter((tags.setdefault(t, len(tags)) for t in pending.tags), dtype=np.uint16, count=len(pending.tags))
        ts = np.asarray(pending.ts_us, dtype=np.int64)
        # Time order inside a batch (stable, so one tag's equal stamps keep arrival order):
        # notifications of different monitored items arrive interleaved.
        order = np.argsort(ts, kind="stable")
        batch = ReadingBatch.from_columns(
            asset_id,
            tuple(tags),
            tag_index[order],
            ts[order],
            np.asarray(pending.values, dtype=np.float64)[order],
            np.asarray(pending.qualities, dtype=np.uint32)[order],
            seq=self.spool.next_index,  # the index this append gets: the spool has one writer, us
        )
        self.spool.append(self.topics.readings, asset_id.encode(), encode_reading_batch(batch))
        self.batches_out += 1

    async def run(self) -> None:
        """Cut batches every ``batch_interval_s`` until cancelled; a last flush on the way out."""
        try:
            while True:
                await asyncio.sleep(self.batch_interval_s)
                self.flush()
        finally:
            self.flush()
