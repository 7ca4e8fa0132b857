"""One contract every detector in detectors.DETECTORS passes (river's test_estimators habit).

A new detector gets these tests by being added to DETECTORS (and, if its
defaults are slow, to FAST_SETTINGS). The data is the synthetic plant of
edgewatch.bench_detectors: correlated tags following a daily-like load cycle.
The faults are what an operator would want caught:

* a bearing fault: both bearing temperatures and the vibration rise above
  anything seen at this load (3 of 6 tags move, the rest stay normal);
* a one-tag fault: the flow measurement jumps (its features shift), which the
  top tags must pin on "flow".

Why three tags for the score test: an isolation forest picks the feature of
each cut at random, so a fault in 4 of 24 features shortens its paths little
(measured on the one-tag fault: 15 % of its windows above the 99th percentile
of normal ones; half-space trees 52 %, the LSTM autoencoder 100 %); it needs
about half the features to move. The one-tag fault is then what attribution
is tested on, where every detector must name the right tag.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import sys
from functools import lru_cache

import numpy as np
import pytest

from detectors import DETECTORS, detector_class
from detectors.attribution import TagGroups, top_contributions
from detectors.base import DetectorError
from detectors.model import CalibratedModel, fit_calibrated
from detectors.scaling import RobustScaler, normal_ranges
from edgewatch.bench_detectors import plant_windows

#: small settings so the suite stays fast; the defaults are what production uses.
FAST_SETTINGS = {
    "isolation_forest": {"n_estimators": 100},
    "halfspace_trees": {"n_trees": 25, "height": 8, "window_size": 100},
    "lstm_autoencoder": {"sequence_length": 8, "hidden_size": 16, "epochs": 3, "device": "cpu"},
}
TRAIN_WINDOWS = 1200  # ten load cycles: 900 fit, 300 calibrate
HELD_OUT_WINDOWS = 800
#: the first held-out windows are context for sequence models, not judged.
CONTEXT = 50
FAULT_START = 500
FALSE_ALARM_RATE = 0.05
BEARING_FAULT_TAGS = ("bearing_temp_de", "bearing_temp_nde", "vibration_rms")
ONE_TAG_FAULT = "flow"


def _unavailable(name: str) -> str | None:
    module = DETECTORS[name].split(":")[0]
    if importlib.util.find_spec(module) is None:
        return f"{module.replace('.', '/')}.py is not written yet"
    try:
        detector_class(name)
    except ImportError as error:
        return str(error)
    return None


UNAVAILABLE = {name: _unavailable(name) for name in DETECTORS}
DETECTOR_PARAMS = [pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=why or "")) for name, why in UNAVAILABLE.items()]
#: detectors that learn window by window with no training set
ONLINE = [name for name, why in UNAVAILABLE.items() if not why and detector_class(name).learns_online]


def make_detector(name: str):
    return detector_class(name)(**FAST_SETTINGS.get(name, {}))


@lru_cache(maxsize=None)
def plant() -> dict:
    """Training history, later held-out normal windows, and the same held-out windows with faults."""
    train, names = plant_windows(TRAIN_WINDOWS, seed=0)
    held_out, _ = plant_windows(HELD_OUT_WINDOWS, seed=1, start=TRAIN_WINDOWS)
    spread = RobustScaler().fit(train).spread

    def with_fault(tags, spreads):
        faulty = held_out.copy()
        columns = [i for i, n in enumerate(names) if n.split(".")[0] in tags]
        faulty[FAULT_START:, columns] += spreads * spread[columns]
        return faulty

    return {
        "names": names,
        "train": train,
        "held_out": held_out,
        "bearing_fault": with_fault(BEARING_FAULT_TAGS, 6.0),
        "one_tag_fault": with_fault((ONE_TAG_FAULT,), 6.0),
    }


@lru_cache(maxsize=None)
def trained(name: str) -> tuple[CalibratedModel, dict]:
    """One calibrated model per detector for the whole module (training is the slow part)."""
    data = plant()
    return fit_calibrated(make_detector(name), data["train"], data["names"], FALSE_ALARM_RATE, seed=0)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_scores_one_number_and_contributions_per_window(name):
    model, _ = trained(name)
    X = plant()["held_out"]
    scores = model.detector.score(X)
    contributions = model.detector.contributions(X)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert contributions.shape == X.shape
    assert np.isfinite(contributions).all() and (contributions >= 0).all()
    both = model.detector.score_and_contributions(X)
    np.testing.assert_array_equal(both[0], scores)
    np.testing.assert_array_equal(both[1], contributions)
    assert model.detector.name == name


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_missing_features_are_no_evidence(name):
    """Gaps (NaN) in training and in live windows neither crash nor raise alarms."""
    data = plant()
    rng = np.random.default_rng(7)
    train = data["train"].copy()
    train[rng.random(train.shape) < 0.05] = np.nan
    train[100:160, 3] = np.nan  # one feature missing for a while
    model, _ = fit_calibrated(make_detector(name), train, data["names"], FALSE_ALARM_RATE, seed=0)
    held_out = data["held_out"].copy()
    held_out[rng.random(held_out.shape) < 0.1] = np.nan
    held_out[300:, 0] = np.nan  # a tag's feature gone from here on
    result = model.score(held_out)
    assert np.isfinite(result.raw).all() and np.isfinite(result.contributions).all()
    assert result.anomalous[CONTEXT:].mean() <= 0.15, "gaps in the data raise false alarms"


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_same_seed_gives_identical_scores(name):
    data = plant()
    train, names, X = data["train"][:600], data["names"], data["held_out"][:200]
    first = make_detector(name).fit(train, names, seed=3).score(X)
    second = make_detector(name).fit(train, names, seed=3).score(X)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_save_and_load_give_identical_scores(name, tmp_path):
    model, _ = trained(name)
    X = plant()["bearing_fault"]
    path = tmp_path / "model.bin"
    model.detector.save(path)
    loaded = type(model.detector).load(path)
    assert loaded.feature_names == model.detector.feature_names
    np.testing.assert_array_equal(loaded.score(X), model.detector.score(X))
    np.testing.assert_array_equal(loaded.contributions(X), model.detector.contributions(X))


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_wrong_number_of_columns_is_refused(name):
    model, _ = trained(name)
    X = plant()["held_out"]
    with pytest.raises(DetectorError, match="features"):
        model.detector.score(X[:, :-1])
    with pytest.raises(DetectorError):
        model.detector.contributions(np.hstack([X, X[:, :1]]))


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_scores_rise_on_a_fault(name):
    model, _ = trained(name)
    data = plant()
    normal = model.detector.score(data["held_out"])[CONTEXT:]
    fault = model.detector.score(data["bearing_fault"])[FAULT_START:]
    assert np.median(fault) > np.percentile(normal, 99), (
        f"{name}: median score of the bearing fault {np.median(fault):.4g} is not above the 99th percentile "
        f"of normal windows {np.percentile(normal, 99):.4g}"
    )


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_top_tag_of_a_one_tag_fault_is_that_tag(name):
    model, _ = trained(name)
    X = plant()["one_tag_fault"]
    result = model.score(X)
    top = [result.top_tags(i, X, k=1)[0]["tag"] for i in range(FAULT_START, len(X))]
    assert np.mean(np.array(top) == ONE_TAG_FAULT) >= 0.9, f"{name}: top tags of the flow fault: {sorted(set(top))}"
    entry = result.top_tags(len(X) - 1, X, k=3)[0]
    assert entry["feature"] in {"mean", "std", "max", "min"}
    assert entry["value"] > entry["normal_range"][1], "a shifted-up feature should read above its normal range"


@pytest.mark.parametrize("name", DETECTOR_PARAMS)
def test_calibrated_false_alarms_match_the_rate_and_faults_alarm(name):
    model, metrics = trained(name)
    data = plant()
    normal = model.score(data["held_out"]).p_value[CONTEXT:]
    fault = model.score(data["bearing_fault"]).p_value[FAULT_START:]
    false_alarms = float(np.mean(normal <= FALSE_ALARM_RATE))
    assert 0.01 <= false_alarms <= 0.12, f"{name}: {false_alarms:.3f} of normal windows alarm at a false-alarm rate of {FALSE_ALARM_RATE}"
    assert np.mean(fault < FALSE_ALARM_RATE) >= 0.8, f"{name}: only {np.mean(fault < FALSE_ALARM_RATE):.2f} of fault windows alarm"
    assert metrics["fit_windows"] == 900 and metrics["calibration_windows"] == 300
    assert model.ready and model.threshold == metrics["threshold"]


@pytest.mark.parametrize("name", ONLINE)
def test_online_detector_fit_is_learning_from_nothing(name):
    assert not make_detector(name).needs_training
    data = plant()
    train, names, X = data["train"], data["names"], data["held_out"]
    fitted = make_detector(name).fit(train, names, seed=5)
    learned = make_detector(name).fit(train[:0], names, seed=5)
    learned.learn(train)
    np.testing.assert_array_equal(fitted.score(X), learned.score(X))
    in_steps = make_detector(name).fit(train[:0], names, seed=5)
    for start in range(0, len(train), 100):
        in_steps.learn(train[start : start + 100])
    np.testing.assert_allclose(in_steps.score(X), fitted.score(X), rtol=1e-9)


# --------------------------------------------------------------------------- online models


@pytest.mark.parametrize("name", ONLINE)
def test_an_online_model_gives_no_verdict_until_warmed_up_then_calibrates_itself(name):
    data = plant()
    model = CalibratedModel.start_online(make_detector(name), data["names"], FALSE_ALARM_RATE, warmup=60)
    first = model.score_and_learn(data["train"][:50])
    assert not first.ready and (first.p_value == 1).all() and not first.anomalous.any()
    for start in range(50, len(data["train"]), 10):
        model.score_and_learn(data["train"][start : start + 10])
    assert model.ready and model.learned == TRAIN_WINDOWS
    normal = model.score(data["held_out"]).p_value[CONTEXT:]
    fault = model.score(data["bearing_fault"]).p_value[FAULT_START:]
    assert 0.0 <= np.mean(normal <= FALSE_ALARM_RATE) <= 0.12
    assert np.mean(fault < FALSE_ALARM_RATE) >= 0.8
    low, high = model.normal_range()
    assert (low < high).all(), "an online model's normal ranges come from what it learned"


@pytest.mark.parametrize("name", ONLINE)
def test_an_online_model_survives_save_and_load(name, tmp_path):
    data = plant()
    model = CalibratedModel.start_online(make_detector(name), data["names"], FALSE_ALARM_RATE, warmup=60)
    model.learn(data["train"])
    model.save(tmp_path, "10s")
    loaded = CalibratedModel.load(tmp_path, "10s")
    X = data["bearing_fault"]
    np.testing.assert_array_equal(loaded.score(X).p_value, model.score(X).p_value)
    loaded.learn(X[:100])
    model.learn(X[:100])
    np.testing.assert_array_equal(loaded.score(X).p_value, model.score(X).p_value)


def test_a_batch_model_does_not_learn_live_windows():
    model, _ = trained("isolation_forest")
    X = plant()["bearing_fault"]
    before = model.score(X).p_value
    model.learn(X)
    np.testing.assert_array_equal(model.score_and_learn(X).p_value, before)


def test_fit_calibrated_refuses_too_little_history():
    data = plant()
    with pytest.raises(DetectorError, match="longer stretch of history"):
        fit_calibrated(make_detector("isolation_forest"), data["train"][:40], data["names"], FALSE_ALARM_RATE)


def test_fit_calibrated_validates_on_the_newest_windows():
    data = plant()
    _, metrics = fit_calibrated(
        make_detector("isolation_forest"), data["train"], data["names"], FALSE_ALARM_RATE, validation_fraction=0.2
    )
    assert (metrics["fit_windows"], metrics["calibration_windows"], metrics["validation_windows"]) == (660, 300, 240)
    assert 0.0 <= metrics["validation_false_alarm_rate"] <= 0.15


def test_isolation_forest_scores_are_scikit_learns():
    """The numpy tree walk must give scikit-learn's numbers, cut for cut."""
    model, _ = trained("isolation_forest")
    X = np.vstack([plant()["held_out"], plant()["bearing_fault"]])
    X[::7, 2] = np.nan
    detector = model.detector
    scaled = detector.scaler.transform(X)
    per_forest = np.stack([-forest.score_samples(scaled[:, columns]) for forest, columns in zip(detector.forest, detector.groups)], axis=1)
    np.testing.assert_allclose(detector.forest_scores(X), per_forest, rtol=1e-12, atol=0)
    expected = np.max((per_forest - detector.center) / detector.spread, axis=1) + detector.envelope_excess(scaled)
    np.testing.assert_allclose(detector.score(X), expected, rtol=1e-9)
    assert len(detector.forest) == 1 + len({name.rpartition(".")[0] for name in detector.feature_names})


