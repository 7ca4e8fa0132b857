"""`edgewatch train` and `edgewatch models` as a user runs them: a historian CSV
or Parquet export in, a registered and active model version out; clear errors
for a bad export; a damaged model file refused by the worker's loader with its name."""

from __future__ import annotations

import os
import subprocess
import sys

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from connectors.simulator.plant import PlantSimulation
from stream.config import load_config
from stream.history import HistoryError, csv_history, parquet_history, read_parquet_columns
from stream.models import load_catalog
from stream.wire import QUALITY_BAD
from tests.conftest import REPO_CONFIG

START_US = 1_763_000_000_000_000


def edgewatch(*args, cwd):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "edgewatch", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def plant(tmp_path):
    doc = yaml.safe_load(REPO_CONFIG.read_text())
    doc["detectors"] = {"registry_dir": str(tmp_path / "models"), "lstm_autoencoder": {"enabled": False}, "isolation_forest": {"n_estimators": 50}}
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def export_csv(path, seconds=900, period_s=0.2):
    """pump-1 as a historian exports it: ISO time, one column per tag."""
    simulation = PlantSimulation([("pump-1", "pump")], seed=3, start_us=START_US, load_cycle_period_s=600)
    ts = START_US + (np.arange(int(seconds / period_s)) * period_s * 1e6).astype(np.int64)
    values, _ = simulation.sample("pump-1", ts)
    tags = list(values)
    with open(path, "w") as handle:
        handle.write("time," + ",".join(tags) + "\n")
        for i, t in enumerate(ts):
            stamp = np.datetime64(int(t), "us").astype(str) + "Z"
            handle.write(stamp + "," + ",".join(f"{values[tag][i]:.6g}" for tag in tags) + "\n")
    return tags


def test_train_from_a_csv_export_registers_an_active_version_the_worker_loads(plant, tmp_path):
    export_csv(tmp_path / "pump-1.csv")
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--csv", str(tmp_path / "pump-1.csv"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "normal ranges learned for pump-1" in done.stdout
    assert "validation" in done.stdout and "isolation_forest" in done.stdout
    # 15 minutes: enough 1 s windows, too few 10 s and 1 min windows (said, not hidden)
    assert "need 120" in done.stdout
    listed = edgewatch("models", "list", "-c", str(plant), cwd=tmp_path)
    assert listed.returncode == 0 and "pump-1" in listed.stdout and "yes" in listed.stdout
    catalog = load_catalog(load_config(plant, environ={}))
    assert catalog.loaded == {("pump-1", "isolation_forest"): 1}
    assert [m.scale for m in catalog.for_asset("pump-1")] == ["1s"]

    # A damaged model file is refused, named, and the asset runs on without it.
    model_file = next((tmp_path / "models" / "pump-1" / "isolation_forest" / "v1").glob("*.model"))
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    catalog = load_catalog(load_config(plant, environ={}))
    assert catalog.for_asset("pump-1") == []
    reason = catalog.refused[("pump-1", "isolation_forest")]
    assert model_file.name in reason and "sha256" in reason
    refused = edgewatch("models", "activate", "pump-1", "isolation_forest", "1", "-c", str(plant), cwd=tmp_path)
    assert refused.returncode == 2 and model_file.name in refused.stderr


@pytest.mark.parametrize(
    "content, options, message",
    [
        ("when,flow\n2026-01-01T00:00:00Z,1\n", [], "no time column 'time'"),
        ("time,flow\n2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01Z,abc\n", [], "row 3, column 'flow': 'abc' is not a number"),
        ("time,flow\nyesterday,1\n", [], "row 2, column 'time': cannot read 'yesterday' as a time"),
        ("time,vibration\n2026-01-01T00:00:00Z,1\n", [], "'vibration' are not tags of asset 'pump-1'"),
        ("time,flow\n", [], "no data rows"),
    ],
)
def test_a_bad_export_gets_an_error_naming_file_row_and_column(plant, tmp_path, content, options, message):
    (tmp_path / "bad.csv").write_text(content)
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--csv", str(tmp_path / "bad.csv"), *options, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in " ".join(done.stderr.split()), done.stderr
    assert "Traceback" not in done.stderr


def test_train_needs_one_target_and_one_history(plant, tmp_path):
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-1", cwd=tmp_path)
    assert done.returncode == 2 and "give exactly one history" in done.stderr
    done = edgewatch("train", "-c", str(plant), "--simulate", "1h", cwd=tmp_path)
    assert done.returncode == 2 and "--asset" in done.stderr
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-9", "--simulate", "1h", cwd=tmp_path)
    assert done.returncode == 2 and "no asset 'pump-9'" in done.stderr


# --------------------------------------------------------------------------- Parquet


