"""The plant simulator's physics: normal operation stays in the catalogue's
normal ranges, every fault kind shows its signature on the signals its ground
truth names and on no others, sensor faults look like sensor faults, sampling is
chunk-invariant and deterministic, the fault syntax reads and explains itself,
and the ground truth file matches the schedule."""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import pytest

from connectors.base import BAD_COMMUNICATION_ERROR, GOOD
from connectors.simulator import (
    MODEL_TYPES,
    PROCESS_KINDS,
    SENSOR_KINDS,
    FaultSpec,
    FaultSpecError,
    PlantSimulation,
    read_ground_truth,
)

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
S = 1_000_000
TYPES = list(MODEL_TYPES)
PERIOD = 1200.0  # compressed load cycle


def times(start_s: float, stop_s: float, rate_hz: float = 1.0) -> np.ndarray:
    return T0 + np.arange(int(start_s * S), int(stop_s * S), int(S / rate_hz), dtype=np.int64)


def sim_of(asset_type: str, faults=(), seed: int = 7, **params) -> PlantSimulation:
    return PlantSimulation([(f"{asset_type}-1", asset_type, params or None)], faults, seed=seed, start_us=T0, load_cycle_period_s=PERIOD)


@lru_cache(maxsize=None)
def baseline(asset_type: str, stop_s: float, rate_hz: float = 1.0):
    return sim_of(asset_type).sample(f"{asset_type}-1", times(0, stop_s, rate_hz))


# -- normal operation ----------------------------------------------------------


@pytest.mark.parametrize("asset_type", TYPES)
def test_two_hours_of_normal_operation_stay_in_the_normal_ranges(asset_type):
    sim = sim_of(asset_type)
    values, quality = baseline(asset_type, 7200.0)
    catalogue = sim.catalogue(f"{asset_type}-1")
    assert set(values) == set(catalogue)
    for tag, spec in catalogue.items():
        low, high = spec.normal_range
        v = values[tag]
        assert np.all(np.isfinite(v)) and np.all(quality[tag] == GOOD), tag
        assert low <= v.min() and v.max() <= high, f"{asset_type} {tag}: {v.min():.4g}..{v.max():.4g} outside {spec.normal_range}"
        # the range is a real operating band, not a wide-open guess (controlled and noise-only signals aside)
        steady = ("vibration_kurtosis", "seal_leak_flow", "suction_pressure", "discharge_pressure", "oil_pressure")
        assert np.ptp(v) > 0.25 * (high - low) or tag in steady, tag
    # operating conditions moved: setpoint changes every 5-20 min plus the load cycle
    commanded = sim.model(f"{asset_type}-1").setpoint.step_value(np.arange(0.0, 7200.0))
    assert 5 <= np.count_nonzero(np.diff(commanded)) <= 25


def test_setpoint_changes_follow_a_first_order_response():
    sim = sim_of("pump", setpoints=[[0, 1.0], [100, 0.9]], setpoint_tau_s=8.0, load_cycle_amplitude=0.0)
    model = sim.model("pump-1")
    t = np.array([99.0, 100.0, 101.0, 108.0, 140.0])
    speed, _ = model.evaluate(t)
    rpm = model.p["rated_speed"]
    moved = (rpm - speed["speed"]) / (0.1 * rpm)
    assert moved[0] == pytest.approx(0.0, abs=1e-9) and moved[1] == pytest.approx(0.0, abs=1e-9)
    assert moved[2] == pytest.approx(1 - np.exp(-1 / 8), rel=1e-6)  # no instant jump
    assert moved[3] == pytest.approx(1 - np.exp(-1), rel=1e-6)
    assert moved[4] > 0.99
    flow, _ = model.evaluate(np.array([99.0, 140.0]))
    # affinity: flow drops with speed, roughly in proportion (the static head makes it a bit more)
    assert 0.85 < flow["flow"][1] / flow["flow"][0] < 0.9


def test_temperatures_lag_behind_load():
    sim = sim_of("motor", setpoints=[[0, 0.8], [600, 1.0]], load_cycle_amplitude=0.0, ambient_swing=0.0)
    model = sim.model("motor-1")
    temps, _ = model.evaluate(np.array([599.0, 610.0, 600.0 + 240.0, 3000.0]))
    w = temps["winding_temp"]
    rise = w[3] - w[0]
    assert rise > 5
    assert (w[1] - w[0]) < 0.1 * rise  # 10 s after the step: barely moved
    assert (w[2] - w[0]) == pytest.approx((1 - np.exp(-1)) * rise, rel=0.05)  # one time constant: 63 %


