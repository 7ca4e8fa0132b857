"""The LSTM autoencoder detector, on the CPU: device choice, determinism, the
saved file, micro-batching, several assets per model, NaN, and that it finds a
fault that breaks the relation between tags and blames the right tag.

Tiny models and few epochs keep the file fast (well under 40 s); the GPU side is
measured by ``python -m edgewatch.bench_gpu`` on a machine with CUDA."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the LSTM autoencoder needs the optional torch extra")

from detectors.base import DetectorError  # noqa: E402
from detectors.lstm_autoencoder import (  # noqa: E402
    CPU_CUDA_ATOL,
    CPU_CUDA_RTOL,
    LstmAutoencoderDetector,
    reference_check,
    resolve_device,
    sliding_sequences,
)
from edgewatch.localkafka import REPO  # noqa: E402

NAMES = [
    "speed.mean",
    "speed.std",
    "flow.mean",
    "flow.std",
    "pressure.mean",
    "pressure.std",
    "temp.mean",
    "temp.std",
]
FLOW = NAMES.index("flow.mean")
FAULT = (300, 360)


def plant(n: int, seed: int, fault: tuple[int, int] | None = None) -> np.ndarray:
    """Window features of a pump: speed, flow and pressure follow one duty cycle
    (with lags), temperature a slower one; 5 % noise. The fault keeps flow inside
    its normal range but decouples it from speed: no limit would fire, only the
    broken relation (and its rhythm) gives it away."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) + rng.uniform(0, 1000)

    def duty(lag: float = 0.0) -> np.ndarray:
        return np.sin(2 * np.pi * (t - lag) / 40) + 0.5 * np.sin(2 * np.pi * (t - lag) / 11)

    slow = np.cos(2 * np.pi * t / 40)
    columns = [
        1500 + 100 * duty(),
        5 + np.abs(duty()),
        80 + 10 * duty(1),
        1 + 0.2 * np.abs(duty(1)),
        5 - 0.8 * duty(3),
        0.1 + 0.02 * slow,
        50 + 2 * slow,
        0.3 + 0.05 * np.abs(slow),
    ]
    amplitude = np.array([100, 1, 10, 0.2, 0.8, 0.02, 2, 0.05])
    X = np.column_stack(columns) + rng.normal(0, 0.05, (n, len(columns))) * amplitude
    if fault is not None:
        first, last = fault
        X[first:last, FLOW] = 80 + 10 * np.sin(2 * np.pi * t[first:last] / 17)
    return X


def small(**overrides) -> LstmAutoencoderDetector:
    settings = dict(sequence_length=8, hidden_size=16, epochs=10, learning_rate=1e-2, batch_size=64, device="cpu")
    settings.update(overrides)
    return LstmAutoencoderDetector(**settings)


@pytest.fixture(scope="module")
def trained() -> LstmAutoencoderDetector:
    return small().fit(plant(2000, seed=0), NAMES, seed=1)


@pytest.fixture(scope="module")
def faulty() -> np.ndarray:
    return plant(600, seed=5, fault=FAULT)


# -- devices -----------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: auto picks it")
def test_auto_device_is_the_cpu_without_cuda():
    assert resolve_device("auto").type == "cpu"
    assert LstmAutoencoderDetector().device.type == "cpu"


def test_cuda_asked_for_without_a_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DetectorError) as error:
        LstmAutoencoderDetector(device="cuda")
    text = str(error.value)
    assert "device 'cuda' was asked for" in text
    assert "set detectors.lstm_autoencoder.device to 'auto' or 'cpu'" in text
    assert resolve_device("auto").type == "cpu"


def test_unknown_device_and_bad_sizes_are_refused():
    with pytest.raises(DetectorError, match="must be 'auto', 'cpu' or 'cuda'"):
        LstmAutoencoderDetector(device="tpu")
    with pytest.raises(DetectorError, match="sequence_length must be an integer >= 2"):
        LstmAutoencoderDetector(sequence_length=1)


# -- what it detects ---------------------------------------------------------------------


def test_scores_rise_on_a_decoupled_tag_and_the_tag_is_blamed(trained, faulty):
    scores, contributions = trained.score_and_contributions(faulty)
    first, last = FAULT
    # The rows just after the fault still have it in their context: leave them out.
    normal = np.r_[scores[:first], scores[last + trained.sequence_length :]]
    assert scores[first:last].mean() > 3 * normal.mean()
    assert np.median(scores[first:last]) > np.median(normal)
    blamed = NAMES[int(contributions[first:last].sum(axis=0).argmax())]
    assert blamed.split(".")[0] == "flow"


