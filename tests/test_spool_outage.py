"""Store-and-forward against a real broker that goes away: the Kafka broker is
stopped for at least 30 s while reading batches keep being spooled; once it is
back, every batch arrives, none lost, none twice, in order per asset, and the
ones from the outage arrive marked replayed.

This test starts its own broker (it stops it), not the session's ``kafka``."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.forwarder import SpoolForwarder
from connectors.spool import Spool
from edgewatch.localkafka import LocalKafka, free_port
from stream.wire import ReadingBatch, decode_reading_batch, encode_reading_batch

pytestmark = pytest.mark.kafka

TOPIC = "outage.readings"
ASSETS = ("pump-1", "pump-2", "fan-1", "press-7")
TAGS = ("bearing_temp", "flow", "vibration_rms")
BATCHES_PER_S = 20
OUTAGE_S = 30.0
REPLAY_AFTER_S = 2.0


def now_us() -> int:
    return time.time_ns() // 1000


class Appender(threading.Thread):
    """Spools a reading batch every 1/BATCHES_PER_S s, round robin over the assets,
    seq increasing per asset, sample timestamps increasing per asset."""

    def __init__(self, spool: Spool):
        super().__init__(name="test-appender", daemon=True)
        self.spool = spool
        self.appended: list[tuple[str, int, int]] = []  # (asset, seq, created_us)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        seq = {asset: 0 for asset in ASSETS}
        last_ts = {asset: now_us() - 1_000_000 for asset in ASSETS}
        rng = np.random.default_rng(7)
        tick = time.monotonic()
        i = 0
        try:
            while not self.halt.is_set():
                asset = ASSETS[i % len(ASSETS)]
                created = now_us()
                n = int(rng.integers(100, 900))  # 2-20 KiB per batch
                batch = ReadingBatch.from_columns(
                    asset,
                    TAGS,
                    np.arange(n) % len(TAGS),
                    # from just after this asset's previous batch up to now: increasing
                    np.linspace(last_ts[asset] + 1, created, n).astype(np.int64),
                    rng.normal(50.0, 5.0, n),
                    seq=seq[asset],
                )
                self.spool.append(TOPIC, asset.encode(), encode_reading_batch(batch), created_us=created)
                self.appended.append((asset, seq[asset], created))
                seq[asset] += 1
                last_ts[asset] = created
                i += 1
                tick += 1.0 / BATCHES_PER_S
                self.halt.wait(max(0.0, tick - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def read_topic(bootstrap: str, partitions: int) -> list[ReadingBatch]:
    """Everything on the topic, per partition in offset order (no consumer group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "outage-check", "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in range(partitions)}
        consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(partitions)])
        seen = {p: -1 for p in range(partitions)}
        batches: dict[int, list[ReadingBatch]] = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + 60
        while any(seen[p] < ends[p] - 1 for p in seen) and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                assert message.error() is None, message.error()
                batch = decode_reading_batch(message.value())
                assert message.key() == batch.asset_id.encode()
                batches[message.partition()].append(batch)
                seen[message.partition()] = message.offset()
        return [b for p in sorted(batches) for b in batches[p]]
    finally:
        consumer.close()


