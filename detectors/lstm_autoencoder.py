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
"""

from __future__ import annotations

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
        X = self._check_matrix(X)
        return self.score_sequences(sliding_sequences(X, self.sequence_length))

    def score_sequences(self, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score many sequences at once: (b, sequence_length, d) raw window features
        -> (scores (b,), contributions (b, d)) for the last step of each.

        The worker's entry point: it gathers the latest sequence of many assets (of
        one type) and scores them in one call; they run through the model in chunks
        of ``micro_batch`` on the device. Pad a short history by repeating its first
        row (``sliding_sequences`` does).
        """
        self._require_fitted()
        sequences = np.asarray(sequences)
        self._check_sequences_shape(sequences, len(self.feature_names))
        b = sequences.shape[0]
        scores = np.empty(b, dtype=np.float64)
        contributions = np.empty((b, len(self.feature_names)), dtype=np.float64)
        with torch.inference_mode(), exact_float32(self.device):
            for first in range(0, b, self.micro_batch):
                # A copy: the input is often a read-only view (sliding_sequences).
                chunk = np.array(sequences[first : first + self.micro_batch], dtype=np.float64, order="C")
                n = chunk.shape[0]
                if n == 1:
                    # One sequence alone would take the CPU's matrix-vector path, whose
                    # rounding differs from the matrix-matrix one; doubling it keeps a
                    # live score of one asset bit-identical to the same row scored in a
                    # batch (history, backfill) on the CPU.
                    chunk = np.concatenate([chunk, chunk])
                chunk_scores, chunk_contributions = self._forward_scores(torch.from_numpy(chunk).to(self.device))
                scores[first : first + n] = chunk_scores[:n].cpu().numpy()
                contributions[first : first + n] = chunk_contributions[:n].cpu().numpy()
        return scores, contributions

    def _forward_scores(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled, observed = self._scale(raw)
        reconstruction = self.model(scaled)
        last_observed = observed[:, -1]
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
        subtraction ran in float32.
        """
        center, spread = self._scaler_on(raw.device)
        scaled = (raw - center) / spread
        observed = ~torch.isnan(scaled)
        scaled = torch.nan_to_num(scaled, nan=0.0).clamp(-CLIP_SCALED, CLIP_SCALED)
        return scaled.float(), observed.float()

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


# -- CPU vs CUDA -------------------------------------------------------------------------


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

    def compare(a: np.ndarray, b: np.ndarray) -> dict:
        difference = np.abs(a - b)
        return {
            "max_abs_diff": float(difference.max(initial=0.0)),
            "max_rel_diff": float((difference / np.maximum(np.abs(b), np.finfo(np.float64).tiny)).max(initial=0.0)),
            "worst_vs_tolerance": float((difference / (CPU_CUDA_RTOL * np.abs(b) + CPU_CUDA_ATOL)).max(initial=0.0)),
        }

    result = {
        "device": str(tested.device),
        "reference_device": str(reference.device),
        "sequences": int(len(sequences)),
        "rtol": CPU_CUDA_RTOL,
        "atol": CPU_CUDA_ATOL,
        "scores": compare(scores, ref_scores),
        "contributions": compare(contributions, ref_contributions),
        "machine": platform.machine(),
    }
    result["within_tolerance"] = result["scores"]["worst_vs_tolerance"] <= 1.0
    return result
