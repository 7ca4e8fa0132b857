"""`edgewatch bench`: end-to-end figures on a real Kafka broker.

Three measurements in one run, on the same machine and the same messages:

1. throughput: the real `edgewatch worker` (its rules and analytics roles), joined and
   warmed up, then N reading batches produced at once; the last one crosses a
   limit, and the span from the first batch's broker append time to that
   alert's append time gives samples/s through decode + validate + rules +
   alert publishing; the analytics role's span ends at the last features
   message it wrote once it has committed every reading;
2. raw ceiling: the same messages consumed with no processing by aiokafka (the
   client inside faust) and by confluent-kafka; ratio = (1) / best of (2);
3. alert latency: batches offered at a fixed rate, some crossing a limit; latency
   is the alert's broker append time minus its reading's broker append time
   (topics use LogAppendTime, so both come from the same clock, in ms).

Plus the pipeline alone (no Kafka) on the same batches, to show where time goes.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from edgewatch.localkafka import LocalKafka, free_port, kafka_version
from edgewatch.processes import Child, edgewatch_command, interrupt_on_sigterm
from stream.config import ServiceConfig, load_config
from stream.kafka_admin import delete_topics, ensure_topics
from stream.pipeline import Pipeline, Source
from stream.worker import ANALYTICS_SUFFIX
from stream.wire import ReadingBatch, encode_reading_batch

ASSETS = 10
TAGS_PER_ASSET = 20
HIGH_LIMIT = 100.0
NORMAL = 50.0
LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}


def machine_description(kafka: bool = True) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{mem_kb / 1024**2:.0f} GiB"
    except (OSError, AttributeError):
        mem = "? GiB"
    broker = f"; Apache Kafka {kafka_version()} (local, KRaft)" if kafka else ""
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM; Linux {platform.release()}; Python {platform.python_version()}{broker}"


def _write_config(workdir: Path, name: str, bootstrap: str, prefix: str) -> Path:
    doc = {
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 1},
        "worker": {"app_id": f"{prefix}-worker", "data_dir": str(workdir / f"{name}-data"), "session_timeout_s": 6, "log_level": "warning"},
        "assets": [
            {"id": f"bench-{a}", "tags": [{"id": f"t{t}", "limits": {"high": HIGH_LIMIT}} for t in range(TAGS_PER_ASSET)]}
            for a in range(ASSETS)
        ],
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _batch(asset: int, seq: int, size: int, t0_us: int, violate: bool) -> tuple[str, bytes]:
    n_steps = size // TAGS_PER_ASSET
    times = t0_us + seq * 1_000_000 + np.arange(n_steps, dtype=np.int64) * (1_000_000 // max(n_steps, 1))
    values = np.full(n_steps * TAGS_PER_ASSET, NORMAL)
    if violate:
        values[-TAGS_PER_ASSET] = HIGH_LIMIT * 1.5  # tag t0, last time step
    batch = ReadingBatch.from_columns(
        f"bench-{asset}",
        [f"t{t}" for t in range(TAGS_PER_ASSET)],
        np.tile(np.arange(TAGS_PER_ASSET), n_steps),
        np.repeat(times, TAGS_PER_ASSET),
        values,
        seq=seq,
    )
    return batch.asset_id, encode_reading_batch(batch)


class _AlertWatcher:
    """Collects alerts (with their broker append time) from an alerts topic."""

    def __init__(self, bootstrap: str, topic: str):
        self.alerts: list[tuple[int, dict]] = []
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}", "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe([topic])

    def poll_until(self, predicate, timeout_s: float, worker: Child) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.alerts):
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark timed out waiting for alerts; worker log:\n{worker.log_tail()}")
            if not worker.alive():
                raise RuntimeError(f"the worker died during the benchmark:\n{worker.log_tail()}")
            for message in self.consumer.consume(1000, timeout=0.2):
                if message.error() is None:
                    alert = orjson.loads(message.value())
                    if alert.get("kind") == "alert":  # fast-rule alerts; fault alarms share the topic
                        self.alerts.append((message.timestamp()[1], alert))

    def close(self) -> None:
        self.consumer.close()


def _wait_for_analytics(bootstrap: str, config: ServiceConfig, end_offset: int, timeout_s: float, worker: Child) -> int:
    """Wait until the analytics role has committed every readings offset; return the
    broker append time (ms) of the last features message it wrote by then."""
    group = config.worker.app_id + ANALYTICS_SUFFIX
    readings = TopicPartition(config.kafka.topics.readings, 0)
    offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    features = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    features.subscribe([config.kafka.topics.features])
    last_ms = 0
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for message in features.consume(1000, timeout=0.2):
                if message.error() is None:
                    last_ms = max(last_ms, message.timestamp()[1])
            committed = offsets.committed([readings], timeout=10)[0].offset
            if committed >= end_offset:
                # drain what was written before the commit
                for message in features.consume(100_000, timeout=1.0):
                    if message.error() is None:
                        last_ms = max(last_ms, message.timestamp()[1])
                return last_ms
            if time.monotonic() > deadline:
                raise RuntimeError(f"the analytics role did not finish within {timeout_s:.0f} s (committed {committed} of {end_offset}); log:\n{worker.log_tail()}")
            if not worker.alive():
                raise RuntimeError(f"the worker died during the benchmark:\n{worker.log_tail()}")
    finally:
        offsets.close()
        features.close()


def _create_topic(bootstrap: str, name: str) -> list[str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(name, 1, 1, config=LOG_APPEND)])[name].result(30)
    return [name]


def _produce_all(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> tuple[int, int]:
    """Produce and wait for delivery; return the broker append times (ms) of the first and last message."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5, "batch.size": 1_000_000})
    appended: list[int] = []

    def on_delivery(err, msg):
        if err is None:
            appended.append(msg.timestamp()[1])

    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) or len(appended) != len(messages):
        raise RuntimeError("could not deliver the benchmark's readings to the broker")
    return min(appended), max(appended)


