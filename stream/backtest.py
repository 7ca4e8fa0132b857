"""The backtest: a labelled historian export replayed offline through the objects
the worker runs, and scored against its labels.

Each input CSV is the recording of ONE asset (wide: an optional time column, one
column per tag, one or more label columns). Per file:

1. read it with stream.history (the time and tag columns, with the errors
   ``edgewatch train --csv`` gives); the label columns are read as text;
2. the asset: a configured one (``config`` + ``asset_id``: its tags must be the
   file's tag columns), or else a ``generic`` asset built here whose tags are
   the columns, with the file stem as its id;
3. the warm-up (the first rows, by count, duration or share) fits the detectors
   with ``edgewatch train``'s own code (stream.training.train) into a registry;
   warm-up rows labelled anomalous are left out of training;
4. the rest is replayed in event time through stream.pipeline.Pipeline with the
   models the worker would load (stream.models.load_catalog): windows, fast
   rules, detectors, fusion and the alarm book, no Kafka;
5. one verdict per input row after the warm-up: fusion's P(any fault) at that
   row (the latest fusion step at or before it), whether a fault alarm of the
   asset was open (raised or re-opened, until returned or closed), the top
   fault; scored against the labels with stream.evaluation.

Window scales (``default_scales``): slow data gets scales that hold at least
MIN_SAMPLES_PER_WINDOW samples each. Plain functions and dataclasses; the
command line is edgewatch/backtest_cli.py.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stream import evaluation
from stream.config import AssetConfig, ServiceConfig, WindowScale, duration_us
from stream.history import DEFAULT_BATCH_S, HistoryError, iso_to_us, matrix_batches, read_csv_columns
from stream.wire import utc_iso

log = logging.getLogger(__name__)

#: rows of a file without a time column start here (``--start``)
DEFAULT_START = "2000-01-01T00:00:00Z"
#: the share of each file that fits the detectors when no warm-up is given
DEFAULT_WARMUP_SHARE = 0.5
#: the default window scales hold at least this many samples each (at the median period)
MIN_SAMPLES_PER_WINDOW = 5
#: label columns taken without --label-columns, by name (case-insensitive)
LABEL_NAMES = ("label", "labels", "anomaly", "anomalous", "is_anomaly", "fault")
#: label texts that mean "normal" (case-insensitive); any other non-empty text names a fault
NORMAL_WORDS = frozenset({"normal", "ok", "false", "no", "none", "nan", "-"})
#: window lengths the default rule picks from
LADDER = ("1s", "2s", "5s", "10s", "15s", "30s", "1m", "2m", "5m", "10m", "15m", "30m", "1h", "2h", "3h", "6h", "12h", "24h", "48h", "168h")
#: the flood alarm's "fault" (stream.alarms.ids.FLOOD_FAULT): it groups alarms, it is no fault of the asset
_FLOOD_FAULT = "alarm_flood"
_OPENS = ("raised", "reopened")
_CLOSES = ("returned", "closed")
_NOT_ID = re.compile(r"[^A-Za-z0-9_.:/-]")


class BacktestError(ValueError):
    """The backtest cannot go ahead. The text names the file, the column and, where it can, the row."""


@dataclass
class BacktestOptions:
    """What the command line passes in; every field has the command's default."""

    separator: str = ","
    #: None: no time column, rows ``sample_period_s`` apart from ``start_us``
    time_column: str | None = "time"
    time_format: str = "iso"
    sample_period_s: float | None = None
    start_us: int = iso_to_us(DEFAULT_START)
    #: None: columns named as in LABEL_NAMES; [] : no labels
    label_columns: list[str] | None = None
    #: None: every column holding numbers, except the time and label columns
    tags: list[str] | None = None
    #: a configured asset (both or neither)
    config: ServiceConfig | None = None
    asset_id: str | None = None
    #: None: default_scales
    windows: list[WindowScale] | None = None
    #: at most one of the three; none: DEFAULT_WARMUP_SHARE
    warmup_rows: int | None = None
    warmup_s: float | None = None
    warmup_share: float | None = None
    #: trained detectors (isolation_forest, lstm_autoencoder); None: every enabled one
    detectors: list[str] | None = None
    #: where the models go; None: a temporary registry under out_dir, removed at the end
    registry_dir: str | None = None
    out_dir: Path = Path("backtest-out")
    seed: int = 0


