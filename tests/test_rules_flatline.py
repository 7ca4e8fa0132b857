"""Flatline through the real pipeline: a stuck sensor raises once its value has
stayed put for the duration (not a sample before), clears when it moves; noise
within the tolerance is still flat, a slow drift is not; a frozen OPC UA tag that
sends nothing at all is caught through the asset's other tags; the run start
survives a restart; replays and normal signals write and raise nothing."""

from __future__ import annotations

import numpy as np

from tests.test_rules_limits import ASSET, T0, Worker, brief, plant, series

# Stuck after 5 s within 0.05 degC; flow keeps the asset's batches (and clock) going.
BEARING = {"id": "bearing_temp", "unit": "degC", "flatline_after_s": 5, "flatline_tolerance": 0.05}
FLOW = {"id": "flow", "unit": "m3/h"}
STEP_S = 0.1


def lively_flow(at_s: float, n: int = 5) -> list[tuple]:
    return series("flow", 100 + np.random.default_rng(round(at_s * 10)).normal(0, 2, n), at_s, STEP_S)


def run_batches(worker: Worker, bearing_values, start_s: float = 0.0, per_batch: int = 5) -> list[dict]:
    """Send bearing_temp (and flow) in 0.5 s batches, as a connector does; return all alerts."""
    alerts = []
    for k in range(0, len(bearing_values), per_batch):
        at = start_s + k * STEP_S
        alerts += worker.send(series("bearing_temp", bearing_values[k : k + per_batch], at, STEP_S), lively_flow(at))
    return alerts


def test_a_stuck_sensor_raises_after_the_duration_not_before_and_clears_when_it_moves():
    worker = Worker(plant(BEARING, FLOW))
    before = run_batches(worker, [52.1] * 50)  # t = 0.0 .. 4.9 s: flat, but not yet for 5 s
    assert before == []
    raised = run_batches(worker, [52.1] * 20, start_s=5.0)
    assert brief(raised) == [("flatline", "flatline", "active", 5.0)]
    alert = raised[0]
    assert alert["episode_start"] == "2026-03-14T08:15:00.000000Z"  # the start of the run
    assert alert["message"] == "pump-1 bearing_temp flat at 52.1 degC for 5 s"
    assert alert["tag"] == {"id": "bearing_temp", "unit": "degC", "value": 52.1, "limit": 5.0, "normal_range": None, "observed": 5.0}
    assert run_batches(worker, [52.1] * 30, start_s=7.0) == []  # still stuck: nothing new
    cleared = run_batches(worker, [52.1, 52.1, 53.4, 53.9, 54.2], start_s=10.0)
    assert brief(cleared) == [("flatline", "flatline", "cleared", 10.2)]
    assert cleared[0]["alert_id"] == alert["alert_id"]
    assert cleared[0]["message"] == "pump-1 bearing_temp moving again at 53.4 degC after 10.2 s flat"


def test_noise_within_the_tolerance_counts_as_flat_but_a_slow_drift_does_not():
    noisy = 52.1 + np.random.default_rng(1).uniform(-0.04, 0.04, 70)
    assert brief(run_batches(Worker(plant(BEARING, FLOW)), noisy)) == [("flatline", "flatline", "active", 5.0)]
    # 0.02 degC per sample: every step is within the tolerance, but it leaves the run's start value.
    drifting = 52.1 + 0.02 * np.arange(70)
    assert run_batches(Worker(plant(BEARING, FLOW)), drifting) == []


def test_a_frozen_tag_that_sends_nothing_is_caught_through_the_other_tags():
    # An OPC UA server reports only changes: one sample of bearing_temp, then silence.
    worker = Worker(plant(BEARING, FLOW))
    alerts = worker.send(series("bearing_temp", [52.1], 0.2), lively_flow(0.0))
    for k in range(1, 14):
        alerts += worker.send(lively_flow(k * 0.5))
    assert brief(alerts) == [("flatline", "flatline", "active", 5.2)]
    assert alerts[0]["episode_start"] == "2026-03-14T08:15:00.200000Z"


def test_the_run_start_survives_a_restart_and_gives_the_same_alert_id():
    values = [52.1] * 70
    uninterrupted = run_batches(Worker(plant(BEARING, FLOW)), values)
    worker = Worker(plant(BEARING, FLOW))
    assert run_batches(worker, values[:35]) == []  # 3.5 s flat: past half the duration, so the run is stored
    worker = worker.restarted()
    resumed = run_batches(worker, values[35:], start_s=3.5)
    assert brief(resumed) == brief(uninterrupted) == [("flatline", "flatline", "active", 5.0)]
    assert resumed[0]["alert_id"] == uninterrupted[0]["alert_id"]


