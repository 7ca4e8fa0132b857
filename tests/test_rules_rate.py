"""Rate of change through the real pipeline: a spike between two Good samples raises
at once and clears at the first change back within the limit; a ramp that stays
too fast raises once; Bad samples take no part; restarts and replays open no
second episode."""

from __future__ import annotations

import numpy as np

from tests.test_rules_limits import ASSET, SPEED, Worker, brief, plant, series

# 10 m3/h per second is the fastest a healthy flow loop moves; samples every 100 ms.
FLOW = {"id": "flow", "unit": "m3/h", "max_rate_per_s": 10}


def test_a_spike_raises_at_once_and_clears_at_the_next_calm_change():
    worker = Worker(plant(FLOW, SPEED))
    alerts = worker.send(series("flow", [100, 100.5, 101, 110, 110.5, 111], at_s=0))
    assert brief(alerts) == [("rate_of_change", "rate", "active", 0.3), ("rate_of_change", "rate", "cleared", 0.4)]
    raised, cleared = alerts
    assert raised["alert_id"] == cleared["alert_id"]
    assert raised["message"] == "pump-1 flow rose 90 m3/h/s, faster than 10 m3/h/s"
    assert raised["tag"] == {"id": "flow", "unit": "m3/h", "value": 110.0, "limit": 10.0, "normal_range": None, "observed": 90.0}
    assert cleared["tag"]["observed"] == 5.0 and cleared["episode_start"] == raised["event_time"]


def test_a_fall_is_a_spike_too():
    alerts = Worker(plant(FLOW)).send(series("flow", [100, 60, 60], at_s=0))
    assert brief(alerts) == [("rate_of_change", "rate", "active", 0.1), ("rate_of_change", "rate", "cleared", 0.2)]
    assert alerts[0]["message"] == "pump-1 flow fell 400 m3/h/s, faster than 10 m3/h/s" and alerts[0]["tag"]["observed"] == -400.0


def test_a_ramp_that_stays_too_fast_raises_once_across_batches_and_a_restart():
    worker = Worker(plant(FLOW))
    raised = worker.send(series("flow", [100, 110, 120], at_s=0))  # 100 m3/h/s
    assert brief(raised) == [("rate_of_change", "rate", "active", 0.1)]
    assert worker.send(series("flow", [130, 140], at_s=0.3)) == []  # still too fast, across the batch boundary
    worker = worker.restarted()
    assert worker.send(series("flow", [150, 160], at_s=0.5)) == []  # the restored state knows it is active
    cleared = worker.send(series("flow", [160.5], at_s=0.7))
    assert brief(cleared) == [("rate_of_change", "rate", "cleared", 0.7)]
    assert cleared[0]["alert_id"] == raised[0]["alert_id"]


def test_a_step_between_two_batches_is_seen():
    worker = Worker(plant(FLOW))
    assert worker.send(series("flow", [100, 100.2], at_s=0)) == []
    assert brief(worker.send(series("flow", [150, 150.1], at_s=0.2))) == [
        ("rate_of_change", "rate", "active", 0.2),
        ("rate_of_change", "rate", "cleared", 0.3),
    ]


def test_bad_samples_take_no_part_in_a_pair():
    # The Bad sample carries junk; the pair is 100 -> 100.4 over 300 ms, a calm change.
    alerts = Worker(plant(FLOW, rules={"bad_quality": {"enabled": False}})).send(
        series("flow", [100, 900, float("nan"), 100.4], at_s=0, quality=[0, 0x8000_0000, 0x8000_0000, 0])
    )
    assert alerts == []


def test_replaying_stored_batches_raises_nothing_new():
    worker = Worker(plant(FLOW))
    spike, calm = series("flow", [100, 130], at_s=0), series("flow", [130.5, 131], at_s=0.2)
    assert len(worker.send(spike) + worker.send(calm)) == 2
    assert worker.send(spike) == [] and worker.send(calm) == []  # the same worker, batches re-delivered
    replay = worker.restarted()
    assert replay.send(spike) == [] and replay.send(calm) == []  # a new owner after a rebalance


def test_unsorted_samples_give_the_same_alerts():
    values = [100, 100.5, 130, 130.4, 90, 90.2, 90.3]
    in_order = Worker(plant(FLOW)).send(series("flow", values, at_s=0))
    shuffled = Worker(plant(FLOW)).send(series("flow", values, at_s=0), shuffle=True)
    assert brief(shuffled) == brief(in_order) and len(in_order) == 4
    assert [a["alert_id"] for a in shuffled] == [a["alert_id"] for a in in_order]


def test_alert_ids_are_deterministic():
    batch = series("flow", [100, 130, 130.5], at_s=0)
    first, again = Worker(plant(FLOW)).send(batch), Worker(plant(FLOW)).send(batch)
    assert [a["alert_id"] for a in first] == [a["alert_id"] for a in again] != []
    assert first[0]["rule"] == "rate_of_change" and first[0]["episode_start"] == "2026-03-14T08:15:00.100000Z"


def test_disabled_rule_or_unconfigured_tag_produces_nothing():
    jumpy = series("flow", [100, 200, 50, 300], at_s=0)
    assert Worker(plant(FLOW, rules={"rate_of_change": {"enabled": False}})).send(jumpy) == []
    assert Worker(plant({"id": "flow", "unit": "m3/h"})).send(jumpy) == []


def test_a_second_sample_at_the_same_time_is_not_a_step():
    # A zero time step has no rate: the first sample at a timestamp counts, a duplicate is skipped.
    rows = series("flow", [100, 100.2], at_s=0) + [("flow", 0.1, 500.0, 0)]
    assert Worker(plant(FLOW)).send(rows) == []


def test_normal_noise_writes_no_state():
    worker = Worker(plant(FLOW, SPEED))
    for i in range(40):
        noise = 100 + np.random.default_rng(i).normal(0, 0.1, 5)  # well within 10 m3/h/s at 10 Hz
        assert worker.send(series("flow", noise, at_s=i * 0.5), series("speed", [1500] * 5, at_s=i * 0.5)) == []
    assert worker.store.writes == 0
    assert ASSET not in worker.store


def test_a_slow_asset_read_once_a_minute_still_sees_a_jump():
    # One sample per batch, a minute apart: the pair spans two batches every time.
    slow = {"id": "flow", "unit": "m3/h", "max_rate_per_s": 0.5}
    worker = Worker(plant(slow))
    alerts = []
    for k, value in enumerate([100, 101, 102, 160, 161]):
        alerts += worker.send(series("flow", [value], k * 60.0))
    assert brief(alerts) == [("rate_of_change", "rate", "active", 180.0), ("rate_of_change", "rate", "cleared", 240.0)]
