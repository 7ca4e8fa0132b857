"""`edgewatch backtest` as a user runs it: labelled CSV exports in, one verdict per
replayed row and the metrics out; clear errors for a bad export. And the metrics
themselves (stream.evaluation) on hand-made arrays.

The data: one asset, 3 tags sampled every second for 40 minutes, noise on a slow
load cycle (10-minute period). The first 30 minutes are the warm-up (normal); from
minute 34 to 37 the pressure tag steps up by 40 noise sigmas (about 13 sigmas of
the tag with its load cycle), labelled 1. (At 10 s windows and a 30-minute warm-up,
180 windows of which 45 calibrate the forest, a step of 20 noise sigmas scored only
p ~ 0.03 and raised nothing: measuring that is what a backtest is for; this test
wants a clear fault.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgewatch.cli import app
from stream import evaluation
from stream.backtest import (
    MIN_SAMPLES_PER_WINDOW,
    _alarm_on,
    default_scales,
    label_verdict,
    parse_windows,
    sanitize_identifier,
)
from stream.config import WindowScale

runner = CliRunner()

START = np.datetime64("2026-01-05T00:00:00", "s")
MINUTES = 40
WARMUP_S = 30 * 60
FAULT = (34 * 60, 37 * 60)  # seconds from the start, [start, end)
#: the alarm must be on within this long of the fault's start (10 s windows, fusion
#: needs a few of them, then the 20 s on-delay)
MAX_DELAY_S = 120
#: ...and off again within this long of its end (60 s off-delay, belief decaying)
MAX_TAIL_S = 180
FAST = ["--windows", "10s", "--detector", "isolation_forest"]


def recording(seed=0, minutes=MINUTES, fault=FAULT, step=20.0):
    """(seconds (n,), columns {name: (n,)}, labels (n,)): 3 tags, 1 s period."""
    rng = np.random.default_rng(seed)
    t = np.arange(minutes * 60)
    load = np.sin(2 * np.pi * t / 600.0)
    columns = {
        "temp": 50 + 5 * load + rng.normal(0, 1.0, t.size),
        "pressure": 20 + 2 * load + rng.normal(0, 0.5, t.size),
        "flow": 100 - 10 * load + rng.normal(0, 2.0, t.size),
    }
    label = np.zeros(t.size, dtype=int)
    if fault is not None:
        s, e = fault
        columns["pressure"][s:e] += step
        label[s:e] = 1
    return t, columns, label


def write_csv(path, seed=0, fault=FAULT, time=True, edit=None):
    t, columns, label = recording(seed, fault=fault)
    lines = [("time," if time else "") + ",".join(columns) + ",label"]
    for i in range(t.size):
        stamp = str(START + np.timedelta64(int(t[i]), "s")) + "Z,"
        lines.append((stamp if time else "") + ",".join(f"{columns[c][i]:.4f}" for c in columns) + f",{label[i]}")
    if edit is not None:
        lines = edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def backtest(*args):
    result = runner.invoke(app, ["backtest", *map(str, args)])
    return result


def read_output(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def as_seconds(iso_texts):
    return np.array([np.datetime64(s.rstrip("Z"), "us") for s in iso_texts]).astype("datetime64[us]")


# --------------------------------------------------------------------------- one file, end to end


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    source = write_csv(folder / "line-7 pump.csv")
    out = folder / "out"
    result = backtest(source, "--warmup", "30m", "--label-columns", "label", *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    return source, out, result


def test_output_rows_line_up_one_to_one_with_the_input_rows_after_the_warm_up(one_file):
    source, out, _ = one_file
    rows = read_output(out / "line-7 pump.csv")
    inputs = read_output(source)[WARMUP_S:]
    assert len(rows) == len(inputs) == MINUTES * 60 - WARMUP_S
    assert list(rows[0]) == ["time", "probability", "alarm", "top_fault", "label"]
    assert np.array_equal(as_seconds(r["time"] for r in rows), as_seconds(r["time"] for r in inputs))
    assert [r["label"] for r in rows] == [r["label"] for r in inputs]
    p = np.array([float(r["probability"]) for r in rows])
    assert np.all((p >= 0) & (p <= 1))
    assert {r["alarm"] for r in rows} <= {"0", "1"}
    # a top fault is named only where fusion believes in one
    assert all((r["top_fault"] != "") == (float(r["probability"]) >= 0.5) for r in rows)


def test_the_fault_episode_is_detected_soon_and_nothing_is_raised_outside_it(one_file):
    _, out, _ = one_file
    rows = read_output(out / "line-7 pump.csv")
    t = np.arange(WARMUP_S, MINUTES * 60)
    alarm = np.array([int(r["alarm"]) for r in rows])
    fault = (t >= FAULT[0]) & (t < FAULT[1])
    assert alarm[fault].any()
    first = t[np.flatnonzero(alarm)[0]]
    assert FAULT[0] <= first < FAULT[0] + MAX_DELAY_S  # nothing before the fault
    assert not alarm[t >= FAULT[1] + MAX_TAIL_S].any()  # and it returned after it
    summary = json.loads((out / "line-7 pump.summary.json").read_text())
    m = summary["metrics"]
    assert m["episodes"] == 1 and m["episodes_detected"] == 1 and m["event_recall"] == 1.0
    assert 0 <= m["mean_detection_delay_s"] < MAX_DELAY_S
    assert m["detection_delays_s"] == [first - FAULT[0]]
    assert m["false_alarm_events"] == 0 and m["alarm_events"] == 1
    # the only false-alarm rows are the off-delay's tail after the fault
    assert m["fp"] <= MAX_TAIL_S and m["false_alarm_rate"] <= MAX_TAIL_S / (MINUTES * 60 - WARMUP_S - 180)
    assert m["recall"] > 0.5
    probability = np.array([float(r["probability"]) for r in rows])
    assert probability[fault].max() > 0.9 and probability[t < FAULT[0]].max() < 0.5
    assert summary["asset_id"] == "line-7_pump"  # the stem, sanitised to an id
    assert summary["warmup_rows"] == WARMUP_S and summary["window_scales"] == ["10s"]
    assert summary["models"]["isolation_forest/10s"]["windows"] == WARMUP_S // 10


def test_summary_json_has_every_metric_and_the_totals_of_the_single_file(one_file):
    _, out, result = one_file
    summary = json.loads((out / "summary.json").read_text())
    assert set(evaluation.METRIC_KEYS) <= set(summary["totals"])
    (single,) = summary["files"]
    assert single["file"] == "line-7 pump"
    assert set(evaluation.METRIC_KEYS) <= set(single["metrics"])
    assert summary["totals"] == single["metrics"]
    per_file = json.loads((out / "line-7 pump.summary.json").read_text())
    assert per_file["metrics"] == single["metrics"]
    assert "backtest: anomalous = label" in result.output and "line-7" in result.output  # the table printed
    assert not any(out.glob("registry-*")), "the temporary registry is removed"


def test_the_file_results_for_the_report(tmp_path):
    """run_backtest hands the report writer one FileResult per file."""
    from stream.backtest import BacktestOptions, run_backtest

    source = write_csv(tmp_path / "m1.csv")
    options = BacktestOptions(label_columns=["label"], warmup_s=WARMUP_S, windows=parse_windows("10s"), detectors=["isolation_forest"], out_dir=tmp_path / "out")
    seen = []
    results, totals = run_backtest([source], options, on_progress=lambda what, done, total: seen.append((what, done, total)))
    (r,) = results
    n = MINUTES * 60 - WARMUP_S
    assert r.name == "m1" and r.asset_id == "m1" and r.source == str(source)
    assert r.time_us.dtype == np.int64 and r.time_us.shape == (n,)
    assert r.warmup_end_us == int(r.time_us[0])
    assert set(r.tags) == {"temp", "pressure", "flow"} and all(v.shape == (n,) for v in r.tags.values())
    assert r.labels["label"].shape == (n,) and r.anomalous.dtype == bool and r.anomalous.sum() == FAULT[1] - FAULT[0]
    assert r.probability.shape == (n,) and r.alarm.dtype == np.int8 and len(r.top_fault) == n
    times, p = r.scores["isolation_forest/10s"]
    assert len(times) == len(p) > 0 and np.all(np.diff(times) > 0)
    assert r.alarms and all(e["kind"] == "alarm" for e in r.alarms)
    assert totals == r.metrics
    assert seen[-1] == ("replaying m1", n, n) and any(w == "training m1" for w, _, _ in seen)


# --------------------------------------------------------------------------- several files, no time column


def test_a_folder_of_two_files_gives_pooled_totals(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    write_csv(folder / "a.csv", seed=1)
    write_csv(folder / "b.csv", seed=2)
    out = tmp_path / "out"
    result = backtest(folder, "--warmup-rows", WARMUP_S, *FAST, "--out", out)  # label column found by name
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [f["file"] for f in summary["files"]] == ["a", "b"]
    a, b = (f["metrics"] for f in summary["files"])
    totals = summary["totals"]
    for key in ("rows", "anomalous_rows", "alarm_rows", "tp", "fp", "fn", "tn", "episodes", "episodes_detected", "alarm_events"):
        assert totals[key] == a[key] + b[key], key
    assert totals["episodes"] == 2
    assert totals["detection_delays_s"] == a["detection_delays_s"] + b["detection_delays_s"]
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    assert totals["precision"] == pytest.approx(tp / (tp + fp)) and totals["recall"] == pytest.approx(tp / (tp + fn))
    assert (out / "a.csv").exists() and (out / "b.summary.json").exists()


def _name_the_fault(lines):
    """Label 60 warm-up rows "bearing_wear" (text labels; the values stay normal), and
    the fault's rows too."""
    for k in range(1, len(lines)):
        cells = lines[k].split(",")
        if 101 <= k < 161 or cells[-1] == "1":
            cells[-1] = "bearing_wear"
            lines[k] = ",".join(cells)
    return lines