# -- process faults ------------------------------------------------------------

START, DURATION, STOP = 300.0, 1200.0, 1800.0
CASES = [(t, k) for t in TYPES for k in MODEL_TYPES[t].FAULTS]


@pytest.mark.parametrize("asset_type,kind", CASES, ids=[f"{t}-{k}" for t, k in CASES])
def test_process_fault_moves_the_signals_it_names_and_no_others(asset_type, kind):
    asset = f"{asset_type}-1"
    sim = sim_of(asset_type, [FaultSpec(asset, kind, START, DURATION)])
    faulty, _ = sim.sample(asset, times(0, STOP))
    normal, _ = baseline(asset_type, STOP)
    (truth,) = sim.ground_truth()
    signature = MODEL_TYPES[asset_type].FAULTS[kind]
    assert truth["tags"] == list(signature.tags) and truth["primary_tags"] == list(signature.primary)
    t = np.arange(0, STOP)
    during = (t >= START) & (t < START + DURATION)
    assert np.array_equal(faulty[signature.tags[0]][t < START], normal[signature.tags[0]][t < START])
    for tag, spec in sim.catalogue(asset).items():
        low, high = spec.normal_range
        change = np.abs(faulty[tag] - normal[tag]).max()
        if tag in signature.primary:
            outside = (faulty[tag][during] < low) | (faulty[tag][during] > high)
            assert outside.mean() > 0.05, f"{tag} should leave {spec.normal_range}: {outside.mean():.2%} of the episode outside"
        elif tag in signature.secondary:
            assert change > 2 * spec.noise_sd, f"{tag} should change measurably: {change:.3g} vs noise {spec.noise_sd:.3g}"
        else:
            assert change < 0.05 * spec.noise_sd, f"{tag} is not in the ground truth but changed by {change:.3g}"
            assert low <= faulty[tag].min() and faulty[tag].max() <= high, tag


def test_impulsive_faults_raise_kurtosis_periodic_ones_lower_it():
    sim = PlantSimulation(
        [("p-cav", "pump"), ("p-imb", "pump"), ("p-wear", "pump")],
        ["p-cav:cavitation@100+300", "p-imb:imbalance@100+300", "p-wear:bearing_wear@100+300"],
        seed=3,
        start_us=T0,
        load_cycle_period_s=PERIOD,
    )
    t = times(0, 400)
    assert np.median(sim.sample("p-cav", t)[0]["vibration_kurtosis"][200:]) > 5
    assert np.median(sim.sample("p-imb", t)[0]["vibration_kurtosis"][200:]) < 2.5
    assert sim.sample("p-wear", t)[0]["vibration_kurtosis"][-50:].min() > 5


def test_cavitation_makes_flow_and_pressure_noisy():
    sim = sim_of("pump", ["pump-1:cavitation@300+1200"])
    faulty, _ = sim.sample("pump-1", times(0, STOP))
    normal, _ = baseline("pump", STOP)
    cat = sim.catalogue("pump-1")
    for tag in ("flow", "discharge_pressure"):
        before = np.diff(faulty[tag][:300]).std()
        during = np.diff(faulty[tag][400:1400]).std()
        assert during > 4 * before, tag
        assert np.mean(faulty[tag][400:1400]) < np.mean(normal[tag][400:1400]) - 5 * cat[tag].noise_sd, tag


def test_bearing_wear_grows_over_its_duration():
    sim = sim_of("motor", ["motor-1:bearing_wear@0+1800*0.8"])
    v, _ = sim.sample("motor-1", times(0, 1800))
    for tag in ("vibration_rms", "vibration_kurtosis", "bearing_temp_de"):
        thirds = [part.mean() for part in np.array_split(v[tag], 3)]
        assert thirds[0] < thirds[1] < thirds[2], (tag, thirds)
    assert v["vibration_rms"][-60:].mean() > 1.5 * v["vibration_rms"][:60].mean()


