"""The simulated plant on the wire: a thread that publishes the generator's
batches to Kafka every ``interval_s`` of wall-clock time. Used by
`edgewatch simulate` and by the demo."""

from __future__ import annotations

import threading
import time

from connectors.generator import Fault, PlantGenerator
from connectors.publisher import ReadingPublisher
from stream.config import ServiceConfig


class PlantStream(threading.Thread):
    def __init__(self, config: ServiceConfig, rate_hz: float, faults: list[Fault], interval_s: float = 0.5):
        super().__init__(name="plant-stream", daemon=True)
        self.interval_s = interval_s
        self.generator = PlantGenerator(config, rate_hz=rate_hz, faults=faults, start_us=time.time_ns() // 1000)
        self.publisher = ReadingPublisher(config.kafka.bootstrap_servers, config.kafka.topics.readings)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            for batch in self.generator.batches_until(time.time_ns() // 1000):
                self.publisher.publish(batch)
            self.publisher.poll(0)

    def stop(self, flush_timeout_s: float = 10.0) -> int:
        """Stop publishing and wait for deliveries; return how many batches are still undelivered."""
        self._stopping.set()
        self.join(flush_timeout_s + 5)
        return self.publisher.flush(flush_timeout_s)
