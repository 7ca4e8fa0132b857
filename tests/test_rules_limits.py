"""Static limits through the real pipeline: the warning pair (H/L) and the critical
pair (HH/LL) as separate episodes, raised once and cleared once after the
deadband, across batch boundaries and worker restarts, and never twice for a
replay. Limit alert ids are exactly those consumers have de-duplicated on so far.

The ``Worker`` harness here is shared by tests/test_rules_*.py: the real
Pipeline, fed encoded batches like the Kafka worker, with a state store that
keeps values as a changelog does (JSON round-trip) and counts writes. Every
alert it sees is checked against stream/schemas/alert.schema.json.
"""

from __future__ import annotations

import uuid

import numpy as np
import orjson

from stream.config import parse_config
from stream.pipeline import Pipeline, Source
from stream.wire import ReadingBatch, encode_reading_batch
from tests.test_schemas import as_sent, assert_valid

#: 2026-03-14T08:15:00Z
T0 = 1_773_476_100_000_000
ASSET = "pump-1"

FLOW = {"id": "flow", "unit": "m3/h", "limits": {"low_low": 10, "low": 40, "high": 140, "high_high": 160, "deadband": 2}}
SPEED = {"id": "speed", "unit": "rpm"}


def plant(*tags: dict, rules: dict | None = None):
    doc = {"assets": [{"id": ASSET, "type": "pump", "criticality": "high", "area": "water-treatment", "tags": list(tags)}]}
    if rules is not None:
        doc["rules"] = rules
    return parse_config(doc, "tests/test_rules plant", environ={})


class Changelog(dict):
    """The worker's state table as its Kafka changelog keeps it: values go through JSON, writes are counted."""

    def __init__(self, content: dict | None = None):
        super().__init__()
        self.writes = 0
        for key, value in (content or {}).items():
            super().__setitem__(key, orjson.loads(orjson.dumps(value)))

    def __setitem__(self, key, value):
        self.writes += 1
        super().__setitem__(key, orjson.loads(orjson.dumps(value)))


def series(tag: str, values, at_s: float, step_s: float = 0.1, quality=None) -> list[tuple]:
    """Samples of one tag every ``step_s`` from ``at_s`` (seconds after T0): (tag, t_s, value, quality)."""
    quality = [0] * len(values) if quality is None else quality
    return [(tag, at_s + i * step_s, float(v), int(q)) for i, (v, q) in enumerate(zip(values, quality))]