def test_a_fault_ends_and_the_machine_recovers():
    sim = sim_of("pump", ["pump-1:imbalance@100+100"])
    v, _ = sim.sample("pump-1", times(0, 800))
    normal, _ = baseline("pump", 800.0)
    assert np.array_equal(v["vibration_rms"][200:], normal["vibration_rms"][200:])  # mechanical: gone at once
    assert abs(v["bearing_temp_de"][799] - normal["bearing_temp_de"][799]) < 0.2  # thermal: cooled down after ~3 tau


# -- sensor faults -------------------------------------------------------------


def test_sensor_faults_corrupt_one_tag_only():
    faults = ["pump-1:stuck/flow@100+50", "pump-1:drift/bearing_temp_de@100+100*0.5", "pump-1:spike/discharge_pressure@100+200", "pump-1:dropout/motor_current@100+30"]
    sim = sim_of("pump", faults)
    t = times(0, 400, rate_hz=10.0)
    ts = (t - T0) / S
    v, q = sim.sample("pump-1", t)
    normal, normal_q = sim_of("pump").sample("pump-1", t)
    cat = sim.catalogue("pump-1")

    stuck = (ts >= 100) & (ts < 150)
    assert np.ptp(v["flow"][stuck]) == 0.0  # zero variance
    assert v["flow"][stuck][0] == pytest.approx(normal["flow"][ts == 100][0])  # frozen at its value at the fault start
    assert np.array_equal(v["flow"][~stuck], normal["flow"][~stuck])

    drifting = (ts >= 100) & (ts < 200)
    span = np.subtract(*cat["bearing_temp_de"].normal_range[::-1])
    offset = v["bearing_temp_de"] - normal["bearing_temp_de"]
    np.testing.assert_allclose(offset[drifting], 0.5 * span * (ts[drifting] - 100) / 100, atol=1e-9)  # linear
    assert np.all(offset[~drifting] == 0)

    spiking = (ts >= 100) & (ts < 300)
    jump = np.abs(v["discharge_pressure"] - normal["discharge_pressure"])
    low, high = cat["discharge_pressure"].normal_range
    spikes = jump > 0
    assert 0.02 < spikes[spiking].mean() < 0.09 and not spikes[~spiking].any()
    assert jump[spikes].min() >= 1.5 * (high - low)
    assert (np.diff(np.flatnonzero(spikes)) > 1).mean() > 0.8  # isolated

    gone = (ts >= 100) & (ts < 130)
    assert np.all(np.isnan(v["motor_current"][gone])) and np.all(q["motor_current"][gone] == BAD_COMMUNICATION_ERROR)
    assert np.all(q["motor_current"][~gone] == GOOD) and np.array_equal(v["motor_current"][~gone], normal["motor_current"][~gone])

    for tag in set(cat) - {"flow", "bearing_temp_de", "discharge_pressure", "motor_current"}:
        assert np.array_equal(v[tag], normal[tag]) and np.all(q[tag] == GOOD), tag  # the process never noticed


# -- sampling ------------------------------------------------------------------

PLANT = [("pump-1", "pump"), ("motor-1", "motor"), ("fan-1", "fan"), ("comp-1", "compressor"), ("gen-1", "generic")]
SCHEDULE = [
    "pump-1:cavitation@60+120",
    "pump-1:stuck/flow@40+30",
    "motor-1:bearing_wear@30+600*0.8",
    "fan-1:spike/speed@10+100",
    "comp-1:seal_leak@100",
    "gen-1:dropout/load@30+20",
]


def test_chunked_sampling_equals_one_shot_and_values_at():
    one = PlantSimulation(PLANT, SCHEDULE, seed=11, start_us=T0, load_cycle_period_s=600)
    chunked = PlantSimulation(PLANT, SCHEDULE, seed=11, start_us=T0, load_cycle_period_s=600)
    t = times(0, 900, rate_hz=10.0)
    for asset in one.asset_ids:
        v1, q1 = one.sample(asset, t)
        parts = [chunked.sample(asset, chunk) for chunk in np.array_split(t, 41)]
        for tag in v1:
            np.testing.assert_allclose(np.concatenate([p[0][tag] for p in parts]), v1[tag], rtol=1e-12, atol=1e-12, equal_nan=True)
            assert np.array_equal(np.concatenate([p[1][tag] for p in parts]), q1[tag])
    # one instant at a time, as a server does, and backwards in time
    late = PlantSimulation(PLANT, SCHEDULE, seed=11, start_us=T0, load_cycle_period_s=600)
    for k in (8999, 4500, 450, 0):
        now = late.values_at(int(t[k]))
        for asset in one.asset_ids:
            v1, q1 = one.sample(asset, t[k : k + 1])
            for tag, (value, quality) in now[asset].items():
                assert value == pytest.approx(v1[tag][0], rel=1e-12, abs=1e-12, nan_ok=True) and quality == q1[tag][0]


