"""LSTM autoencoder over sequences of window feature vectors.

What it models
--------------
The input is not raw samples but the rows of ``X``: one feature vector per closed
event-time window of one asset (``"<tag>.<feature>"`` columns, the same matrix
every other detector sees). A sequence is the last ``sequence_length`` windows of
one asset, oldest first. We model sequences of windows rather than raw signal
segments because:

* windows are already robust to irregular sampling, late data and gaps (the
  window stage absorbs them; a gap shows up as NaN features, not as a shifted
  time axis the network would have to learn around);
* sequences stay short (16 windows at scale 1s = the last 16 s), so the LSTM is
  small, trains on a CPU and scores thousands of assets per forward pass;
* the same features feed every detector, so scores, contributions and the
  attribution to tags mean the same thing across detectors.

The network: an encoder LSTM reads the (scaled) sequence, its last hidden state is
the latent vector (``hidden_size`` numbers for ``sequence_length x features``
inputs: that bottleneck is what forces it to learn the normal relations between
tags instead of copying), and a decoder LSTM fed the latent at every step, plus
one shared linear layer per step, reconstructs the sequence. A decoder LSTM rather
than one big linear map (latent -> T x d) because its weights are shared over
steps (the size does not grow with ``sequence_length``) and its recurrence can
reproduce the dynamics (the order of the windows), which is what a
"changed dynamics" fault breaks.

Score and contributions
-----------------------
The raw score of a row is the mean squared reconstruction error, in scaled units,
of the LAST step of the sequence ending at that row, over the features observed in
that row. The last step and not the mean over the sequence because the score of
row t must describe window t: a mean over the sequence would keep a fault lit for
``sequence_length`` windows after it ended and dilute a one-window fault by
1/``sequence_length``. The earlier windows still matter: they are the context the
encoder uses to predict what window t should look like. ``contributions`` are the
per-feature squared errors of that same last step, so a row's score is exactly
``contributions.sum() / observed features``. Rows before the first full sequence
use a sequence padded by repeating the asset's first row.

Scaling and missing values
--------------------------
Each feature is standardised inside the model with the median and a robust spread
(1.4826 x MAD, falling back to the standard deviation, then 1) learned in ``fit``
and stored in the saved file, so the detector depends on nothing else. After
scaling, NaN becomes 0 (the median: "no evidence" as model input) and is left out
of the error and the loss (no target to compare with): a missing feature adds no
error of its own, and the other features are judged as if it sat at its median.
A feature never observed in training is always treated as missing.
Scaled values are clipped to +-``CLIP_SCALED`` spreads: an extreme reading already
saturates the LSTM, and the clip keeps squared errors finite in float32 (one
broken sensor cannot produce inf, and CPU and CUDA stay comparable); +-inf is
clipped like any extreme value.

Devices and numerics
--------------------
``device="auto"`` uses CUDA when torch sees a GPU, else the CPU. The model runs in
float32 (the scaling in float64). On CUDA TF32 is switched off for our calls
(cuDNN allows it by default on Ampere and later, which alone would cost ~3
decimal digits), so CPU and CUDA differ only by float32 rounding and reduction
order. Claimed tolerance, for the same saved model and the same input::

    |score_cuda - score_cpu| <= CPU_CUDA_RTOL * |score_cpu| + CPU_CUDA_ATOL
    (1e-4 relative, 1e-6 absolute in scaled squared units)

Why 1e-4: float32 carries ~6e-8 relative error per operation; through 2 LSTMs of
``sequence_length`` steps the reconstruction differs by ~1e-6 in absolute terms.
A score is a squared difference ``(x - x_hat)^2``, whose relative error is about
``2 * 1e-6 / |x - x_hat|``; normal residuals are ~0.05..1 scaled units, so ~1e-5 in
the worst case and much less for anomalous (large) scores. 1e-4 leaves a 10x
margin; the absolute 1e-6 covers near-perfect reconstructions where a relative
bound means nothing. ``reference_check`` measures it (``edgewatch.bench_gpu``
prints it); the tests compare float32 against a float64 reference on the CPU as a
stand-in (measured: at most 2e-6 relative on the test model). Training on CUDA and on CPU with the same seed starts from the same
weights and batches, but the trained models differ by accumulated rounding: compare
devices on one saved model, not on two trainings.

Determinism: ``fit`` under a seed is repeatable on one device with one torch
version and thread count (weights initialised from ``torch.manual_seed(seed)`` on
the CPU, batches shuffled by ``numpy.random.default_rng(seed)``, deterministic
algorithms and cuDNN deterministic mode on during training). On CUDA, also set
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the service's environment: ``fit`` sets it
when missing, but cuBLAS reads it only before the process's first CUDA matmul.
On the CPU the scores do not depend on ``micro_batch`` (bit-identical here,
tested); on CUDA they agree within the tolerance above.

Global torch flags (deterministic algorithms, cuDNN/cuBLAS TF32) are switched for
the duration of our calls and restored after: do not run other torch work on
other threads of the same process while ``fit`` or ``score`` runs if those flags
matter to it.

Host memory and transfers
-------------------------
Scoring from host arrays on CUDA is bounded by host memory traffic, not by the
GPU; on the CPU, fresh tensors of tens of MB cost as much in page faults as the
scaling done in them. So the data is moved and allocated as little as possible:

* histories (``score``, ``score_histories``) go to the device as rows, each row
  once, and are scaled there once; sequences are gathered on the device by index
  (as ``fit`` does), a micro-batch at a time. A history of n rows moves n x d
  float64 values instead of n x ``sequence_length`` x d.
* ``score_sequences`` reads the caller's array in place, whatever its layout. On
  the CPU it is scaled block by block through a small buffer that stays in cache;
  on CUDA each block is copied into one of two reusable page-locked (pinned)
  buffers of 16 MiB and sent asynchronously while the next is filled.
* on the CPU, the float32 model input and a few smaller work tensors are kept
  between calls (about ``micro_batch x sequence_length x d x 4`` bytes: 11.5 MB
  at 1024 x 16 x 176), because allocating that much afresh for every
  micro-batch costs more in page faults than the scaling itself.

These buffers make a detector object unsafe to score from two threads at once
(use one detector per thread). None of this changes a result: on the CPU every
path hands the model the same float32 tensor for the same sequences, bit for bit.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - exercised only where torch is absent
    raise ImportError(
        "the LSTM autoencoder detector needs torch, which is an optional extra: "
        "install it with `pip install 'edgewatch[torch]'`, or set detectors.lstm_autoencoder.enabled: false"
    ) from error

from detectors.base import Detector, DetectorError

#: scores on CPU and CUDA for the same model and input agree within
#: ``CPU_CUDA_RTOL * |cpu| + CPU_CUDA_ATOL`` (see the module docstring for why).
CPU_CUDA_RTOL = 1e-4
CPU_CUDA_ATOL = 1e-6
#: scaled values are clipped to this many robust spreads (keeps float32 finite).
CLIP_SCALED = 1000.0
#: 1.4826 x MAD estimates the standard deviation of normally distributed data.
MAD_TO_SIGMA = 1.4826
#: gradient norm cap: an LSTM's gradients can explode on a few odd sequences.
MAX_GRAD_NORM = 1.0
#: CPU scoring scales the input in blocks of about this many float64 values
#: (2 MiB: stays in cache, so the input is read once and never copied whole).
HOST_BLOCK_VALUES = 1 << 18
#: CUDA: each of the two pinned staging buffers holds this many float64 values (16 MiB).
STAGING_VALUES = 1 << 21
#: CUDA: sequences whose rows go up and results come back together (rounded to micro_batch).
CUDA_SEGMENT_SEQUENCES = 1 << 16

FILE_FORMAT = "edgewatch.lstm_autoencoder"
FILE_VERSION = 1


# -- devices and numerics ----------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """Turn the configured ``"auto" | "cpu" | "cuda"`` into a torch device.

    ``"cuda"`` without a usable GPU is an error rather than a silent CPU fallback:
    whoever asked for CUDA sized the deployment for it.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DetectorError(
                f"lstm_autoencoder: device 'cuda' was asked for, but torch {torch.__version__} ({build}) sees no "
                "usable CUDA GPU: set detectors.lstm_autoencoder.device to 'auto' or 'cpu', or check the GPU "
                "driver (nvidia-smi) and install a CUDA build of torch"
            )
        return torch.device("cuda")
    raise DetectorError(f"lstm_autoencoder: device must be 'auto', 'cpu' or 'cuda', got {device!r}")


