"""The worker's LSTM sequence assembly: sequences built window by window across
calls must be the ones the detector's own score(X) uses on the whole history,
however many windows a call closes (the first call included)."""

from types import SimpleNamespace

import numpy as np
import pytest

from stream.detection import AssetDetection

lstm = pytest.importorskip("detectors.lstm_autoencoder")


@pytest.mark.parametrize("cuts", [[1] * 10, [6, 4], [10], [3, 1, 5, 1]])
def test_sequences_across_calls_equal_the_detectors_sliding_sequences(cuts):
    length = 4
    stage = AssetDetection.__new__(AssetDetection)  # only the sequence assembly is under test
    stage._sequence_rows = {}
    queued = []
    stage.sequences = SimpleNamespace(add=queued.append)
    model = SimpleNamespace(model=SimpleNamespace(detector=SimpleNamespace(sequence_length=length)))
    X = np.random.default_rng(1).normal(size=(sum(cuts), 3))
    start = 0
    for n in cuts:
        stage._queue_sequences(model, [object()] * n, X[start : start + n])
        start += n
    expected = lstm.sliding_sequences(X, length)
    assert len(queued) == len(X)
    for item, sequence in zip(queued, expected):
        np.testing.assert_array_equal(item.sequence, sequence)