def test_a_run_spanning_batches_raises_once_and_replays_raise_nothing():
    worker = Worker(plant(BEARING, FLOW))
    batches = [(series("bearing_temp", [52.1] * 5, k * 0.5, STEP_S), lively_flow(k * 0.5)) for k in range(16)]
    first = [a for b in batches for a in worker.send(*b)]
    assert brief(first) == [("flatline", "flatline", "active", 5.0)]
    writes = worker.store.writes
    for b in batches[8:]:  # re-delivered after a rebalance: same worker, then a new owner
        assert worker.send(*b) == []
    replay = worker.restarted()
    for b in batches[8:]:
        assert replay.send(*b) == []
    assert worker.store.writes == writes


def test_normal_signals_write_no_state():
    worker = Worker(plant(BEARING, FLOW))
    rng = np.random.default_rng(3)
    for k in range(60):
        assert worker.send(series("bearing_temp", 52 + rng.normal(0, 0.3, 5), k * 0.5, STEP_S), lively_flow(k * 0.5)) == []
    assert worker.store.writes == 0 and ASSET not in worker.store


def test_a_bad_sample_ends_a_run_that_has_not_alerted():
    worker = Worker(plant(BEARING, FLOW, rules={"bad_quality": {"enabled": False}}))
    values = [52.1] * 70
    quality = [0] * 70
    quality[30] = 0x8000_0000  # unreadable at 3.0 s: flat from 3.1 s on, alert at 8.1 s
    alerts = []
    for k in range(0, 90, 5):
        chunk = (values + [52.1] * 20)[k : k + 5]
        alerts += worker.send(series("bearing_temp", chunk, k * STEP_S, STEP_S, (quality + [0] * 20)[k : k + 5]), lively_flow(k * STEP_S))
    assert brief(alerts) == [("flatline", "flatline", "active", 8.1)]


def test_unsorted_samples_give_the_same_alerts():
    rows = series("bearing_temp", [52.1] * 60 + [53.0], 0, STEP_S) + lively_flow(0, 61)
    in_order = Worker(plant(BEARING, FLOW)).send(rows)
    shuffled = Worker(plant(BEARING, FLOW)).send(rows, shuffle=True)
    assert brief(in_order) == [("flatline", "flatline", "active", 5.0), ("flatline", "flatline", "cleared", 6.0)]
    assert brief(shuffled) == brief(in_order)
    assert [a["alert_id"] for a in shuffled] == [a["alert_id"] for a in in_order]


def test_disabled_rule_or_unconfigured_tag_produces_nothing():
    stuck = [52.1] * 70
    assert run_batches(Worker(plant(BEARING, FLOW, rules={"flatline": {"enabled": False}})), stuck) == []
    assert run_batches(Worker(plant({"id": "bearing_temp", "unit": "degC"}, FLOW)), stuck) == []


def test_the_event_time_is_when_the_duration_was_reached_even_inside_one_batch():
    # A backfill batch holding a whole stuck minute: the alert is stamped 5 s after the run began.
    alerts = Worker(plant(BEARING, FLOW)).send(series("bearing_temp", [50.0] + [52.1] * 600, 0, STEP_S))
    assert brief(alerts) == [("flatline", "flatline", "active", 5.1)]
    assert alerts[0]["event_time_us"] - T0 == 5_100_000


# --------------------------------------------------------------------------- the shortcut is exact


def _walk_every_sample(batches, after_us, tolerance) -> list[tuple]:
    """The flatline rule as its definition reads, sample by sample in event time (slow, obviously right)."""
    runs, events = {}, []
    for tags, ts, values, good in batches:
        for tau in np.unique(ts):
            here = [i for i in np.lexsort((ts, tags)) if ts[i] == tau]
            for tag in (0, 1):
                mine = [i for i in here if tags[i] == tag]
                run = runs.get(tag)
                if run and not run["active"] and run["since"] + after_us[tag] <= tau:
                    first = mine[0] if mine else None
                    ended_now = first is not None and (not good[first] or abs(values[first] - run["anchor"]) > tolerance[tag])
                    if not ended_now:  # event time reached the duration before anything moved
                        run["active"] = True
                        events.append((tag, "active", int(tau), run["since"]))
                for i in mine:
                    run = runs.get(tag)
                    moved = run is not None and abs(values[i] - run["anchor"]) > tolerance[tag]
                    if run is None:
                        if good[i]:
                            runs[tag] = {"since": int(ts[i]), "anchor": values[i], "active": False}
                    elif run["active"]:
                        if good[i] and moved:
                            events.append((tag, "cleared", int(ts[i]), run["since"]))
                            runs[tag] = {"since": int(ts[i]), "anchor": values[i], "active": False}
                    elif not good[i]:
                        del runs[tag]
                    elif moved:
                        runs[tag] = {"since": int(ts[i]), "anchor": values[i], "active": False}
    return events