@contextmanager
def _no_tf32() -> Iterator[None]:
    """Switch TF32 off for cuDNN (the LSTMs) and cuBLAS (the linear layer), then restore.

    torch >= 2.9 keeps two APIs for these flags (``allow_tf32`` /
    ``set_float32_matmul_precision`` and the per-operator ``fp32_precision``) and
    raises when a process mixes them, so we speak the one the process uses: the
    legacy API when its getters answer (its setters keep both consistent), the
    new one when they refuse (the process set the new one).
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # The per-operator settings (torch >= 2.9), saved in both cases so the exact
    # state comes back ("none" and "ieee" mean the same but read differently).
    switches = [switch for switch in (getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None), matmul) if hasattr(switch, "fp32_precision")]
    saved_precisions = [switch.fp32_precision for switch in switches]
    try:
        saved_legacy = (cudnn.allow_tf32, torch.get_float32_matmul_precision())
    except RuntimeError:
        saved_legacy = None
    try:
        if saved_legacy is not None:
            cudnn.allow_tf32 = False
            matmul.allow_tf32 = False
        else:
            for switch in switches:
                switch.fp32_precision = "ieee"
        yield
    finally:
        if saved_legacy is not None:
            cudnn.allow_tf32 = saved_legacy[0]
            torch.set_float32_matmul_precision(saved_legacy[1])
        for switch, value in zip(switches, saved_precisions):
            switch.fp32_precision = value


@contextmanager
def exact_float32(device: torch.device, deterministic: bool = False) -> Iterator[None]:
    """Run the block in full float32 (no TF32) and, when asked, deterministic mode.

    TF32 (on by default for cuDNN RNNs on Ampere and later) would make CUDA
    results differ from the CPU in the 3rd decimal. The flags are global, so they
    are restored on the way out.
    """
    saved_algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cuda = device.type == "cuda"
    if cuda:
        saved_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if deterministic:
            # cuBLAS is only deterministic with a fixed workspace; torch checks this
            # variable and would otherwise warn on every matmul. It takes effect
            # when set before the process's first CUDA matmul.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    if deterministic:
        # warn_only: an op without a deterministic version warns instead of failing a training.
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        if cuda:
            with _no_tf32():
                yield
        else:
            yield
    finally:
        torch.use_deterministic_algorithms(saved_algorithms[0], warn_only=saved_algorithms[1])
        if cuda:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn


# -- the network -------------------------------------------------------------------------


class LstmAutoencoder(nn.Module):
    """Encoder LSTM -> latent (its last hidden state) -> decoder LSTM -> linear per step.

    Input and output: (batch, steps, features), scaled, NaN-free.
    """

    def __init__(self, n_features: int, hidden_size: int):
        super().__init__()
        self.encoder = nn.LSTM(n_features, hidden_size, batch_first=True)
        self.decoder = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.output = nn.Linear(hidden_size, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.encoder(x)
        latent = hidden[-1]
        # The latent is fed at every decoder step, so no step has to carry it
        # through the recurrence alone.
        steps = latent.unsqueeze(1).expand(-1, x.shape[1], -1).contiguous()
        decoded, _ = self.decoder(steps)
        return self.output(decoded)


def masked_mse(reconstruction: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the observed (non-NaN) entries only."""
    squared = (reconstruction - target).square() * observed
    return squared.sum() / observed.sum().clamp(min=1)


