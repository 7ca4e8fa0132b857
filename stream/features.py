"""Window features: what each closed window says about each tag, as numbers.

A closed window (stream.windows) holds the Good samples of one asset over one
stretch of event time. For every tag of the asset this module computes a fixed
list of features over that tag's samples, in event-time order. ``count``,
``mean``, ``std``, ``min`` and ``max`` are always there (operators read them);
the others are chosen with ``features.names`` in the configuration.

The features, for a tag with n Good samples x_1..x_n at times t_1..t_n in the
window, x̄ their mean and d_i = x_i - x̄:

* ``count``: n. A tag with no Good sample in the window has count 0 and every
  other feature NaN (null on the wire): a gap is not a zero.
* ``mean``: x̄. ``std``: population standard deviation, sqrt(Σd²/n) (ddof=0).
* ``min``, ``max``: the extremes. ``ptp``: max - min (peak to peak).
* ``rms``: sqrt(Σx²/n), root mean square of the raw values (not of d).
* ``skew``: (Σd³/n) / (Σd²/n)^1.5. ``kurtosis``: (Σd⁴/n) / (Σd²/n)², Pearson's,
  so a normal signal gives 3 (scipy.stats.kurtosis(fisher=False)). Both need
  n >= 3 (NaN below). A constant signal (std 0) has no shape to measure: skew 0
  and kurtosis 0, so a flatlined sensor gives an ordinary number, not a hole.
* ``crest``: max|x| / rms, how peaky the signal is (bearing impacts raise it).
  NaN when rms is 0 (all values 0).
* ``slope``: least-squares slope of x over t, in the tag's units per second
  (a drift: a bearing warming up). NaN when n < 2 or all t are equal.
* ``autocorr``: autocorrelation at ``features.autocorr_lag`` samples,
  Σ_{i<=n-lag} d_i d_{i+lag} / Σd² (the usual sample ACF: normalised by the
  variance of the whole window). NaN when n <= lag; 0 for a constant signal.
* ``fft_0`` .. ``fft_{B-1}`` (B = ``features.fft_bands``): the spectrum in B
  bands. The mean is removed and the samples are taken as evenly spaced in
  order (their own sampling, whatever its rate); the rfft bins 1..n//2 (DC
  left out) are split into B equal slices of 0..Nyquist, bin j falling into
  band ceil(2jB/n) - 1; each band is the RMS magnitude of its bins divided by
  n, so it is amplitude-like and does not grow with the window (a sine of
  amplitude A on one bin alone in its band gives A/2). NaN when there are fewer
  non-DC bins than bands (n//2 < B).

Everything is vectorised over all the windows passed in and all their tags:
numpy reductions (``np.add.reduceat``) over the (window, tag) groups, laid end
to end, and one 2-D FFT per distinct sample count; long lists of windows go in
blocks of about 65,536 samples, so temporaries stay small. A numpy call costs
about a microsecond whatever its size, so one call for the windows that many
assets closed in a round (as the worker gathers them for the detectors) is far
cheaper per sample than one call per asset. Each (window, tag) is computed from
its own samples only: its features are bit for bit the same whichever other
windows share the call.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from stream.config import AssetConfig, FeatureSettings
from stream.wire import SCHEMA_VERSION, utc_iso
from stream.windows import ClosedWindow

#: always computed, always first: what an operator reads
BASE_FEATURES = ("count", "mean", "std", "min", "max")
#: the configurable features in the order their columns take
OPTIONAL_FEATURES = ("rms", "ptp", "skew", "kurtosis", "crest", "slope", "autocorr", "fft")
#: samples computed together (whole windows; a longer window makes a longer block)
_BLOCK_SAMPLES = 65_536


class FeatureSpec:
    """The columns that compute_features produces, from the ``features`` settings.

    ``per_tag``: count, mean, std, min, max, then the configured features in the
    order of OPTIONAL_FEATURES, "fft" expanded to fft_0..fft_{bands-1}.
    ``detector_features``: per_tag without count (how often a tag is sampled is
    a property of the connector, not of the machine's behaviour). ``column``
    maps a name to its column. mean, std, min and max in ``features.names`` are
    accepted and change nothing: they are always there.
    """

    def __init__(self, settings: FeatureSettings):
        self.settings = settings
        chosen = set(settings.names)
        self.autocorr_lag = int(settings.autocorr_lag)
        self.fft_bands = int(settings.fft_bands)
        per_tag = list(BASE_FEATURES)
        for name in OPTIONAL_FEATURES:
            if name not in chosen:
                continue
            if name == "fft":
                per_tag.extend(f"fft_{band}" for band in range(self.fft_bands))
            else:
                per_tag.append(name)
        self.per_tag: list[str] = per_tag
        self.detector_features: list[str] = per_tag[1:]
        self.column: dict[str, int] = {name: i for i, name in enumerate(per_tag)}
        #: whether the fft bands are among the columns
        self.computes_fft = "fft" in chosen

    def vector_names(self, tag_ids: Sequence[str]) -> list[str]:
        """Names of detector_matrix's columns: "<tag>.<feature>", tag by tag."""
        return [f"{tag}.{feature}" for tag in tag_ids for feature in self.detector_features]

    def __repr__(self) -> str:
        return f"FeatureSpec({self.per_tag})"


def compute_features(windows: Sequence[ClosedWindow], n_tags: int, spec: FeatureSpec) -> np.ndarray:
    """The features of every tag in every window: shape (len(windows), n_tags, len(spec.per_tag)).

    Column i is ``spec.per_tag[i]``. NaN where a feature cannot be computed (no
    Good sample of that tag in the window, or too few for the feature); count
    is 0 for a tag without samples. The windows may come from different assets
    with the same tag count. Their arrays must be sorted by (tag_position,
    ts_us), as stream.windows makes them.
    """
    n_windows, n_columns = len(windows), len(spec.per_tag)
    out = np.full((n_windows, n_tags, n_columns), np.nan)
    out[:, :, 0] = 0.0
    if n_windows == 0:
        return out
    lengths = np.fromiter((w.value.shape[0] for w in windows), dtype=np.intp, count=n_windows)
    # Blocks of about _BLOCK_SAMPLES samples: numpy's temporaries stay in the
    # CPU cache and memory stays bounded when a replay passes a day of windows.
    ends = lengths.cumsum()
    bounds = [0, n_windows]
    if int(ends[-1]) > _BLOCK_SAMPLES:
        cuts = ends.searchsorted(np.arange(_BLOCK_SAMPLES, int(ends[-1]), _BLOCK_SAMPLES), side="left") + 1
        bounds = [0, *np.unique(cuts[cuts < n_windows]).tolist(), n_windows]
    flat = out.reshape(n_windows * n_tags, n_columns)
    for first, last in zip(bounds[:-1], bounds[1:]):
        block = windows[first:last]
        if int(ends[last - 1]) == (int(ends[first - 1]) if first else 0):
            continue  # no samples at all
        where, rows = _block_features(block, lengths[first:last], n_tags, spec)
        flat[first * n_tags + where] = rows
    return out


def _block_features(windows: Sequence[ClosedWindow], lengths: np.ndarray, n_tags: int, spec: FeatureSpec):
    """(row index in the block's (window, tag) grid, features) of every (window, tag) with samples."""
    n = int(lengths.sum())
    tag = np.concatenate([w.tag_position for w in windows])
    ts = np.concatenate([w.ts_us for w in windows])
    value = np.concatenate([w.value for w in windows]).astype(np.float64, copy=False)

    # One group per (window, tag) with samples: a run of one tag inside one window.
    window_start = lengths.cumsum() - lengths
    boundary = np.empty(n, dtype=bool)
    boundary[0] = True
    np.not_equal(tag[1:], tag[:-1], out=boundary[1:])
    boundary[window_start[lengths > 0]] = True
    starts = boundary.nonzero()[0]
    counts = np.empty_like(starts)
    counts[:-1] = starts[1:] - starts[:-1]
    counts[-1] = n - starts[-1]
    window_of_group = window_start.searchsorted(starts, side="right") - 1
    group_tag = tag[starts]
    _check_order(ts, starts, counts, window_of_group, group_tag, n_tags)
    return window_of_group * n_tags + group_tag, _group_features(value, ts, starts, counts, spec)


def _check_order(ts, starts, counts, window_of_group, group_tag, n_tags: int) -> None:
    """Raise ValueError unless every window is sorted by (tag_position, ts_us) with tags in range.

    Checked per group, not per sample: tags must rise from one group to the
    next inside a window, and times must not fall inside a group."""
    if int(group_tag.min()) < 0 or int(group_tag.max()) >= n_tags:
        raise ValueError(
            f"tag_position must lie in 0..{n_tags - 1} (n_tags={n_tags}), got {int(group_tag.min())}..{int(group_tag.max())}"
        )
    same_window = window_of_group[1:] == window_of_group[:-1]
    tags_fall = same_window & (group_tag[1:] <= group_tag[:-1])
    times_fall = False
    if ts.shape[0] > 1:
        step = ts[1:] - ts[:-1]
        # The smallest step inside each group: reduceat over (start, end - 1) pairs, the even places.
        bounds = np.empty(2 * starts.shape[0], dtype=np.intp)
        bounds[0::2] = starts
        bounds[1::2] = starts + counts - 1
        bounds = np.minimum(bounds[:-1], step.shape[0] - 1)
        smallest = np.minimum.reduceat(step, bounds)[0::2]
        times_fall = ((smallest < 0) & (counts > 1)).any()
    if tags_fall.any() or times_fall:
        raise ValueError("window samples must be sorted by (tag_position, ts_us), as stream.windows.AssetWindows makes them")


def _group_features(value: np.ndarray, ts: np.ndarray, starts: np.ndarray, counts: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Features of contiguous groups of samples: (len(starts), len(spec.per_tag)).

    Group g is value[starts[g] : starts[g] + counts[g]] (counts >= 1, groups
    back to back), in event-time order.
    """
    # 0/0 and x/0 are expected (a constant signal, one sample) and replaced below.
    with np.errstate(divide="ignore", invalid="ignore"):
        return _group_features_unchecked(value, ts, starts, counts, spec)


def _group_features_unchecked(value, ts, starts, counts, spec: FeatureSpec) -> np.ndarray:
    column = spec.column
    rows = np.empty((starts.shape[0], len(spec.per_tag)))
    n = counts.astype(np.float64)
    vmin = np.minimum.reduceat(value, starts)
    vmax = np.maximum.reduceat(value, starts)
    mean = np.add.reduceat(value, starts) / n
    # A constant signal's mean is its value, exactly (a sum / n may be off by
    # an ulp, which would make every deviation a tiny non-zero).
    constant = vmin == vmax
    mean[constant] = vmin[constant]
    dev = value - mean.repeat(counts)
    dev2 = dev * dev
    m2 = np.add.reduceat(dev2, starts) / n
    flat = m2 == 0.0
    rows[:, 0] = counts
    rows[:, 1] = mean
    rows[:, 2] = np.sqrt(m2)
    rows[:, 3] = vmin
    rows[:, 4] = vmax

    if "rms" in column or "crest" in column:
        rms = np.sqrt(mean * mean + m2)  # mean of x² = mean² + variance: one pass less
        if "rms" in column:
            rows[:, column["rms"]] = rms
        if "crest" in column:
            crest = np.maximum(np.abs(vmin), np.abs(vmax)) / rms
            crest[rms == 0.0] = np.nan
            rows[:, column["crest"]] = crest
    if "ptp" in column:
        rows[:, column["ptp"]] = vmax - vmin
    if "skew" in column or "kurtosis" in column:
        few = counts < 3
        if "skew" in column:
            skew = (np.add.reduceat(dev2 * dev, starts) / n) / m2**1.5
            skew[flat] = 0.0
            skew[few] = np.nan
            rows[:, column["skew"]] = skew
        if "kurtosis" in column:
            kurtosis = (np.add.reduceat(dev2 * dev2, starts) / n) / (m2 * m2)
            kurtosis[flat] = 0.0
            kurtosis[few] = np.nan
            rows[:, column["kurtosis"]] = kurtosis
    if "slope" in column:
        rows[:, column["slope"]] = _slope(ts, dev, starts, counts, n)
    if "autocorr" in column:
        rows[:, column["autocorr"]] = _autocorr(dev, starts, counts, m2 * n, flat, spec.autocorr_lag)
    if spec.computes_fft:
        first = column["fft_0"]
        rows[:, first : first + spec.fft_bands] = _fft_bands(dev, starts, counts, spec.fft_bands)
    return rows


def _slope(ts: np.ndarray, dev: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Least-squares slope per group, units per second."""
    # Times relative to the group's first sample: whole numbers of us, exact in
    # float64, so no digits are lost to today's epoch, and a group's result does
    # not depend on which other windows share the call.
    first_ts = ts[starts]
    t = (ts - first_ts.repeat(counts)).astype(np.float64)
    dt = t - (np.add.reduceat(t, starts) / n).repeat(counts)
    slope = np.add.reduceat(dt * dev, starts) / np.add.reduceat(dt * dt, starts) * 1e6
    slope[ts[starts + counts - 1] == first_ts] = np.nan  # one sample, or all at one time: no line
    return slope


def _autocorr(dev: np.ndarray, starts: np.ndarray, counts: np.ndarray, sum_sq: np.ndarray, flat: np.ndarray, lag: int) -> np.ndarray:
    """Autocorrelation at ``lag`` samples per group, normalised by the group's variance."""
    size = dev.shape[0]
    if size <= lag:
        return np.full(starts.shape[0], np.nan)
    # products[i] pairs sample i with i + lag; group g owns the pairs that start
    # in [start, end - lag). reduceat over the interleaved bounds (start_0,
    # end_0 - lag, start_1, ...) sums exactly those at the even places.
    products = dev[:-lag] * dev[lag:]
    bounds = np.empty(2 * starts.shape[0], dtype=np.intp)
    bounds[0::2] = starts
    bounds[1::2] = starts + counts - lag
    bounds = bounds[:-1]  # the last group runs to the end of products
    # (bounds of groups with count <= lag may fall outside; those groups are NaN below)
    np.minimum(np.maximum(bounds, 0, out=bounds), products.shape[0] - 1, out=bounds)
    autocorr = np.add.reduceat(products, bounds)[0::2] / sum_sq
    autocorr[flat] = 0.0
    autocorr[counts <= lag] = np.nan
    return autocorr


@lru_cache(maxsize=1024)
def _band_layout(count: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``count`` samples: each band's first non-DC bin (0-based into bins
    1..count//2) and the bins per band."""
    bin_number = np.arange(1, count // 2 + 1)
    band = (2 * bin_number * bands + count - 1) // count - 1  # ceil(2jB/n) - 1
    first = np.searchsorted(band, np.arange(bands))
    return first, np.diff(np.append(first, bin_number.shape[0]))


def _fft_bands(dev: np.ndarray, starts: np.ndarray, counts: np.ndarray, bands: int) -> np.ndarray:
    """Band magnitudes per group; one 2-D rfft per distinct sample count.

    (Each row is transformed on its own, so a window's bands do not depend on
    which other windows share the call; a matrix product would not promise that.)"""
    result = np.full((starts.shape[0], bands), np.nan)
    eligible = (counts // 2 >= bands).nonzero()[0]
    if eligible.shape[0] == 0:
        return result
    by_count = eligible[counts[eligible].argsort(kind="stable")]
    sorted_counts = counts[by_count]
    edges = [0, *((sorted_counts[1:] != sorted_counts[:-1]).nonzero()[0] + 1).tolist(), by_count.shape[0]]
    for a, b in zip(edges[:-1], edges[1:]):
        count = int(sorted_counts[a])
        members = by_count[a:b]
        samples = dev[starts[members][:, None] + np.arange(count)]
        spectrum = np.fft.rfft(samples, axis=1)[:, 1 : count // 2 + 1]
        power = spectrum.real**2 + spectrum.imag**2
        first, per_band = _band_layout(count, bands)
        result[members] = np.sqrt(np.add.reduceat(power, first, axis=1) / per_band) / count
    return result


def detector_matrix(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The detectors' input: (n_windows, n_tags * len(detector_features)), columns as spec.vector_names."""
    features = np.asarray(features)
    if features.ndim != 3 or features.shape[2] != len(spec.per_tag):
        raise ValueError(
            f"features must have shape (windows, tags, {len(spec.per_tag)}) as compute_features returns, got {features.shape}"
        )
    # count is column 0; the detector features are the rest, in order.
    n_windows, n_tags, n_columns = features.shape
    return np.ascontiguousarray(features[:, :, 1:]).reshape(n_windows, n_tags * (n_columns - 1))


def features_message(asset: AssetConfig, window: ClosedWindow, features: np.ndarray, spec: FeatureSpec) -> dict:
    """The message for the features topic (stream/schemas/features.schema.json).

    ``features`` is this window's (n_tags, len(spec.per_tag)) slice of
    compute_features. NaN (and a non-finite overflow) becomes null; tags without
    a Good sample are listed too, with count 0.
    """
    features = np.asarray(features, dtype=np.float64)
    expected = (len(asset.tags), len(spec.per_tag))
    if features.shape != expected:
        raise ValueError(
            f'features for asset "{asset.id}" must have shape {expected} (tags, features), got {features.shape}: '
            "pass compute_features(...)[i] for this window"
        )
    values = np.where(np.isfinite(features), features, np.nan).tolist()
    names = spec.per_tag[1:]
    per_tag = {}
    for tag, row in zip(asset.tags, values):
        entry = {"count": int(row[0])}
        entry.update((name, None if v != v else v) for name, v in zip(names, row[1:]))
        per_tag[tag.id] = entry
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "features",
        "asset_id": asset.id,
        "asset_type": asset.type,
        "scale": window.scale,
        "window_start": utc_iso(window.start_us),
        "window_end": utc_iso(window.end_us),
        "window_end_us": int(window.end_us),
        "samples": int(window.value.shape[0]),
        "replayed": bool(window.replayed),
        "features": per_tag,
    }