def test_contributions_are_nonnegative_and_make_up_the_score(trained, faulty):
    scores, contributions = trained.score_and_contributions(faulty)
    assert contributions.shape == (len(faulty), len(NAMES))
    assert (contributions >= 0).all()
    np.testing.assert_allclose(contributions.sum(axis=1) / len(NAMES), scores, rtol=1e-12)
    np.testing.assert_array_equal(trained.score(faulty), scores)
    np.testing.assert_array_equal(trained.contributions(faulty), contributions)


def test_every_row_is_scored_and_early_rows_repeat_the_first(trained, faulty):
    sequences = sliding_sequences(faulty, trained.sequence_length)
    assert sequences.shape == (len(faulty), trained.sequence_length, len(NAMES))
    np.testing.assert_array_equal(sequences[0], np.repeat(faulty[:1], trained.sequence_length, axis=0))
    np.testing.assert_array_equal(sequences[-1], faulty[-trained.sequence_length :])
    # score(X) is score_sequences over exactly those sequences.
    np.testing.assert_array_equal(trained.score(faulty), trained.score_sequences(sequences)[0])
    # A single row is a valid history.
    assert trained.score(faulty[:1]).shape == (1,)
    assert trained.score(faulty[:0]).shape == (0,)


def test_nan_is_no_evidence(trained, faulty):
    X = faulty.copy()
    X[10:20, FLOW] = np.nan
    X[25] = np.nan
    scores, contributions = trained.score_and_contributions(X)
    assert np.isfinite(scores).all()
    assert (contributions[10:20, FLOW] == 0).all()
    assert scores[25] == 0.0  # nothing observed: nothing to blame
    observed = np.maximum((~np.isnan(X)).sum(axis=1), 1)
    np.testing.assert_allclose(contributions.sum(axis=1) / observed, scores, rtol=1e-12)

    # NaN in training too, and a feature never observed at all.
    training = plant(400, seed=3)
    training[::7, 1] = np.nan
    training[:, 5] = np.nan
    detector = small(epochs=2).fit(training, NAMES, seed=0)
    assert np.isnan(detector.center[5]) and np.isfinite(detector.center[1])
    scores, contributions = detector.score_and_contributions(plant(50, seed=4))
    assert np.isfinite(scores).all()
    assert (contributions[:, 5] == 0).all()
    assert np.isfinite(detector.history).all()


def test_wrong_inputs_are_explained(trained):
    with pytest.raises(DetectorError, match="align columns with the model's feature_names"):
        trained.score(np.zeros((5, 3)))
    with pytest.raises(DetectorError, match="sliding_sequences"):
        trained.score_sequences(np.zeros((5, 3, len(NAMES))))
    with pytest.raises(DetectorError, match="call fit / fit_many first or load"):
        LstmAutoencoderDetector(device="cpu").score(np.zeros((5, len(NAMES))))
    with pytest.raises(DetectorError, match="matching feature_names"):
        small().fit(np.zeros((50, 3)), NAMES)


# -- training ----------------------------------------------------------------------------


def test_training_is_deterministic_under_a_seed():
    X = plant(300, seed=2)
    first = small(epochs=2).fit(X, NAMES, seed=7)
    again = small(epochs=2).fit(X, NAMES, seed=7)
    other = small(epochs=2).fit(X, NAMES, seed=8)
    np.testing.assert_array_equal(first.score(X), again.score(X))
    assert first.history == again.history
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    assert not np.array_equal(first.score(X), other.score(X))


def test_training_leaves_the_global_torch_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small(epochs=1).fit(plant(100, seed=2), NAMES, seed=7)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_fit_many_trains_one_model_on_several_assets_without_crossing_them(monkeypatch):
    assets = [plant(n, seed=10 + i) for i, n in enumerate((300, 5, 250))]
    seen = {}
    original = LstmAutoencoderDetector._train

    def spy(self, rows, starts, center, spread, names, seed):
        seen.update(rows=rows, starts=starts)
        return original(self, rows, starts, center, spread, names, seed)

    monkeypatch.setattr(LstmAutoencoderDetector, "_train", spy)
    detector = small(epochs=3).fit_many(assets, NAMES, seed=0)

    T = detector.sequence_length
    # One training sequence per row of every asset, each inside its own asset's
    # block (the asset's rows after T - 1 copies of its first row).
    assert len(seen["starts"]) == sum(len(X) for X in assets)
    expected_rows = np.concatenate([sliding_sequences(X, T) for X in assets])
    gathered = seen["rows"][seen["starts"][:, None] + np.arange(T)]
    np.testing.assert_array_equal(gathered, expected_rows)
    # The scaler saw every asset's rows.
    np.testing.assert_allclose(detector.center, np.nanmedian(np.concatenate(assets), axis=0))
    for X in assets:
        assert np.isfinite(detector.score(X)).all()


