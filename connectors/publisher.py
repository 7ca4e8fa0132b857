"""Publishes reading batches to Kafka with confluent-kafka.

Idempotent producer with acks=all: the broker de-duplicates the producer's own
retries, and a batch counts as delivered only once every in-sync replica has it.
Key = asset id, so one asset's batches stay in order on one partition.
(The on-disk store-and-forward spool arrives with the connectors issue.)
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, Producer

from stream.wire import ReadingBatch, encode_reading_batch

log = logging.getLogger(__name__)


class ReadingPublisher:
    def __init__(self, bootstrap_servers: str, topic: str, extra_config: dict | None = None):
        self.topic = topic
        self.delivered = 0
        self.delivered_samples = 0
        self.failed = 0
        self.last_error: str | None = None
        config = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.size": 1_000_000,
            "message.max.bytes": 8_000_000,
        }
        config.update(extra_config or {})
        self._producer = Producer(config)

    def publish(self, batch: ReadingBatch) -> None:
        self.publish_raw(batch.asset_id, encode_reading_batch(batch), len(batch))

    def publish_raw(self, asset_id: str, payload: bytes, samples: int = 0) -> None:
        def report(err: KafkaError | None, msg) -> None:
            if err is None:
                self.delivered += 1
                self.delivered_samples += samples
            else:
                self.failed += 1
                self.last_error = str(err)
                log.error("batch of %s not delivered: %s", asset_id, err)

        while True:
            try:
                self._producer.produce(self.topic, key=asset_id.encode(), value=payload, on_delivery=report)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; return how many are still pending."""
        return self._producer.flush(timeout_s)
