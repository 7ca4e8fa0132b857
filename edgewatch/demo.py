"""`edgewatch demo`: a simulated plant streaming through a real Kafka broker into a
worker that raises alerts, with a live terminal view. Everything it starts it stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path

import orjson
from confluent_kafka import Consumer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from connectors.generator import Fault, PlantGenerator
from connectors.plant_stream import PlantStream
from edgewatch.localkafka import LocalKafka, free_port
from edgewatch.processes import Child, edgewatch_command, interrupt_on_sigterm
from stream.config import ServiceConfig, load_config
from stream.kafka_admin import ensure_topics
from stream.wire import WireError, decode_reading_batch

class _View:
    """What the live view shows, filled from the readings and alerts topics."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.samples = defaultdict(int)
        self.recent = defaultdict(deque)  # asset -> (monotonic time, samples)
        self.active = defaultdict(set)  # asset -> active alert ids
        self.alerts: deque[dict] = deque(maxlen=8)
        self.alert_count = 0
        self.first_alert_after_s: float | None = None
        self.started = time.monotonic()

    def on_readings(self, value: bytes) -> None:
        try:
            batch = decode_reading_batch(value)
        except WireError:
            return
        now = time.monotonic()
        self.samples[batch.asset_id] += len(batch)
        window = self.recent[batch.asset_id]
        window.append((now, len(batch)))
        while window and window[0][0] < now - 5:
            window.popleft()

    def on_alert(self, alert: dict) -> None:
        self.alert_count += 1
        if self.first_alert_after_s is None:
            self.first_alert_after_s = time.monotonic() - self.started
        (self.active[alert["asset_id"]].add if alert["state"] == "active" else self.active[alert["asset_id"]].discard)(
            alert["alert_id"]
        )
        self.alerts.appendleft(alert)

    def rate(self, asset_id: str) -> float:
        window = self.recent[asset_id]
        return sum(n for _, n in window) / 5.0

    def render(self, broker: str, worker_alive: bool):
        elapsed = time.monotonic() - self.started
        assets = Table(title=f"edgewatch demo: broker {broker}, {elapsed:.0f} s, worker {'running' if worker_alive else 'STOPPED'}")
        for column in ("asset", "type", "tags", "samples/s", "samples", "active alerts"):
            assets.add_column(column, justify="right" if column in ("samples/s", "samples", "tags") else "left")
        for asset in self.config.assets:
            n_active = len(self.active[asset.id])
            assets.add_row(
                asset.id,
                asset.type,
                str(len(asset.tags)),
                f"{self.rate(asset.id):,.0f}",
                f"{self.samples[asset.id]:,}",
                f"[bold red]{n_active}[/]" if n_active else "0",
            )
        alerts = Table(show_header=True, expand=True)
        for column in ("event time (UTC)", "state", "priority", "message"):
            alerts.add_column(column)
        for alert in self.alerts:
            style = "bold red" if alert["state"] == "active" else "green"
            alerts.add_row(alert["event_time"][11:23], f"[{style}]{alert['state']}[/]", alert["priority"], alert["message"])
        return Group(assets, Panel(alerts, title=f"alerts ({self.alert_count})"))


def run_demo(config_path: Path, duration_s: float | None, rate_hz: float, faults: list[Fault], console: Console) -> int:
    """Run the demo; return 0 if an alert came through, 1 if none did."""
    workdir = Path(tempfile.mkdtemp(prefix="edgewatch-demo-"))
    broker = LocalKafka(workdir / "kafka", port=free_port())
    env = {"EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "EDGEWATCH_WORKER__DATA_DIR": str(workdir / "worker")}
    config = load_config(config_path, environ={**os.environ, **env})  # what the worker child will see
    for fault in faults:  # check the schedule against the config before starting anything
        PlantGenerator(config, faults=[fault])

    previous = interrupt_on_sigterm()  # e.g. from systemd or a test: stop as Ctrl-C does
    worker = simulator = consumer = None
    view = _View(config)
    try:
        console.print(f"[bold]edgewatch demo[/]: starting Apache Kafka on {broker.bootstrap} ...")
        broker.start()
        ensure_topics(config.kafka)
        console.print("starting the worker and the simulated plant ...")
        worker = Child(
            edgewatch_command("worker", "--config", str(config_path)), env=env, log_path=workdir / "worker.log"
        )
        simulator = PlantStream(config, rate_hz, faults)
        simulator.start()
        for fault in faults:
            console.print(f"a fault is scheduled: {fault.asset_id} {fault.tag_id} rises past its high limit {fault.start_s:.0f} s from now")
        topics = config.kafka.topics
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"edgewatch-demo-view-{time.time_ns()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topics.readings, topics.alerts])
        interactive = console.is_terminal
        deadline = time.monotonic() + duration_s if duration_s is not None else None
        last_line = time.monotonic()
        live = Live(view.render(broker.bootstrap, True), console=console, auto_refresh=False) if interactive else None
        if live:
            live.start()
        try:
            while deadline is None or time.monotonic() < deadline:
                for message in consumer.consume(500, timeout=0.25):
                    if message.error():
                        continue
                    if message.topic() == topics.readings:
                        view.on_readings(message.value())
                    else:
                        alert = orjson.loads(message.value())
                        view.on_alert(alert)
                        if not interactive:
                            console.print(f"ALERT {alert['state']}: {alert['message']} (alert_id {alert['alert_id']})")
                if live:
                    live.update(view.render(broker.bootstrap, worker.alive()), refresh=True)
                elif time.monotonic() - last_line >= 5:
                    last_line = time.monotonic()
                    total = sum(view.samples.values())
                    rate = sum(view.rate(a.id) for a in config.assets)
                    console.print(f"{time.monotonic() - view.started:4.0f} s: {total:,} samples ({rate:,.0f}/s), {view.alert_count} alerts")
                if not worker.alive():
                    console.print(f"[red]the worker stopped unexpectedly[/]; its log ends with:\n{worker.log_tail()}")
                    return 1
        finally:
            if live:
                live.stop()
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if simulator is not None:
            simulator.stop()
            simulator.publisher = None  # destroy the producer before the broker goes, or librdkafka logs reconnects
        if consumer is not None:
            consumer.close()
        if worker is not None:
            worker.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if view.alert_count:
        console.print(
            f"demo finished: {sum(view.samples.values()):,} samples streamed, {view.alert_count} alert messages; "
            f"the first arrived {view.first_alert_after_s:.0f} s after start. Everything it started is stopped."
        )
        return 0
    console.print("demo finished without any alert: the worker may not have caught up (see `edgewatch worker` logs).")
    return 1
