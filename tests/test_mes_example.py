"""The MES consumer example (examples/mes_consumer.py) against a real broker: the
view rebuilt from the compacted alarm-state topic holds the latest record of every
alarm and forgets a tombstoned one."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import threading
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from stream.config import load_config
from stream.kafka_admin import ensure_topics
from tests.kafka_helpers import producer, write_config

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]


def load_example():
    # examples/ is not a package (it is not installed); load the file as integrators run it.
    spec = importlib.util.spec_from_file_location("mes_consumer", ROOT / "examples" / "mes_consumer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_record() -> dict:
    """The alarm-state example of docs/wire-schema.md (pump-3, bearing wear, acknowledged)."""
    text = (ROOT / "docs" / "wire-schema.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: alarm-state -->\s*```json\n(.*?)\n```", text, re.S)
    return json.loads(match.group(1))


def variant(base: dict, alert_id: str, **changes) -> dict:
    record = copy.deepcopy(base)
    record.update(alert_id=alert_id, **changes)
    return record


def test_rebuild_view_keeps_the_latest_record_per_alarm_and_forgets_tombstones(kafka, topic_prefix, tmp_path):
    mes = load_example()
    config = load_config(write_config(tmp_path / "plant.yaml", kafka.bootstrap, topic_prefix), environ={})
    ensure_topics(config.kafka)
    topic = config.kafka.topics.alarm_state
    assert topic == mes.topic(topic_prefix, "alarm-state")

    base = documented_record()
    bearing, seal, closed, forgotten = (str(uuid.uuid4()) for _ in range(4))
    raised = variant(base, bearing, state="active_unacknowledged", acknowledged=None, comments=[], last_event="raised")
    acknowledged = variant(base, bearing)  # the documented record itself: acknowledged later
    seal_leak = variant(base, seal, fault="seal_leak", probability=0.78, priority="medium", state="active_unacknowledged",
                        acknowledged=None, comments=[], last_event="raised", message="pump-3: seal leak 78 %")
    returned = variant(base, closed, fault="cavitation", state="normal", closed=True, closed_at="2026-03-14T08:30:00.000000Z",
                       closed_at_us=1773477000000000, annunciated=False, last_event="closed", message="pump-3: cavitation closed")
    old = variant(base, forgotten, fault="overheating", state="normal", closed=True, closed_at="2026-03-14T08:20:00.000000Z",
                  closed_at_us=1773476400000000, annunciated=False, last_event="closed", message="pump-3: overheating closed")

    schema = json.loads((ROOT / "stream" / "schemas" / "alarm-state.schema.json").read_text(encoding="utf-8"))
    for record in (raised, acknowledged, seal_leak, returned, old):
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(record)

    send = producer(kafka.bootstrap)
    for alert_id, record in [(bearing, raised), (seal, seal_leak), (forgotten, old), (closed, returned), (bearing, acknowledged)]:
        send.produce(topic, key=alert_id.encode(), value=json.dumps(record).encode())
    send.produce(topic, key=forgotten.encode(), value=None)  # the worker forgot it: a tombstone
    assert send.flush(30) == 0

    view = mes.rebuild_view(kafka.bootstrap, topic_prefix, timeout_s=20)

    assert set(view) == {bearing, seal, closed}
    assert view[bearing] == acknowledged and view[bearing]["acknowledged"]["user"] == "j.mueller"
    assert view[seal]["fault"] == "seal_leak" and view[seal]["state"] == "active_unacknowledged"
    assert view[closed]["closed"] is True
    assert sorted(r["alert_id"] for r in view.values() if not r["closed"]) == sorted([bearing, seal])


def test_rebuild_view_of_an_empty_topic_is_empty(kafka, topic_prefix, tmp_path):
    mes = load_example()
    config = load_config(write_config(tmp_path / "plant.yaml", kafka.bootstrap, topic_prefix), environ={})
    ensure_topics(config.kafka)
    assert mes.rebuild_view(kafka.bootstrap, topic_prefix, timeout_s=10) == {}


def test_follow_hands_each_alarm_event_and_alert_state_over_once(kafka, topic_prefix, tmp_path):
    mes = load_example()
    config = load_config(write_config(tmp_path / "plant.yaml", kafka.bootstrap, topic_prefix), environ={})
    ensure_topics(config.kafka)
    alarm = {"schema_version": 1, "kind": "alarm", "event_id": str(uuid.uuid4()), "event": "raised", "alert_id": str(uuid.uuid4())}
    alert = {"schema_version": 1, "kind": "alert", "alert_id": str(uuid.uuid4()), "state": "active"}
    cleared = {**alert, "state": "cleared"}
    later_kind = {"schema_version": 1, "kind": "something_new"}

    alarms, alerts, stop = [], [], threading.Event()
    ready = threading.Event()

    def on_alert(message):
        alerts.append(message)
        if message["state"] == "cleared":
            stop.set()

    # A fresh group reads from the end: subscribe first, then send.
    thread = threading.Thread(
        target=mes.follow,
        args=(kafka.bootstrap, topic_prefix, alarms.append, on_alert),
        kwargs={"group_id": f"test-{uuid.uuid4()}", "stop": lambda: ready.set() or stop.is_set()},
        daemon=True,
    )
    thread.start()
    assert ready.wait(10)
    send = producer(kafka.bootstrap)
    for attempt in range(60):  # until the consumer has its partitions and sees a message
        if alerts or alarms:
            break
        send.produce(config.kafka.topics.alerts, key=b"pump-1", value=json.dumps(alarm).encode())
        assert send.flush(10) == 0
        thread.join(0.5)
    # duplicates (at-least-once delivery) and a kind this consumer does not know
    for message in (alarm, alert, alert, later_kind, cleared, cleared):
        send.produce(config.kafka.topics.alerts, key=b"pump-1", value=json.dumps(message).encode())
    assert send.flush(10) == 0
    thread.join(30)
    assert not thread.is_alive()
    assert alarms == [alarm]
    assert alerts == [alert, cleared]
