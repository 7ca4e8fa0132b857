"""Bad quality through the real pipeline: a tag that reads Bad for longer than
rules.bad_quality.after_s raises (a shorter blip does not), clears at its next
Good sample; a server that reports Bad once and then stays silent is caught
through the asset's other tags; Uncertain is not Bad; the Bad stretch survives a
restart; replays raise nothing new."""

from __future__ import annotations

import numpy as np

from stream.wire import QUALITY_BAD, QUALITY_UNCERTAIN
from tests.test_rules_limits import Worker, brief, plant, series

FLOW = {"id": "flow", "unit": "m3/h"}
SPEED = {"id": "speed", "unit": "rpm"}
#: Bad_SensorFailure as an OPC UA server sends it
SENSOR_FAILURE = 0x8032_0000
NAN = float("nan")
AFTER_2S = {"bad_quality": {"after_s": 2}}


def flow(values, at_s, quality, step_s=0.5):
    return series("flow", values, at_s, step_s, quality)


def speed(at_s, n=1, step_s=0.5):
    return series("speed", [1500 + i for i in range(n)], at_s, step_s)


def test_bad_for_longer_than_after_s_raises_and_the_next_good_sample_clears():
    worker = Worker(plant(FLOW, SPEED, rules=AFTER_2S))
    assert worker.send(flow([100, NAN, NAN], 0, [0, SENSOR_FAILURE, SENSOR_FAILURE])) == []  # Bad since 0.5 s
    raised = worker.send(flow([NAN, NAN, NAN], 1.5, [SENSOR_FAILURE] * 3))  # 1.5, 2.0, 2.5 s
    assert brief(raised) == [("bad_quality", "bad_quality", "active", 2.5)]
    alert = raised[0]
    assert alert["message"] == "pump-1 flow Bad quality (0x80320000) for 2 s"
    assert alert["episode_start"] == "2026-03-14T08:15:00.500000Z"
    assert alert["tag"] == {
        "id": "flow", "unit": "m3/h", "value": None, "limit": 2.0, "normal_range": None, "observed": 2.0, "quality": SENSOR_FAILURE,
    }
    assert worker.send(flow([NAN], 3.0, [SENSOR_FAILURE])) == []  # still Bad: nothing new
    cleared = worker.send(flow([101.5], 3.5, [0]))
    assert brief(cleared) == [("bad_quality", "bad_quality", "cleared", 3.5)]
    assert cleared[0]["alert_id"] == alert["alert_id"]
    assert cleared[0]["message"] == "pump-1 flow Good quality again at 101.5 m3/h after 3 s Bad"


def test_a_shorter_bad_stretch_raises_nothing():
    worker = Worker(plant(FLOW, SPEED, rules=AFTER_2S))
    # Bad from 0 s, Good again at 2.0 s: the 2 s would be reached only at the Good sample itself.
    assert worker.send(flow([NAN, NAN, NAN, NAN, 100], 0, [QUALITY_BAD] * 4 + [0])) == []
    assert worker.send(flow([NAN, NAN, 100], 5, [QUALITY_BAD, QUALITY_BAD, 0])) == []


def test_after_s_zero_raises_at_the_first_bad_sample():
    alerts = Worker(plant(FLOW, rules={"bad_quality": {"after_s": 0}})).send(flow([100, NAN, 100], 0, [0, QUALITY_BAD, 0]))
    assert brief(alerts) == [("bad_quality", "bad_quality", "active", 0.5), ("bad_quality", "bad_quality", "cleared", 1.0)]
    assert alerts[0]["tag"]["observed"] == 0.0


def test_uncertain_is_not_bad():
    alerts = Worker(plant(FLOW, SPEED, rules=AFTER_2S)).send(flow([100] * 10, 0, [QUALITY_UNCERTAIN] * 10))
    assert alerts == []


def test_a_tag_reported_bad_once_and_then_silent_is_caught_through_the_other_tags():
    worker = Worker(plant(FLOW, SPEED, rules=AFTER_2S))
    alerts = worker.send(flow([NAN], 0.2, [SENSOR_FAILURE]), speed(0))
    for k in range(1, 8):
        alerts += worker.send(speed(k * 0.5))
    assert brief(alerts) == [("bad_quality", "bad_quality", "active", 2.5)]  # first sample of the asset at or after 2.2 s
    assert alerts[0]["tag"]["observed"] == 2.3


def test_the_bad_stretch_survives_a_restart_and_gives_the_same_alert_id():
    batches = [flow([NAN, NAN], k, [QUALITY_BAD] * 2) for k in range(4)]
    one_worker = Worker(plant(FLOW, rules=AFTER_2S))
    uninterrupted = [a for b in batches for a in one_worker.send(b)]
    worker = Worker(plant(FLOW, rules=AFTER_2S))
    assert worker.send(batches[0]) == [] and worker.store.writes == 1  # the stretch's start is stored
    worker = worker.restarted()
    resumed = [a for b in batches[1:] for a in worker.send(b)]
    assert brief(resumed) == [("bad_quality", "bad_quality", "active", 2.0)]
    assert resumed[0]["episode_start"] == "2026-03-14T08:15:00.000000Z"
    assert [a["alert_id"] for a in resumed] == [a["alert_id"] for a in uninterrupted]


def test_replaying_stored_batches_raises_nothing_new():
    worker = Worker(plant(FLOW, rules=AFTER_2S))
    bad = flow([NAN] * 6, 0, [QUALITY_BAD] * 6)
    good = flow([100.0], 3, [0])
    first = worker.send(bad) + worker.send(good)
    assert brief(first) == [("bad_quality", "bad_quality", "active", 2.0), ("bad_quality", "bad_quality", "cleared", 3.0)]
    assert worker.send(bad) == [] and worker.send(good) == []
    replay = worker.restarted()
    assert replay.send(bad) == [] and replay.send(good) == []


def test_unsorted_samples_give_the_same_alerts():
    rows = flow([100] + [NAN] * 6 + [100, 101], 0, [0] + [QUALITY_BAD] * 6 + [0, 0])
    in_order = Worker(plant(FLOW, rules=AFTER_2S)).send(rows)
    shuffled = Worker(plant(FLOW, rules=AFTER_2S)).send(rows, shuffle=True)
    assert brief(in_order) == [("bad_quality", "bad_quality", "active", 2.5), ("bad_quality", "bad_quality", "cleared", 3.5)]
    assert brief(shuffled) == brief(in_order)
    assert [a["alert_id"] for a in shuffled] == [a["alert_id"] for a in in_order]


def test_disabled_rule_produces_nothing():
    worker = Worker(plant(FLOW, rules={"bad_quality": {"enabled": False}}))
    assert worker.send(flow([NAN] * 10, 0, [QUALITY_BAD] * 10)) == []
    assert worker.store.writes == 0


def test_good_data_writes_no_state():
    worker = Worker(plant(FLOW, SPEED, rules=AFTER_2S))
    for k in range(20):
        assert worker.send(flow(100 + np.arange(5.0), k * 2.5, None), speed(k * 2.5, 5)) == []
    assert worker.store.writes == 0
