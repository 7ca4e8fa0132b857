"""`edgewatch evaluate-sim` (edgewatch/eval_sim.py): the simulator's scenarios
exported as labelled CSV files that line up with the simulator and its ground
truth, and one short scenario scored end to end through the backtest.

Fast: short runs, a 1 h warm-up instead of the command's 6 h; no Kafka.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from connectors.simulator.history import simulated_history
from connectors.simulator.plant import PlantSimulation
from edgewatch import eval_sim
from edgewatch.eval_sim import Scenario, T0_US, default_scenarios, evaluate, export_scenario, pivot, warmup_rows
from stream.backtest import BacktestOptions, read_table
from stream.config import load_config
from tests.conftest import REPO_CONFIG


@pytest.fixture(scope="module")
def plant():
    return load_config(REPO_CONFIG, environ={})


def _read(path):
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, list(reader)


def test_the_scenarios_cover_every_process_fault_four_sensor_faults_and_a_normal_hour(plant):
    scenarios = default_scenarios(plant, "pump-1")
    kinds = [s.kind for s in scenarios]
    assert kinds == ["bearing_wear", "cavitation", "seal_leak", "misalignment", "imbalance", "overheating",
                     "stuck", "drift", "spike", "dropout", None]
    assert [s.faults[0] for s in scenarios if s.category == "sensor"] == [
        "pump-1:stuck/flow@600+300", "pump-1:drift/discharge_pressure@600+300",
        "pump-1:spike/vibration_rms@600+300", "pump-1:dropout/bearing_temp_de@600+300",
    ]
    assert scenarios[-1].faults == [] and scenarios[-1].duration_s == 3600
    # each on a day and with a seed of its own, none of the tests' (day 0-2; seeds 1, 3, 7)
    assert len({s.day for s in scenarios}) == len({s.seed for s in scenarios}) == len(scenarios)
    assert min(s.day for s in scenarios) > 2 and not {1, 3, 7} & {s.seed for s in scenarios}
    assert eval_sim.fusion_name("imbalance") == eval_sim.fusion_name("misalignment") == "misalignment_imbalance"
    assert eval_sim.fusion_name("spike") == "sensor_fault" and eval_sim.fusion_name("cavitation") == "cavitation"


def test_the_export_lines_up_with_the_simulator_and_its_ground_truth(plant, tmp_path):
    tags = [t.id for t in plant.asset("pump-1").tags]
    warmup = warmup_rows(plant, "pump-1", 60)
    scenario = Scenario("seal", "seal_leak", ["pump-1:seal_leak@30+40"], 120, day=10, seed=100)
    exported = export_scenario(plant, "pump-1", scenario, warmup, tmp_path)
    header, rows = _read(exported.path)
    assert header == ["time", *tags, "label"]
    # pump-1's tags are all OPC UA at the simulator's 10 Hz: one row per 100 ms
    assert len(rows) == exported.rows == 600 + 1200 and exported.warmup_rows == 600
    assert all(row[-1] == "" for row in rows[:600])  # the warm-up is normal
    # the label rows are the episode's span, by the ground truth: [start, end)
    (truth,) = PlantSimulation([("pump-1", "pump")], scenario.faults, start_us=scenario.start_us).ground_truth()
    times = read_table(exported.path, BacktestOptions(label_columns=["label"])).time_us
    labelled = np.array([row[-1] == "seal_leak" for row in rows])
    assert labelled.sum() == 400 and {row[-1] for row in rows} == {"", "seal_leak"}
    assert times[labelled].min() == truth["start_us"] and times[labelled].max() == truth["end_us"] - 100_000
    assert times[600] == scenario.start_us and times[0] == T0_US
    # the values are the simulator's (to the CSV's 7 significant digits)
    ts, values = pivot(simulated_history(plant, ["pump-1"], scenario.start_us, 120, faults=scenario.faults, seed=100), tags)
    written = np.array([[float(c) for c in row[1:-1]] for row in rows[600:]])
    assert np.array_equal(ts, times[600:])
    np.testing.assert_allclose(written, values, rtol=1e-6)
    assert json.loads((tmp_path / "seal.ground-truth.jsonl").read_text())["start_us"] == truth["start_us"]


def test_tags_at_different_rates_carry_their_last_sample_and_a_dropout_stays_a_gap(plant, tmp_path):
    """fan-1 is polled over Modbus: most tags every 1 s, the vibration tags every 0.2 s.
    A slow tag repeats its last sample on the fast rows (an empty cell would be read
    as a Bad quality gap); a dropout's NaN stays empty."""
    fan = plant.asset("fan-1")
    tags = [t.id for t in fan.tags]
    warmup = warmup_rows(plant, "fan-1", 10)
    scenario = Scenario("drop", "dropout", ["fan-1:dropout/speed@4+3"], 10, day=10, seed=100)
    exported = export_scenario(plant, "fan-1", scenario, warmup, tmp_path)
    header, rows = _read(exported.path)
    assert len(rows) == 50 + 50  # 0.2 s rows
    speed, vib = header.index("speed"), header.index("vibration_rms")
    scenario_rows = rows[50:]
    assert len({r[vib] for r in scenario_rows}) == 50  # sampled on every row
    # speed: polled every second, so each value covers the 5 rows up to its next poll
    assert [r[speed] for r in scenario_rows[:5]] == [scenario_rows[0][speed]] * 5
    assert scenario_rows[5][speed] != scenario_rows[0][speed]
    gap = [i for i, r in enumerate(scenario_rows) if r[speed] == ""]
    assert gap == list(range(20, 35))  # Bad from the 4 s poll to the 7 s one (exclusive)
    labels = [i for i, r in enumerate(scenario_rows) if r[-1] == "dropout"]
    assert labels == list(range(20, 35))
    # the backtest reads it as the configured asset
    table = read_table(exported.path, BacktestOptions(config=plant, asset_id="fan-1", label_columns=["label"]), fan)
    assert table.tag_columns == tags and np.isnan(table.values[50 + 20, tags.index("speed")])


