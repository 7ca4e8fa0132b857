"""The issue's acceptance on the plant simulator: detectors trained on normal
history with `edgewatch train`'s code, then the simulator's injected faults
raise calibrated scores far past the threshold, named by the tags the fault
touches, while a day of load changes and setpoint steps does not.

Everything runs through the worker's own pipeline, offline (stream.replay): the
live worker runs the same objects (tests/test_detection_kafka.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from connectors.simulator.history import simulated_history
from connectors.simulator.plant import PlantSimulation
from stream.config import load_config
from stream.models import load_catalog
from stream.pipeline import Pipeline
from stream.replay import replay
from stream.training import train
from tests.conftest import REPO_CONFIG

#: an event time well in the past (2025-11-13), so nothing is "in the future"
T0 = 1_763_000_000_000_000
DAY_US = 86_400_000_000
TRAIN_S = 6 * 3600
#: faulted runs: 10 min normal, then the fault for 10 min
FAULT_START_S, FAULT_S, RUN_S = 600, 600, 1200
PROCESS_FAULTS = ("cavitation", "bearing_wear", "seal_leak", "misalignment", "imbalance", "overheating")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """pump-1 of the sample plant, trained on six hours of simulated normal operation
    (compressed 10-minute load cycle, setpoint steps every 5-20 minutes)."""
    registry = tmp_path_factory.mktemp("registry")
    config = load_config(REPO_CONFIG, environ={})
    lstm = config.detectors.lstm_autoencoder.model_copy(update={"epochs": 3, "hidden_size": 16, "device": "cpu"})
    config = config.model_copy(
        update={"detectors": config.detectors.model_copy(update={"registry_dir": str(registry), "lstm_autoencoder": lstm})}
    )
    summary = train(config, "pump-1", simulated_history(config, ["pump-1"], T0, TRAIN_S, seed=1), seed=0)
    return config, summary, load_catalog(config)


def run(config, catalog, seconds, faults=(), seed=7, day=1):
    """Replay a simulated run of pump-1 through the pipeline with the trained models."""
    pipeline = Pipeline(config, max_future_check=False, models=catalog, assets=["pump-1"], keep_fusion=True)
    start = T0 + day * DAY_US
    result = replay(config, simulated_history(config, ["pump-1"], start, seconds, faults=faults, seed=seed), pipeline=pipeline)
    return start, result


def scores_of(result, detector, scale):
    found = [m for m in result.scores if m["detector"] == detector and m["scale"] == scale]
    return sorted(found, key=lambda m: m["window_end_us"])


def test_training_registers_calibrated_models_with_a_validated_false_alarm_rate(trained):
    config, summary, catalog = trained
    assert {d.detector for d in summary.detectors} == {"isolation_forest", "lstm_autoencoder"}
    forest = next(d for d in summary.detectors if d.detector == "isolation_forest")
    # 6 h: 21,600 1 s windows, 2,160 of 10 s, 360 of 1 min; every scale got a model
    assert set(forest.metrics) == {"1s", "10s", "1m"}
    assert forest.metrics["1s"]["validation_false_alarm_rate"] <= 0.005  # asked: 0.001 per window
    assert catalog.loaded == {("pump-1", "isolation_forest"): 1, ("pump-1", "lstm_autoencoder"): 1}
    # the normal ranges the summary reports are the physics' normal ranges
    low, high = summary.normal_ranges["pump-1"]["suction_pressure"]
    assert 1.15 < low < high < 1.5


def test_load_changes_and_setpoint_steps_stay_below_the_threshold(trained):
    """Half an hour with three load cycles and new setpoints (another seed): the
    calibrated false-alarm rate holds to within a few windows, and no alarm-worthy
    run of anomalous windows appears."""
    config, _, catalog = trained
    _, result = run(config, catalog, 1800)
    for detector, scale, allowed in [
        ("isolation_forest", "1s", 0.02),
        ("isolation_forest", "10s", 0.03),
        ("isolation_forest", "1m", 0.07),  # 31 windows: two would be 6.5 %
        ("lstm_autoencoder", "1s", 0.02),
        ("halfspace_trees", "1s", 0.02),
    ]:
        scores = scores_of(result, detector, scale)
        assert len(scores) > 25, (detector, scale)
        flags = np.array([m["anomalous"] for m in scores])
        assert flags.mean() <= allowed, f"{detector} at {scale}: {flags.mean():.3%} of normal windows anomalous"
        longest = max((len(run) for run in "".join("x" if f else "." for f in flags).split(".")), default=0)
        assert longest <= 3, f"{detector} at {scale}: {longest} anomalous windows in a row on normal data"
    assert result.alerts == []  # no fast rule fires on normal operation either
    # ... and fusion raises no fault alarm: load cycles and new setpoints are normal
    assert result.alarms == [], [a["message"] for a in result.alarms]
    assert max(f.p_any_fault for f in result.fusion) < 0.5


@pytest.mark.parametrize("kind", PROCESS_FAULTS)
def test_each_process_fault_scores_far_above_the_threshold_and_names_its_tags(trained, kind):
    config, _, catalog = trained
    fault = f"pump-1:{kind}@{FAULT_START_S}+{FAULT_S}"
    start, result = run(config, catalog, RUN_S, faults=[fault])
    truth = PlantSimulation([("pump-1", "pump")], [fault], start_us=start).ground_truth()[0]
    touched = set(truth["tags"])
    far = config.detectors.false_alarm_rate
    # Overheating (cooling fan failed) raises the winding temperature through a
    # slow thermal lag and stays inside the range load changes cover: at 10 s it
    # shows only in the current-temperature relation, which the forests miss
    # (3 % of windows measured); the 1 s forest and the autoencoder catch it.
    scales = ("1s",) if kind == "overheating" else ("1s", "10s")
    for scale in scales:
        scores = scores_of(result, "isolation_forest", scale)
        ends = np.array([(m["window_end_us"] - start) / 1e6 for m in scores])
        # the second half of the episode: past any ramp to full severity
        during = [m for m, t in zip(scores, ends) if FAULT_START_S + FAULT_S / 2 < t <= FAULT_START_S + FAULT_S]
        before = [m for m, t in zip(scores, ends) if t <= FAULT_START_S]
        caught = np.mean([m["anomalous"] for m in during])
        assert caught >= 0.9, f"{kind} at {scale}: only {caught:.0%} of fault windows anomalous"
        # "well above": the typical fault window is a hundred times rarer than the threshold
        assert np.median([m["p_value"] for m in during]) <= far / 100, kind
        assert np.mean([m["anomalous"] for m in before]) <= 0.02, kind
        leaders = [m["top_tags"][0]["id"] for m in during]
        named = np.mean([tag in touched for tag in leaders])
        assert named >= 0.9, f"{kind} at {scale}: top tag in {touched} for only {named:.0%}: {set(leaders)}"
        top = during[len(during) // 2]["top_tags"][0]
        # the operator sees the value and what is normal for it
        assert top["value"] is not None and top["normal_range"][0] < top["normal_range"][1]
    # the LSTM autoencoder sees it too, at its scale
    lstm = scores_of(result, "lstm_autoencoder", "1s")
    ends = np.array([(m["window_end_us"] - start) / 1e6 for m in lstm])
    during = [m for m, t in zip(lstm, ends) if FAULT_START_S + FAULT_S / 2 < t <= FAULT_START_S + FAULT_S]
    assert np.mean([m["anomalous"] for m in during]) >= 0.8, kind
    assert np.mean([m["top_tags"][0]["id"] in touched for m in during]) >= 0.8, kind


def test_offline_replay_is_deterministic_event_time(trained):
    """Replaying the same history twice, cut into batches differently, gives the
    same windows, features and scores: event time, not arrival time, decides."""
    config, _, catalog = trained
    history = list(simulated_history(config, ["pump-1"], T0 + 2 * DAY_US, 300, seed=3, faults=["pump-1:seal_leak@120+100"]))
    first = replay(config, history, pipeline=Pipeline(config, max_future_check=False, models=catalog, assets=["pump-1"]))
    coarse = list(simulated_history(config, ["pump-1"], T0 + 2 * DAY_US, 300, seed=3, faults=["pump-1:seal_leak@120+100"], batch_s=2.0))
    second = replay(config, coarse, pipeline=Pipeline(config, max_future_check=False, models=catalog, assets=["pump-1"]))
    assert len(first.features) == len(second.features) > 300
    assert first.features == second.features
    key = lambda m: (m["detector"], m["scale"], m["window_end_us"])  # noqa: E731
    assert sorted(first.scores, key=key) == sorted(second.scores, key=key)
    assert [a["alert_id"] for a in first.alarms] == [a["alert_id"] for a in second.alarms] != []


# --------------------------------------------------------------------------- fault alarms (fusion + alarm book)

#: fusion's name for each simulated fault (misalignment and imbalance share one signature)
FUSION_NAME = {kind: kind for kind in PROCESS_FAULTS} | {"misalignment": "misalignment_imbalance", "imbalance": "misalignment_imbalance"}
#: alarm runs: 5 min normal, the fault for 5 min, then 10 min normal again
ALARM_FAULT_START_S, ALARM_FAULT_S, ALARM_RUN_S = 300, 300, 1200


@pytest.mark.parametrize("kind", PROCESS_FAULTS)
def test_each_fault_episode_raises_exactly_one_alarm_naming_it_and_returns_to_normal(trained, kind):
    config, _, catalog = trained
    fault = f"pump-1:{kind}@{ALARM_FAULT_START_S}+{ALARM_FAULT_S}"
    start, result = run(config, catalog, ALARM_RUN_S, faults=[fault])
    truth = PlantSimulation([("pump-1", "pump")], [fault], start_us=start).ground_truth()[0]
    at = lambda event: (event["source_data_time_us"] - start) / 1e6  # noqa: E731
    (raised,) = [a for a in result.alarms if a["event"] == "raised"]  # exactly one alarm for the episode
    assert raised["fault"] == FUSION_NAME[kind], raised["message"]
    assert raised["annunciated"] and raised["state"] == "active_unacknowledged" and not raised["late"]
    # raised while the fault is on: within a minute, except bearing wear (it ramps up
    # over the whole episode: by half of it) and overheating (a slow thermal lag: 4 min)
    allowed = {"bearing_wear": ALARM_FAULT_S / 2, "overheating": 240}.get(kind, 60)
    assert ALARM_FAULT_START_S < at(raised) < ALARM_FAULT_START_S + allowed, at(raised)
    # the operator is told which tags moved, with their values and normal ranges
    assert raised["top_tags"] and raised["top_tags"][0]["id"] in set(truth["tags"]), raised["top_tags"]
    assert raised["message"].startswith(f"pump-1: {FUSION_NAME[kind].replace('_', ' ')}")
    # fusion ranked the right fault first through the episode's second half
    late = [f for f in result.fusion if ALARM_FAULT_START_S + ALARM_FAULT_S / 2 < (f.event_time_us - start) / 1e6 <= ALARM_FAULT_START_S + ALARM_FAULT_S]
    assert np.mean([f.top_fault == FUSION_NAME[kind] for f in late]) >= 0.9
    # it returns to normal once the fault is over, under the same id, and stays quiet
    (returned,) = [a for a in result.alarms if a["event"] == "returned"]
    assert returned["alert_id"] == raised["alert_id"] and returned["state"] == "returned_unacknowledged"
    assert ALARM_FAULT_START_S + ALARM_FAULT_S < at(returned) < ALARM_FAULT_START_S + ALARM_FAULT_S + 180, at(returned)
    assert {a["alert_id"] for a in result.alarms} == {raised["alert_id"]}


def test_a_restart_in_the_middle_of_an_episode_keeps_its_alert_id(trained):
    """The worker stops mid-episode and a new one carries on from the changelog state,
    re-reading the last 10 s (at-least-once): the same alarm returns, no second id."""
    config, _, catalog = trained
    fault = f"pump-1:cavitation@{ALARM_FAULT_START_S}+{ALARM_FAULT_S}"
    start = T0 + DAY_US
    history = list(simulated_history(config, ["pump-1"], start, ALARM_RUN_S, faults=[fault], seed=7))
    stop_us, resume_us = start + 450_000_000, start + 440_000_000
    before = [b for b in history if b.ts_us[0] < stop_us]
    after = [b for b in history if b.ts_us[0] >= resume_us]
    first = replay(config, before, pipeline=Pipeline(config, max_future_check=False, models=catalog, assets=["pump-1"]), flush=False)
    (raised,) = [a for a in first.alarms if a["event"] == "raised"]
    restarted = Pipeline(config, max_future_check=False, models=catalog, assets=["pump-1"], diagnosis_store=dict(first.diagnosis_state))
    second = replay(config, after, pipeline=restarted)
    assert not [a for a in second.alarms if a["event"] == "raised"], "the restart raised the episode again"
    (returned,) = [a for a in second.alarms if a["event"] == "returned"]
    assert returned["alert_id"] == raised["alert_id"]
    # and the ids are what an uninterrupted run gives
    _, whole = run(config, catalog, ALARM_RUN_S, faults=[fault])
    assert {a["alert_id"] for a in whole.alarms} == {raised["alert_id"]}
