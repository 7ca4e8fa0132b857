"""Small helpers for integration tests against the real broker."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import yaml
from confluent_kafka import Consumer, Producer

from edgewatch.processes import Child, edgewatch_command
from tests.conftest import PLANT


def write_config(path: Path, bootstrap: str, prefix: str, **worker) -> Path:
    doc = {
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 2},
        "worker": {"app_id": f"{prefix}-worker", "data_dir": str(path.parent / "worker-data"), "session_timeout_s": 6, **worker},
        **PLANT,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def start_worker(config_path: Path, log_path: Path) -> Child:
    return Child(edgewatch_command("worker", "--config", str(config_path)), log_path=log_path)


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"})


class TopicReader:
    """Reads JSON messages of some topics from the beginning, remembering all of them."""

    def __init__(self, bootstrap: str, *topics: str):
        self.messages: dict[str, list[dict]] = {t: [] for t in topics}
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"test-reader-{time.time_ns()}", "auto.offset.reset": "earliest", "enable.auto.commit": False}
        )
        self.consumer.subscribe(list(topics))

    def wait_for(self, predicate, timeout_s: float = 60.0, worker: Child | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.messages):
                return True
            for message in self.consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    self.messages[message.topic()].append(orjson.loads(message.value()))
            if worker is not None and not worker.alive():
                raise AssertionError(f"the worker died; log:\n{worker.log_tail()}")
        return predicate(self.messages)

    def close(self) -> None:
        self.consumer.close()