def test_sample_period_without_a_time_column_and_text_labels(tmp_path):
    source = write_csv(tmp_path / "slow.csv", time=False, edit=_name_the_fault)
    out = tmp_path / "out"
    result = backtest(
        source, "--sample-period", "1s", "--start", "2026-03-01T08:00Z", "--warmup", "30m", "--label-columns", "label", *FAST, "--out", out
    )
    assert result.exit_code == 0, result.output
    rows = read_output(out / "slow.csv")
    assert len(rows) == MINUTES * 60 - WARMUP_S
    expected = np.datetime64("2026-03-01T08:00:00", "us") + np.arange(WARMUP_S, MINUTES * 60) * np.timedelta64(1, "s")
    assert np.array_equal(as_seconds(r["time"] for r in rows), expected)
    assert {r["label"] for r in rows} == {"0", "bearing_wear"}  # copied as read
    summary = json.loads((out / "slow.summary.json").read_text())
    assert summary["metrics"]["event_recall"] == 1.0
    assert summary["metrics"]["anomalous_rows"] == FAULT[1] - FAULT[0]
    # labelled warm-up rows are left out of training, and the user is told
    assert summary["warmup_anomalous_rows_dropped"] == 60
    assert "60 warm-up row(s) labelled anomalous were left out of training" in " ".join(result.output.split())