def export_parquet(path, seconds=900, period_s=0.2, time=None, row_group_size=1000):
    """The data of export_csv (same simulation, same 6 significant digits) as a
    Parquet export: a UTC timestamp column (or ``time(ts_us)``), one float column
    per tag, several row groups."""
    simulation = PlantSimulation([("pump-1", "pump")], seed=3, start_us=START_US, load_cycle_period_s=600)
    ts = START_US + (np.arange(int(seconds / period_s)) * period_s * 1e6).astype(np.int64)
    values, _ = simulation.sample("pump-1", ts)
    columns = {"time": pa.array(ts, pa.timestamp("us", tz="UTC")) if time is None else time(ts)}
    for tag in values:
        columns[tag] = pa.array([float(f"{v:.6g}") for v in values[tag]], pa.float64())
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return list(values)


def normal_ranges_table(stdout):
    return stdout[stdout.index("normal ranges learned") : stdout.index("detectors (")]


def test_train_from_a_parquet_export_learns_what_the_csv_export_teaches(plant, tmp_path):
    export_csv(tmp_path / "pump-1.csv")
    export_parquet(tmp_path / "pump-1.parquet")
    by_csv = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--csv", str(tmp_path / "pump-1.csv"), cwd=tmp_path)
    assert by_csv.returncode == 0, by_csv.stderr + by_csv.stdout
    by_parquet = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--parquet", str(tmp_path / "pump-1.parquet"), cwd=tmp_path)
    assert by_parquet.returncode == 0, by_parquet.stderr + by_parquet.stdout
    assert "normal ranges learned for pump-1" in by_parquet.stdout and "need 120" in by_parquet.stdout
    assert normal_ranges_table(by_parquet.stdout) == normal_ranges_table(by_csv.stdout)

    versions = tmp_path / "models" / "pump-1" / "isolation_forest"
    from_csv = json.loads((versions / "v1" / "manifest.json").read_text())
    from_parquet = json.loads((versions / "v2" / "manifest.json").read_text())
    assert from_parquet["training"]["source"] == f"parquet {tmp_path / 'pump-1.parquet'}"
    for key in ("from", "to", "from_us", "to_us", "windows", "assets"):
        assert from_parquet["training"][key] == from_csv["training"][key], key
    # the same windows give the same model: same threshold, same validation false-alarm rate (fit time aside)
    for metrics in (from_csv["metrics"], from_parquet["metrics"]):
        for scale in metrics.values():
            scale.pop("fit_s", None)
    assert from_parquet["metrics"] == from_csv["metrics"]
    catalog = load_catalog(load_config(plant, environ={}))
    assert catalog.loaded == {("pump-1", "isolation_forest"): 2}


