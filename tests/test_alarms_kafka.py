"""Fault alarms end to end on a real Apache Kafka broker: the analytics role raises
them on the alerts topic, keeps their state on the compacted alarm-state topic,
groups a flood, takes operator commands from the alert-commands topic and from
its HTTP API, and carries on after a restart with the same alert ids.

The plant (tests/alarm_plant.py): 14 generic machines, 12 of them in area
line-1; at 60 s of event time every machine's temperature transmitter sticks
for 90 s, which fusion calls a sensor fault on each machine.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import orjson
import pytest
import yaml
from confluent_kafka import Consumer

from edgewatch.localkafka import free_port
from edgewatch.processes import Child, edgewatch_command
from stream.config import load_config
from stream.kafka_admin import ensure_topics
from stream.wire import encode_reading_batch
from tests.alarm_plant import plant_batches, plant_doc

pytestmark = pytest.mark.kafka

TOKEN = "test-token-0123456789abcdef"
STUCK = (60.0, 150.0)


class Reader:
    """Every message of some topics from the beginning (tombstones as None)."""

    def __init__(self, bootstrap: str, *topics: str):
        self.messages: dict[str, list] = {t: [] for t in topics}
        self.keys: dict[str, list] = {t: [] for t in topics}
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe(list(topics))

    def wait_for(self, predicate, worker: Child, timeout_s: float = 120.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while not predicate(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; worker log:\n{worker.log_tail(60)}")
            if not worker.alive():
                raise AssertionError(f"the worker died; log:\n{worker.log_tail(60)}")
            for message in self.consumer.consume(500, timeout=0.3):
                if message.error() is None:
                    value = message.value()
                    self.messages[message.topic()].append(orjson.loads(value) if value is not None else None)
                    self.keys[message.topic()].append(message.key().decode())

    def close(self) -> None:
        self.consumer.close()


def alarms(messages: list[dict], event: str | None = None, fault: str = "sensor_fault") -> list[dict]:
    return [m for m in messages if m and m["kind"] == "alarm" and m["fault"] == fault and (event is None or m["event"] == event)]


def http(port: int, method: str, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=json.dumps(body).encode() if body is not None else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def analytics_worker(config_path, log_path) -> Child:
    return Child(edgewatch_command("worker", "--config", str(config_path), "--role", "analytics"), log_path=log_path)


def test_floods_commands_and_a_restart_through_the_broker(kafka, topic_prefix, tmp_path):
    api_port = free_port()
    doc = plant_doc(topic_prefix, kafka.bootstrap, n_assets=14, area_of=lambda i: "line-1" if i < 12 else "line-2")
    doc["worker"]["data_dir"] = str(tmp_path / "worker-data")
    doc["api"] = {"enabled": True, "port": api_port, "token": TOKEN}
    # a one-minute flood window (ISA's 10 min would outlast the run) so the flood also ends
    doc["alarms"] = {"flood_window_s": 60}
    config_path = tmp_path / "plant.yaml"
    config_path.write_text(yaml.safe_dump(doc))
    config = load_config(config_path, environ={})
    topics = config.kafka.topics
    ensure_topics(config.kafka)

    from tests.kafka_helpers import producer

    send = producer(kafka.bootstrap)

    def produce(seconds: float, start_s: float) -> None:
        for batch in plant_batches(config, seconds, stuck=STUCK, start_s=start_s):
            send.produce(topics.readings, key=batch.asset_id.encode(), value=encode_reading_batch(batch))
            send.poll(0)
        assert send.flush(60) == 0

    reader = Reader(kafka.bootstrap, topics.alerts, topics.alarm_state, topics.deadletter)
    worker = analytics_worker(config_path, tmp_path / "worker-1.log")
    try:
        # ---- the first 120 s of event time: every transmitter sticks at 60 s
        produce(120.0, 0.0)
        reader.wait_for(lambda m: len(alarms(m[topics.alerts], "raised")) >= 14 and alarms(m[topics.alerts], "flood_started", "alarm_flood"), worker)
        raised = alarms(reader.messages[topics.alerts], "raised")
        assert sorted(a["asset_id"] for a in raised) == [f"machine-{i:02d}" for i in range(14)], "one alarm per machine"
        assert all(a["state"] == "active_unacknowledged" and "temperature flat" in a["message"] for a in raised)

        # Flood: line-1 raised 12 within the window; past the rate (10) they are grouped
        # under one flood alarm that keeps the count; line-2 is not affected.
        (flood,) = alarms(reader.messages[topics.alerts], "flood_started", "alarm_flood")
        line1 = [a for a in raised if a["area"] == "line-1"]
        grouped = [a for a in line1 if a["flood_id"] is not None]
        assert len(grouped) == 12 - config.alarms.flood_rate and all(not a["annunciated"] for a in grouped)
        assert all(a["annunciated"] for a in line1 if a["flood_id"] is None)
        updates = alarms(reader.messages[topics.alerts], "flood_updated", "alarm_flood")
        assert updates[-1]["flood"]["count"] == len(grouped)
        assert flood["area"] == "line-1" and all(a["flood_id"] is None and a["annunciated"] for a in raised if a["area"] == "line-2")

        # The compacted alarm-state topic holds every alarm under its id.
        states = dict(zip(reader.keys[topics.alarm_state], reader.messages[topics.alarm_state]))
        assert {a["alert_id"] for a in raised} <= set(states)

        # ---- operator commands: acknowledge over Kafka, shelve over HTTP
        ack_target = next(a for a in raised if a["asset_id"] == "machine-12")
        shelve_target = next(a for a in raised if a["asset_id"] == "machine-13")
        command = {
            "schema_version": 1,
            "kind": "alert_command",
            "command_id": str(uuid.uuid4()),
            "command": "acknowledge",
            "alert_id": ack_target["alert_id"],
            "asset_id": "machine-12",
            "user": "j.smith",
            "issued_at": "2026-11-23T08:00:00Z",
        }
        send.produce(topics.alert_commands, key=b"machine-12", value=orjson.dumps(command))
        # a command on an alarm that does not exist: refused, to the dead-letter topic with the reason
        send.produce(topics.alert_commands, key=b"machine-12", value=orjson.dumps({**command, "command_id": str(uuid.uuid4()), "alert_id": str(uuid.uuid4())}))
        assert send.flush(30) == 0

        assert http(api_port, "GET", "/alarms", token=None)[0] == 401
        assert http(api_port, "GET", "/alarms", token="wrong-token-0123456789")[0] == 401
        assert http(api_port, "POST", f"/alarms/{uuid.uuid4()}/acknowledge", {"user": "j.smith"})[0] == 404
        status, answer = http(api_port, "POST", f"/alarms/{shelve_target['alert_id']}/shelve", {"user": "a.jones", "duration_s": 3600, "comment": "transmitter swap at 10:00"})
        assert status == 202, answer
        assert http(api_port, "POST", f"/alarms/{shelve_target['alert_id']}/shelve", {"user": "a.jones"})[0] == 400  # no duration

        reader.wait_for(
            lambda m: alarms(m[topics.alerts], "acknowledged") and alarms(m[topics.alerts], "shelved") and m[topics.deadletter],
            worker,
        )
        (acknowledged,) = alarms(reader.messages[topics.alerts], "acknowledged")
        assert acknowledged["alert_id"] == ack_target["alert_id"] and acknowledged["state"] == "active_acknowledged"
        assert acknowledged["command"]["user"] == "j.smith"
        (shelved,) = alarms(reader.messages[topics.alerts], "shelved")
        assert shelved["alert_id"] == shelve_target["alert_id"] and shelved["shelved"] and not shelved["annunciated"]
        (rejected,) = reader.messages[topics.deadletter]
        assert rejected["error"] == "command_rejected" and "alert_id" in rejected["reason"]
        status, listing = http(api_port, "GET", "/alarms")
        assert status == 200 and {r["alert_id"] for r in listing["alarms"]} >= {a["alert_id"] for a in raised}

        # ---- restart the worker in the middle of the episodes
        assert worker.stop() == 0
        worker = analytics_worker(config_path, tmp_path / "worker-2.log")
        produce(180.0, 120.0)
        reader.wait_for(lambda m: len(alarms(m[topics.alerts], "returned")) + len(alarms(m[topics.alerts], "closed")) >= 14, worker, timeout_s=180)

        events = alarms(reader.messages[topics.alerts])
        by_asset: dict[str, set[str]] = {}
        for event in events:
            by_asset.setdefault(event["asset_id"], set()).add(event["alert_id"])
        assert all(len(ids) == 1 for ids in by_asset.values()), f"a second id for one episode: {by_asset}"
        assert len(alarms(reader.messages[topics.alerts], "raised")) == 14, "the restart raised an episode again"
        # acknowledged before it returned: it closes; the others wait for acknowledgement
        ends = {e["asset_id"]: e for e in events if e["event"] in ("returned", "closed")}
        assert ends["machine-12"]["state"] == "normal"
        assert ends["machine-00"]["state"] == "returned_unacknowledged"
        # the shelving survived the restart (restored from the changelog)
        assert ends["machine-13"]["shelved"] and not ends["machine-13"]["annunciated"]
        # the flood ended once the area went quiet
        assert alarms(reader.messages[topics.alerts], "flood_ended", "alarm_flood")
        states = dict(zip(reader.keys[topics.alarm_state], reader.messages[topics.alarm_state]))
        assert states[ack_target["alert_id"]]["state"] == "normal"
    finally:
        worker.stop()
        reader.close()