def test_broker_stopped_for_30_s_loses_nothing_and_marks_the_backlog_replayed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="connectors.forwarder")
    began = time.monotonic()
    broker = LocalKafka(tmp_path / "kafka", port=free_port())
    broker.start(timeout_s=120)
    spool = forwarder = appender = None
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for future in admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)]).values():
            future.result(30)
        del admin  # it would complain on stderr about the broker while it is down

        spool = Spool(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=256 << 20)
        forwarder = SpoolForwarder(spool, {"bootstrap.servers": broker.bootstrap}, replay_after_s=REPLAY_AFTER_S)
        forwarder.start()
        appender = Appender(spool)
        appender.start()

        # Normal operation: batches go through within moments.
        wait_until(lambda: forwarder.sent_records >= 40 and spool.pending_records < 10, 30, "the first batches to arrive")

        stop_called = now_us()
        broker.stop()
        stopped = now_us()
        wait_until(lambda: not forwarder.broker_reachable, 15, "the forwarder to notice the outage")
        time.sleep(max(0.0, OUTAGE_S - (now_us() - stopped) / 1e6))
        backlog = spool.pending_records
        assert backlog >= OUTAGE_S * BATCHES_PER_S * 0.8, f"only {backlog} batches spooled during the outage"
        assert not forwarder.broker_reachable

        start_called = now_us()
        assert (start_called - stopped) / 1e6 >= OUTAGE_S
        broker.start(timeout_s=120)
        wait_until(lambda: spool.pending_records < 10, 60, "the backlog to drain after the broker came back")
        drained = now_us()
        time.sleep(3)  # normal operation again
        appender.halt.set()
        appender.join(10)
        assert appender.error is None, appender.error
        wait_until(lambda: spool.pending_records == 0, 30, "the last batches to be sent")
        assert forwarder.stop(10) == 0
        assert forwarder.broker_reachable and forwarder.rejected_records == 0 and forwarder.rewinds == 0

        received = read_topic(broker.bootstrap, 2)
    finally:
        if appender is not None:
            appender.halt.set()
        if forwarder is not None:
            forwarder.stop(5)
        if spool is not None:
            spool.close()
        broker.stop()

    appended = {(asset, seq): created for asset, seq, created in appender.appended}
    got = [(b.asset_id, b.seq) for b in received]
    # Nothing lost, nothing twice.
    assert len(got) == len(set(got)), "duplicates"
    assert set(got) == set(appended), f"missing: {sorted(set(appended) - set(got))[:10]}"
    # In order per asset (one asset = one key = one partition): seq and sample time increase.
    for asset in ASSETS:
        mine = [b for b in received if b.asset_id == asset]
        assert [b.seq for b in mine] == list(range(len(mine)))
        firsts = [int(b.ts_us[0]) for b in mine]
        lasts = [int(b.ts_us[-1]) for b in mine]
        assert all(lasts[i] < firsts[i + 1] for i in range(len(mine) - 1))
    # Replayed marking follows the time a batch waited in the spool.
    replayed = {(b.asset_id, b.seq): b.replayed for b in received}
    before = [k for k, created in appended.items() if created < stop_called]
    during = [k for k, created in appended.items() if stopped + 500_000 <= created <= start_called - REPLAY_AFTER_S * 1e6]
    after = [k for k, created in appended.items() if created > drained]
    assert len(before) >= 40 and len(during) >= (OUTAGE_S - REPLAY_AFTER_S - 1) * BATCHES_PER_S and len(after) >= 40
    assert not any(replayed[k] for k in before), "batches sent before the outage marked replayed"
    assert all(replayed[k] for k in during), "backlog from the outage not marked replayed"
    assert not any(replayed[k] for k in after), "batches after the recovery marked replayed"
    assert forwarder.replayed_records >= len(during)

    # One warning when Kafka went away, one info when it came back; no storm.
    ours = [r for r in caplog.records if r.name == "connectors.forwarder"]
    assert [r.levelname for r in ours if "unreachable" in r.getMessage()] == ["WARNING"]
    assert [r.levelname for r in ours if "reachable again" in r.getMessage()] == ["INFO"]
    assert len([r for r in caplog.records if r.name.startswith("connectors.forwarder")]) < 15
    assert time.monotonic() - began < 120


def create_topics(bootstrap: str, *topics: NewTopic) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(list(topics)).values():
        future.result(30)


def read_raw(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "spool-check", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                assert message.error() is None, message.error()
                out.append(message)
        time.sleep(0.5)
        out.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)  # nothing extra
        return out
    finally:
        consumer.close()


def batch_bytes(seq: int, n: int = 50) -> bytes:
    t = now_us()
    return encode_reading_batch(
        ReadingBatch.from_columns("pump-1", TAGS, np.arange(n) % 3, t - 1000 * n + 1000 * np.arange(n), np.ones(n), seq=seq)
    )