async def _raw_aiokafka(bootstrap: str, topic: str, expected: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        seen, started = 0, time.perf_counter()
        while seen < expected:
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"raw consume (aiokafka) saw {seen} of {expected} messages in 300 s")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(records) for records in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def _raw_confluent(bootstrap: str, topic: str, expected: int) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{time.time_ns()}", "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen, started = 0, time.perf_counter()
    try:
        while seen < expected:
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"raw consume (confluent-kafka) saw {seen} of {expected} messages in 300 s")
            messages = consumer.consume(10_000, timeout=0.5)
            seen += sum(1 for m in messages if m.error() is None)
        return time.perf_counter() - started
    finally:
        consumer.close()


def _pipeline_only(config: ServiceConfig, messages: list[tuple[str, bytes]], detection: str) -> float:
    pipeline, store = Pipeline(config, clock=lambda: 4e9, detection=detection), {}
    started = time.perf_counter()
    for offset, (key, value) in enumerate(messages):
        pipeline.process(value, Source("bench", 0, offset, key.encode()), store)
    return time.perf_counter() - started


def run_bench(samples: int, batch_size: int, latency_rate: float, latency_seconds: float, output: Path, bootstrap: str | None, console: Console) -> dict:
    if batch_size < TAGS_PER_ASSET or batch_size % TAGS_PER_ASSET:
        raise ValueError(f"--batch-size must be a multiple of {TAGS_PER_ASSET} (the tags per simulated asset)")
    interrupt_on_sigterm()  # a killed benchmark still stops its broker and workers
    workdir = Path(tempfile.mkdtemp(prefix="edgewatch-bench-"))
    broker = None
    if bootstrap is None:
        broker = LocalKafka(workdir / "kafka", port=free_port(), heap="1g")
        console.print(f"starting a local Kafka broker on {broker.bootstrap} ...")
        broker.start()
        bootstrap = broker.bootstrap
    stamp = time.strftime("%H%M%S")
    created: list[str] = []
    workers: list[Child] = []
    try:
        # ---------------------------------------------------------------- throughput
        tp_config_path = _write_config(workdir, "throughput", bootstrap, f"bench{stamp}tp")
        tp_config = load_config(tp_config_path, environ={})
        created += ensure_topics(tp_config.kafka, extra_config=LOG_APPEND)
        n_messages = max(2, samples // batch_size)
        t0 = time.time_ns() // 1000 - 7 * 86_400_000_000  # a week ago: event time, not wall clock
        # Only the last batch crosses a limit: its alert marks the end of the run.
        messages = [_batch(i % (ASSETS - 1), i, batch_size, t0, violate=False) for i in range(n_messages - 1)]
        messages.append(_batch(ASSETS - 1, n_messages, batch_size, t0, violate=True))
        total_samples = n_messages * batch_size

        # The raw ceiling and the pipeline alone, on the same messages.
        readings_topic = tp_config.kafka.topics.readings
        warmup_topic = f"{tp_config.kafka.topic_prefix}.raw"
        created += _create_topic(bootstrap, warmup_topic)
        _produce_all(bootstrap, warmup_topic, messages)
        raw_aio_s = asyncio.run(_raw_aiokafka(bootstrap, warmup_topic, n_messages))
        raw_ck_s = _raw_confluent(bootstrap, warmup_topic, n_messages)
        pipeline_s = _pipeline_only(tp_config, messages, detection="off")
        analytics_pipeline_s = _pipeline_only(tp_config, messages, detection="full")

        # The worker: started and warmed up first (it has joined its group and sent
        # one alert), then all batches are produced at once; the span from the first
        # batch's append to the last alert's append is the worker's time.
        worker = Child(edgewatch_command("worker", "--config", str(tp_config_path)), log_path=workdir / "throughput-worker.log")
        workers.append(worker)
        watcher = _AlertWatcher(bootstrap, tp_config.kafka.topics.alerts)
        # (the warm-up alert is on the last asset, which no other batch touches until the final one)
        _produce_all(bootstrap, readings_topic, [_batch(ASSETS - 1, 0, batch_size, t0 - 1_000_000, violate=True)])
        console.print("waiting for the worker to join ...")
        watcher.poll_until(lambda alerts: len(alerts) >= 1, timeout_s=120, worker=worker)
        console.print(f"producing {n_messages:,} batches of {batch_size} samples ({total_samples:,} samples) through the worker ...")
        first_append_ms, last_append_ms = _produce_all(bootstrap, readings_topic, messages)
        raised = lambda alerts: [ts for ts, alert in alerts if alert["state"] == "active"]  # noqa: E731
        watcher.poll_until(lambda alerts: len(raised(alerts)) >= 2, timeout_s=600, worker=worker)
        watcher.close()
        # The analytics role (windows, features, online detector) reads the same topic in
        # its own consumer group; its span ends at the last features message it wrote.
        console.print("waiting for the analytics role to catch up ...")
        last_features_ms = _wait_for_analytics(bootstrap, tp_config, n_messages + 1, timeout_s=900, worker=worker)
        worker.stop()
        last_ms = raised(watcher.alerts)[-1]
        # Broker timestamps are whole milliseconds: the span is exact to +/- 1 ms.
        worker_s = max(last_ms - first_append_ms, 1) / 1000.0
        # If the producer's own span came close to the worker's, the producer (not the
        # worker) set the pace: the report shows both.
        producer_s = max(last_append_ms - first_append_ms, 1) / 1000.0

        # ---------------------------------------------------------------- latency
        lat_config_path = _write_config(workdir, "latency", bootstrap, f"bench{stamp}lat")
        lat_config = load_config(lat_config_path, environ={})
        created += ensure_topics(lat_config.kafka, extra_config=LOG_APPEND)
        readings_topic = lat_config.kafka.topics.readings
        worker = Child(edgewatch_command("worker", "--config", str(lat_config_path)), log_path=workdir / "latency-worker.log")
        workers.append(worker)
        watcher = _AlertWatcher(bootstrap, lat_config.kafka.topics.alerts)
        appended: dict[int, int] = {}

        def on_delivery(err, msg):
            if err is None:
                appended[msg.offset()] = msg.timestamp()[1]

        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
        # Warm-up: wait until the worker has joined and answers.
        producer.produce(readings_topic, key=b"bench-0", value=_batch(0, 0, batch_size, t0, violate=True)[1], on_delivery=on_delivery)
        producer.flush(30)
        console.print("waiting for the latency worker to join ...")
        watcher.poll_until(lambda alerts: len(alerts) >= 1, timeout_s=120, worker=worker)
        warm = len(watcher.alerts)
        interval = batch_size / latency_rate
        n_latency = int(latency_seconds / interval)
        console.print(f"offering {latency_rate:,.0f} samples/s for {latency_seconds:.0f} s ({n_latency} batches) ...")
        started = time.perf_counter()
        expected_alerts = 0
        # Asset bench-1 alternates: a batch above the limit, then one back to normal,
        # so every other batch of it raises or clears an alert.
        for i in range(n_latency):
            due = started + i * interval
            while (pause := due - time.perf_counter()) > 0:
                producer.poll(min(pause, 0.01))
            asset = 1 + (i % (ASSETS - 1))
            violate = asset == 1 and (i // (ASSETS - 1)) % 2 == 0
            expected_alerts += asset == 1
            producer.produce(readings_topic, key=f"bench-{asset}".encode(), value=_batch(asset, i + 1, batch_size, t0, violate)[1], on_delivery=on_delivery)
            producer.poll(0)
        if producer.flush(30):
            raise RuntimeError("the latency run's readings were not all delivered within 30 s")
        del producer  # before the broker stops, or librdkafka keeps reconnecting and logging
        offered_s = time.perf_counter() - started
        watcher.poll_until(lambda alerts: len(alerts) >= warm + expected_alerts, timeout_s=120, worker=worker)
        watcher.close()
        worker.stop()
        latencies = np.array([ts - appended[a["source"]["offset"]] for ts, a in watcher.alerts[warm:]], dtype=float)
        if latencies.size == 0:
            raise RuntimeError("the latency run produced no alerts to time")

        analytics_s = max(last_features_ms - first_append_ms, 1) / 1000.0
        results = {
            "analytics_samples_per_s": total_samples / analytics_s,
            "analytics_span_s": analytics_s,
            "samples": total_samples,
            "batch_size": batch_size,
            "messages": n_messages,
            "worker_samples_per_s": total_samples / worker_s,
            "producer_span_s": producer_s,
            "worker_span_s": worker_s,
            "worker_messages_per_s": n_messages / worker_s,
            "raw_aiokafka_samples_per_s": total_samples / raw_aio_s,
            "raw_confluent_samples_per_s": total_samples / raw_ck_s,
            "pipeline_only_samples_per_s": total_samples / pipeline_s,
            "analytics_pipeline_only_samples_per_s": total_samples / analytics_pipeline_s,
            "latency_offered_samples_per_s": n_latency * batch_size / offered_s,
            "latency_alerts": int(latencies.size),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "latency_max_ms": float(latencies.max()),
        }
        results["raw_ceiling_samples_per_s"] = max(results["raw_aiokafka_samples_per_s"], results["raw_confluent_samples_per_s"])
        results["ratio_to_raw_ceiling"] = results["worker_samples_per_s"] / results["raw_ceiling_samples_per_s"]
        _report(results, console, output)
        return results
    finally:
        for worker in workers:
            worker.stop()
        if created:
            try:
                delete_topics(bootstrap, created)
            except Exception:  # the broker may be gone; nothing to clean then
                pass
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _report(r: dict, console: Console, output: Path) -> None:
    rows = [
        ("worker, rules role end to end (decode, validate, fast rules, alerts)", f"{r['worker_samples_per_s']:,.0f} samples/s", f"{r['worker_messages_per_s']:,.0f} msg/s", "target >= 1,000,000 samples/s"),
        ("  time: first reading appended -> last alert appended", f"{r['worker_span_s']:.3f} s", f"producer's own span {r['producer_span_s']:.3f} s", ""),
        ("raw consume, aiokafka (the client inside faust)", f"{r['raw_aiokafka_samples_per_s']:,.0f} samples/s", "", ""),
        ("raw consume, confluent-kafka", f"{r['raw_confluent_samples_per_s']:,.0f} samples/s", "", ""),
        ("ratio worker / raw ceiling", f"{r['ratio_to_raw_ceiling']:.2f}", "", "target >= 0.5"),
        ("pipeline alone, no Kafka (one core): fast rules", f"{r['pipeline_only_samples_per_s']:,.0f} samples/s", "", ""),
        ("worker, analytics role end to end (windows, features, online detector, fusion, alarms; same messages, at the same time)", f"{r['analytics_samples_per_s']:,.0f} samples/s", f"span {r['analytics_span_s']:.3f} s", ""),
        ("pipeline alone, no Kafka (one core): rules + windows, features, online detector, fusion, alarms", f"{r['analytics_pipeline_only_samples_per_s']:,.0f} samples/s", "", ""),
        (
            f"reading -> alert latency at {r['latency_offered_samples_per_s']:,.0f} samples/s ({r['latency_alerts']} alerts)",
            f"p50 {r['latency_p50_ms']:.1f} ms",
            f"p99 {r['latency_p99_ms']:.1f} ms (max {r['latency_max_ms']:.0f})",
            "target p99 <= 5 ms",
        ),
    ]
    print_rows("edgewatch bench", rows, console)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} with `edgewatch bench` on: {machine_description()}.",
        f"{r['messages']:,} reading batches of {r['batch_size']} samples ({r['samples']:,} samples), "
        f"{ASSETS} assets x {TAGS_PER_ASSET} tags, one partition, "
        "`edgewatch worker` with its two roles (rules, analytics) as two processes; broker, producer, "
        "workers and consumers share the machine.",
    ]
    replace_section(output, "e2e", lines, rows, heading="## End to end (`edgewatch bench`)\n")
    console.print(f"figures written to {output}")


def print_rows(title: str, rows: list[tuple[str, str, str, str]], console: Console) -> None:
    table = Table(title=title)
    for column in ("measure", "value", "", "target"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def replace_section(output: Path, name: str, lines: list[str], rows: list[tuple[str, str, str, str]], heading: str) -> None:
    """Put the figures between ``<!-- bench:NAME:start/end -->`` in ``output``, replacing
    what a previous run wrote there; a first run appends ``heading`` and the section."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    section = "\n".join(
        [start, *lines, "", "| measure | value | | target |", "| --- | --- | --- | --- |", *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows), end]
    )
    text = output.read_text() if output.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + heading + "\n" + section + "\n"
    output.write_text(text)
