"""Window features (stream.features) against straightforward references.

Every feature of every (window, tag) of a random feed with gaps, Bad samples and
tags sampled at different rates is recomputed one group at a time with plain
numpy / scipy and must agree to 1e-9 relative. Edge cases an operator would meet
(a flatlined sensor, a tag with one sample, a tag that went silent) and the
features message on the wire are checked on their own.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import orjson
import pytest
import scipy.stats
from jsonschema import Draft202012Validator

from stream.config import AssetConfig, FeatureSettings, WindowScale
from stream.features import FeatureSpec, compute_features, detector_matrix, features_message
from stream.windows import AssetWindows, ClosedWindow
from stream.wire import encode_message

S = 1_000_000
T0 = 1_773_476_100_000_000  # 2026-03-14T08:15:00Z
SCHEMA = Path(__file__).resolve().parents[1] / "stream" / "schemas" / "features.schema.json"

ALL = FeatureSettings()


def window(samples, scale="10s", start=0, length=10, replayed=False) -> ClosedWindow:
    """samples: [(tag, seconds after T0 + start, value), ...] in (tag, time) order."""
    return ClosedWindow(
        scale=scale,
        start_us=T0 + start * S,
        end_us=T0 + (start + length) * S,
        tag_position=np.array([t for t, _, _ in samples], dtype=np.intp),
        ts_us=np.array([T0 + round((start + s) * S) for _, s, _ in samples], dtype=np.int64),
        value=np.array([v for _, _, v in samples], dtype=np.float64),
        replayed=replayed,
    )


# --------------------------------------------------------------------------- references, one group at a time


def reference_features(ts_us: np.ndarray, x: np.ndarray, lag: int, bands: int) -> dict[str, float]:
    n = x.shape[0]
    ref = {"count": n, "mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max(), "ptp": np.ptp(x)}
    ref["rms"] = math.sqrt(np.mean(x**2))
    ref["crest"] = np.max(np.abs(x)) / ref["rms"] if ref["rms"] > 0 else math.nan
    constant = x.min() == x.max()
    if n < 3:
        ref["skew"] = ref["kurtosis"] = math.nan
    elif constant:
        ref["skew"] = ref["kurtosis"] = 0.0
    else:
        ref["skew"] = scipy.stats.skew(x)
        ref["kurtosis"] = scipy.stats.kurtosis(x, fisher=False)
    t = (ts_us - ts_us[0]) / 1e6
    ref["slope"] = math.nan if n < 2 or t[-1] == 0 else scipy.stats.linregress(t, x).slope
    d = x - x.mean()
    if n <= lag:
        ref["autocorr"] = math.nan
    elif constant:
        ref["autocorr"] = 0.0
    else:
        ref["autocorr"] = np.sum(d[:-lag] * d[lag:]) / np.sum(d * d)
    spectrum = np.abs(np.fft.rfft(d if not constant else np.zeros(n)))
    j = np.arange(spectrum.shape[0])
    for b in range(bands):
        if n // 2 < bands:
            ref[f"fft_{b}"] = math.nan
            continue
        # bin j sits at 2j/n of Nyquist; band b holds (b/B, (b+1)/B]
        in_band = (j >= 1) & (2 * j * bands > b * n) & (2 * j * bands <= (b + 1) * n)
        ref[f"fft_{b}"] = math.sqrt(np.mean(spectrum[in_band] ** 2)) / n
    return ref


def random_feed(seed: int, n_tags: int = 5):
    """Tags at 10 Hz, 3 Hz, 1 Hz, sporadic, and a flatlined one; gaps and 10% Bad samples."""
    rng = np.random.default_rng(seed)
    ts, tag = [], []
    for position, rate in enumerate([10, 3, 1, 0.3, 2][:n_tags]):
        times = np.arange(0, 45, 1 / rate) + rng.uniform(0, 0.2)
        times = times[(times < 12) | (times > 15)]  # a gap in every tag
        ts.append(T0 + np.round(times * S).astype(np.int64) + rng.integers(-2000, 2000, times.shape[0]))
        tag.append(np.full(times.shape[0], position))
    ts, tag = np.concatenate(ts), np.concatenate(tag)
    value = 20 + 5 * rng.standard_normal(ts.shape[0]) + rng.exponential(2, ts.shape[0])
    value[tag == 4] = 7.25  # a flatlined transmitter
    good = rng.random(ts.shape[0]) > 0.1
    order = np.argsort(ts, kind="stable")
    return ts[order], tag[order], value[order], good[order]


def closed_windows(seed: int, scales: list[WindowScale], n_tags: int = 5) -> list[ClosedWindow]:
    ts, tag, value, good = random_feed(seed, n_tags)
    w = AssetWindows(n_tags, scales, grace_us=S)
    out = []
    for a in range(0, ts.shape[0], 40):
        out += w.add(ts[a : a + 40], tag[a : a + 40], value[a : a + 40], good[a : a + 40])
    return out + w.flush()


@pytest.mark.parametrize(
    "settings",
    [FeatureSettings(), FeatureSettings(autocorr_lag=3, fft_bands=3), FeatureSettings(names=["skew", "fft"], fft_bands=1)],
    ids=["defaults", "lag3-bands3", "subset"],
)
def test_every_feature_matches_a_per_group_reference(settings):
    spec = FeatureSpec(settings)
    scales = [WindowScale(length="1s"), WindowScale(length="10s"), WindowScale(length="20s", hop="5s")]
    windows = closed_windows(seed=21, scales=scales)
    features = compute_features(windows, 5, spec)
    assert features.shape == (len(windows), 5, len(spec.per_tag))
    checked = set()
    for i, win in enumerate(windows):
        for position in range(5):
            mine = win.tag_position == position
            got = dict(zip(spec.per_tag, features[i, position]))
            if not mine.any():
                assert got["count"] == 0 and all(math.isnan(v) for k, v in got.items() if k != "count")
                continue
            ref = reference_features(win.ts_us[mine], win.value[mine], spec.autocorr_lag, spec.fft_bands)
            for name in spec.per_tag:
                np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-12, err_msg=f"{name} of tag {position} in {win.scale} window {i}")
                checked.add((name, "nan" if math.isnan(ref[name]) else "number"))
    # the random feed reached both the computed and the not-computable side of every feature
    for name in spec.per_tag:
        if name not in ("count", "mean", "std", "min", "max", "ptp", "rms", "crest"):  # (crest: NaN needs all zeros, tested below)
            assert {(name, "nan"), (name, "number")} <= checked, name


def test_windows_of_several_assets_in_one_call_give_what_separate_calls_give():
    spec = FeatureSpec(ALL)
    scales = [WindowScale(length="1s"), WindowScale(length="10s")]
    a, b = closed_windows(1, scales, n_tags=4), closed_windows(2, scales, n_tags=4)
    together = compute_features(a + b, 4, spec)
    np.testing.assert_array_equal(together, np.concatenate([compute_features(a, 4, spec), compute_features(b, 4, spec)]))


def test_a_long_list_of_windows_computed_in_blocks_gives_the_same_features(monkeypatch):
    import stream.features

    spec = FeatureSpec(ALL)
    windows = closed_windows(3, [WindowScale(length="1s"), WindowScale(length="10s")], n_tags=5)
    whole = compute_features(windows, 5, spec)
    monkeypatch.setattr(stream.features, "_BLOCK_SAMPLES", 50)
    np.testing.assert_array_equal(compute_features(windows, 5, spec), whole)


# --------------------------------------------------------------------------- what an operator meets


def test_a_flatlined_sensor_gives_numbers_not_holes():
    spec = FeatureSpec(ALL)
    (row,) = compute_features([window([(0, s / 10, 0.1) for s in range(30)])], 1, spec)[:, 0]
    got = dict(zip(spec.per_tag, row))
    assert got["mean"] == 0.1, "the mean of a constant is the constant, exactly"
    for name in ("std", "ptp", "skew", "kurtosis", "slope", "autocorr", "fft_0", "fft_1", "fft_2", "fft_3"):
        assert got[name] == 0.0, name
    assert got["crest"] == pytest.approx(1.0)
    (zeros,) = compute_features([window([(0, s / 10, 0.0) for s in range(30)])], 1, spec)[:, 0]
    assert math.isnan(dict(zip(spec.per_tag, zeros))["crest"]), "crest of an all-zero signal (rms 0) is undefined"


def test_too_few_samples_give_nan_only_where_the_feature_needs_more():
    spec = FeatureSpec(ALL)
    one, two_same_time = compute_features(
        [window([(0, 1.0, 5.0)]), window([(0, 2.0, 5.0), (0, 2.0, 6.0)])], 1, spec
    )[:, 0]
    one, two_same_time = dict(zip(spec.per_tag, one)), dict(zip(spec.per_tag, two_same_time))
    assert (one["count"], one["mean"], one["std"], one["min"], one["max"]) == (1, 5.0, 0.0, 5.0, 5.0)
    for name in ("skew", "kurtosis", "slope", "autocorr", "fft_0", "fft_3"):
        assert math.isnan(one[name]), name
    assert math.isnan(two_same_time["slope"]), "no line through samples that share one timestamp"
    assert two_same_time["autocorr"] == -0.5


def test_a_tag_without_good_samples_has_count_zero_and_nan_features():
    spec = FeatureSpec(ALL)
    features = compute_features([window([(0, 1.0, 5.0), (2, 1.5, 6.0)])], 3, spec)
    assert features[0, :, 0].tolist() == [1.0, 0.0, 1.0]
    assert np.isnan(features[0, 1, 1:]).all()


def test_slope_is_in_units_per_second_and_fft_bands_find_the_frequency():
    spec = FeatureSpec(FeatureSettings(fft_bands=4))
    # a bearing warming 0.5 degC per second, sampled at 10 Hz for 10 s
    ramp = [(0, s / 10, 60 + 0.05 * s) for s in range(100)]
    # 100 samples of a sine with 40 cycles: bin 40 of 50 lies in band 3 (0.75, 1] of Nyquist
    sine = [(1, s / 10, 3.0 * math.sin(2 * math.pi * 40 * s / 100)) for s in range(100)]
    features = compute_features([window(ramp + sine)], 2, spec)[0]
    col = spec.column
    assert features[0, col["slope"]] == pytest.approx(0.5, rel=1e-12)
    bands = features[1, col["fft_0"] : col["fft_0"] + 4]
    assert np.argmax(bands) == 3 and bands[:3] == pytest.approx([0, 0, 0], abs=1e-12)
    # amplitude-like: band 3 holds bins 38..50, one carrying |X| = A n / 2, so RMS / n = (A / 2) / sqrt(13)
    assert bands[3] == pytest.approx(3.0 / 2 / math.sqrt(13), rel=1e-9)


def test_samples_out_of_order_are_refused():
    spec = FeatureSpec(ALL)
    with pytest.raises(ValueError, match="sorted by"):
        compute_features([window([(0, 2.0, 1.0), (0, 1.0, 2.0)])], 1, spec)
    with pytest.raises(ValueError, match="sorted by"):
        compute_features([window([(1, 1.0, 1.0), (0, 2.0, 2.0)])], 2, spec)
    with pytest.raises(ValueError, match="0..1"):
        compute_features([window([(2, 1.0, 1.0)])], 2, spec)
    assert compute_features([], 3, spec).shape == (0, 3, len(spec.per_tag))


# --------------------------------------------------------------------------- names and the detector matrix


def test_feature_names_and_the_detector_matrix_line_up():
    spec = FeatureSpec(ALL)
    assert spec.per_tag == [
        "count", "mean", "std", "min", "max", "rms", "ptp", "skew", "kurtosis", "crest", "slope", "autocorr",
        "fft_0", "fft_1", "fft_2", "fft_3",
    ]  # fmt: skip
    assert spec.detector_features == spec.per_tag[1:]
    small = FeatureSpec(FeatureSettings(names=["fft", "slope"], fft_bands=2))
    assert small.per_tag == ["count", "mean", "std", "min", "max", "slope", "fft_0", "fft_1"]
    assert small.vector_names(["flow", "temp"]) == [
        "flow.mean", "flow.std", "flow.min", "flow.max", "flow.slope", "flow.fft_0", "flow.fft_1",
        "temp.mean", "temp.std", "temp.min", "temp.max", "temp.slope", "temp.fft_0", "temp.fft_1",
    ]  # fmt: skip
    features = compute_features([window([(0, s / 10, float(s)) for s in range(20)] + [(1, 0.5, 3.0)])], 2, small)
    matrix = detector_matrix(features, small)
    assert matrix.shape == (1, 14)
    names = small.vector_names(["flow", "temp"])
    assert matrix[0, names.index("flow.max")] == 19.0 and matrix[0, names.index("temp.mean")] == 3.0
    assert matrix[0, names.index("flow.slope")] == pytest.approx(10.0)
    assert detector_matrix(compute_features([], 2, small), small).shape == (0, 14)


# --------------------------------------------------------------------------- the features message


PUMP = AssetConfig(
    id="pump-1",
    type="pump",
    tags=[{"id": "bearing_temp", "unit": "degC"}, {"id": "vibration_rms", "unit": "mm/s"}, {"id": "flow"}],
)


def schema_validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")), format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("scale", ["1m", "1m/10s"])
def test_features_message_validates_and_carries_null_for_what_cannot_be_computed(scale):
    spec = FeatureSpec(ALL)
    temp = [(0, s, 78.0 + 0.01 * s) for s in range(60)]
    win = window(temp + [(1, 30.0, 2.3)], scale=scale, start=-60, length=60, replayed=True)
    features = compute_features([win], 3, spec)[0]
    message = orjson.loads(encode_message(features_message(PUMP, win, features, spec)))
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator().iter_errors(message)]
    assert not errors, errors
    assert (message["scale"], message["window_start"], message["window_end"]) == (
        scale, "2026-03-14T08:14:00.000000Z", "2026-03-14T08:15:00.000000Z"
    )
    assert message["window_end_us"] == T0 and message["samples"] == 61 and message["replayed"] is True
    assert list(message["features"]) == ["bearing_temp", "vibration_rms", "flow"]
    assert message["features"]["bearing_temp"]["slope"] == pytest.approx(0.01)
    vibration = message["features"]["vibration_rms"]
    assert vibration["count"] == 1 and vibration["mean"] == 2.3 and vibration["skew"] is None and vibration["fft_0"] is None
    assert message["features"]["flow"] == {"count": 0, **{name: None for name in spec.per_tag[1:]}}


def test_the_documented_example_lists_the_default_features_in_order():
    text = (Path(__file__).resolve().parents[1] / "docs" / "wire-schema.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"<!--\s*example:\s*features\s*-->\s*```json[ \t]*\n(.*?)\n```", text, re.DOTALL).group(1))
    for tag, features in example["features"].items():
        assert list(features) == FeatureSpec(ALL).per_tag, tag


def test_features_message_refuses_features_of_the_wrong_shape():
    spec = FeatureSpec(ALL)
    win = window([(0, 1.0, 1.0)])
    with pytest.raises(ValueError, match=r"pump-1.*\(3, 16\)"):
        features_message(PUMP, win, compute_features([win], 2, spec)[0], spec)