def test_a_cavitation_scenario_scored_end_to_end(plant, tmp_path):
    """1 h warm-up, 5 min normal, cavitation for 3 min, 2 min normal: detected within
    a minute, the alarm names cavitation, no alarm before the fault."""
    scenario = Scenario("cavitation", "cavitation", ["pump-1:cavitation@300+180"], 600, day=10, seed=100)
    ev = evaluate(plant, "pump-1", tmp_path, warmup_s=3600, scenarios=[scenario])
    (row,) = ev.rows
    assert ev.detectors == ["isolation_forest"]  # the trained detector fusion weighs
    assert row["detected"] and row["named"] == row["expected"] == "cavitation" and row["right"]
    assert 0 <= row["delay_s"] <= 60
    m = row["metrics"]
    assert m["rows"] == 6000 and m["anomalous_rows"] == 1800 and m["false_alarm_events"] == 0
    assert m["recall"] > 0.5
    result = ev.results[0]
    assert not result.alarm[result.time_us < scenario.start_us + 300_000_000].any()
    assert row["false_alarm_s_before"] == 0 and row["false_alarm_s_after"] == pytest.approx(m["fp"] / 10)
    saved = json.loads((tmp_path / "evaluate-sim.json").read_text())
    assert saved["episodes_detected"] == saved["right_fault_named"] == 1
    # the BENCHMARKS.md section: heading, reproduce line, one table row per scenario
    out = tmp_path / "BENCHMARKS.md"
    eval_sim.write_section(ev, out)
    text = out.read_text()
    assert "## Simulator fault scenarios (`edgewatch evaluate-sim`)" in text
    assert "`scripts/bootstrap.sh && .venv/bin/edgewatch evaluate-sim`" in text
    assert "| `cavitation@300+180` (expect cavitation) | yes |" in text
    eval_sim.write_section(ev, out)  # a second run replaces the section
    assert out.read_text().count("bench:simulator-eval:start") == 1