def test_fit_sequences_takes_ready_made_sequences():
    sequences = sliding_sequences(plant(200, seed=4), 8)
    detector = small(epochs=2).fit_sequences(sequences, NAMES, seed=0)
    scores, contributions = detector.score_sequences(sequences)
    assert scores.shape == (200,) and contributions.shape == (200, len(NAMES))


# -- micro-batching, saving, devices -----------------------------------------------------


def test_score_sequences_does_not_depend_on_micro_batch(trained, faulty):
    sequences = sliding_sequences(faulty, trained.sequence_length)
    reference = trained.score_sequences(sequences)
    saved = trained.micro_batch
    try:
        for micro_batch in (1, 3, 64, 599, 10_000):
            trained.micro_batch = micro_batch
            scores, contributions = trained.score_sequences(sequences)
            # Bit-identical on the CPUs we run on; the bound is float32 rounding.
            np.testing.assert_allclose(scores, reference[0], rtol=1e-6, atol=0)
            np.testing.assert_allclose(contributions, reference[1], rtol=1e-6, atol=1e-12)
        # One asset alone scores exactly as the same sequence inside a batch.
        trained.micro_batch = 1024
        np.testing.assert_allclose(trained.score_sequences(sequences[300:301])[0], reference[0][300:301], rtol=1e-6, atol=0)
    finally:
        trained.micro_batch = saved


@pytest.fixture
def micro_batch(trained):
    """Set ``trained.micro_batch`` inside a test; restored after."""
    saved = trained.micro_batch

    def set_to(value: int) -> None:
        trained.micro_batch = value

    yield set_to
    trained.micro_batch = saved


def awkward(faulty: np.ndarray) -> np.ndarray:
    """The faulty history with gaps, a row with nothing observed and +-inf."""
    X = faulty.copy()
    X[10:20, FLOW] = np.nan
    X[25] = np.nan
    X[40, 0], X[41, 2] = np.inf, -np.inf
    return X


def test_score_of_a_history_is_bit_identical_to_scoring_its_sliding_sequences(trained, faulty, micro_batch):
    """score(X) gathers the sequences from the rows by index instead of materialising
    them on the host: the model must see exactly the same input."""
    X = awkward(faulty)
    T = trained.sequence_length
    for size in (1, 3, 64, 599, 1024):  # 599: the last micro-batch holds one sequence
        micro_batch(size)
        expected = trained.score_sequences(sliding_sequences(X, T))
        scores, contributions = trained.score_and_contributions(X)
        np.testing.assert_array_equal(scores, expected[0])
        np.testing.assert_array_equal(contributions, expected[1])
    micro_batch(1024)
    for n in (1, 2, T - 1, T, T + 1):  # shorter than a sequence, and just longer
        np.testing.assert_array_equal(trained.score(X[:n]), trained.score_sequences(sliding_sequences(X[:n], T))[0])


def test_score_histories_shares_micro_batches_without_crossing_assets(trained, faulty, micro_batch):
    T = trained.sequence_length
    assets = [awkward(faulty), plant(5, seed=7), np.empty((0, len(NAMES))), plant(1, seed=8), plant(300, seed=9)]
    for size in (1, 7, 64, 1024):
        micro_batch(size)
        results = trained.score_histories(assets)
        assert len(results) == len(assets)
        # Exactly the sequences of each asset on its own, padded with its own first
        # row, run in micro-batches over all assets one after the other.
        expected = trained.score_sequences(np.concatenate([sliding_sequences(X, T) for X in assets]))
        np.testing.assert_array_equal(np.concatenate([s for s, _ in results]), expected[0])
        np.testing.assert_array_equal(np.concatenate([c for _, c in results]), expected[1])
        for X, (scores, contributions) in zip(assets, results):
            assert scores.shape == (len(X),) and contributions.shape == (len(X), len(NAMES))
            # The same as the asset scored alone, up to float32 rounding of a
            # different micro-batch (bit-identical on the CPUs we run on).
            alone = trained.score_and_contributions(X)
            np.testing.assert_allclose(scores, alone[0], rtol=1e-6, atol=0)
            np.testing.assert_allclose(contributions, alone[1], rtol=1e-6, atol=1e-12)
    assert trained.score_histories([]) == []
    with pytest.raises(DetectorError, match="align columns with the model's feature_names"):
        trained.score_histories([faulty, np.zeros((5, 3))])


