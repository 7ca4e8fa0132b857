"""The worker end to end on a real Apache Kafka broker: readings in, alerts out,
malformed input to the dead-letter topic while the worker keeps consuming, and a
killed worker that comes back without duplicating an alert."""

import base64
import time

import numpy as np
import pytest

from stream.config import load_config
from stream.kafka_admin import ensure_topics
from stream.wire import ReadingBatch, encode_reading_batch
from tests.conftest import now_us
from tests.kafka_helpers import TopicReader, producer, start_worker, write_config

pytestmark = pytest.mark.kafka


def batch(asset, tag, values, start_us):
    n = len(values)
    return encode_reading_batch(ReadingBatch.from_columns(asset, [tag], [0] * n, start_us + 100_000 * np.arange(n), values))


def test_readings_become_alerts_and_bad_messages_become_dead_letters(kafka, topic_prefix, tmp_path):
    config_path = write_config(tmp_path / "plant.yaml", kafka.bootstrap, topic_prefix)
    config = load_config(config_path, environ={})
    topics = config.kafka.topics
    ensure_topics(config.kafka)
    t0 = now_us() - 30_000_000
    send = producer(kafka.bootstrap)
    # Garbage first: the worker must park it and go on to the good batches behind it.
    send.produce(topics.readings, key=b"pump-1", value=b"\x00\xffnot a batch")
    send.produce(topics.readings, key=b"pump-1", value=batch("pump-1", "bearing_temp", [55.0, float("nan")], t0))
    send.produce(topics.readings, key=b"pump-1", value=batch("pump-1", "bearing_temp", [60.0, 85.0, 86.0], t0 + 1_000_000))
    send.produce(topics.readings, key=b"fan-1", value=batch("fan-1", "speed", [1500.0, 900.0], t0))
    send.produce(topics.readings, key=b"fan-1", value=batch("fan-1", "no_such_tag", [1.0], t0))
    assert send.flush(30) == 0

    worker = start_worker(config_path, tmp_path / "worker.log")
    reader = TopicReader(kafka.bootstrap, topics.alerts, topics.deadletter)
    try:
        assert reader.wait_for(
            lambda m: len(m[topics.alerts]) >= 2 and len(m[topics.deadletter]) >= 3, timeout_s=90, worker=worker
        ), f"alerts {reader.messages[topics.alerts]}, dead letters {reader.messages[topics.deadletter]}\n{worker.log_tail()}"
        alerts = {(a["asset_id"], a["tag"]["id"], a["condition"], a["state"]) for a in reader.messages[topics.alerts]}
        assert alerts == {("pump-1", "bearing_temp", "high", "active"), ("fan-1", "speed", "low", "active")}
        pump_alert = next(a for a in reader.messages[topics.alerts] if a["asset_id"] == "pump-1")
        assert pump_alert["tag"]["value"] == 85.0 and pump_alert["source"]["topic"] == topics.readings

        letters = reader.messages[topics.deadletter]
        reasons = sorted(letter["reason"] for letter in letters)
        assert any("not a reading batch" in r for r in reasons)
        assert any("with Good quality" in r for r in reasons)
        assert any('unknown tag(s) "no_such_tag"' in r for r in reasons)
        garbage = next(letter for letter in letters if letter["error"] == "decode_error")
        assert base64.b64decode(garbage["payload_b64"]) == b"\x00\xffnot a batch"
        assert garbage["source"]["offset"] == 0
        assert worker.alive()
    finally:
        reader.close()
        worker.stop()
    assert not worker.alive()


def test_killed_worker_recovers_state_and_never_duplicates_an_alert_id(kafka, topic_prefix, tmp_path):
    config_path = write_config(tmp_path / "plant.yaml", kafka.bootstrap, topic_prefix, commit_interval_s=0.5)
    config = load_config(config_path, environ={})
    topics = config.kafka.topics
    ensure_topics(config.kafka)
    t0 = now_us() - 30_000_000
    send = producer(kafka.bootstrap)
    reader = TopicReader(kafka.bootstrap, topics.alerts)
    worker = start_worker(config_path, tmp_path / "worker-1.log")
    try:
        send.produce(topics.readings, key=b"pump-1", value=batch("pump-1", "bearing_temp", [60.0, 85.0], t0))
        send.flush(30)
        assert reader.wait_for(lambda m: len(m[topics.alerts]) >= 1, timeout_s=90, worker=worker), worker.log_tail()
        raised = reader.messages[topics.alerts][0]
        time.sleep(3)  # let the offset and the state changelog be committed
        worker.kill()  # as an OOM kill or a power cut would

        # While it is down the bearing stays hot, then cools down.
        send.produce(topics.readings, key=b"pump-1", value=batch("pump-1", "bearing_temp", [88.0, 90.0], t0 + 1_000_000))
        send.produce(topics.readings, key=b"pump-1", value=batch("pump-1", "bearing_temp", [70.0], t0 + 2_000_000))
        send.flush(30)

        worker = start_worker(config_path, tmp_path / "worker-2.log")
        assert reader.wait_for(
            lambda m: any(a["state"] == "cleared" for a in m[topics.alerts]), timeout_s=120, worker=worker
        ), worker.log_tail()
        time.sleep(2)
        reader.wait_for(lambda m: False, timeout_s=1)
        alerts = reader.messages[topics.alerts]
        # One episode: every message carries the first alert's id (the state
        # recovered from the changelog means no second episode was opened, even
        # when a rebalance replays uncommitted batches), raised once, cleared once
        # (at-least-once may repeat a message, never with another id).
        assert {a["alert_id"] for a in alerts} == {raised["alert_id"]}
        assert {a["state"] for a in alerts} == {"active", "cleared"}
        assert alerts[-1]["state"] == "cleared"
    finally:
        reader.close()
        worker.stop()
