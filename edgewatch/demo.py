"""`edgewatch demo`: the whole path on one machine, with a live terminal view.

    edgewatch simulate          edgewatch connect                  edgewatch worker
    OPC UA server  ─┐
                    ├──>  OPC UA / Modbus connectors ─> spool ─> Kafka ─> alerts
    Modbus gateway ─┘

The plant file's connections are moved to free local ports and its spool and
health file into a temporary folder, so the demo never touches a real plant or
the user's own spool. Everything it starts it stops.
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

import yaml

from connectors.simulator.faults import FaultSpec
from edgewatch.localkafka import LocalKafka, free_port
from edgewatch.processes import Child, edgewatch_command
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
        # Two kinds on the alerts topic: fast-rule alerts (active / cleared) and fault
        # alarms (ISA-18.2 states; a flood alarm has no asset of its own).
        if alert.get("kind") == "alarm":
            active = alert["state"] in ("active_unacknowledged", "active_acknowledged")
            asset_id = alert["asset_id"] or f"area:{alert['area']}"
        else:
            active, asset_id = alert["state"] == "active", alert["asset_id"]
        (self.active[asset_id].add if active else self.active[asset_id].discard)(alert["alert_id"])
        self.alerts.appendleft(alert)

    def rate(self, asset_id: str) -> float:
        window = self.recent[asset_id]
        return sum(n for _, n in window) / 5.0

    def render(self, broker: str, worker_alive: bool, devices: list[dict] = ()):
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
            style = "bold red" if alert["state"] in ("active", "active_unacknowledged") else "green"
            when = alert.get("event_time") or alert.get("last_change") or ""
            alerts.add_row(when[11:23], f"[{style}]{alert['state']}[/]", alert["priority"], alert["message"])
        links = Table(title="connections (edgewatch connect)")
        for column in ("device", "protocol", "connected", "samples", "last good read"):
            links.add_column(column)
        for device in devices:
            ok = "[green]yes[/]" if device.get("connected") else "[bold red]no[/]"
            links.add_row(device["device"], device["connector"], ok, f"{device.get('samples', 0):,}", (device.get("last_ok") or "never")[11:23])
        return Group(assets, links, Panel(alerts, title=f"alerts ({self.alert_count})"))


def _devices(config: ServiceConfig) -> list[dict]:
    """The connectors' health file, if it is there yet."""
    try:
        return orjson.loads(Path(config.connect.health_file).read_bytes()).get("devices", [])
    except (OSError, ValueError, TypeError):
        return []


def demo_config(config_path: Path, workdir: Path, faults: list[str]) -> Path:
    """A copy of the plant file for the demo: connections on free local ports, the
    spool, health file and ground truth in ``workdir``, the faults added."""
    doc = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    connections = doc.get("connections") or {}
    for server in connections.get("opcua") or []:
        server["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}/edgewatch/"
    for device in connections.get("modbus") or []:
        device["host"], device["port"] = "127.0.0.1", free_port()
    doc["connect"] = {**(doc.get("connect") or {}), "spool_dir": str(workdir / "spool"), "health_file": str(workdir / "health.json"), "health_interval_s": 1}
    simulator = doc.get("simulator") or {}
    doc["simulator"] = {**simulator, "ground_truth_file": str(workdir / "ground-truth.jsonl"), "pki_dir": str(workdir / "pki")}
    path = workdir / "plant.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def run_demo(config_path: Path, duration_s: float | None, faults: list[str], console: Console) -> int:
    """Run the demo; return 0 if an alert came through, 1 if none did."""
    for fault in faults:  # a typo in the schedule is reported before anything starts
        FaultSpec.parse(fault)
    workdir = Path(tempfile.mkdtemp(prefix="edgewatch-demo-"))
    broker = LocalKafka(workdir / "kafka", port=free_port(), die_with_parent=True)
    env = {"EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "EDGEWATCH_WORKER__DATA_DIR": str(workdir / "worker")}
    try:
        plant_file = demo_config(config_path, workdir, faults)
        config = load_config(plant_file, environ={**os.environ, **env})  # what the children will see
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise

    # Ctrl-C raises KeyboardInterrupt, and also leaves a mark the main loop checks: under
    # load a Ctrl-C was lost once (the interrupt raised inside a library call that ate it)
    # and the demo ran on for two minutes. The mark cannot be eaten.
    stop_asked: list[int] = []

    def ask_to_stop(signum, frame):
        stop_asked.append(signum)
        raise KeyboardInterrupt

    previous_int = signal.signal(signal.SIGINT, ask_to_stop)
    previous = signal.signal(signal.SIGTERM, ask_to_stop)  # e.g. from systemd or a test: stop as Ctrl-C does
    worker = simulator = connector = consumer = None
    view = _View(config)
    children = {}
    try:
        console.print(f"[bold]edgewatch demo[/]: starting Apache Kafka on {broker.bootstrap} ...")
        broker.start()
        ensure_topics(config.kafka)
        console.print("starting the simulated plant (OPC UA + Modbus servers), the connectors and the worker ...")
        fault_args = [arg for fault in faults for arg in ("--fault", fault)]
        simulator = children["simulator"] = Child(
            edgewatch_command("simulate", "--config", str(plant_file), *fault_args), env=env, log_path=workdir / "simulate.log"
        )
        connector = children["connectors"] = Child(edgewatch_command("connect", "--config", str(plant_file)), env=env, log_path=workdir / "connect.log")
        worker = children["worker"] = Child(edgewatch_command("worker", "--config", str(plant_file)), env=env, log_path=workdir / "worker.log")
        for fault in faults:
            spec = FaultSpec.parse(fault)
            lasting = f" for {spec.duration_s:.0f} s" if spec.duration_s else ""
            console.print(f"a fault is scheduled: {spec.kind} on {spec.asset_id}{' ' + spec.tag if spec.tag else ''}, {spec.start_s:.0f} s from now{lasting}")
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
            while not stop_asked and (deadline is None or time.monotonic() < deadline):
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
                    live.update(view.render(broker.bootstrap, worker.alive(), _devices(config)), refresh=True)
                elif time.monotonic() - last_line >= 5:
                    last_line = time.monotonic()
                    total = sum(view.samples.values())
                    rate = sum(view.rate(a.id) for a in config.assets)
                    console.print(f"{time.monotonic() - view.started:4.0f} s: {total:,} samples ({rate:,.0f}/s), {view.alert_count} alerts")
                for name, child in children.items():
                    if not child.alive():
                        console.print(f"[red]the {name} stopped unexpectedly[/]; its log ends with:\n{child.log_tail()}")
                        return 1
        finally:
            if live:
                live.stop()
        if stop_asked:
            console.print("stopping ...")
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if consumer is not None:
            consumer.close()
        # the connectors before the simulator (no comm-lost noise) and both before the broker
        for child in (connector, simulator, worker):
            if child is not None:
                child.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if view.alert_count:
        console.print(
            f"demo finished: {sum(view.samples.values()):,} samples streamed, {view.alert_count} alert messages; "
            f"the first arrived {view.first_alert_after_s:.0f} s after start. Everything it started is stopped."
        )
        return 0
    console.print("demo finished without any alert: the fault may not have started yet, or the worker not caught up.")
    return 1
