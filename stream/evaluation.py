"""Scoring an alarm series against labels: point-wise and event-wise, pure numpy.

The backtest (stream.backtest) hands every file's rows here: one verdict per row
from the labels (``anomalous``) and one from the service (``predicted``: a fault
alarm was open at that row). Definitions, all per row unless said otherwise:

* confusion counts: ``tp`` (anomalous and predicted), ``fp`` (normal, predicted),
  ``fn`` (anomalous, not predicted), ``tn`` (normal, not predicted);
* ``precision`` = tp / (tp + fp), ``recall`` = tp / (tp + fn),
  ``f1`` = 2 tp / (2 tp + fp + fn) (the harmonic mean of the two; 0 when one of
  them is 0, also when the other is undefined);
* ``false_alarm_rate`` = fp / (fp + tn): the share of label-normal rows under an
  alarm; ``missed_alarm_rate`` = fn / (tp + fn) = 1 - recall;
* episodes: the maximal runs of consecutive anomalous rows. An episode is
  *detected* when an alarm is on at any of its rows; ``event_recall`` = detected
  episodes / episodes; the *detection delay* of a detected episode is the time of
  its first row with an alarm on minus the time of its first row, in seconds (0
  when the alarm was already on), and ``mean_detection_delay_s`` averages them;
* alarm events: the maximal runs of predicted rows; a *false alarm event* is one
  that touches no anomalous row.

A ratio whose denominator is 0 (no anomalous rows, no alarm, ...) is ``None``
(null in JSON), never a made-up 0 or 1. :func:`pool` combines several files the
way the totals are meant: confusion counts are summed and episodes pooled, so
the totals are the metrics of all rows of all files taken together (episodes
never span two files).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

#: every key :func:`score` and :func:`pool` return (summary.json, the report)
METRIC_KEYS = (
    "rows", "anomalous_rows", "alarm_rows", "tp", "fp", "fn", "tn",
    "precision", "recall", "f1", "false_alarm_rate", "missed_alarm_rate",
    "episodes", "episodes_detected", "event_recall", "mean_detection_delay_s", "max_detection_delay_s",
    "detection_delays_s", "alarm_events", "false_alarm_events",
)


def _bools(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a.astype(bool)


def confusion(anomalous, predicted) -> dict[str, int]:
    """Point-wise confusion counts {tp, fp, fn, tn}."""
    a, p = _bools(anomalous, "anomalous"), _bools(predicted, "predicted")
    if a.shape != p.shape:
        raise ValueError(f"anomalous and predicted differ in length ({a.size} and {p.size})")
    return {
        "tp": int(np.count_nonzero(a & p)),
        "fp": int(np.count_nonzero(~a & p)),
        "fn": int(np.count_nonzero(a & ~p)),
        "tn": int(np.count_nonzero(~a & ~p)),
    }


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | None]:
    """precision, recall, f1, false_alarm_rate, missed_alarm_rate from the counts."""
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "false_alarm_rate": _ratio(fp, fp + tn),
        "missed_alarm_rate": _ratio(fn, tp + fn),
    }


def runs(flags) -> list[tuple[int, int]]:
    """Maximal runs of True as (first index, index after the last)."""
    f = _bools(flags, "flags").astype(np.int8)
    if f.size == 0:
        return []
    edges = np.diff(np.concatenate(([0], f, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def episodes(anomalous) -> list[tuple[int, int]]:
    """The label episodes: maximal runs of anomalous rows, (start, end exclusive)."""
    return runs(anomalous)


def detection_delays(time_us, anomalous, predicted) -> list[float | None]:
    """Per label episode, in order: seconds from its first row to its first row
    with an alarm on, or None when no alarm was on during it."""
    t = np.asarray(time_us, dtype=np.int64)
    p = _bools(predicted, "predicted")
    out: list[float | None] = []
    for start, end in episodes(anomalous):
        hits = np.flatnonzero(p[start:end])
        out.append(None if hits.size == 0 else (int(t[start + hits[0]]) - int(t[start])) / 1e6)
    return out


def score(time_us, anomalous, predicted) -> dict:
    """Every metric of one series (see the module docstring); JSON-ready."""
    t = np.asarray(time_us, dtype=np.int64)
    a, p = _bools(anomalous, "anomalous"), _bools(predicted, "predicted")
    if not (t.shape == a.shape == p.shape):
        raise ValueError(f"time_us, anomalous and predicted differ in length ({t.size}, {a.size}, {p.size})")
    counts = confusion(a, p)
    delays = detection_delays(t, a, p)
    alarm_runs = runs(p)
    false_events = sum(1 for s, e in alarm_runs if not a[s:e].any())
    return _assemble(
        rows=int(a.size),
        anomalous_rows=int(a.sum()),
        alarm_rows=int(p.sum()),
        counts=counts,
        episodes_total=len(delays),
        delays=[d for d in delays if d is not None],
        alarm_events=len(alarm_runs),
        false_alarm_events=false_events,
    )


def pool(metrics: Iterable[dict]) -> dict:
    """The totals of several files: confusion counts summed, episodes and their
    delays pooled, every ratio recomputed from the pooled numbers."""
    items = list(metrics)
    total = lambda key: int(sum(m[key] for m in items))  # noqa: E731
    delays = [float(d) for m in items for d in m["detection_delays_s"]]
    return _assemble(
        rows=total("rows"),
        anomalous_rows=total("anomalous_rows"),
        alarm_rows=total("alarm_rows"),
        counts={k: total(k) for k in ("tp", "fp", "fn", "tn")},
        episodes_total=total("episodes"),
        delays=delays,
        alarm_events=total("alarm_events"),
        false_alarm_events=total("false_alarm_events"),
    )


def _assemble(*, rows, anomalous_rows, alarm_rows, counts, episodes_total, delays, alarm_events, false_alarm_events) -> dict:
    out = {"rows": rows, "anomalous_rows": anomalous_rows, "alarm_rows": alarm_rows, **counts}
    out.update(rates(**counts))
    out.update(
        episodes=episodes_total,
        episodes_detected=len(delays),
        event_recall=_ratio(len(delays), episodes_total),
        mean_detection_delay_s=float(np.mean(delays)) if delays else None,
        max_detection_delay_s=float(np.max(delays)) if delays else None,
        detection_delays_s=[float(d) for d in delays],
        alarm_events=alarm_events,
        false_alarm_events=false_alarm_events,
    )
    return out