def test_a_configured_asset_is_used_and_its_tags_must_be_the_columns(tmp_path):
    source = write_csv(tmp_path / "export.csv")
    plant = tmp_path / "plant.yaml"
    plant.write_text(yaml.safe_dump({"assets": [
        {"id": "press-2", "type": "generic", "tags": [{"id": "temp"}, {"id": "pressure"}, {"id": "flow"}]},
        {"id": "press-3", "type": "generic", "tags": [{"id": "temp"}, {"id": "vibration"}]},
    ]}))
    out = tmp_path / "out"
    result = backtest(source, "-c", plant, "--asset", "press-2", "--warmup", "30m", *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "export.summary.json").read_text())
    assert summary["asset_id"] == "press-2" and summary["metrics"]["event_recall"] == 1.0
    refused = backtest(source, "-c", plant, "--asset", "press-3", "--warmup", "30m", *FAST, "--out", out)
    assert refused.exit_code == 2
    assert "export.csv" in refused.output and "'vibration'" in refused.output and "press-3" in refused.output


# --------------------------------------------------------------------------- clear errors


def _replace_cell(row, column, text):
    def edit(lines):
        cells = lines[row].split(",")
        cells[column] = text
        lines[row] = ",".join(cells)
        return lines

    return edit


@pytest.mark.parametrize(
    "edit, options, wanted",
    [
        (None, ["--time-column", "when"], ["no time column 'when'"]),
        (None, ["--tags", "temp,vibration"], ["'vibration'", "--tags"]),
        (None, ["--label-columns", "fault_label"], ["'fault_label'", "--label-columns"]),
        (_replace_cell(101, 2, "n/a"), [], ["row 102", "column 'pressure'", "'n/a' is not a number"]),
        (_replace_cell(51, 0, "yesterday"), [], ["row 52", "column 'time'", "cannot read 'yesterday' as a time"]),
        (None, ["--warmup", "5m"], ["too little warm-up", "30 windows of 10s", "120 needed per scale"]),
        (None, ["--warmup-rows", "999999"], ["no rows after the warm-up"]),
    ],
    ids=["missing-time-column", "missing-tag", "missing-label-column", "not-a-number", "unparsable-time", "short-warm-up", "no-rows-left"],
)
def test_a_bad_export_exits_non_zero_naming_file_and_column(tmp_path, edit, options, wanted):
    source = write_csv(tmp_path / "bad-export.csv", fault=None, edit=edit)
    result = backtest(source, *FAST, "--out", tmp_path / "out", *options)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "bad-export.csv" in text
    for part in wanted:
        assert part in text, text
    assert "Traceback" not in result.output