def test_score_sequences_reads_any_layout_and_dtype_without_copying_or_changing_it(trained, faulty, micro_batch):
    micro_batch(64)
    view = sliding_sequences(awkward(faulty), trained.sequence_length)  # read-only, not contiguous
    contiguous = np.ascontiguousarray(view)
    reference = trained.score_sequences(contiguous)
    before = contiguous.copy()
    for sequences in (view, contiguous, np.asfortranarray(contiguous), contiguous[::-1][::-1]):
        result = trained.score_sequences(sequences)
        np.testing.assert_array_equal(result[0], reference[0])
        np.testing.assert_array_equal(result[1], reference[1])
    np.testing.assert_array_equal(contiguous, before)
    # float32 input is widened to float64 first, exactly as np.asarray(..., float64) would.
    single = contiguous.astype(np.float32)
    np.testing.assert_array_equal(trained.score_sequences(single)[0], trained.score_sequences(single.astype(np.float64))[0])
    assert trained.score_sequences(contiguous[:0])[0].shape == (0,)


def test_the_cuda_code_path_run_on_the_cpu_gives_the_same_bits(trained, faulty, micro_batch, monkeypatch):
    """The CUDA branches (pinned staging buffers used in turn, segments of results
    copied back at once) run here with plain memory and no-op events, with tiny
    buffers and segments so every boundary is crossed: the bookkeeping must give
    exactly what the CPU path gives. On a real GPU, only float32 rounding differs
    (test_a_model_trained_on_cuda_scores_the_same_on_the_cpu, edgewatch.bench_gpu)."""
    import detectors.lstm_autoencoder as module

    X = awkward(faulty)
    T = trained.sequence_length
    assets = [X, plant(5, seed=7), np.empty((0, len(NAMES))), plant(1, seed=8), plant(40, seed=9)]
    view = sliding_sequences(X, T)
    expected = {}
    for size in (1, 3, 64):
        micro_batch(size)
        expected[size] = (trained.score_and_contributions(X), trained.score_histories(assets), trained.score_sequences(view))

    class Event:
        def synchronize(self):
            pass

        def record(self):
            pass

    pinned = []
    monkeypatch.setattr(module, "_new_event", Event)
    monkeypatch.setattr(module, "_pinned_empty", lambda size: pinned.append(size) or torch.empty(size, dtype=torch.float64))
    monkeypatch.setattr(module, "STAGING_VALUES", 3 * T * len(NAMES) + 5)  # 3 sequences, or 3T rows and a bit
    monkeypatch.setattr(module, "CUDA_SEGMENT_SEQUENCES", 100)
    monkeypatch.setattr(LstmAutoencoderDetector, "_cuda", property(lambda self: True))
    try:
        for size in (1, 3, 64):
            micro_batch(size)
            history, histories, sequences = expected[size]
            for got, want in zip(trained.score_and_contributions(X), history):
                np.testing.assert_array_equal(got, want)
            for (got_s, got_c), (want_s, want_c) in zip(trained.score_histories(assets), histories):
                np.testing.assert_array_equal(got_s, want_s)
                np.testing.assert_array_equal(got_c, want_c)
            for got, want in zip(trained.score_sequences(view), sequences):
                np.testing.assert_array_equal(got, want)
        assert len(pinned) == 2  # two staging buffers, allocated once and reused
    finally:
        trained._staging, trained._staging_next = [], 0


