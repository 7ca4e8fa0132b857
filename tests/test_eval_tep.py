"""`edgewatch evaluate-tep` (edgewatch/eval_tep.py) on the real Tennessee Eastman files,
fast parts only: the CSVs it prepares, the PCA T² baseline, and the metric plumbing on
one short backtest. The full evaluation (22 backtests, minutes) is not run here.

The data are the Braatz files in ../shared/data/tep (or $EDGEWATCH_TEP_DATA); without
them every test here is skipped, saying so.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from edgewatch import eval_tep as tep

DATA = tep.default_data_dir()
MISSING = tep.missing_files(DATA) if DATA.is_dir() else ["the folder"]
needs_data = pytest.mark.skipif(
    bool(MISSING),
    reason=f"Tennessee Eastman data not found in {DATA} (missing {', '.join(MISSING[:3])}); set EDGEWATCH_TEP_DATA to the Braatz files",
)


@pytest.fixture(scope="module")
def data():
    return tep.load_tep(DATA, faults=(1,), training=True)


def _read(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@needs_data
def test_d00_is_read_transposed_and_the_rest_as_is(data):
    raw = np.loadtxt(DATA / "d00.dat")
    assert raw.shape == (52, 500)  # stored one variable per row
    assert data.train_normal.shape == (500, 52)
    np.testing.assert_array_equal(data.train_normal[0], raw[:, 0])  # first sample = first column of the file
    np.testing.assert_array_equal(data.train_normal[:, 51], raw[51])  # xmv_11 = last row of the file
    assert data.test_normal.shape == (960, 52)
    assert data.train_fault[1].shape == (480, 52)
    assert data.test_fault[1].shape == (960, 52)


@needs_data
def test_test_csv_rows_labels_and_times(data, tmp_path):
    primer = 20
    segments = tep.prepare_test(data, tmp_path, primer)
    assert [s.name for s in segments] == ["d00_te", "d01_te"]
    normal, fault1 = segments
    header, rows = _read(fault1.path)
    assert header == ["time", *[f"xmeas_{i}" for i in range(1, 42)], *[f"xmv_{i}" for i in range(1, 12)], "label"]
    assert len(rows) == 500 + primer + 960
    values = np.array([[float(x) for x in r[1:-1]] for r in rows])
    labels = np.array([int(r[-1]) for r in rows])
    # warm-up = d00.dat transposed, then its last `primer` rows again, then d01_te.dat
    np.testing.assert_allclose(values[:500], data.train_normal, rtol=1e-6)
    np.testing.assert_allclose(values[500 : 500 + primer], data.train_normal[-primer:], rtol=1e-6)
    np.testing.assert_allclose(values[500 + primer :], data.test_fault[1], rtol=1e-6)
    # label 1 from sample 161 of the test file on, 0 before (warm-up and primer included)
    first_faulty = 500 + primer + 160
    assert (labels[:first_faulty] == 0).all() and (labels[first_faulty:] == 1).all()
    assert (fault1.warmup, fault1.primer, fault1.scored, fault1.onset) == (500, primer, 960, 160)
    # 3 minutes apart, from 2000-01-01
    from stream.history import iso_to_us

    times = np.array([iso_to_us(r[0]) for r in rows])
    assert times[0] == tep.START_US
    assert set(np.diff(times).tolist()) == {180_000_000}
    _, normal_rows = _read(normal.path)
    assert len(normal_rows) == 500 + primer + 960 and all(r[-1] == "0" for r in normal_rows)
    assert (normal.scored, normal.onset) == (960, 960)  # every scored row counts for false alarms


@needs_data
def test_tuning_csv_uses_training_files_only(data, tmp_path):
    (segment,) = tep.prepare_tuning(data, tmp_path, primer=10)
    _, rows = _read(segment.path)
    values = np.array([[float(x) for x in r[1:-1]] for r in rows])
    labels = np.array([int(r[-1]) for r in rows])
    assert len(rows) == 350 + 10 + 150 + 480
    np.testing.assert_allclose(values[:350], data.train_normal[150:], rtol=1e-6)  # trains
    np.testing.assert_allclose(values[360:510], data.train_normal[:150], rtol=1e-6)  # held-out normal
    np.testing.assert_allclose(values[510:], data.train_fault[1], rtol=1e-6)  # d01.dat, faulty from its first row
    assert (labels[:510] == 0).all() and (labels[510:] == 1).all()
    assert (segment.warmup, segment.primer, segment.scored, segment.onset) == (350, 10, 630, 150)


@needs_data
def test_pca_t2_false_alarms_near_one_percent_and_fault_1_detected(data):
    model, rates = tep.pca_baseline(data)
    assert model.components == tep.parallel_analysis(data.train_normal)
    assert 5 <= model.components <= 20
    assert 0.003 <= rates[0]["false_alarm_rate"] <= 0.03  # 99 % limit on d00_te
    assert rates[0]["detection_rate"] is None
    assert rates[1]["detection_rate"] >= 0.95  # fault 1: a step, easy
    assert rates[1]["false_alarm_rate"] <= 0.03  # samples 1-160 of d01_te
    assert rates[1]["delay_samples"] is not None and rates[1]["delay_samples"] <= 20
    # 9 components (a common choice in the literature) gives a limit from the same formula
    nine = tep.PcaT2.fit(data.train_normal, 9)
    from scipy import stats

    n = 500
    assert nine.limit == pytest.approx(9 * (n - 1) * (n + 1) / (n * (n - 9)) * stats.f.ppf(0.99, 9, n - 9))


def test_score_rows_counts_per_sample():
    alarm = np.zeros(20, bool)
    alarm[[2, 13, 14, 15]] = True
    detector = np.zeros(20, bool)
    detector[[2, 3, 10, 11, 19]] = True
    out = tep.score_rows(4, 10, alarm, detector)
    assert out["alarm"]["false_alarm_rate"] == pytest.approx(0.1)
    assert out["alarm"]["detection_rate"] == pytest.approx(0.3)
    assert (out["alarm"]["delay_samples"], out["alarm"]["delay_min"]) == (4, 12.0)  # first alarm at the 4th faulty sample
    assert out["detector"]["false_alarm_rate"] == pytest.approx(0.2)
    assert out["detector"]["detection_rate"] == pytest.approx(0.3)
    assert out["detector"]["delay_samples"] == 1
    never = tep.score_rows(4, 10, np.zeros(20, bool), np.zeros(20, bool))
    assert never["alarm"]["delay_samples"] is None and never["alarm"]["detection_rate"] == 0.0
    normal = tep.score_rows(0, 20, alarm, detector)
    assert normal["alarm"]["detection_rate"] is None and normal["alarm"]["false_alarm_rate"] == pytest.approx(0.2)


def test_detector_flags_take_the_latest_score_at_or_before_each_row():
    t = np.arange(6, dtype=np.int64) * 10
    scores = {
        "isolation_forest/15m/3m": (np.array([10, 30], dtype=np.int64), np.array([0.001, 0.5])),
        "isolation_forest/1h/3m": (np.array([45], dtype=np.int64), np.array([0.0001])),
    }
    flags = tep.detector_flags(t, scores, 0.01)
    # rows 0..50: none yet, 10 (p .001), 20 (still .001), 30 (.5), 40 (.5), 50 (.5, and the 1h score of 45)
    assert flags.tolist() == [False, True, True, False, False, True]


@needs_data
def test_one_short_backtest_through_the_plumbing(data, tmp_path):
    """d01_te cut to 160 normal + 60 faulty samples, one window scale, few trees: the
    CSV goes through run_backtest and comes back scored per sample."""
    cut = tep.TepData(data.train_normal, data.test_normal, {}, {1: data.test_fault[1][:220]})
    settings = tep.TepSettings(tep.DetectionSettings(windows="15m/3m", n_estimators=20), tep.CHOSEN.diagnosis)
    (segment,) = tep.prepare_test(cut, tmp_path, settings.detection.primer_rows)[1:]
    (result,) = tep.run_segments([segment], settings, tmp_path / "out")
    assert (result["rows"], result["normal_rows"], result["faulty_rows"]) == (220, 160, 60)
    assert result["detector"]["detection_rate"] >= 0.8  # fault 1 is plain at the detector level
    assert result["detector"]["false_alarm_rate"] <= 0.1
    assert result["alarm"]["false_alarm_rate"] <= 0.1
    assert result["alarm"]["detection_rate"] > 0.3 and result["alarm"]["delay_samples"] is not None
    assert set(result["models"]) == {"isolation_forest/15m/3m"}


def test_the_command_is_registered_and_refuses_a_missing_folder(tmp_path):
    from edgewatch.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["evaluate-tep", "--help"])
    assert shown.exit_code == 0 and "--no-write" in shown.output
    missing = runner.invoke(app, ["evaluate-tep", "--data", str(tmp_path / "nowhere"), "--no-write", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2
    assert "missing" in missing.output and "EDGEWATCH_TEP_DATA" in missing.output


@needs_data
def test_the_learned_network_names_the_fault_it_learned_from_the_training_files(tmp_path):
    # Which fault: the unit declared as a learned asset type, taught from dNN.dat, scored
    # on dNN_te.dat (shortened here: 120 training rows, 120 faulty test rows per fault).
    import dataclasses

    from edgewatch.eval_tep_diagnosis import diagnose

    full = tep.load_tep(DATA, faults=(1, 4, 6), training=True)
    data = tep.TepData(full.train_normal, full.test_normal[:200], {n: r[:120] for n, r in full.train_fault.items()},
                       {n: r[:280] for n, r in full.test_fault.items()})
    settings = tep.TepSettings(dataclasses.replace(tep.CHOSEN.detection, windows="15m/3m,30m/3m"), tep.CHOSEN.diagnosis)
    result = diagnose(data, settings, tmp_path, jobs=1)
    assert result["records"] > 300  # every fusion step of the three training files, labeled
    by_fault = {row["fault"]: row for row in result["table"]}
    assert sorted(by_fault) == [1, 4, 6]
    # measured: accuracy 0.60 / 1.00 / 0.80, each fault named most often right; chance is 1/3
    assert all(row["most_named"] == f"idv{n:02d}" for n, row in by_fault.items())
    assert result["mean_accuracy"] > 0.6
    assert all(row["alarm_rate"] > 0.9 for row in by_fault.values())
    assert result["false_alarm_rate_d00_te"] < 0.05 and result["false_alarm_rate_before_fault"] < 0.05