# --------------------------------------------------------------------------- scaling, attribution, examples


def test_detector_names_resolve_and_a_missing_torch_says_what_to_install(monkeypatch):
    assert detector_class("isolation_forest").name == "isolation_forest"
    with pytest.raises(DetectorError, match="choose one of"):
        detector_class("one_class_svm")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    monkeypatch.delitem(sys.modules, "detectors.lstm_autoencoder", raising=False)
    with pytest.raises(ImportError, match=r"edgewatch\[torch\]"):
        detector_class("lstm_autoencoder")


@pytest.mark.parametrize("module", ["detectors.calibration", "detectors.isolation_forest", "detectors.halfspace"])
def test_docstring_examples_run(module):
    failed, attempted = doctest.testmod(importlib.import_module(module))
    assert attempted and not failed


def test_robust_scaling_survives_constant_and_missing_features():
    X = np.column_stack([np.arange(100.0), np.full(100, 7.0), np.full(100, np.nan)])
    scaler = RobustScaler().fit(X)
    scaled = scaler.transform(np.array([[49.5, 7.0, 3.0], [np.nan, 8.0, np.inf]]))
    assert np.isfinite(scaled).all()
    assert scaled[0, 0] == 0 and scaled[1, 0] == 0, "the median and a gap both scale to 0"
    assert scaled[1, 1] > 1e3, "a feature that never moved and now moves is far out"
    low, high = normal_ranges(X)
    assert low[0] == pytest.approx(0.495) and high[0] == pytest.approx(98.505)
    assert np.isnan(low[2]) and np.isnan(high[2])