def train_step(model: LstmAutoencoder, optimizer: torch.optim.Optimizer, batch: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """One Adam step on one batch; returns the loss, detached and left on the device
    (reading it with ``.item()`` would synchronise CUDA every step)."""
    optimizer.zero_grad(set_to_none=True)
    loss = masked_mse(model(batch), batch, observed)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    return loss.detach()


# -- helpers -----------------------------------------------------------------------------


def sliding_sequences(X: np.ndarray, sequence_length: int) -> np.ndarray:
    """The sequence ending at every row of one asset's ``X`` (n, d) -> (n, T, d).

    Rows before the first full sequence get a sequence padded by repeating the
    first row, so every row gets a score. Returns a read-only view of one padded
    copy of ``X`` (n x T x d is never materialised; ``score_sequences`` copies one
    micro-batch at a time).
    """
    X = np.asarray(X)
    if X.shape[0] == 0:
        return np.empty((0, sequence_length, X.shape[1]), dtype=X.dtype)
    padded = np.concatenate([np.repeat(X[:1], sequence_length - 1, axis=0), X], axis=0)
    # sliding_window_view puts the window axis last: (n, d, T) -> (n, T, d)
    return np.lib.stride_tricks.sliding_window_view(padded, sequence_length, axis=0).transpose(0, 2, 1)


def robust_center_spread(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature median and robust spread of the training rows, NaN ignored.

    Spread: 1.4826 x MAD; where that is 0 (a feature constant most of the time)
    the standard deviation; where that is 0 too, 1. A feature never observed
    keeps a NaN center, which makes it read as missing forever.
    """
    rows = np.asarray(rows, dtype=np.float64)
    rows = np.where(np.isfinite(rows), rows, np.nan)
    d = rows.shape[1]
    center = np.full(d, np.nan)
    spread = np.ones(d)
    seen = ~np.all(np.isnan(rows), axis=0)
    if seen.any():
        columns = rows[:, seen]
        center[seen] = np.nanmedian(columns, axis=0)
        mad = MAD_TO_SIGMA * np.nanmedian(np.abs(columns - center[seen]), axis=0)
        std = np.nanstd(columns, axis=0)
        spread[seen] = np.where(mad > 0, mad, np.where(std > 0, std, 1.0))
    return center, spread


# -- the detector ------------------------------------------------------------------------


class LstmAutoencoderDetector(Detector):
    """Reconstruction error of the last window of a sequence of windows.

    ``sequence_length`` windows per sequence, ``hidden_size`` LSTM units (and
    latent size), ``epochs`` passes over the training sequences with Adam
    (``learning_rate``, ``batch_size`` sequences per step); ``micro_batch``
    sequences per forward pass when scoring; ``device``: "auto" | "cpu" | "cuda".
    """

    name = "lstm_autoencoder"
    sequential = True
    needs_training = True
    learns_online = False

    def __init__(
        self,
        sequence_length: int = 16,
        hidden_size: int = 32,
        epochs: int = 30,
        device: str = "auto",
        micro_batch: int = 1024,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
    ):
        for label, value, low in (
            ("sequence_length", sequence_length, 2),
            ("hidden_size", hidden_size, 1),
            ("epochs", epochs, 1),
            ("micro_batch", micro_batch, 1),
            ("batch_size", batch_size, 1),
        ):
            if int(value) != value or value < low:
                raise DetectorError(f"lstm_autoencoder: {label} must be an integer >= {low}, got {value!r}")
        if not learning_rate > 0:
            raise DetectorError(f"lstm_autoencoder: learning_rate must be > 0, got {learning_rate!r}")
        self.sequence_length = int(sequence_length)
        self.hidden_size = int(hidden_size)
        self.epochs = int(epochs)
        self.micro_batch = int(micro_batch)
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.device_setting = device
        self.device = resolve_device(device)
        self.model: LstmAutoencoder | None = None
        self.center: np.ndarray | None = None
        self.spread: np.ndarray | None = None
        #: mean training loss per epoch (scaled squared units), for a look at convergence.
        self.history: list[float] = []
        self.seed: int | None = None
        self._scaler_cache: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None
        #: CPU work tensors reused between scoring calls (see _host_buffer).
        self._buffers: dict[str, torch.Tensor] = {}
        self._views: dict[tuple, torch.Tensor] = {}
        #: CUDA: two [pinned host buffer, event] slots used in turn by _upload.
        self._staging: list[list] = []
        self._staging_next = 0

    # -- training ----------------------------------------------------------------------

    def fit(self, X: np.ndarray, feature_names: Sequence[str], seed: int = 0) -> "LstmAutoencoderDetector":
        """Train on the rows of ONE asset, in event-time order (several assets: ``fit_many``)."""
        return self.fit_many([X], feature_names, seed)

    def fit_many(self, matrices: Sequence[np.ndarray], feature_names: Sequence[str], seed: int = 0) -> "LstmAutoencoderDetector":
        """Train one model for an asset TYPE from several assets' matrices.

        Each matrix is one asset's rows in event-time order; sequences are built
        inside each matrix, never across two assets.
        """
        names = list(feature_names)
        matrices = [self._check_training_matrix(X, names) for X in matrices]
        matrices = [X for X in matrices if X.shape[0] > 0]
        if not matrices:
            raise DetectorError("lstm_autoencoder: no training rows: pass at least one asset matrix with rows")
        center, spread = robust_center_spread(np.concatenate(matrices, axis=0))
        # Every row is the last step of exactly one training sequence: the same
        # sequences score() builds, padding included. Rows are stored once (padded
        # per asset) and sequences gathered by index, so memory stays O(rows).
        padded, starts, offset = [], [], 0
        for X in matrices:
            asset_rows = np.concatenate([np.repeat(X[:1], self.sequence_length - 1, axis=0), X], axis=0)
            padded.append(asset_rows)
            starts.append(offset + np.arange(X.shape[0]))
            offset += asset_rows.shape[0]
        self._train(np.concatenate(padded, axis=0), np.concatenate(starts), center, spread, names, seed)
        return self

    def fit_sequences(self, sequences: np.ndarray, feature_names: Sequence[str], seed: int = 0) -> "LstmAutoencoderDetector":
        """Train on ready-made sequences (b, sequence_length, d) of raw window features."""
        sequences = np.asarray(sequences, dtype=np.float64)
        names = list(feature_names)
        self._check_sequences_shape(sequences, len(names))
        if sequences.shape[0] == 0:
            raise DetectorError("lstm_autoencoder: no training sequences")
        rows = sequences.reshape(-1, len(names))
        center, spread = robust_center_spread(rows)
        starts = np.arange(sequences.shape[0]) * self.sequence_length
        self._train(rows, starts, center, spread, names, seed)
        return self

    def _train(self, rows: np.ndarray, starts: np.ndarray, center: np.ndarray, spread: np.ndarray, names: list[str], seed: int) -> None:
        self.feature_names, self.center, self.spread, self.seed = names, center, spread, int(seed)
        self._scaler_cache = None
        device = self.device
        with torch.random.fork_rng(devices=[]):
            # Initialise on the CPU from the seed, then move: the same seed gives
            # the same initial weights on every device, and the caller's global
            # RNG state is left as it was.
            torch.manual_seed(seed)
            model = LstmAutoencoder(len(names), self.hidden_size)
        model = model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        scaled, observed = self._scale(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64)).to(device))
        step_offsets = torch.arange(self.sequence_length, device=device)
        order_rng = np.random.default_rng(seed)
        self.history = []
        model.train()
        with exact_float32(device, deterministic=True):
            for _ in range(self.epochs):
                order = torch.from_numpy(order_rng.permutation(starts)).to(device)
                total = torch.zeros((), device=device)
                batches = 0
                for first in range(0, order.shape[0], self.batch_size):
                    index = order[first : first + self.batch_size, None] + step_offsets
                    total += train_step(model, optimizer, scaled[index], observed[index])
                    batches += 1
                self.history.append(float(total) / batches)
        model.eval()
        self.model = model

    # -- scoring -----------------------------------------------------------------------
    #
    # Three entry points, one model call (``_forward_scaled``) per micro-batch:
    #
    # * ``score`` / ``contributions`` / ``score_and_contributions``: one asset's
    #   history; ``score_histories``: several. The rows go to the device once
    #   (scaled there once per row, not once per sequence they appear in) and the
    #   sequences are gathered on the device by index: host memory traffic is
    #   O(rows x d), never O(rows x sequence_length x d).
    # * ``score_sequences``: independent sequences from the host (the worker's
    #   live path). On the CPU they are scaled in cache-sized blocks read straight
    #   from the caller's array (no copy of the whole batch); on CUDA each block
    #   is copied into a reusable pinned host buffer and sent with
    #   ``non_blocking=True``, so filling the next block overlaps the transfer.
    #
    # On the CPU both feed the model the same float32 tensor, built from the same
    # float64 operations, as scaling each sequence on its own would: the paths
    # agree bit for bit (tested).

    def score(self, X: np.ndarray) -> np.ndarray:
        """Reconstruction error of the last window of the sequence ending at each row (one asset, event-time order)."""
        return self._score_rows(X)[0]

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature squared reconstruction error of each row's window (n, d); 0 where the feature is NaN."""
        return self._score_rows(X)[1]

    def score_and_contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``score`` and ``contributions`` from one forward pass."""
        return self._score_rows(X)

    def _score_rows(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._require_fitted()
        return self._score_histories([self._check_matrix(X)])[0]

    def score_histories(self, matrices: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Score several assets' histories at once: each matrix is one asset's rows in
        event-time order, as for ``score`` -> one ``(scores, contributions)`` per
        matrix, in the same order.

        The offline path (replay, backtest of many assets of one type): the
        sequences of all assets share micro-batches of ``micro_batch``, but a
        sequence never crosses two assets (each asset's first rows are padded with
        its own first row, as in ``score``). The arrays returned for the assets of
        one call are views of one array each for scores and contributions.
        """
        self._require_fitted()
        return self._score_histories([self._check_matrix(X) for X in matrices])

    def _score_histories(self, matrices: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        T, d = self.sequence_length, len(self.feature_names)
        cuda = self._cuda
        lengths = [int(X.shape[0]) for X in matrices]
        offsets = [0, *itertools.accumulate(lengths)]
        total = offsets[-1]
        scores = np.empty(total, dtype=np.float64)
        contributions = np.empty((total, d), dtype=np.float64)
        segment = self._segment_length()
        # Step k of the sequence ending at buffer row e is row e - (T - 1) + k,
        # floored at its asset's first row: the padding by repetition.
        steps = np.arange(1 - T, 1, dtype=np.int64)
        with torch.inference_mode(), exact_float32(self.device):
            if cuda:
                steps_on_device = torch.arange(1 - T, 1, device=self.device)
            results = _Results(scores, contributions, self.device, cuda)
            for first in range(0, total, segment):
                last = min(first + segment, total)
                # The rows this segment needs: for each asset it touches, from
                # T - 1 rows before its first sequence here (or the asset's first
                # row) to its last; they sit one after the other in one buffer.
                pieces, ends, floors, n_rows = [], [], [], 0
                asset = bisect.bisect_right(offsets, first) - 1
                while asset < len(matrices) and offsets[asset] < last:
                    begin, stop = max(first - offsets[asset], 0), min(last - offsets[asset], lengths[asset])
                    if stop > begin:
                        low = max(begin - (T - 1), 0)
                        pieces.append((matrices[asset][low:stop], n_rows))
                        ends.append(np.arange(begin + n_rows - low, stop + n_rows - low, dtype=np.int64))
                        # Below the buffer's first row when low > 0: then it never binds.
                        floors.append(np.full(stop - begin, n_rows - low, dtype=np.int64))
                        n_rows += stop - low
                    asset += 1
                ends, floors = np.concatenate(ends), np.concatenate(floors)
                if cuda:
                    # The small index arrays first, in one transfer: a plain
                    # host-to-device copy waits for the stream, so it must not
                    # queue behind the rows' asynchronous transfer.
                    ends_on_device, floors_on_device = torch.from_numpy(np.stack([ends, floors])).to(self.device)
                rows, observed = self._scaled_rows(pieces, n_rows)
                results.open(first, last)
                for start in range(0, last - first, self.micro_batch):
                    stop = min(start + self.micro_batch, last - first)
                    n = stop - start
                    if cuda:
                        end, floor = ends_on_device[start:stop], floors_on_device[start:stop]
                        if n == 1:  # a micro-batch of one is doubled: see _forward_scaled
                            end, floor = end.expand(2), floor.expand(2)
                        batch = rows[torch.maximum(end[:, None] + steps_on_device, floor[:, None])]
                        last_observed = observed[end]
                    else:
                        end, floor = ends[start:stop], floors[start:stop]
                        if n == 1:  # see _forward_scaled
                            end, floor = end.repeat(2), floor.repeat(2)
                        index = np.maximum(end[:, None] + steps, floor[:, None])
                        # Into a reused buffer: a fresh tensor this size costs more
                        # in page faults than the gather itself.
                        batch = self._host_buffer("batch", (len(end), T, d), torch.float32)
                        torch.index_select(rows, 0, torch.from_numpy(index.reshape(-1)), out=batch.view(-1, d))
                        last_observed = observed[torch.from_numpy(end)]
                    results.put(start, n, *self._forward_scaled(batch, last_observed.float()))
                results.close()
        return [(scores[a:b], contributions[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]

    def score_sequences(self, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score many sequences at once: (b, sequence_length, d) raw window features
        -> (scores (b,), contributions (b, d)) for the last step of each.

        The worker's entry point: it gathers the latest sequence of many assets (of
        one type) and scores them in one call; they run through the model in chunks
        of ``micro_batch`` on the device. Pad a short history by repeating its first
        row (``sliding_sequences`` does). Any layout and real dtype is read as is
        (float64 C order is the cheapest); the input is never modified. To score
        whole histories, ``score`` / ``score_histories`` move T times less data.
        """
        self._require_fitted()
        sequences = np.asarray(sequences)
        self._check_sequences_shape(sequences, len(self.feature_names))
        if sequences.dtype.kind not in "biuf":
            sequences = np.asarray(sequences, dtype=np.float64)
        T, d = self.sequence_length, len(self.feature_names)
        b = sequences.shape[0]
        scores = np.empty(b, dtype=np.float64)
        contributions = np.empty((b, d), dtype=np.float64)
        cuda = self._cuda
        segment = self._segment_length()
        with torch.inference_mode(), exact_float32(self.device):
            results = _Results(scores, contributions, self.device, cuda)
            for first in range(0, b, segment):
                last = min(first + segment, b)
                results.open(first, last)
                for start in range(first, last, self.micro_batch):
                    chunk = sequences[start : min(start + self.micro_batch, last)]
                    n = chunk.shape[0]
                    if n == 1:  # a micro-batch of one is doubled: see _forward_scaled
                        chunk = np.concatenate([chunk, chunk])
                    if cuda:
                        raw = torch.empty(chunk.shape, dtype=torch.float64, device=self.device)
                        self._upload([(chunk, raw)])
                        observed = self._scale_(raw, last_step=True)
                        batch = raw.float()
                    else:
                        batch = self._host_buffer("batch", chunk.shape, torch.float32)
                        observed = self._host_buffer("observed_last", (chunk.shape[0], d), torch.bool)
                        self._scale_host(chunk, batch, observed, last_step=True)
                    results.put(start - first, n, *self._forward_scaled(batch, observed.float()))
                results.close()
        return scores, contributions

    def _forward_scaled(self, scaled: torch.Tensor, last_observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled float32 sequences (m, T, d) and the float32 observed mask of their last
        step (m, d) -> (scores (m,), squared errors of the last step (m, d)), float64.

        Callers never pass one sequence alone: it would take the CPU's
        matrix-vector path, whose rounding differs from the matrix-matrix one. A
        micro-batch of one is doubled (and the copy's result dropped), which keeps
        a live score of one asset bit-identical to the same row scored in a batch
        (history, backfill) on the CPU.
        """
        reconstruction = self.model(scaled)
        # Summed in float64 so a score is exactly its contributions' mean (and the
        # order of the sum, which differs between CPU and CUDA, hardly matters).
        squared = ((reconstruction[:, -1] - scaled[:, -1]).square() * last_observed).double()
        # A row with no observed feature has no evidence either way: score 0.
        scores = squared.sum(dim=1) / last_observed.double().sum(dim=1).clamp(min=1)
        return scores, squared

    def _scale(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw float64 features -> (scaled float32 with NaN as 0, float32 observed mask).

        Done in float64 on the device: a feature with a large offset and a small
        spread (a counter, a 1e5 rpm speed) would lose its variation if the
        subtraction ran in float32. Every scoring path applies exactly these
        element-wise operations (``_scale_``, in place), so the same bits.
        """
        values = raw.to(dtype=torch.float64, copy=True)
        observed = self._scale_(values)
        return values.float(), observed.float()

    def _scale_(self, values: torch.Tensor, last_step: bool = False, observed: torch.Tensor | None = None) -> torch.Tensor:
        """Scale raw float64 ``values`` in place (NaN -> 0, clipped); returns the
        observed mask (bool; written into ``observed`` when given), of the last
        step only when ``last_step`` (sequences)."""
        center, spread = self._scaler_on(values.device)
        values.sub_(center).div_(spread)
        checked = values[:, -1] if last_step else values
        observed = torch.eq(checked, checked, out=observed) if observed is not None else checked == checked  # False for NaN only
        values.nan_to_num_(nan=0.0).clamp_(-CLIP_SCALED, CLIP_SCALED)
        return observed

    def _scaler_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """center / spread as float64 tensors on ``device``, kept there between calls
        (copying them for every call would add two transfers to a batch-1 score on CUDA)."""
        cached = self._scaler_cache
        if cached is None or cached[0] != device:
            cached = (
                device,
                torch.as_tensor(self.center, dtype=torch.float64, device=device),
                torch.as_tensor(self.spread, dtype=torch.float64, device=device),
            )
            self._scaler_cache = cached
        return cached[1], cached[2]

    # -- host memory and transfers -----------------------------------------------------

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def _segment_length(self) -> int:
        """Sequences per segment: the unit of row transfer and, on CUDA, of results
        copied back (a multiple of ``micro_batch``, so micro-batches line up with
        a plain split of the input into micro_batch chunks)."""
        if not self._cuda:
            return self.micro_batch
        return self.micro_batch * max(1, CUDA_SEGMENT_SEQUENCES // self.micro_batch)

    def _scaled_rows(self, pieces: list[tuple[np.ndarray, int]], n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw row blocks, each to its buffer position -> (scaled float32 rows, bool
        observed mask), (n_rows, d) each, on the device."""
        d = len(self.feature_names)
        if self._cuda:
            raw = torch.empty((n_rows, d), dtype=torch.float64, device=self.device)
            self._upload([(rows, raw[at : at + rows.shape[0]]) for rows, at in pieces])
            observed = self._scale_(raw)
            return raw.float(), observed
        scaled = self._host_buffer("rows", (n_rows, d), torch.float32)
        observed = self._host_buffer("observed_rows", (n_rows, d), torch.bool)
        for rows, at in pieces:
            self._scale_host(rows, scaled[at : at + rows.shape[0]], observed[at : at + rows.shape[0]], last_step=False)
        return scaled, observed

    def _scale_host(self, source: np.ndarray, scaled: torch.Tensor, observed: torch.Tensor, last_step: bool) -> None:
        """CPU: scale ``source`` (k, ...) into ``scaled`` (float32) and ``observed``
        (bool) block by block, through one small float64 buffer that stays in
        cache: the float64 copy of the whole input is never made."""
        k = source.shape[0]
        block = max(1, HOST_BLOCK_VALUES // math.prod(source.shape[1:]))
        for a in range(0, k, block):
            part = source[a : a + block]
            values = self._host_buffer("block", part.shape, torch.float64)
            np.copyto(values.numpy(), part, casting="unsafe")
            if part.shape[0] == k:  # one block: no slicing (a live score of a few assets)
                self._scale_(values, last_step, observed)
                scaled.copy_(values)
            else:
                self._scale_(values, last_step, observed[a : a + part.shape[0]])
                scaled[a : a + part.shape[0]].copy_(values)

    def _host_buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A CPU work tensor of ``shape``, reused between calls: a fresh one of tens
        of MB costs more in page faults than the work done in it. The buffers only
        grow; together they hold about one micro-batch of float32 sequences."""
        key = (name, shape, dtype)
        view = self._views.get(key)
        if view is None:
            size = math.prod(shape)
            buffer = self._buffers.get(name)
            if buffer is None or buffer.dtype != dtype or buffer.numel() < size:
                buffer = self._buffers[name] = torch.empty(size, dtype=dtype)
                self._views = {}  # views of a replaced buffer must not be handed out again
            if len(self._views) >= 64:  # many shapes (last micro-batches of odd sizes): start over
                self._views = {}
            view = self._views[key] = buffer[:size].view(shape)
        return view

    def _upload(self, pairs: list[tuple[np.ndarray, torch.Tensor]]) -> None:
        """CUDA: copy each host array into its device tensor of the same shape through
        two pinned buffers used in turn, each sent with ``non_blocking=True``: the
        host fills one while the other is in flight. Waits only for the transfer
        that last used a buffer before refilling it."""
        for source, target in pairs:
            per_item = math.prod(source.shape[1:])
            block = max(1, STAGING_VALUES // per_item)
            for a in range(0, source.shape[0], block):
                part = source[a : a + block]
                size = part.shape[0] * per_item
                if not self._staging:
                    self._staging = [[None, _new_event()] for _ in range(2)]
                slot = self._staging[self._staging_next]
                self._staging_next ^= 1
                slot[1].synchronize()  # the transfer that last read this buffer is done
                if slot[0] is None or slot[0].numel() < size:
                    slot[0] = _pinned_empty(max(size, STAGING_VALUES))
                host = slot[0][:size].view(part.shape)
                np.copyto(host.numpy(), part, casting="unsafe")
                target[a : a + part.shape[0]].copy_(host, non_blocking=True)
                slot[1].record()

    # -- persistence -------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """One file: weights, scaler, configuration and feature names (CPU tensors, so it loads anywhere)."""
        self._require_fitted()
        torch.save(
            {
                "format": FILE_FORMAT,
                "version": FILE_VERSION,
                "config": {
                    "sequence_length": self.sequence_length,
                    "hidden_size": self.hidden_size,
                    "epochs": self.epochs,
                    "micro_batch": self.micro_batch,
                    "learning_rate": self.learning_rate,
                    "batch_size": self.batch_size,
                    "seed": self.seed,
                    "trained_on": str(self.device),
                    "torch_version": str(torch.__version__),
                },
                "feature_names": list(self.feature_names),
                "center": torch.from_numpy(self.center.copy()),
                "spread": torch.from_numpy(self.spread.copy()),
                "history": list(self.history),
                "state_dict": {key: value.detach().cpu() for key, value in self.model.state_dict().items()},
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: Path, device: str = "auto", micro_batch: int | None = None) -> "LstmAutoencoderDetector":
        """Read a file written by ``save`` onto ``device`` (a CUDA-trained model loads on a CPU)."""
        target = resolve_device(device)
        try:
            doc = torch.load(Path(path), map_location=target, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:
            raise DetectorError(f"lstm_autoencoder: {path} is not a readable model file ({error}): retrain with `edgewatch train`") from error
        if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
            raise DetectorError(f"lstm_autoencoder: {path} is not an LSTM autoencoder model file")
        if doc.get("version") != FILE_VERSION:
            raise DetectorError(
                f"lstm_autoencoder: {path} has file version {doc.get('version')}, this edgewatch reads version "
                f"{FILE_VERSION}: retrain the model with this version (`edgewatch train`)"
            )
        config = doc["config"]
        detector = cls(
            sequence_length=config["sequence_length"],
            hidden_size=config["hidden_size"],
            epochs=config["epochs"],
            device=device,
            micro_batch=micro_batch if micro_batch is not None else config["micro_batch"],
            learning_rate=config["learning_rate"],
            batch_size=config["batch_size"],
        )
        detector.feature_names = list(doc["feature_names"])
        detector.center = doc["center"].cpu().numpy().astype(np.float64)
        detector.spread = doc["spread"].cpu().numpy().astype(np.float64)
        detector.history = list(doc.get("history", []))
        detector.seed = config.get("seed")
        model = LstmAutoencoder(len(detector.feature_names), detector.hidden_size)
        model.load_state_dict(doc["state_dict"])
        detector.model = model.to(target).eval()
        return detector

    # -- checks ------------------------------------------------------------------------

    def _require_fitted(self) -> None:
        if self.model is None:
            raise DetectorError("lstm_autoencoder: the model is not trained: call fit / fit_many first or load a saved model")

    def _check_training_matrix(self, X: np.ndarray, names: list[str]) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise DetectorError(
                f"lstm_autoencoder: expected a (windows x {len(names)} features) matrix matching feature_names, got shape {X.shape}"
            )
        return X

    def _check_sequences_shape(self, sequences: np.ndarray, n_features: int) -> None:
        expected = (self.sequence_length, n_features)
        if sequences.ndim != 3 or sequences.shape[1:] != expected:
            raise DetectorError(
                f"lstm_autoencoder: expected sequences of shape (batch, {expected[0]}, {expected[1]}) "
                f"(sequence_length windows x features), got {sequences.shape}: build them with "
                "detectors.lstm_autoencoder.sliding_sequences, which pads a short history by repeating its first row"
            )


def _pinned_empty(size: int) -> torch.Tensor:
    """A page-locked float64 host buffer (the CUDA staging buffers)."""
    return torch.empty(size, dtype=torch.float64, pin_memory=True)


def _new_event() -> "torch.cuda.Event":
    return torch.cuda.Event()


class _Results:
    """Where a scoring call's results go: on the CPU straight into the output arrays;
    on CUDA into device tensors for one segment, copied back once per segment (one
    synchronisation per segment, not one per micro-batch)."""

    def __init__(self, scores: np.ndarray, contributions: np.ndarray, device: torch.device, cuda: bool):
        self.scores, self.contributions = scores, contributions
        self.device, self.cuda = device, cuda
        self.first = self.last = 0

    def open(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        if self.cuda:
            self.segment_scores = torch.empty(last - first, dtype=torch.float64, device=self.device)
            self.segment_contributions = torch.empty((last - first, self.contributions.shape[1]), dtype=torch.float64, device=self.device)

    def put(self, start: int, n: int, scores: torch.Tensor, squared: torch.Tensor) -> None:
        """Results of a micro-batch at ``start`` in the segment (its first ``n`` rows are real)."""
        if scores.shape[0] != n:
            scores, squared = scores[:n], squared[:n]
        if self.cuda:
            self.segment_scores[start : start + n] = scores
            self.segment_contributions[start : start + n] = squared
        else:
            at = self.first + start
            self.scores[at : at + n] = scores.numpy()
            self.contributions[at : at + n] = squared.numpy()

    def close(self) -> None:
        if self.cuda:  # straight into the output arrays (waits for the segment)
            torch.from_numpy(self.scores[self.first : self.last]).copy_(self.segment_scores)
            torch.from_numpy(self.contributions[self.first : self.last]).copy_(self.segment_contributions)


# -- CPU vs CUDA -------------------------------------------------------------------------


def compare_to_tolerance(a: np.ndarray, b: np.ndarray) -> dict:
    """Max absolute and relative differences of ``a`` from the reference ``b``, and the
    worst ratio to the claimed tolerance ``RTOL * |b| + ATOL`` (<= 1: within it)."""
    difference = np.abs(a - b)
    return {
        "max_abs_diff": float(difference.max(initial=0.0)),
        "max_rel_diff": float((difference / np.maximum(np.abs(b), np.finfo(np.float64).tiny)).max(initial=0.0)),
        "worst_vs_tolerance": float((difference / (CPU_CUDA_RTOL * np.abs(b) + CPU_CUDA_ATOL)).max(initial=0.0)),
    }


def reference_check(model_path: Path, sequences: np.ndarray, device: str = "cuda", reference_device: str = "cpu") -> dict:
    """Score the same sequences with one saved model on two devices and compare.

    Returns the max absolute and relative score differences, the worst ratio to
    the claimed tolerance (``|a - b| / (RTOL * |ref| + ATOL)``; <= 1 is within it)
    and the same for contributions.
    """
    tested = LstmAutoencoderDetector.load(model_path, device=device)
    reference = LstmAutoencoderDetector.load(model_path, device=reference_device)
    scores, contributions = tested.score_sequences(sequences)
    ref_scores, ref_contributions = reference.score_sequences(sequences)

    result = {
        "device": str(tested.device),
        "reference_device": str(reference.device),
        "sequences": int(len(sequences)),
        "rtol": CPU_CUDA_RTOL,
        "atol": CPU_CUDA_ATOL,
        "scores": compare_to_tolerance(scores, ref_scores),
        "contributions": compare_to_tolerance(contributions, ref_contributions),
        "machine": platform.machine(),
    }
    result["within_tolerance"] = result["scores"]["worst_vs_tolerance"] <= 1.0
    return result