def test_deterministic_under_a_seed_and_seeds_differ():
    t = times(0, 1800)
    a = PlantSimulation(PLANT, SCHEDULE, seed=5, start_us=T0).sample("pump-1", t)[0]
    b = PlantSimulation(PLANT, SCHEDULE, seed=5, start_us=T0).sample("pump-1", t)[0]
    c = PlantSimulation(PLANT, SCHEDULE, seed=6, start_us=T0).sample("pump-1", t)[0]
    for tag in a:
        assert np.array_equal(a[tag], b[tag], equal_nan=True), tag
        assert not np.allclose(a[tag], c[tag], equal_nan=True), tag
    # adding another asset changes nobody else's values
    d = PlantSimulation(PLANT[:1], SCHEDULE[:2], seed=5, start_us=T0).sample("pump-1", t)[0]
    assert all(np.array_equal(a[tag], d[tag], equal_nan=True) for tag in a)


def test_sampling_is_cheap():
    sim = PlantSimulation([(f"pump-{i}", "pump") for i in range(6)], seed=1, start_us=T0)
    assert sum(len(sim.signals(a)) for a in sim.asset_ids) >= 60
    t = times(0, 60, rate_hz=10.0)
    began = time.perf_counter()
    for asset in sim.asset_ids:  # a minute at 10 Hz for 66 tags: tens of ms
        values, _ = sim.sample(asset, t)
        assert values["flow"].shape == t.shape and values["flow"].dtype == np.float64
    for k in range(10):  # a second of a 10 Hz server
        sim.values_at(int(t[k]))
    assert time.perf_counter() - began < 2.0


def test_params_override_the_nominal_values_and_the_catalogue_follows():
    big = sim_of("pump", rated_flow=500.0, rated_speed=2950.0)
    (low, high), (low0, high0) = big.signals("pump-1")["flow"][1], sim_of("pump").signals("pump-1")["flow"][1]
    assert low == pytest.approx(5 * low0, rel=0.05) and high == pytest.approx(5 * high0, rel=0.05)
    assert big.signals("pump-1")["speed"] == ("rpm", big.catalogue("pump-1")["speed"].normal_range)
    with pytest.raises(ValueError, match="asset 'pump-1': unknown parameter.*rated_flw.*valid:.*rated_flow"):
        sim_of("pump", rated_flw=500.0)
    with pytest.raises(ValueError, match="unknown asset type 'chiller'.*pump, motor, fan, compressor, generic"):
        PlantSimulation([("c-1", "chiller")])


# -- the fault syntax ----------------------------------------------------------


def test_fault_text_and_config_forms():
    assert FaultSpec.parse("pump-1:cavitation@60+120") == FaultSpec("pump-1", "cavitation", 60.0, 120.0)
    assert FaultSpec.parse("pump-1:bearing_wear@30+600*0.8") == FaultSpec("pump-1", "bearing_wear", 30.0, 600.0, 0.8)
    assert FaultSpec.parse("pump-1:stuck/flow@40s+30s") == FaultSpec("pump-1", "stuck", 40.0, 30.0, tag="flow")
    assert FaultSpec.parse("area:fan-1:overheating@5") == FaultSpec("area:fan-1", "overheating", 5.0)  # ids may hold ':'
    assert FaultSpec.parse("pump-1:drift/motor/current@5*2") == FaultSpec("pump-1", "drift", 5.0, None, 2.0, "motor/current")
    doc = {"asset": "pump-1", "kind": "cavitation", "start_s": 60, "duration_s": 120, "severity": 1.0}
    assert FaultSpec.from_dict(doc) == FaultSpec.parse("pump-1:cavitation@60+120")
    assert FaultSpec.from_dict({"asset": "pump-1", "kind": "stuck", "start_s": 40, "tag": "flow"}).tag == "flow"
    assert str(FaultSpec.parse("pump-1:bearing_wear@30+600*0.8")) == "pump-1:bearing_wear@30+600*0.8"