def test_backlog_from_before_a_restart_is_marked_and_refused_records_are_given_up(kafka, topic_prefix, tmp_path):
    from stream.wire import encode_message, encode_reading_batch_json

    readings, events, small = f"{topic_prefix}.readings", f"{topic_prefix}.events", f"{topic_prefix}.small"
    create_topics(
        kafka.bootstrap,
        NewTopic(readings, 1, 1),
        NewTopic(events, 1, 1),
        NewTopic(small, 1, 1, config={"max.message.bytes": "2000"}),
    )
    a_minute_ago = now_us() - 60_000_000
    old_binary = batch_bytes(0)
    old_json = encode_reading_batch_json(decode_reading_batch(batch_bytes(1)))
    event = encode_message({"schema_version": 1, "kind": "connector_event", "event": "comm_lost", "detail": "x"})
    with Spool(tmp_path / "spool") as spool:
        # Left in the spool by the previous run of the connector, a minute ago:
        spool.append(readings, b"pump-1", old_binary, created_us=a_minute_ago)
        spool.append(readings, b"pump-1", old_json, created_us=a_minute_ago)
        spool.append(events, b"plc-1", event, created_us=a_minute_ago)
        spool.append(small, b"pump-1", b"x" * 5000, created_us=a_minute_ago)  # the broker refuses it for good
        # ... and fresh ones from this run.
        fresh_binary = batch_bytes(2)
        spool.append(readings, b"pump-1", fresh_binary)
        spool.append(readings, b"pump-1", encode_reading_batch_json(decode_reading_batch(batch_bytes(3))))

        forwarder = SpoolForwarder(spool, {"bootstrap.servers": kafka.bootstrap}, replay_after_s=5.0)
        forwarder.start()
        wait_until(lambda: spool.pending_records == 0, 30, "the spool to drain")
        assert forwarder.stop(5) == 0
        assert forwarder.rejected_records == 1 and forwarder.replayed_records == 2

    got = read_raw(kafka.bootstrap, readings, 4)
    batches = [decode_reading_batch(m.value()) for m in got]
    assert [(b.seq, b.replayed) for b in batches] == [(0, True), (1, True), (2, False), (3, False)]
    # The binary batch was patched in its flags only; the fresh one went out byte for byte.
    assert got[0].value()[:6] == old_binary[:6] and got[0].value()[8:] == old_binary[8:]
    assert got[2].value() == fresh_binary
    assert [m.value() for m in read_raw(kafka.bootstrap, events, 1)] == [event]  # events unchanged


def test_failed_deliveries_are_sent_again_from_the_first_unconfirmed_record(kafka, topic_prefix, tmp_path):
    """A topic that does not exist yet: its record fails, the forwarder rewinds
    and retries (holding the records behind it, for order) until the topic is there."""
    readings, late = f"{topic_prefix}.readings", f"{topic_prefix}.late"
    create_topics(kafka.bootstrap, NewTopic(readings, 1, 1))
    with Spool(tmp_path / "spool") as spool:
        spool.append(readings, b"pump-1", batch_bytes(0))
        spool.append(late, b"pump-1", b"for the late topic")
        for seq in range(1, 20):
            spool.append(readings, b"pump-1", batch_bytes(seq))
        config = {"bootstrap.servers": kafka.bootstrap, "topic.metadata.propagation.max.ms": 500}
        forwarder = SpoolForwarder(spool, config, replay_after_s=60.0)
        forwarder.start()
        try:
            wait_until(lambda: forwarder.rewinds >= 1, 30, "a failed delivery")
            assert spool.first_unacked == 1  # seq 0 confirmed, nothing after the failure
            create_topics(kafka.bootstrap, NewTopic(late, 1, 1))
            wait_until(lambda: spool.pending_records == 0, 60, "the spool to drain once the topic exists")
        finally:
            forwarder.stop(5)
        assert "Unknown topic" in forwarder.last_error
    seqs = [decode_reading_batch(m.value()).seq for m in read_raw(kafka.bootstrap, readings, 20)]
    # The last copy of every record is in spool order; earlier copies may repeat a run.
    last_copies = list(dict.fromkeys(reversed(seqs)))[::-1]
    assert last_copies == list(range(20))
    assert [m.value() for m in read_raw(kafka.bootstrap, late, 1)] == [b"for the late topic"]
