"""The store-and-forward promise, end to end through the real parts:

    edgewatch simulate (OPC UA + Modbus servers) -> edgewatch connect -> Kafka

The broker is stopped for more than 30 s while the plant keeps running, then
started again. Every sample the connectors read must arrive, once, in order per
tag; what was read during the outage arrives marked as replayed, what was read
before it does not. A second test kills the connector with SIGKILL while the
broker is down: what it had written to its spool must still arrive after a
restart.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from edgewatch.demo import demo_config
from edgewatch.localkafka import REPO, LocalKafka, free_port
from edgewatch.processes import Child, edgewatch_command
from stream.config import load_config
from stream.kafka_admin import ensure_topics
from stream.wire import decode_reading_batch

pytestmark = pytest.mark.kafka

OUTAGE_S = 32.0


def read_all(bootstrap: str, topic: str) -> list:
    """Every message of ``topic`` from the beginning, partition by partition (no group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        messages = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            got = []
            while len(got) < high - low:
                for m in consumer.consume(1000, timeout=2):
                    if m.error() is None:
                        got.append(m)
            messages.extend(got)
        return messages
    finally:
        consumer.close()


def health(config) -> dict:
    try:
        return orjson.loads(Path(config.connect.health_file).read_bytes())
    except (OSError, ValueError):
        return {}


def wait_until(predicate, timeout_s: float, what: str, children=()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        for child in children:
            assert child.alive(), f"{child.args[-3:]} died:\n{child.log_tail()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def plant(tmp_path):
    """A broker of its own (this test stops it), the sample plant on free ports, and the simulator."""
    broker = LocalKafka(tmp_path / "kafka", port=free_port())
    broker.start(timeout_s=120)
    env = {"EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "EDGEWATCH_CONNECT__HEALTH_INTERVAL_S": "0.5"}
    plant_file = demo_config(REPO / "config" / "plant.yaml", tmp_path, faults=[])
    config = load_config(plant_file, environ=env)
    ensure_topics(config.kafka)
    simulator = Child(edgewatch_command("simulate", "--config", str(plant_file)), env=env, log_path=tmp_path / "simulate.log")
    children = [simulator]

    def start_connect() -> Child:
        child = Child(edgewatch_command("connect", "--config", str(plant_file)), env=env, log_path=tmp_path / f"connect-{len(children)}.log")
        children.append(child)
        return child

    try:
        yield broker, config, start_connect
    finally:
        for child in reversed(children):
            child.stop()
        broker.stop()


def samples_by_tag(messages) -> tuple[dict, list]:
    """(asset, tag) -> list of (ts_us, quality, replayed) in the order read; and every batch."""
    per_tag, batches = defaultdict(list), []
    for m in messages:
        batch = decode_reading_batch(m.value())
        batches.append(batch)
        for i in range(len(batch)):
            tag = batch.tags[batch.tag_index[i]]
            per_tag[(batch.asset_id, tag)].append((int(batch.ts_us[i]), int(batch.quality[i]), batch.replayed))
    return per_tag, batches


def test_broker_outage_of_30_s_loses_nothing_and_marks_the_backfill(plant):
    broker, config, start_connect = plant
    connect = start_connect()
    wait_until(lambda: health(config).get("batches_out", 0) > 10, 60, "the connectors to read the simulator", [connect])
    wait_until(lambda: health(config).get("spool", {}).get("pending_records", 1) == 0, 30, "the spool to drain before the outage", [connect])

    broker.stop()
    down_at = time.time_ns() // 1000
    outage_started = time.monotonic()
    time.sleep(OUTAGE_S)
    backlog = health(config)["spool"]["pending_records"]
    assert backlog > 50, f"only {backlog} records waited in the spool during the outage"
    broker.start(timeout_s=120)
    outage_s = time.monotonic() - outage_started
    up_at = time.time_ns() // 1000
    assert outage_s >= 30

    wait_until(lambda: health(config).get("spool", {}).get("pending_records", 1) == 0, 90, "the backlog to drain after the outage", [connect])
    time.sleep(2)
    connect.stop()  # SIGTERM: the last samples are flushed to the spool and sent
    final = health(config)
    assert final["spool"]["pending_records"] == 0, final
    read_in = final["samples_in"]

    per_tag, batches = samples_by_tag(read_all(broker.bootstrap, config.kafka.topics.readings))
    # every sample the connectors read arrived, exactly once
    assert sum(len(b) for b in batches) == read_in
    keys = [(b.asset_id, b.seq) for b in batches]
    assert len(keys) == len(set(keys)), "a batch arrived twice"
    # in order per tag, and from every configured tag
    configured = {(a.id, t.id) for a in config.assets for t in a.tags}
    assert set(per_tag) == configured
    for key, samples in per_tag.items():
        ts = np.array([s[0] for s in samples])
        assert np.all(np.diff(ts) > 0), f"{key}: samples out of order or repeated"
    # OPC UA delivers every 100 ms update: no hole in the grid across the outage
    # (the first sample is the node's value from before the simulator's first update)
    flow = np.array([s[0] for s in per_tag[("pump-1", "flow")]])[1:]
    during = flow[(flow > down_at) & (flow < up_at)]
    assert len(during) >= 0.9 * OUTAGE_S * config.simulator.rate_hz, f"{len(during)} pump-1 flow samples from the outage"
    assert np.max(np.diff(flow)) <= 1_000_000, f"a {np.max(np.diff(flow)) / 1e6:.1f} s hole in pump-1 flow"
    # the backfill is marked, live data is not
    sent_live = [s for s in per_tag[("pump-1", "flow")] if s[0] < down_at - 2_000_000]
    sent_late = [s for s in per_tag[("pump-1", "flow")] if down_at + 1_000_000 < s[0] < up_at - 10_000_000]
    assert sent_live and not any(s[2] for s in sent_live), "data sent live was marked replayed"
    assert sent_late and all(s[2] for s in sent_late), "data held back by the outage was not marked replayed"
    # the Modbus gateway kept being polled through the outage (both units)
    for asset_id in ("fan-1", "compressor-1"):
        speed = np.array([s[0] for s in per_tag[(asset_id, "speed")] if s[1] == 0])
        assert np.max(np.diff(speed)) <= 2_500_000, f"{asset_id}: a hole in the polled data"


def test_spool_survives_kill_9_of_the_connector_while_the_broker_is_down(plant):
    broker, config, start_connect = plant
    connect = start_connect()
    wait_until(lambda: health(config).get("batches_out", 0) > 5, 60, "the connectors to read the simulator", [connect])
    broker.stop()
    time.sleep(8)
    written = health(config)  # rewritten every 0.5 s: what the spool held a moment ago
    connect.kill()  # SIGKILL: no flush, no goodbye
    killed_at = time.time_ns() // 1000
    assert written["spool"]["pending_records"] > 10

    broker.start(timeout_s=120)
    again = start_connect()
    wait_until(
        lambda: health(config).get("pid") == again.pid and health(config)["spool"]["pending_records"] == 0,
        90,
        "the restarted connector to send the spool",
        [again],
    )
    again.stop()

    per_tag, batches = samples_by_tag(read_all(broker.bootstrap, config.kafka.topics.readings))
    # what the first connector had read up to its last health report is all there
    flow = np.array([s[0] for s in per_tag[("pump-1", "flow")]])[1:]  # [0]: the value from before the first update
    before_kill = flow[flow < killed_at]
    assert len(before_kill) >= 0.9 * (written["samples_in"] / 27)  # 27 tags; the pump's share is checked on its grid
    first, last_written = before_kill.min(), killed_at - 2_000_000
    grid = before_kill[before_kill <= last_written]
    assert np.max(np.diff(grid)) <= 1_000_000, "samples written to the spool before the kill are missing"
    # a resend after the kill may repeat a batch (at-least-once), but never changes it
    seen = {}
    for b in batches:
        digest = (len(b), int(b.ts_us[0]), float(np.nansum(b.value)))
        assert seen.setdefault((b.asset_id, b.seq), digest) == digest
    assert first < killed_at