@pytest.mark.parametrize(
    "time, time_format",
    [
        (lambda ts: pa.array(ts, pa.timestamp("us", tz="UTC")), "iso"),
        (lambda ts: pa.array(ts * 1000, pa.timestamp("ns")), "iso"),  # no time zone: UTC
        (lambda ts: pa.array(ts // 1000, pa.timestamp("ms", tz="America/New_York")), "iso"),
        (lambda ts: pa.array(ts / 1e6), "epoch_s"),
        (lambda ts: pa.array(ts // 1000, pa.int64()), "epoch_ms"),
        (lambda ts: pa.array([np.datetime64(int(t), "us").astype(str) + "Z" for t in ts]), "iso"),
        (lambda ts: pa.array([np.datetime64(int(t), "us").astype(str) for t in ts]).dictionary_encode(), "iso"),
    ],
    ids=["timestamp-us-utc", "timestamp-ns-naive", "timestamp-ms-new-york", "epoch-s-float", "epoch-ms-int", "iso-text", "iso-dictionary"],
)
def test_a_parquet_export_gives_the_batches_of_the_same_csv_export(plant, tmp_path, time, time_format):
    asset = load_config(plant, environ={}).asset("pump-1")
    export_csv(tmp_path / "pump-1.csv", seconds=60)
    export_parquet(tmp_path / "pump-1.parquet", seconds=60, time=lambda ts: pa.array(time(ts)), row_group_size=64)
    expected = list(csv_history(tmp_path / "pump-1.csv", asset))
    got = list(parquet_history(tmp_path / "pump-1.parquet", asset, time_format=time_format))
    assert len(got) == len(expected) == 120
    for a, b in zip(got, expected):
        assert (a.asset_id, a.tags, a.seq) == (b.asset_id, b.tags, b.seq)
        for field in ("tag_index", "ts_us", "value", "quality"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_nulls_in_a_parquet_export_are_bad_quality_gaps_not_zeros(plant, tmp_path):
    asset = load_config(plant, environ={}).asset("pump-1")
    stamps = ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]
    table = pa.table(
        {
            "time": pa.array(stamps),
            "flow": pa.array([10.0, None, 12.0]),
            "speed": pa.array([1480, 1481, None], pa.int32()),
            "suction_pressure": pa.array(["1.5", " ", None]),  # text: empty is a gap too
        }
    )
    pq.write_table(table, tmp_path / "gaps.parquet")
    (tmp_path / "gaps.csv").write_text("time,flow,speed,suction_pressure\n" + "\n".join(
        [f"{stamps[0]},10,1480,1.5", f"{stamps[1]},,1481, ", f"{stamps[2]},12,,"]
    ) + "\n")
    ts_us, names, values = read_parquet_columns(tmp_path / "gaps.parquet")
    assert names == ["flow", "speed", "suction_pressure"]
    gaps = np.isnan(values)
    assert gaps.tolist() == [[False, False, False], [True, False, True], [False, True, True]]
    assert values[~gaps].tolist() == [10.0, 1480.0, 1.5, 1481.0, 12.0]

    (batch,) = list(parquet_history(tmp_path / "gaps.parquet", asset, batch_s=10))
    bad = batch.quality == QUALITY_BAD
    assert bad.sum() == 4 and np.isnan(batch.value[bad]).all()
    assert (batch.quality[~bad] == 0).all() and np.isfinite(batch.value[~bad]).all()
    (from_csv,) = list(csv_history(tmp_path / "gaps.csv", asset, batch_s=10))
    np.testing.assert_array_equal(batch.quality, from_csv.quality)
    np.testing.assert_array_equal(batch.value, from_csv.value)


STAMPS = pa.array(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"])


@pytest.mark.parametrize(
    "columns, options, message",
    [
        ({"time": STAMPS, "flow": [1.0, 2.0], "vibration": [1.0, 2.0]}, [], "column(s) 'vibration' are not tags of asset 'pump-1'"),
        ({"when": STAMPS, "flow": [1.0, 2.0]}, [], "no time column 'time' (columns: when, flow)"),
        ({"stamp": pa.array(["2026-01-01T00:00:00Z", "noon"]), "flow": [1.0, 2.0]}, ["--time-column", "stamp"], "row 2, column 'stamp': cannot read 'noon'"),
        ({"time": STAMPS, "flow": ["1", "abc"]}, [], "row 2, column 'flow': 'abc' is not a number"),
        ({"time": STAMPS, "flow": pa.array([[1.0], [2.0]])}, [], "column 'flow': type list<element: double> is not a number"),
        ({"time": pa.array(["2026-01-01T00:00:00Z", "yesterday"]), "flow": [1.0, 2.0]}, [], "row 2, column 'time': cannot read 'yesterday' as a time"),
        ({"time": pa.array(["01.01.2026", "02.01.2026"]), "flow": [1.0, 2.0]}, ["--time-format", "%d.%m.%Y %H:%M"], "row 1, column 'time': cannot read '01.01.2026' as a time"),
        ({"time": pa.array([1_767_225_600, 1_767_225_601]), "flow": [1.0, 2.0]}, [], "column 'time': the times are numbers (int64)"),
        ({"time": pa.array([20454, 20455], pa.date32()), "flow": [1.0, 2.0]}, [], "column 'time': type date32 cannot be read as a time"),
        ({"time": pa.array(["2026-01-01T00:00:01Z", "2026-01-01T00:00:00Z"]), "flow": [1.0, 2.0]}, [], "row 2, column 'time': time goes backwards"),
        ({"time": pa.array(["2026-01-01T00:00:00Z", None]), "flow": [1.0, 2.0]}, [], "row 2, column 'time': the time is missing"),
        ({"time": pa.array([], pa.timestamp("us")), "flow": pa.array([], pa.float64())}, [], "no data rows"),
    ],
    ids=["not-a-tag", "no-time-column", "time-column-option", "text-not-a-number", "list-column", "bad-time-text",
         "bad-time-pattern", "epoch-without-unit", "date-column", "time-backwards", "time-null", "no-rows"],
)
def test_a_bad_parquet_export_gets_an_error_naming_file_and_column(plant, tmp_path, columns, options, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--parquet", str(path), *options, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert message in said and str(path) in said, done.stderr
    assert "Traceback" not in done.stderr


def test_parquet_reader_errors_name_the_file(tmp_path):
    pq.write_table(pa.table({"time": STAMPS, "flow": [1.0, 2.0]}), tmp_path / "ok.parquet")
    with pytest.raises(HistoryError, match=r"ok\.parquet: no column\(s\) 'speed' \(columns: time, flow\)"):
        read_parquet_columns(tmp_path / "ok.parquet", tags=["flow", "speed"])
    (tmp_path / "text.parquet").write_text("time,flow\n")
    with pytest.raises(HistoryError, match=r"text\.parquet: cannot be read as Parquet"):
        read_parquet_columns(tmp_path / "text.parquet")
    with pytest.raises(HistoryError, match=r"missing\.parquet: no such file"):
        read_parquet_columns(tmp_path / "missing.parquet")


def test_parquet_history_is_one_source_among_the_others(plant, tmp_path):
    pq.write_table(pa.table({"time": STAMPS, "flow": [1.0, 2.0]}), tmp_path / "h.parquet")
    (tmp_path / "h.csv").write_text("time,flow\n2026-01-01T00:00:00Z,1\n")
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--csv", str(tmp_path / "h.csv"), "--parquet", str(tmp_path / "h.parquet"), cwd=tmp_path)
    assert done.returncode == 2 and "give exactly one history" in done.stderr and "--parquet FILE" in done.stderr
    done = edgewatch("train", "-c", str(plant), "--asset", "pump-1", "--parquet", str(tmp_path / "h.parquet"), "--separator", ";", cwd=tmp_path)
    assert done.returncode == 2 and "--separator is for a CSV export" in done.stderr
