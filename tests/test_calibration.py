"""TailCalibrator: raw scores -> P(normal score >= s), so a threshold is a false-alarm rate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detectors.calibration import CalibrationError, TailCalibrator


def calibrated(n=999, seed=0, **kwargs) -> tuple[TailCalibrator, np.ndarray]:
    scores = np.random.default_rng(seed).exponential(size=n)
    return TailCalibrator(**kwargs).fit(scores), scores


def test_inside_the_calibration_range_p_is_the_conformal_estimate():
    calibrator, scores = calibrated()
    n = scores.size
    expected = np.array([(1 + np.sum(scores >= s)) / (n + 1) for s in scores])
    np.testing.assert_allclose(calibrator.p_value(scores), expected, rtol=1e-12)
    assert calibrator.p_value(np.array([scores.min() - 1.0]))[0] == 1.0


def test_p_is_continuous_and_never_rises_with_the_score():
    calibrator, scores = calibrated()
    grid = np.linspace(-1.0, scores.max() * 3, 200_001)
    assert (np.diff(calibrator.p_value(grid)) <= 0).all(), "a higher score must never be less unusual"
    # No step at any calibration score, nor where the tail begins (the highest one).
    knots = np.unique(scores)
    nudge = 1e-6 * np.diff(knots).min()
    at = calibrator.p_value(knots)
    for side in (-nudge, nudge):
        assert np.abs(calibrator.p_value(knots + side) - at).max() < 1e-6


def test_beyond_the_calibration_range_an_exponential_tail_keeps_faults_apart():
    calibrator, scores = calibrated(n=1999)
    n, top = scores.size, scores.max()
    far, farther = calibrator.p_value(np.array([top + 5.0, top + 10.0]))
    assert farther < far < 1 / (n + 1), "a fault beyond every normal score is rarer than 1 in n+1 and the farther the rarer"


def test_the_tail_extrapolates_false_alarm_rates_below_one_in_n():
    # Normal scores Exp(1), whose true tail is exp(-s): a threshold for a rate no
    # calibration set of 500 can show empirically should still be about right.
    rng = np.random.default_rng(5)
    rate = 1e-4
    achieved = [np.exp(-TailCalibrator().fit(rng.exponential(size=500)).threshold(rate)) for _ in range(200)]
    assert rate / 4 <= np.median(achieved) <= rate, "the tail is conservative by design, but not wildly"


def test_threshold_is_the_score_whose_p_value_is_the_false_alarm_rate():
    calibrator, scores = calibrated()
    for rate in (0.5, 0.05, 0.0011, 1e-4, 1e-9):
        threshold = calibrator.threshold(rate)
        assert calibrator.p_value(np.array([threshold]))[0] == pytest.approx(rate, rel=1e-9)
    assert calibrator.threshold(1e-4) > scores.max(), "a rate below 1/(n+1) is only met in the tail"
    assert calibrator.threshold(1.0) == scores.min()
    with pytest.raises(CalibrationError, match="false_alarm_rate"):
        calibrator.threshold(0.0)


def test_p_values_of_new_normal_scores_are_uniform():
    calibrator, _ = calibrated(n=5000, seed=1)
    fresh = np.random.default_rng(2).exponential(size=200_000)
    p = calibrator.p_value(fresh)
    for rate in (0.2, 0.05, 0.01):
        assert np.mean(p <= rate) == pytest.approx(rate, rel=0.3), f"false-alarm rate at {rate}"


def test_missing_scores_get_no_verdict_and_are_not_calibrated_on():
    calibrator = TailCalibrator().fit(np.array([0.1, np.nan, 0.2, 0.3, np.inf]))
    assert calibrator.n == 3
    np.testing.assert_array_equal(calibrator.p_value(np.array([np.nan, np.inf])), [1.0, 0.0])


def test_an_empty_calibrator_says_what_to_do():
    calibrator = TailCalibrator()
    assert not calibrator.fitted
    with pytest.raises(CalibrationError, match="held-out normal windows"):
        calibrator.p_value(np.array([1.0]))
    calibrator.update(np.array([np.nan]))
    assert not calibrator.fitted


def test_update_keeps_the_most_recent_scores_and_recalibrates_on_them():
    calibrator = TailCalibrator(capacity=500)
    rng = np.random.default_rng(3)
    for _ in range(10):
        calibrator.update(rng.normal(0.0, 1.0, 100))
    assert calibrator.n == 500
    before = calibrator.p_value(np.array([3.0]))[0]
    for _ in range(5):  # the detector's scale moved: only recent scores count
        calibrator.update(rng.normal(10.0, 1.0, 100))
    assert calibrator.n == 500
    assert calibrator.p_value(np.array([3.0]))[0] == 1.0 and before < 0.01
    assert calibrator.p_value(np.array([12.0]))[0] < 0.05


def test_window_by_window_updates_equal_a_fit_on_the_last_scores():
    scores = np.random.default_rng(6).gamma(2.0, size=1500)
    online = TailCalibrator(capacity=400)
    for score in scores:
        online.update(np.array([score]))
    probe = np.linspace(0, 20, 2001)
    np.testing.assert_array_equal(online.p_value(probe), TailCalibrator(capacity=400).fit(scores[-400:]).p_value(probe))


def test_a_fitted_calibrator_continues_from_its_calibration_scores_online():
    calibrator, scores = calibrated(n=300, capacity=1000)
    calibrator.update(np.array([0.5]))
    assert calibrator.n == 301, "update adds to the held-out scores instead of starting over"


def test_large_calibration_sets_keep_a_bounded_curve_exact_in_the_tail():
    scores = np.random.default_rng(4).normal(size=100_000)
    calibrator = TailCalibrator(max_knots=256).fit(scores)
    state = calibrator.to_dict()
    assert len(state["knot_score"]) <= 256 and len(state["recent_scores"]) == calibrator.capacity
    n = scores.size
    probe = np.sort(scores)[:: 997]
    exact = np.array([(1 + np.sum(scores >= s)) / (n + 1) for s in probe])
    np.testing.assert_allclose(calibrator.p_value(probe), exact, atol=2 / 256)
    top = np.sort(scores)[-100:]
    np.testing.assert_allclose(calibrator.p_value(top), [(1 + np.sum(scores >= s)) / (n + 1) for s in top], rtol=1e-12)


def test_state_round_trips_through_json():
    calibrator, _ = calibrated(n=500)
    calibrator.update(np.array([0.7, 5.0]))
    text = json.dumps(calibrator.to_dict(), allow_nan=False)
    restored = TailCalibrator.from_dict(json.loads(text))
    probe = np.linspace(-1, 30, 1001)
    np.testing.assert_array_equal(restored.p_value(probe), calibrator.p_value(probe))
    restored.update(np.array([1.0]))
    calibrator.update(np.array([1.0]))
    np.testing.assert_array_equal(restored.p_value(probe), calibrator.p_value(probe))
    with pytest.raises(CalibrationError, match="retrain"):
        TailCalibrator.from_dict({**calibrator.to_dict(), "version": 99})


def test_tied_scores_still_give_a_falling_tail():
    calibrator = TailCalibrator().fit(np.array([1.0] * 50 + [2.0] * 50))
    p = calibrator.p_value(np.array([1.0, 2.0, 2.5, 3.0]))
    assert p[0] == 1.0 and p[1] == pytest.approx(51 / 101)
    assert p[1] > p[2] > p[3] > 0
