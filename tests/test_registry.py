"""The model registry: versions on disk that a crash cannot half-write and a worker verifies before use."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from detectors.halfspace import HalfSpaceTreesDetector
from detectors.isolation_forest import IsolationForestDetector
from detectors.model import CalibratedModel, fit_calibrated
from detectors.registry import ModelIntegrityError, ModelNotFound, ModelRegistry, RegistryError, files_digest
from edgewatch.bench_detectors import plant_windows

MODELS_SCHEMA = Path(__file__).resolve().parents[1] / "stream" / "schemas" / "models.schema.json"
T_FROM, T_TO = 1_773_000_000_000_000, 1_773_476_100_000_000  # event time, microseconds
SAVE_ARGS = {
    "feature_spec": {"features": ["mean", "std", "max", "min"]},
    "training": {"from": T_FROM, "to": T_TO, "windows": 400, "source": "unit test"},
    "metrics": {"10s": {"threshold": 0.61}},
}


@lru_cache(maxsize=None)
def data() -> tuple[np.ndarray, list[str]]:
    return plant_windows(400, seed=0)


@lru_cache(maxsize=None)
def forest() -> CalibratedModel:
    X, names = data()
    model, _ = fit_calibrated(IsolationForestDetector(n_estimators=10), X, names, 0.01, seed=0)
    return model


def online() -> CalibratedModel:
    X, names = data()
    model = CalibratedModel.start_online(HalfSpaceTreesDetector(n_trees=5, height=4, window_size=50), names, 0.01, warmup=10)
    model.learn(X)
    return model


def models_validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(MODELS_SCHEMA.read_text()), format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_each_save_is_a_new_version_with_a_manifest_pinning_every_file(tmp_path):
    registry = ModelRegistry(tmp_path)
    first = registry.save("pump-1", "isolation_forest", {"10s": forest(), "1m/10s": forest()}, **SAVE_ARGS)
    second = registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    assert (first.version, second.version) == (1, 2)
    assert registry.versions("pump-1", "isolation_forest") == [1, 2]
    assert first.path == tmp_path / "pump-1" / "isolation_forest" / "v1"
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest == first.manifest
    assert sorted(manifest["files"]) == ["10s.json", "10s.model", "1m%2F10s.json", "1m%2F10s.model"]
    assert manifest["sha256"] == files_digest(manifest["files"]) and re.fullmatch("[0-9a-f]{64}", manifest["sha256"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", manifest["created_at"])
    assert manifest["training"]["from"] == "2026-03-08T20:00:00.000000Z" and manifest["training"]["windows"] == 400
    assert {"python", "numpy", "scikit-learn", "river"} <= set(manifest["libraries"])
    assert (manifest["schema_version"], manifest["target"], manifest["detector"], list(manifest["scales"])) == (
        1,
        "pump-1",
        "isolation_forest",
        ["10s", "1m/10s"],
    )
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_a_crash_while_saving_leaves_no_version(tmp_path, monkeypatch):
    registry = ModelRegistry(tmp_path)
    registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)

    def crash(self, directory, stem):
        (Path(directory) / f"{stem}.model").write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(CalibratedModel, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    base = tmp_path / "pump-1" / "isolation_forest"
    assert registry.versions("pump-1", "isolation_forest") == [1]
    assert sorted(p.name for p in base.iterdir()) == ["v1"]


def test_load_gives_back_models_that_score_identically(tmp_path):
    registry = ModelRegistry(tmp_path)
    X, _ = data()
    saved = registry.save("pump-1", "halfspace_trees", {"10s": online()}, **SAVE_ARGS)
    loaded = registry.load("pump-1", "halfspace_trees", saved.version)
    assert loaded.version == 1 and list(loaded.models) == ["10s"]
    np.testing.assert_array_equal(loaded.models["10s"].score(X).p_value, online().score(X).p_value)


def test_activate_switches_atomically_and_load_follows_it(tmp_path, monkeypatch):
    registry = ModelRegistry(tmp_path)
    for _ in range(2):
        registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    assert registry.active_version("pump-1", "isolation_forest") is None
    with pytest.raises(ModelNotFound, match="activate one"):
        registry.load("pump-1", "isolation_forest")
    registry.activate("pump-1", "isolation_forest", 1)
    assert registry.load("pump-1", "isolation_forest").version == 1
    registry.activate("pump-1", "isolation_forest", 2)
    assert registry.active_version("pump-1", "isolation_forest") == 2

    def power_cut(source, destination):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        registry.activate("pump-1", "isolation_forest", 1)
    monkeypatch.undo()
    assert registry.active_version("pump-1", "isolation_forest") == 2, "a failed activation must leave the old one"
    assert sorted(p.name for p in (tmp_path / "pump-1" / "isolation_forest").iterdir()) == ["ACTIVE", "v1", "v2"]
    with pytest.raises(ModelNotFound, match="v7"):
        registry.activate("pump-1", "isolation_forest", 7)


def test_a_changed_byte_in_a_model_file_is_refused_by_name(tmp_path):
    registry = ModelRegistry(tmp_path)
    saved = registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    model_file = saved.path / "10s.model"
    raw = bytearray(model_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    model_file.write_bytes(bytes(raw))
    with pytest.raises(ModelIntegrityError) as caught:
        registry.load("pump-1", "isolation_forest", 1)
    message = str(caught.value)
    assert "10s.model" in message and saved.manifest["files"]["10s.model"] in message
    assert caught.value.actual in message and "retrain" in message
    assert caught.value.path == model_file


def test_a_missing_file_or_manifest_is_refused(tmp_path):
    registry = ModelRegistry(tmp_path)
    saved = registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    (saved.path / "10s.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"10s\.json is missing"):
        registry.load("pump-1", "isolation_forest", 1)
    (saved.path / "manifest.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"manifest\.json is missing"):
        registry.load("pump-1", "isolation_forest", 1)


def test_an_edited_manifest_is_refused(tmp_path):
    registry = ModelRegistry(tmp_path)
    saved = registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    manifest = json.loads((saved.path / "manifest.json").read_text())
    manifest["files"]["10s.model"] = "0" * 64
    (saved.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="edited"):
        registry.load("pump-1", "isolation_forest", 1)


def test_unknown_targets_and_versions_say_what_exists(tmp_path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelNotFound, match="train one"):
        registry.load("pump-9", "isolation_forest")
    registry.save("pump-1", "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    with pytest.raises(ModelNotFound, match=r"versions on disk: \[1\]"):
        registry.load("pump-1", "isolation_forest", 3)
    with pytest.raises(RegistryError, match="detector name"):
        registry.versions("pump-1", "../escape")
    with pytest.raises(RegistryError, match="not a target"):
        registry.versions("..", "isolation_forest")
    with pytest.raises(RegistryError, match="cannot be saved as"):
        registry.save("pump-1", "halfspace_trees", {"10s": forest()}, **SAVE_ARGS)
    with pytest.raises(RegistryError, match="JSON"):
        registry.save("pump-1", "isolation_forest", {"10s": forest()}, **{**SAVE_ARGS, "metrics": {"x": float("nan")}})


@pytest.mark.parametrize(
    ("target", "folder", "key", "value"),
    [("pump-1", "pump-1", "asset_id", "pump-1"), ("line/2:pump-1", "line%2F2%3Apump-1", "asset_id", "line/2:pump-1"), ("type:pump", "type%3Apump", "asset_type", "pump")],
)
def test_announcements_validate_against_the_models_schema(tmp_path, target, folder, key, value):
    registry = ModelRegistry(tmp_path)
    saved = registry.save(target, "isolation_forest", {"10s": forest()}, **SAVE_ARGS)
    assert saved.path == tmp_path / folder / "isolation_forest" / "v1"
    message = registry.announcement(saved)
    errors = [error.message for error in models_validator().iter_errors(message)]
    assert not errors, errors
    assert message[key] == value and message["active"] is False
    assert message["sha256"] == saved.manifest["sha256"] and message["version"] == 1
    assert (message["trained_from"], message["trained_to"]) == ("2026-03-08T20:00:00.000000Z", "2026-03-14T08:15:00.000000Z")
    assert Path(unquote(urlparse(message["artifact_uri"]).path)) == saved.path.resolve()
    registry.activate(target, "isolation_forest", 1)
    assert registry.announcement(registry.get(target, "isolation_forest"))["active"] is True


def test_concurrent_saves_get_distinct_complete_versions(tmp_path):
    registry = ModelRegistry(tmp_path)
    model = forest()
    with ThreadPoolExecutor(4) as pool:
        saved = list(pool.map(lambda _: registry.save("pump-1", "isolation_forest", {"10s": model}, **SAVE_ARGS), range(8)))
    assert sorted(v.version for v in saved) == list(range(1, 9))
    for version in saved:
        assert registry.load("pump-1", "isolation_forest", version.version).manifest["version"] == version.version
