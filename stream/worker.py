"""The stream worker: a faust-streaming app that drives ``stream.pipeline``.

The agent only moves bytes: it hands each ``readings`` message to the pipeline and
sends what comes out. Delivery is at-least-once with idempotent outputs:

* outputs are sent with ``force=True`` (at once, for low alert latency); faust
  flushes its producer before every offset commit, so no offset is committed
  before the alerts it caused are in Kafka; the asset's state is stored only
  after its alerts are acknowledged;
* a crash between the two replays the messages, and the replay produces alerts
  with the same ids (stream.alerts), which consumers de-duplicate;
* per-asset state (which alerts are active) lives in a faust Table whose Kafka
  changelog restores it when a worker restarts or a partition moves.

We avoid exactly_once (open faust bugs) and ``stream.take()`` with table writes
(it crashed with "Cannot modify table key from outside of stream iteration" and
still committed offsets).
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust

from stream.config import ServiceConfig
from stream.kafka_admin import ensure_topics
from stream.pipeline import Pipeline, Source
from stream.wire import encode_message

log = logging.getLogger("edgewatch.worker")

STATS_INTERVAL_S = 10.0


def create_app(config: ServiceConfig) -> faust.App:
    kafka, settings = config.kafka, config.worker
    topics = kafka.topics
    brokers = [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",") if server.strip()]
    app = faust.App(
        settings.app_id,
        broker=brokers,
        store="memory://",  # the changelog topic is the durable copy; memory is rebuilt from it
        datadir=settings.data_dir,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=0,
        web_enabled=False,
        processing_guarantee="at_least_once",
        key_serializer="json",
        value_serializer="json",
    )
    readings = app.topic(topics.readings, key_serializer="raw", value_serializer="raw")
    alerts = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw")
    deadletter = app.topic(topics.deadletter, key_serializer="raw", value_serializer="raw")
    # Keys and values of the state table are JSON (the app-wide serializers above); topics set raw explicitly.
    state = app.Table("asset-state", default=dict, partitions=kafka.partitions)
    pipeline = Pipeline(config)
    counters = {"messages": 0, "samples": 0, "alerts": 0, "deadletters": 0}

    @app.agent(readings, name="process-readings", concurrency=1)
    async def process_readings(stream):
        async for event in stream.events():
            message = event.message
            source = Source(message.topic, message.partition, message.offset, message.key)
            outputs = pipeline.process(event.value, source, state)
            if outputs.alerts:
                sent = [
                    await alerts.send(key=alert["asset_id"].encode(), value=encode_message(alert), force=True)
                    for alert in outputs.alerts
                ]
                # Store the new state only once Kafka has the alerts: stored first, a
                # crash in between would restore "active" and the replay stay silent.
                await asyncio.gather(*sent)
            outputs.apply_state(state)
            if outputs.deadletter is not None:
                log.warning("dead-lettered %s:%s@%s: %s", message.topic, message.partition, message.offset, outputs.deadletter["reason"])
                await deadletter.send(key=message.key, value=encode_message(outputs.deadletter), force=True)
                counters["deadletters"] += 1
            counters["messages"] += 1
            counters["samples"] += outputs.samples
            counters["alerts"] += len(outputs.alerts)

    last = {"t": time.monotonic(), **counters}

    @app.timer(STATS_INTERVAL_S)
    async def report_stats() -> None:
        now = time.monotonic()
        elapsed = max(now - last["t"], 1e-9)
        log.info(
            "processed %d messages, %d samples (%.0f samples/s); %d alerts, %d dead letters in total",
            counters["messages"],
            counters["samples"],
            (counters["samples"] - last["samples"]) / elapsed,
            counters["alerts"],
            counters["deadletters"],
        )
        last.update(t=now, **counters)

    return app


def run_worker(config: ServiceConfig) -> None:
    """Run the worker until SIGTERM / Ctrl-C."""
    ensure_topics(config.kafka)
    app = create_app(config)
    worker = faust.Worker(app, loglevel=config.worker.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