def test_option_mistakes_are_usage_errors(tmp_path):
    source = write_csv(tmp_path / "x.csv", fault=None)
    out = ["--out", tmp_path / "out"]
    assert backtest(source, "--windows", "10s/3s", *out).exit_code == 2  # hop must divide the length
    assert backtest(source, "--warmup", "forever", *out).exit_code == 2
    assert backtest(source, "--sample-period", "1s", "--time-column", "time", *out).exit_code == 2
    assert backtest(source, "--asset", "press-2", *out).exit_code == 2  # --asset without --config
    missing = backtest(tmp_path / "missing.csv", *out)
    assert missing.exit_code == 2 and "missing.csv: no such file" in missing.output


# --------------------------------------------------------------------------- helpers


def test_window_scales_hold_at_least_five_samples():
    configured = [WindowScale(length="1s"), WindowScale(length="10s"), WindowScale(length="1m")]
    assert default_scales(configured, 100_000) == (configured, None)  # 10 Hz: 1 s windows hold 10
    kept, note = default_scales(configured, 1_000_000)  # 1 s: the 1 s scale would hold 1
    assert [s.name for s in kept] == ["10s", "1m"] and "1s" in note
    chosen, note = default_scales(configured, 180_000_000)  # 3 min: none of them
    assert [s.name for s in chosen] == ["15m", "3h"] and all(s.length_us >= MIN_SAMPLES_PER_WINDOW * 180_000_000 for s in chosen)
    assert [s.name for s in parse_windows("1h, 30m/3m")] == ["30m/3m", "1h"]


def test_labels_and_identifiers():
    assert label_verdict(["", "0", "1", "0.0", "2", "bearing_wear", "normal", " OK ", "nan"]).tolist() == [
        False, False, True, False, True, True, False, False, False,
    ]
    assert sanitize_identifier("line 7 (pump)", "x") == "line_7__pump_"
    assert sanitize_identifier("__", "fallback") == "fallback"


def test_alarm_is_on_from_raise_to_return_by_data_time():
    t = np.arange(0, 100, 10, dtype=np.int64)
    events = [
        {"asset_id": "a", "fault": "f", "alert_id": "1", "event": "raised", "source_data_time_us": 20},
        {"asset_id": "a", "fault": "f", "alert_id": "1", "event": "escalated", "source_data_time_us": 30},
        {"asset_id": "a", "fault": "f", "alert_id": "1", "event": "returned", "source_data_time_us": 50},
        {"asset_id": "a", "fault": "f", "alert_id": "1", "event": "reopened", "source_data_time_us": 75},
        {"asset_id": "a", "fault": "alarm_flood", "alert_id": "9", "event": "flood_started", "source_data_time_us": 0},
        {"asset_id": "b", "fault": "f", "alert_id": "2", "event": "raised", "source_data_time_us": 0},
    ]
    assert _alarm_on(t, events, "a").tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 1, 1]


# --------------------------------------------------------------------------- stream.evaluation


def test_point_wise_metrics():
    anomalous = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    predicted = np.array([0, 1, 0, 1, 1, 0, 0, 0, 0, 0], bool)
    m = evaluation.score(np.arange(10) * 1_000_000, anomalous, predicted)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 2, 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["false_alarm_rate"] == pytest.approx(1 / 6)
    assert m["missed_alarm_rate"] == pytest.approx(0.5)
    assert m["alarm_events"] == 2 and m["false_alarm_events"] == 1