def test_top_contributions_group_by_tag_with_shares_summing_to_one():
    names = ["bearing_temp_de.mean", "bearing_temp_de.max", "motor.de.mean", "flow.mean"]
    contributions = np.array([1.0, 5.0, 2.0, 2.0])
    values = np.array([70.0, 81.5, 3.0, np.nan])
    low, high = np.array([60.0, 65.0, 1.0, 90.0]), np.array([75.0, 78.0, 4.0, 120.0])
    top = top_contributions(contributions, names, values, low, high, k=5)
    assert [t["tag"] for t in top] == ["bearing_temp_de", "motor.de", "flow"]
    assert sum(t["contribution"] for t in top) == pytest.approx(1.0)
    assert top[0] == {"tag": "bearing_temp_de", "contribution": 0.6, "feature": "max", "value": 81.5, "normal_range": [65.0, 78.0]}
    assert top[2]["value"] is None, "a missing value is reported as None"
    shares = TagGroups(names).shares(np.array([[0.0, 0.0, 0.0, 0.0], [np.nan, 1.0, -1.0, 1.0]]))
    np.testing.assert_allclose(shares, [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]])


def test_halfspace_trees_from_the_shared_template_score_as_rivers_own_trees(monkeypatch):
    """Every asset's online detector starts from a copy of cached empty trees (river's
    own lazy build stalls the worker ~0.5 s per asset); the scores must not change."""
    from detectors import halfspace

    names = [f"t{i // 8}.f{i % 8}" for i in range(48)]
    X = np.random.default_rng(5).normal(size=(260, 48))
    templated = halfspace.HalfSpaceTreesDetector(seed=11, window_size=50).fit(X[:200], names)
    monkeypatch.setattr(halfspace, "_plant_trees", lambda model, n: None)
    rivers_own = halfspace.HalfSpaceTreesDetector(seed=11, window_size=50).fit(X[:200], names)
    np.testing.assert_array_equal(templated.score(X[200:]), rivers_own.score(X[200:]))
