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
from stream.models import load_catalog
from stream.pipeline import Pipeline, Source
from stream.wire import encode_message

log = logging.getLogger("edgewatch.worker")

STATS_INTERVAL_S = 10.0
#: the longest an LSTM sequence waits for others to share its forward pass
SEQUENCE_WAIT_S = 0.2


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
    features = app.topic(topics.features, key_serializer="raw", value_serializer="raw")
    scores = app.topic(topics.scores, key_serializer="raw", value_serializer="raw")
    # Keys and values of the state table are JSON (the app-wide serializers above); topics set raw explicitly.
    state = app.Table("asset-state", default=dict, partitions=kafka.partitions)
    pipeline = Pipeline(config, models=load_catalog(config), defer_detection=True)
    counters = {"messages": 0, "samples": 0, "alerts": 0, "deadletters": 0, "windows": 0, "scores": 0}
    # LSTM sequences wait in the pipeline's queue so that many assets share one
    # forward pass; they are scored when the queue is full (inside process), when
    # the oldest has waited SEQUENCE_WAIT_S, or by the timer below when input is quiet.
    sequences_since = {"t": None}

    async def send_analytics(feature_messages: list[dict], score_messages: list[dict]) -> None:
        # Not forced: these go out with the producer's next batch (faust flushes
        # it before committing offsets), which keeps per-message cost low.
        for message in feature_messages:
            await features.send(key=message["asset_id"].encode(), value=encode_message(message))
        for message in score_messages:
            await scores.send(key=message["asset_id"].encode(), value=encode_message(message))
        counters["windows"] += len(feature_messages)
        counters["scores"] += len(score_messages)

    async def flush_sequences(force: bool) -> None:
        if pipeline.pending_sequences == 0:
            sequences_since["t"] = None
            return
        now = time.monotonic()
        if sequences_since["t"] is None:
            sequences_since["t"] = now
        if force or now - sequences_since["t"] >= SEQUENCE_WAIT_S:
            sequences_since["t"] = None
            await send_analytics([], pipeline.flush_sequences())

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
            # Stream 2 once the fast rules' evidence is out (it may close windows and score them).
            pipeline.detect(outputs)
            if outputs.features or outputs.scores:
                await send_analytics(outputs.features, outputs.scores)
            await flush_sequences(force=False)
            if outputs.deadletter is not None:
                log.warning("dead-lettered %s:%s@%s: %s", message.topic, message.partition, message.offset, outputs.deadletter["reason"])
                await deadletter.send(key=message.key, value=encode_message(outputs.deadletter), force=True)
                counters["deadletters"] += 1
            counters["messages"] += 1
            counters["samples"] += outputs.samples
            counters["alerts"] += len(outputs.alerts)

    last = {"t": time.monotonic(), **counters}

    @app.timer(SEQUENCE_WAIT_S)
    async def score_waiting_sequences() -> None:
        await flush_sequences(force=True)

    @app.timer(STATS_INTERVAL_S)
    async def report_stats() -> None:
        now = time.monotonic()
        elapsed = max(now - last["t"], 1e-9)
        log.info(
            "processed %d messages, %d samples (%.0f samples/s); %d alerts, %d windows, %d scores, %d dead letters in total",
            counters["messages"],
            counters["samples"],
            (counters["samples"] - last["samples"]) / elapsed,
            counters["alerts"],
            counters["windows"],
            counters["scores"],
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