def test_episodes_and_detection_delays():
    anomalous = np.array([1, 1, 0, 0, 1, 1, 1, 0, 1, 1], bool)
    predicted = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 0], bool)
    t = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9, 10]) * 1_000_000
    assert evaluation.episodes(anomalous) == [(0, 2), (4, 7), (8, 10)]
    assert evaluation.detection_delays(t, anomalous, predicted) == [0.0, 3.0, None]
    m = evaluation.score(t, anomalous, predicted)
    assert m["episodes"] == 3 and m["episodes_detected"] == 2
    assert m["event_recall"] == pytest.approx(2 / 3)
    assert m["mean_detection_delay_s"] == pytest.approx(1.5) and m["max_detection_delay_s"] == 3.0
    assert m["false_alarm_events"] == 0  # the second alarm run touches an episode


def test_edge_cases_no_anomalous_labels_no_alarms_nothing():
    t = np.arange(5, dtype=np.int64)
    quiet = evaluation.score(t, np.zeros(5, bool), np.zeros(5, bool))
    assert (quiet["precision"], quiet["recall"], quiet["f1"], quiet["missed_alarm_rate"], quiet["event_recall"]) == (None,) * 5
    assert quiet["false_alarm_rate"] == 0.0 and quiet["episodes"] == 0 and quiet["mean_detection_delay_s"] is None
    false_alarms = evaluation.score(t, np.zeros(5, bool), np.array([0, 1, 1, 0, 0], bool))
    assert false_alarms["precision"] == 0.0 and false_alarms["recall"] is None and false_alarms["f1"] == 0.0
    assert false_alarms["false_alarm_rate"] == pytest.approx(0.4) and false_alarms["false_alarm_events"] == 1
    missed = evaluation.score(t, np.array([0, 1, 1, 0, 0], bool), np.zeros(5, bool))
    assert missed["precision"] is None and missed["recall"] == 0.0 and missed["f1"] == 0.0
    assert missed["missed_alarm_rate"] == 1.0 and missed["event_recall"] == 0.0 and missed["detection_delays_s"] == []
    empty = evaluation.score(np.array([], np.int64), np.array([], bool), np.array([], bool))
    assert empty["rows"] == 0 and empty["episodes"] == 0 and empty["false_alarm_rate"] is None
    all_anomalous = evaluation.score(t, np.ones(5, bool), np.ones(5, bool))
    assert evaluation.episodes(np.ones(5, bool)) == [(0, 5)] and all_anomalous["f1"] == 1.0
    assert all_anomalous["false_alarm_rate"] is None


def test_pool_sums_counts_and_pools_episodes():
    t = np.arange(6) * 1_000_000
    a = evaluation.score(t, np.array([0, 1, 1, 0, 0, 0], bool), np.array([0, 0, 1, 1, 0, 0], bool))
    b = evaluation.score(t, np.array([1, 0, 0, 0, 1, 1], bool), np.array([0, 0, 0, 0, 0, 0], bool))
    total = evaluation.pool([a, b])
    assert (total["tp"], total["fp"], total["fn"], total["tn"]) == (1, 1, 4, 6)
    assert total["episodes"] == 3 and total["episodes_detected"] == 1 and total["detection_delays_s"] == [1.0]
    assert total["recall"] == pytest.approx(1 / 5) and total["event_recall"] == pytest.approx(1 / 3)
    assert evaluation.pool([a]) == a
    with pytest.raises(ValueError):
        evaluation.score(t, np.zeros(6, bool), np.zeros(5, bool))


def test_every_option_the_guide_names_is_an_option_of_the_command():
    # docs/backtest.md is what a user copies from: an option renamed in the code
    # but not in the guide would send them to an error.
    import re
    from pathlib import Path

    import typer.main

    guide = (Path(__file__).resolve().parents[1] / "docs" / "backtest.md").read_text(encoding="utf-8")
    command = typer.main.get_command(app).commands["backtest"]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-c)(?![\w-])", guide.split("## Evaluations")[0]))
    assert named, "the guide names no option"
    assert sorted(named - known) == []