def test_the_vectorised_shortcut_decides_exactly_as_walking_every_sample():
    from stream.config import parse_config
    from stream.rules import FastRules
    from stream.wire import QUALITY_BAD

    rng = np.random.default_rng(0)
    compared = 0
    for scenario in range(60):
        after_s = [float(rng.choice([0.3, 1.0, 2.0])), float(rng.choice([0.5, 1.5]))]
        tolerance = [float(rng.choice([0.0, 0.05, 0.5])), float(rng.choice([0.0, 0.2]))]
        tags = [{"id": f"t{i}", "flatline_after_s": after_s[i], "flatline_tolerance": tolerance[i]} for i in (0, 1)]
        config = parse_config({"assets": [{"id": "a", "tags": tags + [{"id": "clock"}]}]}, "reference", environ={})
        rules = FastRules(config.assets[0], config.rules)
        level, mode, batches = {0: 50.0, 1: 10.0}, {0: "stuck", 1: "noise"}, []
        for k in range(40):
            rows = []
            for tag in (0, 1):
                if rng.random() < 0.15:
                    mode[tag] = rng.choice(["stuck", "noise", "drift", "silent", "jitter"])
                for j in range(5):
                    if mode[tag] == "silent" or rng.random() < 0.1:
                        continue
                    level[tag] += {"noise": rng.normal(0, 1), "drift": 0.03, "jitter": rng.uniform(-0.06, 0.06)}.get(mode[tag], 0.0)
                    rows.append((tag, k * 500_000 + j * 100_000, level[tag], rng.random() > 0.03))
            rows += [(2, k * 500_000 + int(rng.integers(0, 500_000)), 1.0, True) for _ in range(int(rng.integers(0, 6)))]
            if rows:
                rows = [rows[i] for i in rng.permutation(len(rows))]
                batches.append(tuple(np.array(column) for column in zip(*rows)))
        expected = _walk_every_sample(batches, [round(a * 1e6) for a in after_s], tolerance)
        got, state = [], {}
        for tag_position, ts, values, good in batches:
            quality = np.where(good, 0, QUALITY_BAD).astype(np.uint32)
            events, state = rules.evaluate(tag_position, ts, values.astype(float), quality, state)
            got += [(e.tag_position, e.state, e.ts_us, e.episode_start_us) for e in events if e.rule == "flatline"]
        assert sorted(got) == sorted(expected), f"scenario {scenario}"
        compared += len(expected)
    assert compared > 300  # stuck, jittering, drifting, silent and Bad stretches did happen


def test_a_slow_asset_read_once_a_minute_still_flatlines():
    # A historian export or a slow Modbus poll: one sample per tag per batch, a minute
    # apart. Each batch is a long step in event time; the rule must not take every
    # step for a rebalance and forget the run (it used to: no flatline, ever).
    slow = {"id": "bearing_temp", "unit": "degC", "flatline_after_s": 600}
    worker = Worker(plant(slow, FLOW))
    values = [50.0, 51.0, 52.0] + [52.5] * 15  # frozen from minute 3 on
    alerts = []
    for k, value in enumerate(values):
        alerts += worker.send(series("bearing_temp", [value], k * 60.0), series("flow", [100.0 + k], k * 60.0))
    assert brief(alerts) == [("flatline", "flatline", "active", 780.0)]  # 10 minutes after the run began
    assert alerts[0]["episode_start"] == "2026-03-14T08:18:00.000000Z"


def test_a_long_gap_in_event_time_still_forgets_young_runs():
    # The asset steps 0.5 s per batch; an hour's gap means another worker may have
    # seen the value move meanwhile: the young run is dropped, not carried over.
    worker = Worker(plant(BEARING, FLOW))
    assert run_batches(worker, [52.1] * 20) == []  # 2 s flat: young, in memory only
    later = 3600.0
    alerts = run_batches(worker, [52.1] * 40, start_s=later)  # 4 s more, flat at the same value
    assert alerts == []  # 2 s + 4 s would pass 5 s only if the run had been carried across the gap
    assert brief(run_batches(worker, [52.1] * 20, start_s=later + 4.0)) == [("flatline", "flatline", "active", later + 5.0)]