@pytest.mark.parametrize(
    "text,why",
    [
        ("pump-1:cavitaton@60", "unknown kind 'cavitaton'"),
        ("pump-1:cavitation", "no '@START' found"),
        ("cavitation@60", "no 'ASSET:KIND' before '@'"),
        ("pump-1:cavitation@soon", "start 'soon' is not a number"),
        ("pump-1:cavitation@60+-5", "duration_s must be > 0"),
        ("pump-1:stuck@40+30", "needs the tag it corrupts"),
        ("pump-1:cavitation/flow@40", "takes no tag"),
    ],
)
def test_bad_fault_text_explains_the_syntax(text, why):
    with pytest.raises(FaultSpecError) as err:
        FaultSpec.parse(text)
    message = str(err.value)
    assert why in message
    if "kind" in why or "'@" in why or "number" in why:
        assert "ASSET:KIND@START_S[+DURATION_S][*SEVERITY]" in message and "ASSET:KIND/TAG@" in message
        assert all(kind in message for kind in PROCESS_KINDS + SENSOR_KINDS)


def test_faults_that_do_not_fit_the_plant_are_refused():
    assets = [("fan-1", "fan"), ("pump-1", "pump")]
    with pytest.raises(FaultSpecError, match="cavitation does not apply to asset 'fan-1', a fan; faults for a fan: bearing_wear, misalignment"):
        PlantSimulation(assets, ["fan-1:cavitation@10"])
    with pytest.raises(FaultSpecError, match="unknown asset 'pump-9'; the simulated assets are: fan-1, pump-1"):
        PlantSimulation(assets, ["pump-9:seal_leak@10"])
    with pytest.raises(FaultSpecError, match="asset 'pump-1' \\(pump\\) has no tag 'flw'; its tags are: flow, suction_pressure"):
        PlantSimulation(assets, [{"asset": "pump-1", "kind": "stuck", "start_s": 1, "tag": "flw"}])
    with pytest.raises(FaultSpecError, match="unknown key\\(s\\) start"):
        FaultSpec.from_dict({"asset": "pump-1", "kind": "stuck", "start": 1})


# -- ground truth --------------------------------------------------------------


def test_ground_truth_file_matches_the_schedule(tmp_path):
    sim = PlantSimulation(PLANT, SCHEDULE, seed=1, start_us=T0)
    path = tmp_path / "truth" / "ground_truth.jsonl"
    assert sim.write_ground_truth(path) == len(SCHEDULE)
    records = read_ground_truth(path)
    assert records == sim.ground_truth()
    assert [r["episode"] for r in records] == [
        "fan-1:spike/speed@10+100",
        "gen-1:dropout/load@30+20",
        "motor-1:bearing_wear@30+600*0.8",
        "pump-1:stuck/flow@40+30",
        "pump-1:cavitation@60+120",
        "comp-1:seal_leak@100",
    ]
    cav = records[4]
    assert cav["asset"] == "pump-1" and cav["kind"] == cav["label"] == "cavitation" and cav["category"] == "process"
    assert cav["start"] == "2026-01-01T00:01:00.000000Z" and cav["end"] == "2026-01-01T00:03:00.000000Z"
    assert cav["start_us"] == T0 + 60 * S and cav["end_us"] == T0 + 180 * S
    assert cav["severity"] == 1.0 and cav["tag"] is None
    assert set(cav["primary_tags"]) <= set(cav["tags"]) and {"suction_pressure", "vibration_kurtosis"} <= set(cav["tags"])
    assert records[2]["severity"] == 0.8 and records[2]["ramp_s"] == 600.0
    stuck = records[3]
    assert stuck["category"] == "sensor" and stuck["tag"] == "flow" and stuck["tags"] == ["flow"]
    assert records[5]["end"] is None and records[5]["end_us"] is None  # no duration: until the end
    active = {str(f) for f in sim.active_faults(T0 + 65 * S)}
    assert active == {"pump-1:cavitation@60+120", "pump-1:stuck/flow@40+30", "motor-1:bearing_wear@30+600*0.8", "fan-1:spike/speed@10+100"}
    assert {str(f) for f in sim.active_faults(T0 + 10_000 * S)} == {"comp-1:seal_leak@100"}