def test_save_and_load_give_the_same_scores(trained, faulty, tmp_path):
    path = tmp_path / "lstm.pt"
    trained.save(path)
    loaded = LstmAutoencoderDetector.load(path, device="cpu")
    assert loaded.feature_names == NAMES
    assert (loaded.sequence_length, loaded.hidden_size) == (8, 16)
    assert loaded.history == trained.history
    np.testing.assert_array_equal(loaded.score(faulty), trained.score(faulty))
    np.testing.assert_array_equal(loaded.contributions(faulty), trained.contributions(faulty))
    # The file is plain tensors and containers: it loads with weights_only=True.
    doc = torch.load(path, weights_only=True)
    assert doc["format"] == "edgewatch.lstm_autoencoder" and doc["feature_names"] == NAMES
    assert LstmAutoencoderDetector.load(path, device="cpu", micro_batch=7).micro_batch == 7


def test_a_file_that_is_not_a_model_is_explained(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(DetectorError, match="not an LSTM autoencoder model file"):
        LstmAutoencoderDetector.load(path, device="cpu")
    path.write_bytes(b"garbage")
    with pytest.raises(DetectorError, match="not a readable model file"):
        LstmAutoencoderDetector.load(path, device="cpu")


def test_float32_scores_are_within_the_claimed_device_tolerance_of_float64(trained, faulty):
    """The CPU stand-in for CPU vs CUDA: both run the model in float32 and differ
    by rounding; float64 is the exact reference either one is compared with."""
    sequences = sliding_sequences(faulty, trained.sequence_length)
    scores = trained.score_sequences(sequences)[0]
    scaled, observed = trained._scale(torch.from_numpy(np.ascontiguousarray(sequences, dtype=np.float64)))
    scaled, last_observed = scaled.double(), observed[:, -1].double()
    with torch.no_grad():
        reconstruction = copy.deepcopy(trained.model).double()(scaled)
    squared = (reconstruction[:, -1] - scaled[:, -1]).square() * last_observed
    exact = (squared.sum(1) / last_observed.sum(1)).numpy()
    assert (np.abs(scores - exact) <= CPU_CUDA_RTOL * np.abs(exact) + CPU_CUDA_ATOL).all()


def test_reference_check_compares_two_devices(trained, faulty, tmp_path):
    path = tmp_path / "lstm.pt"
    trained.save(path)
    result = reference_check(path, sliding_sequences(faulty, 8), device="cpu", reference_device="cpu")
    assert result["within_tolerance"] and result["scores"]["max_abs_diff"] == 0.0
    from edgewatch.bench_gpu import history_check

    result = history_check(path, [faulty, plant(3, seed=1)], device="cpu", reference_device="cpu", micro_batch=100)
    assert result["within_tolerance"] and result["scores"]["max_abs_diff"] == 0.0 and result["rows"] == 603


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_trained_on_cuda_scores_the_same_on_the_cpu(faulty, tmp_path):
    path = tmp_path / "lstm.pt"
    small(device="cuda", epochs=3).fit(plant(1000, seed=0), NAMES, seed=1).save(path)
    result = reference_check(path, sliding_sequences(faulty, 8), device="cuda", reference_device="cpu")
    assert result["within_tolerance"], result


# -- the GPU bench -----------------------------------------------------------------------


def test_the_gpu_bench_runs_quick_on_the_cpu(tmp_path, capsys):
    from edgewatch import bench_gpu

    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    report = bench_gpu.main(["--quick", "--features", "12", "--sequence-length", "8", "--hidden", "8", "--out", str(out)])
    assert torch.get_num_threads() == threads  # restored after its one-thread timing
    saved = json.loads(out.read_text())
    assert saved["machine"]["gpu"] is None and saved["cpu_vs_cuda"] is None
    assert {(r["batch"], r["mode"]) for r in saved["results"]} == {(b, m) for b in bench_gpu.QUICK_BATCHES for m in bench_gpu.MODES}
    assert all(r["cpu_seq_per_s"] > 0 for r in report["results"])
    printed = capsys.readouterr().out.strip().splitlines()
    # The table is the last output: header, then one line per (batch, mode).
    rows = len(bench_gpu.QUICK_BATCHES) * len(bench_gpu.MODES)
    assert printed[-rows - 1].split() == ["batch", "mode", "cpu", "seq/s", "gpu", "seq/s", "speedup"]


def test_the_gpu_bench_imports_only_numpy_torch_and_detectors():
    """It must run on a GPU box with torch and numpy but none of the service's
    other dependencies (pydantic, faust, river, kafka clients)."""
    code = (
        "import sys, edgewatch.bench_gpu;"
        "heavy = ('pydantic', 'faust', 'river', 'aiokafka', 'confluent_kafka', 'sklearn', 'yaml', 'orjson', 'rich', 'typer', 'stream', 'connectors');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
