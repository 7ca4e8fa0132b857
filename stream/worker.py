"""The stream worker: faust-streaming apps that drive ``stream.pipeline``.

Two roles, each its own process and Kafka consumer group on the ``readings``
topic, so that neither waits for the other:

* ``rules``: the fast path (decode, validate, limits, rate of change, flatline,
  bad quality) and the alerts and dead letters it raises. Nothing slow runs in
  its event loop: a batch's alerts never wait for another batch's windows.
* ``analytics``: stream 2 (event-time windows, features, detectors) and the
  features and scores topics. It runs the same rules as evidence for later
  stages but publishes no rule alert and no dead letter (the rules role does).

``edgewatch worker`` runs both as child processes by default (``role: all``);
compose or Kubernetes may run them as separate services to scale each alone.
Measured on 2 cores, one loop for both cost the alert path a factor of 10 in
p99 latency (BENCHMARKS.md, end to end).

The agents only move bytes: they hand each ``readings`` message to the pipeline
and send what comes out. Delivery is at-least-once with idempotent outputs:

* alerts are sent with ``force=True`` (at once, for low alert latency); faust
  flushes its producer before every offset commit, so no offset is committed
  before the messages it caused are in Kafka; the asset's state is stored only
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
from pathlib import Path

import faust
import orjson

from stream.config import ServiceConfig
from stream.kafka_admin import ensure_topics
from stream.models import load_catalog
from stream.pipeline import Pipeline, Source
from stream.wire import encode_message

log = logging.getLogger("edgewatch.worker")

STATS_INTERVAL_S = 10.0
#: the longest an LSTM sequence waits for others to share its forward pass
SEQUENCE_WAIT_S = 0.2
#: how often timed shelving is checked for expiry (wall clock)
SHELVING_CHECK_S = 5.0


#: the consumer-group (faust app id) suffix of the analytics role
ANALYTICS_SUFFIX = "-analytics"
ROLES = ("rules", "analytics")


def _faust_app(config: ServiceConfig, app_id: str) -> faust.App:
    kafka, settings = config.kafka, config.worker
    brokers = [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",") if server.strip()]
    # One folder per role (faust keeps its files per app); faust creates only the last level.
    datadir = Path(settings.data_dir) / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=brokers,
        store="memory://",  # the changelog topic is the durable copy; memory is rebuilt from it
        datadir=str(datadir),
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


def _raw_topic(app: faust.App, name: str):
    return app.topic(name, key_serializer="raw", value_serializer="raw")


def _stats_timer(app: faust.App, role: str, counters: dict) -> None:
    last = {"t": time.monotonic(), **counters}

    @app.timer(STATS_INTERVAL_S)
    async def report_stats() -> None:
        now = time.monotonic()
        elapsed = max(now - last["t"], 1e-9)
        log.info(
            "%s: processed %d messages, %d samples (%.0f samples/s); %s in total",
            role,
            counters["messages"],
            counters["samples"],
            (counters["samples"] - last["samples"]) / elapsed,
            ", ".join(f"{n} {k}" for k, n in counters.items() if k not in ("messages", "samples")),
        )
        last.update(t=now, **counters)


def create_app(config: ServiceConfig, role: str = "rules") -> faust.App:
    """The faust app of one worker role ("rules" or "analytics")."""
    if role == "rules":
        return _rules_app(config)
    if role == "analytics":
        return _analytics_app(config)
    raise ValueError(f"worker role must be one of {', '.join(ROLES)}, got {role!r}")


def _rules_app(config: ServiceConfig) -> faust.App:
    topics = config.kafka.topics
    app = _faust_app(config, config.worker.app_id)
    readings = _raw_topic(app, topics.readings)
    alerts = _raw_topic(app, topics.alerts)
    deadletter = _raw_topic(app, topics.deadletter)
    # Keys and values of the state table are JSON (the app-wide serializers); topics set raw explicitly.
    state = app.Table("asset-state", default=dict, partitions=config.kafka.partitions)
    pipeline = Pipeline(config, detection="off")
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

    _stats_timer(app, "rules", counters)
    return app


def _analytics_app(config: ServiceConfig) -> faust.App:
    topics = config.kafka.topics
    app = _faust_app(config, config.worker.app_id + ANALYTICS_SUFFIX)
    readings = _raw_topic(app, topics.readings)
    features = _raw_topic(app, topics.features)
    scores = _raw_topic(app, topics.scores)
    alerts = _raw_topic(app, topics.alerts)
    alarm_state = _raw_topic(app, topics.alarm_state)
    commands = _raw_topic(app, topics.alert_commands)
    deadletter = _raw_topic(app, topics.deadletter)
    # Fusion's posterior and the alarm book per asset (and flood state per area):
    # restored from the changelog after a restart, so an open alarm keeps its id.
    diagnosis_state = app.Table("diagnosis-state", default=dict, partitions=config.kafka.partitions)
    pipeline = Pipeline(config, models=load_catalog(config), diagnosis_store=diagnosis_state)
    # The rules run here too, as evidence only (their alerts are the rules role's):
    # their state is kept in memory, rebuilt from the stream after a restart.
    rule_state: dict[str, dict] = {}
    # State changed outside a stream iteration (a timer) waits for the next one:
    # faust tables may only be written while iterating a stream.
    pending_state: dict[str, dict] = {}
    counters = {"messages": 0, "samples": 0, "windows": 0, "scores": 0, "alarm_events": 0, "commands": 0, "rejected_commands": 0}
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

    async def send_alarms(outputs) -> None:
        """Alarm events (forced, like alerts), then their state records; the
        diagnosis state is stored by the caller once Kafka has both."""
        sent = []
        for event in outputs.alarms:
            key = event["asset_id"] or f"area:{event['area']}"
            sent.append(await alerts.send(key=key.encode(), value=encode_message(event), force=True))
        for alert_id, record in outputs.alarm_states:
            value = encode_message(record) if record is not None else None  # None: a tombstone
            sent.append(await alarm_state.send(key=alert_id.encode(), value=value, force=True))
        if sent:
            await asyncio.gather(*sent)
        counters["alarm_events"] += len(outputs.alarms)

    def store_state(outputs) -> None:
        if pending_state:
            for key, value in pending_state.items():
                diagnosis_state[key] = value
            pending_state.clear()
        outputs.apply_diagnosis_state(diagnosis_state)

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

    @app.agent(readings, name="analyse-readings", concurrency=1)
    async def analyse_readings(stream):
        async for event in stream.events():
            message = event.message
            source = Source(message.topic, message.partition, message.offset, message.key)
            # A refused message is dead-lettered by the rules role; here it is skipped.
            outputs = pipeline.process(event.value, source, rule_state)
            outputs.apply_state(rule_state)
            if outputs.alarms or outputs.alarm_states:
                await send_alarms(outputs)
            store_state(outputs)
            if outputs.features or outputs.scores:
                await send_analytics(outputs.features, outputs.scores)
            await flush_sequences(force=False)
            counters["messages"] += 1
            counters["samples"] += outputs.samples

    @app.agent(commands, name="apply-alert-commands", concurrency=1)
    async def apply_commands(stream):
        async for event in stream.events():
            message = event.message
            source = Source(message.topic, message.partition, message.offset, message.key)
            try:
                command = orjson.loads(event.value)
            except (orjson.JSONDecodeError, TypeError) as exc:
                outputs = None
                reason = f"alert command is not JSON: {exc}"
            else:
                asset_id = command.get("asset_id") if isinstance(command, dict) else None
                if isinstance(asset_id, str) and message.key != asset_id.encode():
                    # the asset's state lives on the partition its key picks: a command
                    # keyed otherwise may reach a worker that does not hold the asset
                    reason = f'alert command key "{(message.key or b"").decode(errors="replace")}" differs from asset_id "{asset_id}": send it with the asset id as key'
                    outputs = None
                else:
                    outputs = pipeline.command(command, int(time.time() * 1e6))
                    reason = outputs.command_error
            if reason is not None:
                # Refused (malformed, unknown alarm, not allowed in its state): the
                # sender finds the reason on the dead-letter topic; nothing changed.
                log.warning("alert command refused (%s:%s@%s): %s", message.topic, message.partition, message.offset, reason)
                letter = pipeline.deadletter(event.value, ValueError(reason), source)
                letter["error"] = "command_rejected"
                await deadletter.send(key=message.key, value=encode_message(letter), force=True)
                counters["rejected_commands"] += 1
                continue
            await send_alarms(outputs)
            store_state(outputs)
            counters["commands"] += 1

    @app.timer(SEQUENCE_WAIT_S)
    async def score_waiting_sequences() -> None:
        await flush_sequences(force=True)

    @app.timer(SHELVING_CHECK_S)
    async def end_expired_shelving() -> None:
        outputs = pipeline.tick(int(time.time() * 1e6))
        if outputs.alarms or outputs.alarm_states:
            await send_alarms(outputs)
        pending_state.update(outputs.diagnosis_state)

    if config.api.enabled and pipeline.diagnosis is not None:
        _serve_api(app, config, pipeline, commands)

    _stats_timer(app, "analytics", counters)
    return app


def _serve_api(app: faust.App, config: ServiceConfig, pipeline: Pipeline, commands) -> None:
    """The operator HTTP API (stream.api), inside the analytics role's event loop."""
    from aiohttp import web

    from stream.api import build_app

    async def submit(command: dict) -> None:
        sent = await commands.send(key=command["asset_id"].encode(), value=encode_message(command), force=True)
        await sent

    web_app = build_app(config.api.token, pipeline.diagnosis.book, submit, time.time)
    runner = web.AppRunner(web_app, access_log=None)

    @app.task
    async def start_api() -> None:
        await runner.setup()
        site = web.TCPSite(runner, config.api.host, config.api.port)
        await site.start()
        log.info("operator API listening on http://%s:%d (bearer token from api.token)", config.api.host, config.api.port)

    @app.on_before_shutdown.connect
    async def stop_api(app, **kwargs) -> None:
        await runner.cleanup()


def run_worker(config: ServiceConfig, role: str) -> None:
    """Run one worker role ("rules" or "analytics") until SIGTERM / Ctrl-C."""
    ensure_topics(config.kafka)
    app = create_app(config, role)
    worker = faust.Worker(app, loglevel=config.worker.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
