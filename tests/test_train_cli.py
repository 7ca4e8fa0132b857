"""`edgewatch train` and `edgewatch models` as a user runs them: a historian CSV
export in, a registered and active model version out; clear errors for a bad
export; a damaged model file refused by the worker's loader with its name."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from connectors.simulator.plant import PlantSimulation
from stream.config import load_config
from stream.models import load_catalog
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