@dataclass
class FileResult:
    name: str  # file stem
    source: str  # input path
    asset_id: str
    time_us: np.ndarray  # (n,) int64, one per input row after the warm-up
    tags: dict[str, np.ndarray]  # tag -> (n,) float values (the input)
    labels: dict[str, np.ndarray]  # label column -> (n,) as read (numbers or strings)
    anomalous: np.ndarray  # (n,) bool, the label verdict used for scoring
    probability: np.ndarray  # (n,) float, fused P(any fault) at each row
    alarm: np.ndarray  # (n,) int8 0/1
    top_fault: list[str]  # (n,)
    scores: dict[str, tuple[np.ndarray, np.ndarray]]  # "detector/scale" -> (window_end_us, p_value)
    alarms: list[dict]  # the alarm events (kind "alarm")
    metrics: dict  # this file's metrics (as in summary.json)
    warmup_end_us: int
    #: the rest of <stem>.summary.json: warm-up, scales, models, notes
    info: dict = field(default_factory=dict)
    #: the label cells as text, for <stem>.csv
    label_text: dict[str, list[str]] = field(default_factory=dict, repr=False)


#: on_progress(what, done, total), in rows: "training <name>" (the warm-up replayed for its
#: features; then "training <name>: fitting ..." per model), "replaying <name>"
Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- small parsers


