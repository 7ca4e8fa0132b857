"""Shared fixtures. The Kafka broker is real: one Apache Kafka 4.x process in
KRaft mode, started once per test session by the project's own LocalKafka and
stopped at the end, so a test run leaves no broker behind."""

from __future__ import annotations

import time
import uuid

import pytest

from pathlib import Path

from stream.config import ServiceConfig, parse_config

#: the sample plant shipped in config/ (what the demo and the docs use)
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "plant.yaml"

PLANT = {
    "assets": [
        {
            "id": "pump-1",
            "type": "pump",
            "criticality": "high",
            "tags": [
                {"id": "bearing_temp", "unit": "degC", "normal_range": [45, 60], "limits": {"high": 80, "deadband": 2}},
                {"id": "flow", "unit": "m3/h", "limits": {"low": 40, "high": 160}},
                {"id": "vibration_rms", "unit": "mm/s"},
            ],
        },
        {"id": "fan-1", "type": "fan", "tags": [{"id": "speed", "unit": "rpm", "limits": {"low": 1000, "high": 1800}}]},
    ]
}


def pytest_configure(config):
    # CI stopping the run with SIGTERM still tears the session down, so the
    # broker fixture stops its Kafka process instead of leaving it behind.
    from edgewatch.processes import interrupt_on_sigterm

    interrupt_on_sigterm()


def plant_config(**sections) -> ServiceConfig:
    return parse_config({**PLANT, **sections}, "test-plant.yaml", environ={})


@pytest.fixture
def config() -> ServiceConfig:
    return plant_config()


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """Bootstrap address of a real local broker for the whole session."""
    from edgewatch.localkafka import LocalKafka, free_port

    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start(timeout_s=120)
    try:
        yield broker
    finally:
        broker.stop()
        assert broker.pid() is None, "the test broker is still running"


@pytest.fixture
def topic_prefix(kafka):
    """A fresh topic prefix per test; its topics are deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    from stream.kafka_admin import delete_topics

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    delete_topics(kafka.bootstrap, [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)])