class Worker:
    """One worker process: a Pipeline and the asset state it restored (or started without)."""

    def __init__(self, config, store: Changelog | None = None):
        self.config = config
        self.pipeline = Pipeline(config, clock=lambda: T0 / 1e6 + 86_400)
        self.store = Changelog() if store is None else store
        self.offset = 0

    def restarted(self) -> "Worker":
        """A new worker process that restores the state from the changelog (and remembers nothing else)."""
        return Worker(self.config, Changelog(dict(self.store)))

    def send(self, *samples: list[tuple], shuffle: bool = False) -> list[dict]:
        """Process one batch made of the given samples; return its alerts as a consumer reads them."""
        rows = [row for part in samples for row in part]
        if shuffle:
            rows = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
        tags = sorted({row[0] for row in rows})
        batch = ReadingBatch.from_columns(
            ASSET,
            tags,
            [tags.index(r[0]) for r in rows],
            [T0 + round(r[1] * 1e6) for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )
        out = self.pipeline.process(encode_reading_batch(batch), Source("edgewatch.readings", 0, self.offset, ASSET.encode()), self.store)
        self.offset += 1
        assert out.deadletter is None, out.deadletter
        alerts = [as_sent(a) for a in out.alerts]
        for alert in alerts:
            assert_valid("alert", alert)
        out.apply_state(self.store)
        return alerts


def brief(alerts: list[dict]) -> list[tuple]:
    """(rule, condition, state, seconds after T0) of each alert: what an operator's list shows."""
    return [(a["rule"], a["condition"], a["state"], round((a["event_time_us"] - T0) / 1e6, 3)) for a in alerts]


def old_limit_alert_id(asset: str, tag: str, condition: str, episode_start_us: int) -> str:
    """How limit alert ids were made before the other rules existed (consumers de-duplicate on them)."""
    namespace = uuid.UUID("6f1c5d2e-2a4b-4c1e-9d1f-0e5d7a3b8c42")
    return str(uuid.uuid5(namespace, f"{asset}|limit|{tag}|{condition}|{episode_start_us}"))


# --------------------------------------------------------------------------- the tests


def test_high_and_high_high_are_separate_episodes_each_raised_and_cleared_once():
    worker = Worker(plant(FLOW))
    # H 140, HH 160, deadband 2: 159 does not clear HH (not below 158), 157 does; 139 does not clear H, 137 does.
    alerts = worker.send(series("flow", [100, 150, 170, 175, 159, 157, 145, 139, 137, 100], at_s=0))
    assert brief(alerts) == [
        ("limit", "high", "active", 0.1),
        ("limit", "high_high", "active", 0.2),
        ("limit", "high_high", "cleared", 0.5),
        ("limit", "high", "cleared", 0.8),
    ]
    by_condition = {}
    for alert in alerts:
        by_condition.setdefault(alert["condition"], set()).add(alert["alert_id"])
    assert all(len(ids) == 1 for ids in by_condition.values())  # active and cleared share the id
    assert by_condition["high"] != by_condition["high_high"]  # two episodes, two ids
    assert alerts[1]["message"] == "pump-1 flow 170 m3/h above high-high limit 160 m3/h"
    assert alerts[1]["tag"] == {"id": "flow", "unit": "m3/h", "value": 170.0, "limit": 160.0, "normal_range": None}
    assert alerts[2]["message"] == "pump-1 flow back to 157 m3/h, inside high-high limit 160 m3/h"
    assert alerts[0]["message"] == "pump-1 flow 150 m3/h above high limit 140 m3/h"


def test_a_drop_through_low_and_low_low_raises_both_and_a_recovery_clears_both():
    worker = Worker(plant(FLOW))
    alerts = worker.send(series("flow", [100, 5, 11, 60], at_s=0))
    # 11 is inside LL (10) but not by the deadband (12): nothing until 60.
    assert brief(alerts) == [
        ("limit", "low", "active", 0.1),
        ("limit", "low_low", "active", 0.1),
        ("limit", "low", "cleared", 0.3),
        ("limit", "low_low", "cleared", 0.3),
    ]
    assert alerts[1]["message"] == "pump-1 flow 5 m3/h below low-low limit 10 m3/h"


def test_a_violation_spanning_batches_and_a_restart_raises_once_and_clears_with_its_id():
    worker = Worker(plant(FLOW))
    raised = worker.send(series("flow", [100, 170], at_s=0))
    assert brief(raised) == [("limit", "high", "active", 0.1), ("limit", "high_high", "active", 0.1)]
    worker = worker.restarted()
    assert worker.send(series("flow", [175, 180, 165], at_s=0.2)) == []  # still above: nothing new to say
    cleared = worker.send(series("flow", [100], at_s=0.5))
    assert brief(cleared) == [("limit", "high", "cleared", 0.5), ("limit", "high_high", "cleared", 0.5)]
    assert [a["alert_id"] for a in cleared] == [a["alert_id"] for a in raised]


def test_replaying_batches_after_their_state_was_stored_raises_nothing_new():
    worker = Worker(plant(FLOW))
    hot, cool = series("flow", [150, 170], at_s=0), series("flow", [100], at_s=0.5)
    first = worker.send(hot) + worker.send(cool)
    assert len(first) == 4
    # At-least-once: after a rebalance the same batches come again, the state already holds their effect.
    replay = worker.restarted()
    assert replay.send(hot) == [] and replay.send(cool) == []
    # A genuinely new excursion later is judged as usual, with a new id.
    again = replay.send(series("flow", [150], at_s=1.0))
    assert brief(again) == [("limit", "high", "active", 1.0)]
    assert again[0]["alert_id"] not in {a["alert_id"] for a in first}


def test_unsorted_samples_are_judged_in_event_time_order():
    values = [100, 150, 170, 120, 100, 30, 5, 100]
    in_order = Worker(plant(FLOW)).send(series("flow", values, at_s=0))
    shuffled = Worker(plant(FLOW)).send(series("flow", values, at_s=0), shuffle=True)
    assert brief(shuffled) == brief(in_order)
    assert [a["alert_id"] for a in shuffled] == [a["alert_id"] for a in in_order]
    assert [a["event_time_us"] for a in shuffled] == sorted(a["event_time_us"] for a in shuffled)


def test_disabled_limits_produce_nothing():
    worker = Worker(plant(FLOW, rules={"limits": {"enabled": False}}))
    assert worker.send(series("flow", [100, 170, 5, 100], at_s=0)) == []
    assert worker.store.writes == 0


def test_limit_alert_ids_are_deterministic_and_unchanged():
    batch = series("flow", [150, 170, 100, 5], at_s=0)
    first, again = Worker(plant(FLOW)).send(batch), Worker(plant(FLOW)).send(batch)
    assert [a["alert_id"] for a in first] == [a["alert_id"] for a in again]
    for alert in first:
        if alert["state"] == "active":  # an episode starts with its active message
            assert alert["alert_id"] == old_limit_alert_id(ASSET, "flow", alert["condition"], alert["event_time_us"])
    # The id in docs/wire-schema.md, issued before the other rules existed, is still what the code makes.
    bearing = {"id": "bearing_temp", "unit": "degC", "limits": {"high": 80, "deadband": 2}}
    documented = Worker(plant(bearing)).send(series("bearing_temp", [79.9, 80.6], at_s=0.5, step_s=0.5))
    assert documented[0]["alert_id"] == "4a45692f-7ac7-546e-b534-38b16a5310e5"


def test_a_worker_upgraded_in_place_keeps_its_active_limit_alerts():
    # What the pipeline stored before the rules package: the H/L state under "limits".
    old = {ASSET: {"limits": {"active": {"flow": {"condition": "high", "since_us": T0}}, "changed_us": {"flow": T0}}}}
    worker = Worker(plant(FLOW), Changelog(old))
    assert worker.send(series("flow", [150], at_s=0.1)) == []  # still active: no second alert
    cleared = worker.send(series("flow", [100], at_s=0.2))
    assert brief(cleared) == [("limit", "high", "cleared", 0.2)]
    assert cleared[0]["alert_id"] == old_limit_alert_id(ASSET, "flow", "high", T0)
    assert "limits" not in worker.store[ASSET] and "rules" in worker.store[ASSET]


def test_the_old_limit_rule_interface_still_works():
    from stream.rules import LimitCrossing, LimitRule

    asset = plant(FLOW).assets[0]
    crossings, state = LimitRule(asset).evaluate(
        np.array([0, 0]), np.array([T0, T0 + 1]), np.array([100.0, 150.0]), np.array([True, True]), {}
    )
    assert [(c.condition, c.state, c.value) for c in crossings] == [("high", "active", 150.0)]
    assert isinstance(crossings[0], LimitCrossing)
    assert state == {"active": {"flow": {"condition": "high", "since_us": T0 + 1}}, "changed_us": {"flow": T0 + 1}}


def test_bad_and_uncertain_samples_are_not_judged_against_limits():
    worker = Worker(plant(FLOW, rules={"bad_quality": {"enabled": False}}))
    assert worker.send(series("flow", [100, 500, 500, 100], at_s=0, quality=[0, 0x8000_0000, 0x4000_0000, 0])) == []


def test_state_is_written_only_when_an_alert_changes():
    worker = Worker(plant(FLOW))
    for i in range(20):
        assert worker.send(series("flow", [100, 101, 99], at_s=i * 0.5)) == []
    assert worker.store.writes == 0
    worker.send(series("flow", [150], at_s=10))
    for i in range(5):
        worker.send(series("flow", [151, 152], at_s=10.5 + i * 0.5))
    assert worker.store.writes == 1