def parse_duration_s(text: str) -> float:
    """'500ms', '1s', '3m', '1.5h', '2d' -> seconds."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: write e.g. 500ms, 1s, 3m, 8h or 2d")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_windows(text: str) -> list[WindowScale]:
    """'30m/3m,1h' -> window scales (length[/hop], comma separated)."""
    scales = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        length, _, hop = part.partition("/")
        try:
            scales.append(WindowScale(length=length.strip(), hop=hop.strip() or None))
        except ValueError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ") if hasattr(exc, "errors") else str(exc)
            raise ValueError(f"window scale {part!r}: {reason} (write length[/hop], e.g. 30m/3m,1h)") from None
    if not scales:
        raise ValueError(f"{text!r} names no window scale: write length[/hop], comma separated, e.g. 30m/3m,1h")
    names = [s.name for s in scales]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"window scale {', '.join(twice)} given twice")
    return sorted(scales, key=lambda s: (s.length_us, s.hop_us))


def sanitize_identifier(text: str, fallback: str) -> str:
    """A name fit for an asset or tag id (stream.config.Identifier): letters, digits
    and ``_ . : / -``, starting with a letter or digit, at most 200 characters."""
    cleaned = _NOT_ID.sub("_", text.strip())
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:200]
    return cleaned or fallback


def default_scales(configured: Sequence[WindowScale], period_us: int | None) -> tuple[list[WindowScale], str | None]:
    """The window scales for data sampled every ``period_us`` (the median period).

    The rule: each window must hold at least MIN_SAMPLES_PER_WINDOW samples, so a
    scale is kept when its length is at least 5 x the period. When none of the
    configured scales is that long, two are chosen from LADDER: the shortest
    length >= 5 x the period, and the shortest >= 10 x that one (tumbling).
    Returns (scales, a note saying what changed, or None)."""
    if not period_us or period_us <= 0:
        return list(configured), None
    need = MIN_SAMPLES_PER_WINDOW * period_us
    kept = [s for s in configured if s.length_us >= need]
    period = _human_s(period_us / 1e6)
    if len(kept) == len(configured):
        return list(kept), None
    if kept:
        dropped = [s.name for s in configured if s not in kept]
        return kept, f"median sample period {period}: window scale(s) {', '.join(dropped)} hold fewer than {MIN_SAMPLES_PER_WINDOW} samples, left out"
    base = next((d for d in LADDER if duration_us(d) >= need), None)
    if base is None:
        raise ValueError(f"median sample period {period} is too slow for any window scale; give --windows")
    coarse = next((d for d in LADDER if duration_us(d) >= 10 * duration_us(base)), None)
    scales = [WindowScale(length=base)] + ([WindowScale(length=coarse)] if coarse else [])
    return scales, f"median sample period {period}: window scales {', '.join(s.name for s in scales)} (at least {MIN_SAMPLES_PER_WINDOW} samples per window)"


def _human_s(seconds: float) -> str:
    return f"{seconds:g} s"


def label_verdict(cells: Sequence[str]) -> np.ndarray:
    """Anomalous or not per label cell: empty or 0 (or a word in NORMAL_WORDS) is
    normal; any other number, and any other text (a fault's name), is anomalous."""
    out = np.zeros(len(cells), dtype=bool)
    for i, cell in enumerate(cells):
        text = cell.strip()
        if not text:
            continue
        try:
            number = float(text)
        except ValueError:
            out[i] = text.lower() not in NORMAL_WORDS
            continue
        out[i] = bool(number != 0 and np.isfinite(number))
    return out


def label_values(cells: Sequence[str]) -> np.ndarray:
    """A label column as read: floats (empty = NaN) when every cell is a number, else strings."""
    numbers = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        text = cell.strip()
        if not text:
            continue
        try:
            numbers[i] = float(text)
        except ValueError:
            return np.array([c.strip() for c in cells], dtype=object)
    return numbers


# --------------------------------------------------------------------------- inputs


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """The CSV files: each path a file, or a folder whose *.csv files are taken (sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
            if not found:
                raise BacktestError(f"{path}: the folder holds no .csv file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise BacktestError(f"{path}: no such file or folder")
    if not files:
        raise BacktestError("no input: give one or more CSV files or folders")
    return files


@dataclass
class _Table:
    """One CSV file, read: header, the rows as text (blank lines dropped, as
    stream.history drops them), and the numbers stream.history read."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    time_us: np.ndarray
    tag_columns: list[str]
    values: np.ndarray  # (rows, tags)
    label_columns: list[str]
    notes: list[str]


def _read_text(path: Path, separator: str) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=separator)
            header = next(reader, None)
            rows = [r for r in reader if any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BacktestError(f"{path}: cannot be read as CSV: {exc}") from None
    if not header:
        raise BacktestError(f"{path}: the file is empty; it needs a header row naming the columns")
    header = [h.strip() for h in header]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise BacktestError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once; give each column its own name")
    if not rows:
        raise BacktestError(f"{path}: the file has a header but no data rows")
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise BacktestError(f"{path}, row {r + 2}: {len(row)} fields, the header has {len(header)} (separator {separator!r}? give --separator)")
    return header, rows


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_table(path: Path, options: BacktestOptions, asset: AssetConfig | None = None) -> _Table:
    """Read one export: the time and tag columns through stream.history (its
    errors: a cell that is not a number, a time it cannot read, time going
    backwards), the label columns as text. Errors name the file and column."""
    header, rows = _read_text(path, options.separator)
    columns = ", ".join(header)
    notes: list[str] = []
    time_column = options.time_column
    if time_column is not None and time_column not in header:
        raise BacktestError(
            f"{path}: no time column {time_column!r} (columns: {columns}); name it with --time-column, "
            "or give --sample-period when the file has no time column"
        )
    if options.label_columns is None:
        labels = [h for h in header if h.lower() in LABEL_NAMES and h != time_column]
        if labels:
            notes.append(f"label column(s) {', '.join(labels)} taken by name (--label-columns to choose others)")
    else:
        labels = list(options.label_columns)
        absent = [c for c in labels if c not in header]
        if absent:
            raise BacktestError(f"{path}: no label column {', '.join(map(repr, absent))} (--label-columns; columns: {columns})")
        if time_column in labels:
            raise BacktestError(f"{path}: column {time_column!r} is the time column; it cannot be a label column too")
    position = {h: i for i, h in enumerate(header)}
    if options.tags is not None:
        tags = list(options.tags)
        absent = [t for t in tags if t not in header]
        if absent:
            raise BacktestError(f"{path}: no column {', '.join(map(repr, absent))} (named by --tags; columns: {columns})")
        clash = [t for t in tags if t == time_column or t in labels]
        if clash:
            raise BacktestError(f"{path}: column {', '.join(map(repr, clash))} is the time or a label column; it cannot be a tag too (--tags)")
    elif asset is not None:
        tags = [t.id for t in asset.tags]
        absent = [t for t in tags if t not in header]
        if absent:
            raise BacktestError(
                f"{path}: no column for tag(s) {', '.join(map(repr, absent))} of asset {asset.id!r} (columns: {columns}); "
                "the file must have one column per tag of the asset"
            )
        extra = [h for h in header if h not in tags and h != time_column and h not in labels]
        if extra:
            raise BacktestError(
                f"{path}: column(s) {', '.join(map(repr, extra))} are not tags of asset {asset.id!r} (its tags: {', '.join(tags)}); "
                "name the label columns with --label-columns, or pass --tags with the columns to use"
            )
    else:
        # every column holding a number; a column with no number at all (text, or
        # empty) is left out and said so. A column of numbers with a stray text
        # cell stays in, so that stream.history names the bad cell.
        tags, text_columns = [], []
        for h in header:
            if h == time_column or h in labels:
                continue
            cells = (row[position[h]].strip() for row in rows)
            if any(cell and _is_number(cell) for cell in cells):
                tags.append(h)
            else:
                text_columns.append(h)
        if text_columns:
            notes.append(f"column(s) {', '.join(text_columns)} hold no number: left out (not tags)")
    if not tags:
        raise BacktestError(f"{path}: no tag column (columns: {columns}); the file needs at least one column of numbers, or name them with --tags")
    if asset is not None:
        unknown = [t for t in tags if t not in {x.id for x in asset.tags}]
        if unknown:
            raise BacktestError(
                f"{path}: column(s) {', '.join(map(repr, unknown))} are not tags of asset {asset.id!r} "
                f"(its tags: {', '.join(t.id for t in asset.tags)}); rename them or pass --tags with the columns to use"
            )
    try:
        time_us, names, values = read_csv_columns(
            path,
            separator=options.separator,
            time_column=time_column,
            time_format=options.time_format,
            sample_period_s=options.sample_period_s,
            start_us=options.start_us,
            tags=tags,
        )
    except HistoryError as exc:
        raise BacktestError(str(exc)) from None
    if len(time_us) != len(rows):  # both drop blank lines the same way
        raise BacktestError(f"{path}: read {len(time_us)} rows of numbers but {len(rows)} rows of text; is the file changing?")
    return _Table(path, header, rows, time_us, list(names), values, labels, notes)


def warmup_rows(table: _Table, options: BacktestOptions) -> int:
    """How many leading rows are the warm-up."""
    n = len(table.time_us)
    given = [x is not None for x in (options.warmup_rows, options.warmup_s, options.warmup_share)]
    if sum(given) > 1:
        raise BacktestError("give one warm-up: --warmup-rows N, or --warmup with a duration (8h) or a share (50%)")
    if options.warmup_rows is not None:
        count, what = int(options.warmup_rows), f"--warmup-rows {options.warmup_rows}"
    elif options.warmup_s is not None:
        end = int(table.time_us[0]) + int(round(options.warmup_s * 1e6))
        count, what = int(np.searchsorted(table.time_us, end, side="left")), f"--warmup {_human_s(options.warmup_s)}"
    else:
        share = DEFAULT_WARMUP_SHARE if options.warmup_share is None else options.warmup_share
        count, what = int(round(n * share)), f"warm-up share {share:.0%}"
    if count <= 0:
        raise BacktestError(f"{table.path}: {what} leaves no warm-up row; the detectors need history to learn from (give --warmup or --warmup-rows)")
    if count >= n:
        raise BacktestError(f"{table.path}: no rows after the warm-up ({what} takes all {n} rows); give a shorter --warmup or --warmup-rows")
    return count


# --------------------------------------------------------------------------- the asset and its configuration


def _period_us(table: _Table, options: BacktestOptions) -> int | None:
    if options.sample_period_s is not None:
        return int(round(options.sample_period_s * 1e6))
    steps = np.diff(table.time_us)
    steps = steps[steps > 0]
    return int(np.median(steps)) if steps.size else None


def _with_scales(doc: dict, scales: list[WindowScale], detectors: Sequence[str] | None) -> dict:
    """Set windows.scales and detectors.scales (all of them) in a config document,
    the LSTM's scale to the finest when its own is gone, and the trained detectors
    switched on or off as ``detectors`` says."""
    names = [s.name for s in scales]
    doc.setdefault("windows", {})["scales"] = [s.model_dump(exclude_none=True) for s in scales]
    det = doc.setdefault("detectors", {})
    det["scales"] = names
    lstm = det.setdefault("lstm_autoencoder", {})
    if lstm.get("scale", "1s") not in names:
        lstm["scale"] = names[0]
    if detectors is not None:
        for name in ("isolation_forest", "lstm_autoencoder"):
            det.setdefault(name, {})["enabled"] = name in detectors
    return doc


def asset_config(table: _Table, options: BacktestOptions) -> tuple[ServiceConfig, AssetConfig, dict[str, str], list[str]]:
    """The service configuration of one file's replay, its asset, column -> tag id,
    and notes. A configured asset keeps everything of the plant file but the
    other assets; the generic one gets the defaults."""
    notes: list[str] = []
    if options.config is not None:
        base = options.config
        asset = base.asset(options.asset_id)
        doc = base.model_dump(mode="python")
        doc["assets"] = [asset.model_dump(mode="python")]
        alarms = doc.get("alarms", {})
        if "assets" in alarms:
            alarms["assets"] = {k: v for k, v in alarms["assets"].items() if k == asset.id}
        configured = base.windows.scales
        tag_ids = {c: c for c in table.tag_columns}
    else:
        asset_id = sanitize_identifier(table.path.stem, "asset")
        if asset_id != table.path.stem:
            notes.append(f"asset id {asset_id!r} (from the file name {table.path.stem!r})")
        tag_ids, used = {}, set()
        for i, column in enumerate(table.tag_columns):
            tag = sanitize_identifier(column, f"tag{i + 1}")
            while tag in used:
                tag = f"{tag}_{i + 1}"
            used.add(tag)
            tag_ids[column] = tag
        renamed = [f"{c} -> {t}" for c, t in tag_ids.items() if c != t]
        if renamed:
            notes.append(f"tag ids: {', '.join(renamed)}")
        doc = {"assets": [{"id": asset_id, "type": "generic", "tags": [{"id": tag_ids[c]} for c in table.tag_columns]}]}
        configured = ServiceConfig.model_fields["windows"].default.scales
    if options.windows is not None:
        scales = list(options.windows)
    else:
        try:
            scales, note = default_scales(configured, _period_us(table, options))
        except ValueError as exc:
            raise BacktestError(f"{table.path}: {exc}") from None
        if note:
            notes.append(note)
    _with_scales(doc, scales, options.detectors)
    try:
        config = ServiceConfig.model_validate(doc)
    except ValueError as exc:
        raise BacktestError(f"{table.path}: the replay's configuration is invalid: {exc}") from None
    if options.config is None:
        asset = config.assets[0]
    else:
        asset = config.asset(options.asset_id)
    return config, asset, tag_ids, notes


# --------------------------------------------------------------------------- one file


def _unique_names(files: Sequence[Path]) -> list[str]:
    """The file stems, made unique (a second a.csv from another folder is a-2)."""
    names: list[str] = []
    for path in files:
        name, k = path.stem, 1
        while name in names:
            k += 1
            name = f"{path.stem}-{k}"
        names.append(name)
    return names


def _rows_of(batch, n_tags: int) -> int:
    return len(batch.ts_us) // max(1, n_tags)


def _alarm_on(time_us: np.ndarray, events: list[dict], asset_id: str) -> np.ndarray:
    """1 where a fault alarm of the asset is open: from its raise (or re-open) to
    its return (or close), by the events' source_data_time_us."""
    opened: dict[str, int] = {}
    intervals: list[tuple[int, int | None]] = []
    for event in events:
        if event.get("asset_id") != asset_id or event.get("fault") == _FLOOD_FAULT:
            continue
        t = event.get("source_data_time_us")
        if t is None:
            continue  # an operator command's event: not offline
        alert_id, kind = event["alert_id"], event["event"]
        if kind in _OPENS and alert_id not in opened:
            opened[alert_id] = int(t)
        elif kind in _CLOSES and alert_id in opened:
            intervals.append((opened.pop(alert_id), int(t)))
    intervals.extend((start, None) for start in opened.values())
    count = np.zeros(len(time_us) + 1, dtype=np.int64)
    for start, end in intervals:
        i = int(np.searchsorted(time_us, start, side="left"))
        j = len(time_us) if end is None else int(np.searchsorted(time_us, end, side="left"))
        if j > i:
            count[i] += 1
            count[j] -= 1
    return (np.cumsum(count[:-1]) > 0).astype(np.int8)


def _fusion_at_rows(time_us: np.ndarray, results: list, asset_id: str) -> tuple[np.ndarray, list[str]]:
    """P(any fault) and the top fault of the latest fusion step at or before each row."""
    steps = sorted((r for r in results if r.asset_id == asset_id), key=lambda r: r.event_time_us)
    if not steps:
        return np.zeros(len(time_us)), [""] * len(time_us)
    at = np.array([r.event_time_us for r in steps], dtype=np.int64)
    p = np.array([r.p_any_fault for r in steps], dtype=float)
    idx = np.searchsorted(at, time_us, side="right") - 1
    probability = np.where(idx >= 0, p[np.maximum(idx, 0)], 0.0)
    names = [r.top_fault for r in steps]
    top = [names[i] if i >= 0 and q >= 0.5 else "" for i, q in zip(idx.tolist(), probability.tolist())]
    return probability, top


def _scores_by_model(scores: list[dict], asset_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    grouped: dict[str, list[tuple[int, float]]] = {}
    for s in scores:
        if s.get("asset_id") == asset_id:
            grouped.setdefault(f"{s['detector']}/{s['scale']}", []).append((int(s["window_end_us"]), float(s["p_value"])))
    out = {}
    for key, items in sorted(grouped.items()):
        items.sort()
        out[key] = (np.array([t for t, _ in items], dtype=np.int64), np.array([p for _, p in items], dtype=float))
    return out


def _train(config, asset, table, tag_ids, n_warm, keep, options, registry_dir, name, on_progress):
    from stream.training import MIN_WINDOWS, TrainingError, train

    rows = np.flatnonzero(keep[:n_warm])
    names = [tag_ids[c] for c in table.tag_columns]
    batches = matrix_batches(asset.id, names, table.time_us[rows], table.values[rows], batch_s=DEFAULT_BATCH_S)
    done = [0]

    def on_batch(batch) -> None:
        done[0] += _rows_of(batch, len(names))
        if on_progress is not None:
            on_progress(f"training {name}", done[0], len(rows))

    def on_stage(text: str) -> None:  # "fitting isolation_forest at 10s on 180 windows"
        if on_progress is not None:
            on_progress(f"training {name}: {text}", len(rows), len(rows))

    if len(rows) == 0:
        raise BacktestError(f"{table.path}: every warm-up row is labelled anomalous; training needs normal rows (give a longer --warmup)")
    try:
        summary = train(
            config, asset.id, batches, detectors=options.detectors, registry_dir=registry_dir, seed=options.seed,
            source=f"backtest warm-up of {table.path}", on_batch=on_batch, on_stage=on_stage,
        )
    except TrainingError as exc:
        raise BacktestError(f"{table.path}: training on the warm-up failed: {exc}") from None
    if not summary.detectors:
        found = ", ".join(f"{n} windows of {s}" for s, n in summary.windows.items())
        raise BacktestError(
            f"{table.path}: too little warm-up for training: {found} found, {MIN_WINDOWS} needed per scale "
            f"({len(rows)} warm-up rows used); give a longer --warmup / --warmup-rows or shorter --windows"
        )
    return summary


def backtest_file(path: Path, name: str, options: BacktestOptions, registry_dir: str, on_progress: Progress | None = None) -> FileResult:
    """Warm up, train, replay and score one file."""
    from stream.models import load_catalog
    from stream.pipeline import Pipeline
    from stream.replay import replay

    asset = None
    if options.config is not None:
        asset = options.config.asset(options.asset_id)
        if asset is None:
            known = ", ".join(a.id for a in options.config.assets)
            raise BacktestError(f"no asset {options.asset_id!r} in the configuration (assets: {known})")
    table = read_table(path, options, asset)
    n = len(table.time_us)
    n_warm = warmup_rows(table, options)
    config, asset, tag_ids, notes = asset_config(table, options)
    notes = table.notes + notes
    label_text = {c: [row[i] for row in table.rows] for c, i in ((c, table.header.index(c)) for c in table.label_columns)}
    anomalous_all = np.zeros(n, dtype=bool)
    for cells in label_text.values():
        anomalous_all |= label_verdict(cells)
    if not table.label_columns:
        notes.append("no label column: the metrics that need labels are null")
    keep = ~anomalous_all
    dropped = int(np.count_nonzero(anomalous_all[:n_warm]))
    if dropped:
        notes.append(f"{dropped} warm-up row(s) labelled anomalous were left out of training")

    fused = set(config.fusion.detectors)
    if options.detectors is not None and not fused & set(options.detectors):
        notes.append(
            f"fusion weighs {', '.join(sorted(fused))}, none of the detectors trained ({', '.join(options.detectors)}): "
            "the alarms follow the online detector alone (fusion.detectors in a plant file changes that)"
        )
    summary = _train(config, asset, table, tag_ids, n_warm, keep, options, registry_dir, name, on_progress)
    models = {}
    for trained in summary.detectors:
        for scale, metrics in trained.metrics.items():
            if "skipped" in metrics:
                notes.append(f"{trained.detector} at {scale}: not trained, {metrics['skipped']} (a longer warm-up would train it)")
            else:
                models[f"{trained.detector}/{scale}"] = {
                    "version": trained.version,
                    "windows": metrics.get("fit_windows", 0) + metrics.get("calibration_windows", 0) + metrics.get("validation_windows", 0),
                    "validation_false_alarm_rate": metrics.get("validation_false_alarm_rate"),
                }
    catalog = load_catalog(config, registry_dir)
    if catalog.refused:
        reasons = "; ".join(f"{d} of {t}: {why}" for (t, d), why in catalog.refused.items())
        raise BacktestError(f"{path}: the models just trained cannot be loaded: {reasons}")

    # the replay: the rest of the file, in event time, through the worker's objects
    time_us = table.time_us[n_warm:]
    names = [tag_ids[c] for c in table.tag_columns]
    pipeline = Pipeline(config, max_future_check=False, models=catalog, assets=[asset.id], keep_fusion=True)
    replayed = [0]
    total = n - n_warm

    def on_batch(batch) -> None:
        replayed[0] += _rows_of(batch, len(names))
        if on_progress is not None:
            on_progress(f"replaying {name}", replayed[0], total)

    batches = matrix_batches(asset.id, names, time_us, table.values[n_warm:], batch_s=DEFAULT_BATCH_S)
    result = replay(config, batches, pipeline=pipeline, keep_messages=True, on_batch=on_batch)
    if result.deadletters:
        raise BacktestError(f"{path}: the pipeline refused a batch of the replay: {result.deadletters[0]['reason']}")

    probability, top_fault = _fusion_at_rows(time_us, result.fusion, asset.id)
    alarm = _alarm_on(time_us, result.alarms, asset.id)
    anomalous = anomalous_all[n_warm:]
    metrics = evaluation.score(time_us, anomalous, alarm.astype(bool))
    if int(result.samples) and not result.fusion:
        notes.append("fusion made no step (is fusion.enabled false, or no window closed?): probability 0 throughout")
    warmup_end_us = int(time_us[0])
    info = {
        "rows": n,
        "warmup_rows": n_warm,
        "warmup_end": utc_iso(warmup_end_us),
        "warmup_anomalous_rows_dropped": dropped,
        "replayed_rows": total,
        "tags": {c: tag_ids[c] for c in table.tag_columns},
        "label_columns": list(table.label_columns),
        "window_scales": [s.name for s in config.windows.scales],
        "models": models,
        "training_windows": dict(summary.windows),
        "fusion_steps": len(result.fusion),
        "alarm_events": len(result.alarms),
        "notes": notes,
    }
    return FileResult(
        name=name,
        source=str(path),
        asset_id=asset.id,
        time_us=time_us,
        tags={c: table.values[n_warm:, i] for i, c in enumerate(table.tag_columns)},
        labels={c: label_values(cells[n_warm:]) for c, cells in label_text.items()},
        anomalous=anomalous,
        probability=probability,
        alarm=alarm,
        top_fault=top_fault,
        scores=_scores_by_model(result.scores, asset.id),
        alarms=list(result.alarms),
        metrics=metrics,
        warmup_end_us=warmup_end_us,
        info=info,
        label_text={c: cells[n_warm:] for c, cells in label_text.items()},
    )


# --------------------------------------------------------------------------- all files


def run_backtest(paths: Sequence[str | Path], options: BacktestOptions, on_progress: Progress | None = None) -> tuple[list[FileResult], dict]:
    """Backtest every file (a folder: its *.csv files); returns the per-file
    results and the totals (stream.evaluation.pool of their metrics)."""
    if (options.config is None) != (options.asset_id is None):
        raise BacktestError("a configured asset needs both --config and --asset (without them, a generic asset is built from the columns)")
    if options.time_column is not None and options.sample_period_s is not None:
        raise BacktestError("give --time-column or --sample-period, not both: with a sample period the file has no time column")
    if options.time_column is None and options.sample_period_s is None:
        raise BacktestError("without a time column the sample period is needed: give --sample-period (e.g. 1s, 3m)")
    files = input_files(paths)
    names = _unique_names(files)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = None
    if options.registry_dir is None:
        temporary = tempfile.mkdtemp(prefix="registry-", dir=out_dir)
    results = []
    try:
        for path, name in zip(files, names):
            registry = options.registry_dir or str(Path(temporary) / name)
            results.append(backtest_file(path, name, options, registry, on_progress))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    totals = evaluation.pool([r.metrics for r in results])
    return results, totals


# --------------------------------------------------------------------------- outputs


def json_ready(x):
    """Dicts (keys as text), lists, numpy scalars, paths and non-finite floats (null) as JSON
    takes them; the backtest's and the evaluations' output files all go through it."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def file_summary(result: FileResult) -> dict:
    """<stem>.summary.json: the file, its asset, what ran, and its metrics."""
    return json_ready(
        {"file": result.name, "source": result.source, "asset_id": result.asset_id, **result.info, "metrics": result.metrics}
    )


def write_file_csv(result: FileResult, path: Path) -> None:
    """<stem>.csv: one row per input row after the warm-up, in order: time (ISO
    UTC), probability, alarm, top_fault, then the label columns as read."""
    labels = list(result.label_text)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "probability", "alarm", "top_fault", *labels])
        columns = [result.label_text[c] for c in labels]
        for i, t in enumerate(result.time_us.tolist()):
            writer.writerow([utc_iso(t), f"{result.probability[i]:.6g}", int(result.alarm[i]), result.top_fault[i], *(c[i] for c in columns)])


def write_outputs(results: Sequence[FileResult], totals: dict, out_dir: str | Path, options: dict | None = None) -> list[Path]:
    """<stem>.csv and <stem>.summary.json per file, summary.json with the totals."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        csv_path = out / f"{result.name}.csv"
        write_file_csv(result, csv_path)
        summary_path = out / f"{result.name}.summary.json"
        summary_path.write_text(json.dumps(file_summary(result), indent=2) + "\n", encoding="utf-8")
        written += [csv_path, summary_path]
    overall = {
        "files": [{"file": r.name, "source": r.source, "asset_id": r.asset_id, "metrics": r.metrics} for r in results],
        "totals": totals,
        "metric_definitions": METRIC_DEFINITIONS,
    }
    if options:
        overall["options"] = options
    path = out / "summary.json"
    path.write_text(json.dumps(json_ready(overall), indent=2) + "\n", encoding="utf-8")
    written.append(path)
    return written


#: in summary.json, so that the numbers explain themselves
METRIC_DEFINITIONS = {
    "anomalous": "a row whose label (any label column) is non-empty and non-zero (text other than normal/ok/false/no/none)",
    "predicted": "a row at which a fault alarm of the asset is open: raised or re-opened, until returned or closed",
    "precision": "tp / (tp + fp), point-wise over rows",
    "recall": "tp / (tp + fn), point-wise over rows",
    "f1": "2 tp / (2 tp + fp + fn)",
    "false_alarm_rate": "fp / label-normal rows",
    "missed_alarm_rate": "fn / label-anomalous rows",
    "episodes": "maximal runs of consecutive anomalous rows",
    "event_recall": "detected episodes / episodes; detected: an alarm is on at any row of the episode",
    "mean_detection_delay_s": "mean over detected episodes of (first row with an alarm on - first row of the episode), seconds",
    "false_alarm_events": "alarm runs (maximal runs of predicted rows) that touch no anomalous row",
    "null": "a ratio whose denominator is 0",
    "totals": "confusion counts summed and episodes pooled over all files",
}
