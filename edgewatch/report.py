"""The visual report of `edgewatch backtest`: static HTML pages with inline SVG.

    out_dir/index.html      one row per replayed file + the totals, linked to
    out_dir/<file>.html     that file's metrics, charts and alarm events

Everything is drawn by hand as SVG (no matplotlib, no JavaScript, no external
URL), so the folder can be mailed, archived or opened from a USB stick.

Every chart of a file page shares ONE time axis (`TimeAxis`): the same SVG width,
the same left margin and the same µs -> x mapping, so a band in the label strip
lines up with the probability rise and the tag that moved, when the pages are
stacked in a browser at any zoom (all SVGs scale together through their viewBox).

Long files are reduced per pixel column before drawing (first/min/max/last of
each column, see `column_extents`) so a million-row file still gives a page of a
few MB; the picture is the same as drawing every point, since a column is one
pixel wide anyway.

`results` are duck-typed: any object with the attributes of
stream.backtest.FileResult (name, source, asset_id, time_us, tags, labels,
anomalous, probability, alarm, top_fault, scores, alarms, metrics,
warmup_end_us) will do.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------- layout

#: left margin of every chart, where the row names and value ranges go
LEFT = 190
#: width of the plotting area: also the number of pixel columns data is reduced to
PLOT_W = 1200
RIGHT = 20
SVG_W = LEFT + PLOT_W + RIGHT
#: height of the time labels under a chart
AXIS_H = 34

#: tags drawn as traces at most; the rest are named in a note (a page with 200
#: small multiples is neither readable nor small)
MAX_TAGS = 30
#: alarm events listed at most on one page
MAX_EVENTS = 2000
#: fault names written over the probability curve at most
MAX_FAULT_LABELS = 8
#: -log10(p) is drawn up to this value; p = 1e-8 is already "certain"
SCORE_CAP = 8.0
#: the detectors' alarm threshold, p < 0.001
SCORE_THRESHOLD = -math.log10(0.001)

COLOR_LABEL = "#f08c00"  # orange: what the labels say
COLOR_ALARM = "#d62828"  # red: what edgewatch said
COLOR_WARMUP = "#868e96"  # grey: detectors still learning
COLOR_LINE = "#1c5d99"
COLOR_GRID = "#dee2e6"
COLOR_TEXT = "#212529"
COLOR_MUTED = "#6c757d"


# ---------------------------------------------------------------- text and numbers


def esc(value: Any) -> str:
    """Every piece of text that came from data goes through here (tag names,
    messages, file names can hold <, &, quotes)."""
    return html.escape(str(value), quote=True)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_ratio(value: Any) -> str:
    """A 0..1 metric as printed in the tables: 3 decimals, a dash when undefined."""
    if _is_missing(value):
        return "—"
    return f"{float(value):.3f}"


def fmt_delay(value: Any) -> str:
    """Mean detection delay in seconds; a dash when no episode was detected."""
    if _is_missing(value):
        return "—"
    return f"{float(value):.1f} s"


def fmt_count(value: Any) -> str:
    if _is_missing(value):
        return "—"
    return f"{int(value):,}"


def fmt_value(value: float) -> str:
    """A tag value in a range label: short, whatever the magnitude."""
    return f"{value:.4g}"


def utc_text(t_us: Any) -> str:
    """µs since the epoch -> '2026-03-01 12:00:00.000 UTC' (integer arithmetic:
    a float of seconds loses the microseconds at today's epoch)."""
    if t_us is None:
        return "—"
    seconds, micros = divmod(int(t_us), 1_000_000)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc) + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def _short(text: str, limit: int = 28) -> str:
    """Fit a name into the left margin; the full name stays in the page text."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _f(value: float) -> str:
    """SVG coordinates: one decimal is a tenth of a pixel, enough, and short."""
    return f"{value:.1f}"


# ---------------------------------------------------------------- the shared time axis

#: tick steps in seconds, "round" for a person reading a clock
_TICK_STEPS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400, 365 * 86400,
)


@dataclass(frozen=True)
class TimeAxis:
    """µs since the epoch -> x in SVG pixels; the one mapping all charts of a page use."""

    t0_us: int
    t1_us: int
    left: float = LEFT
    width: float = PLOT_W

    @classmethod
    def spanning(cls, time_us: np.ndarray) -> "TimeAxis":
        """From the first row to the end of the last row's interval (see
        `row_end_times`), so the last row's state has a visible width too."""
        t = np.asarray(time_us, dtype=np.int64)
        if t.size == 0:
            return cls(0, 1_000_000)
        ends = row_end_times(t)
        t0, t1 = int(t.min()), int(ends.max())
        return cls(t0, t1 if t1 > t0 else t0 + 1_000_000)

    def x(self, t_us: Any) -> Any:
        """x of a time (scalar or array). Differences are taken in int64 first:
        epoch µs are ~1.7e15 and the subtraction must not lose precision."""
        dt = (np.asarray(t_us, dtype=np.int64) - np.int64(self.t0_us)).astype(np.float64)
        return self.left + dt * (self.width / (self.t1_us - self.t0_us))

    @property
    def right(self) -> float:
        return self.left + self.width

    def ticks(self, target: int = 8) -> list[tuple[float, str, str]]:
        """(x, time label, date label or "") for round UTC times; the date is
        written at the first tick and wherever the day changes."""
        span_s = (self.t1_us - self.t0_us) / 1e6
        step_s = next((s for s in _TICK_STEPS_S if span_s / s <= target), _TICK_STEPS_S[-1])
        step_us = max(1, int(round(step_s * 1e6)))
        first = -(-self.t0_us // step_us) * step_us
        out, last_date = [], None
        for t in range(first, self.t1_us + 1, step_us):
            moment = datetime.fromtimestamp(t // 1_000_000, tz=timezone.utc) + timedelta(microseconds=t % 1_000_000)
            date = moment.strftime("%Y-%m-%d")
            if step_s >= 86400:
                out.append((float(self.x(t)), date, ""))
                continue
            if step_s < 1:
                label = moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
            elif step_s < 60:
                label = moment.strftime("%H:%M:%S")
            else:
                label = moment.strftime("%H:%M")
            out.append((float(self.x(t)), label, date if date != last_date else ""))
            last_date = date
        return out


def row_end_times(time_us: np.ndarray) -> np.ndarray:
    """Each row's state holds until the next row; the last one for the median
    row interval (a one-row anomaly at the end must still show)."""
    t = np.asarray(time_us, dtype=np.int64)
    if t.size == 0:
        return t.copy()
    ends = np.empty_like(t)
    ends[:-1] = t[1:]
    step = int(np.median(np.diff(t))) if t.size > 1 else 1_000_000
    ends[-1] = t[-1] + max(step, 1)
    return ends


# ---------------------------------------------------------------- data reduction


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) row indices of the True runs of a mask."""
    m = np.asarray(mask).astype(bool)
    edges = np.diff(np.concatenate(([0], m.view(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def band_spans(time_us: np.ndarray, mask: np.ndarray, axis: TimeAxis) -> list[tuple[float, float]]:
    """x extents (x0, x1) of the shaded bands of a mask, merged at pixel
    resolution: a label that flickers every row in a million-row file gives a few
    hundred rectangles, not half a million. x0 is exactly axis.x(first row's
    time) of the first run in each merged band."""
    t = np.asarray(time_us, dtype=np.int64)
    starts, ends = runs(mask)
    if starts.size == 0:
        return []
    row_end = row_end_times(t)
    x0 = axis.x(t[starts])
    # at least one pixel wide, so a single-row episode is visible
    x1 = np.maximum(axis.x(row_end[ends - 1]), x0 + 1.0)
    reach = np.maximum.accumulate(x1)
    # a new band only where a gap of a pixel or more separates it from all before
    group = np.flatnonzero(np.concatenate(([True], x0[1:] - reach[:-1] >= 1.0)))
    gx0 = x0[group]
    gx1 = np.maximum.reduceat(x1, group)
    return list(zip(gx0.tolist(), gx1.tolist()))


@dataclass
class ColumnExtents:
    """One drawable line after reduction: per occupied pixel column, the first,
    min, max and last finite value, and whether the line breaks before it."""

    x: np.ndarray  # column centre, px
    first: np.ndarray
    low: np.ndarray
    high: np.ndarray
    last: np.ndarray
    break_before: np.ndarray  # bool: a NaN lies between the previous column and this one


def column_extents(time_us: np.ndarray, values: np.ndarray, axis: TimeAxis) -> ColumnExtents:
    """Reduce a series to at most one group per pixel column (M4: first, min,
    max, last). Non-finite values are gaps: the line is broken wherever one lies
    between two drawn columns, never filled with zeros. Points off the axis are
    dropped."""
    t = np.asarray(time_us, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    k = min(t.size, v.size)  # a mismatch is the caller's bug; draw what pairs up
    t, v = t[:k], v[:k]
    if t.size and np.any(t[1:] < t[:-1]):  # score windows may arrive out of order
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    x = axis.x(t) if t.size else np.empty(0)
    inside = (x >= axis.left) & (x <= axis.right)
    t, v, x = t[inside], v[inside], x[inside]
    finite = np.isfinite(v)
    idx = np.flatnonzero(finite)
    if idx.size == 0:
        empty = np.empty(0)
        return ColumnExtents(empty, empty, empty, empty, empty, np.empty(0, dtype=bool))
    gaps_so_far = np.cumsum(~finite)  # non-finite rows up to and including i
    col = np.minimum(np.floor(x - axis.left).astype(np.int64), int(axis.width) - 1)
    c = col[idx]
    vals = v[idx]
    starts = np.flatnonzero(np.concatenate(([True], c[1:] != c[:-1])))
    ends = np.concatenate((starts[1:], [idx.size]))
    first_row, last_row = idx[starts], idx[ends - 1]
    breaks = np.zeros(starts.size, dtype=bool)
    breaks[1:] = gaps_so_far[first_row[1:]] != gaps_so_far[last_row[:-1]]
    return ColumnExtents(
        x=axis.left + c[starts] + 0.5,
        first=vals[starts],
        low=np.minimum.reduceat(vals, starts),
        high=np.maximum.reduceat(vals, starts),
        last=vals[ends - 1],
        break_before=breaks,
    )


def line_path(ext: ColumnExtents, y_of) -> str:
    """SVG path data of reduced columns: 'M'/'L' to a column's first value, then
    vertical strokes to its min, max and last. A new 'M' starts after each gap;
    a segment that is a single point gets a 1 px stub so it stays visible."""
    if ext.x.size == 0:
        return ""
    ys = [y_of(a) for a in (ext.first, ext.low, ext.high, ext.last)]
    parts: list[str] = []
    lone = False  # the current segment is so far one point with no extent
    for i in range(ext.x.size):
        start = i == 0 or bool(ext.break_before[i])
        if start and lone:
            parts.append("h1")
        prev = _f(ys[0][i])
        parts.append(f"{'M' if start else 'L'}{_f(ext.x[i])},{prev}")
        lone = start
        for y in (ys[1][i], ys[2][i], ys[3][i]):
            s = _f(y)
            if s != prev:
                parts.append(f"V{s}")
                prev, lone = s, False
    if lone:
        parts.append("h1")
    return "".join(parts)


def scale(lo: float, hi: float, top: float, height: float):
    """value -> y for a row spanning [top, top + height], lo at the bottom.
    A constant series (lo == hi) is drawn through the middle."""
    if not hi > lo:
        return lambda v: np.full(np.shape(v), top + height / 2.0)
    k = height / (hi - lo)
    return lambda v: top + height - (np.asarray(v, dtype=np.float64) - lo) * k


# ---------------------------------------------------------------- SVG pieces


def svg_document(chart_id: str, height: float, body: Iterable[str], label: str) -> str:
    """One chart: fixed width and viewBox, so every chart of a page has the same
    x scale whatever the browser's zoom. The clip path keeps lines and bands
    inside the plotting area."""
    return "".join(
        [
            f'<svg class="chart" id="{esc(chart_id)}" width="{SVG_W}" height="{_f(height)}" '
            f'viewBox="0 0 {SVG_W} {_f(height)}" role="img" aria-label="{esc(label)}" '
            'font-family="system-ui, sans-serif" font-size="11">',
            f'<defs><clipPath id="clip-{esc(chart_id)}"><rect x="{LEFT}" y="0" width="{PLOT_W}" height="{_f(height)}"/></clipPath></defs>',
            *body,
            "</svg>",
        ]
    )


def svg_tick_labels(axis: TimeAxis, y: float) -> str:
    """Time labels at round UTC times, the date under the time where it changes."""
    out = [f'<text x="{LEFT - 40}" y="{_f(y)}" text-anchor="end" fill="{COLOR_MUTED}">time (UTC)</text>']
    for x, label, date in axis.ticks():
        out.append(f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="middle" fill="{COLOR_TEXT}">{esc(label)}</text>')
        if date:
            out.append(f'<text x="{_f(x)}" y="{_f(y + 13)}" text-anchor="middle" fill="{COLOR_MUTED}">{esc(date)}</text>')
    return "".join(out)


def svg_time_axis(axis: TimeAxis, top: float, bottom: float) -> str:
    """Grid lines at round UTC times over [top, bottom], labels below."""
    grid = "".join(
        f'<line x1="{_f(x)}" y1="{_f(top)}" x2="{_f(x)}" y2="{_f(bottom + 4)}" stroke="{COLOR_GRID}"/>' for x, _, _ in axis.ticks()
    )
    return grid + svg_tick_labels(axis, bottom + 15)


def svg_bands(spans: Sequence[tuple[float, float]], top: float, height: float, color: str, opacity: float, css_class: str) -> str:
    """Shaded rectangles for a set of x extents (from `band_spans`)."""
    return "".join(
        f'<rect class="{css_class}" x="{_f(x0)}" y="{_f(top)}" width="{_f(max(x1 - x0, 1.0))}" height="{_f(height)}" fill="{color}" fill-opacity="{opacity}"/>'
        for x0, x1 in spans
    )


def svg_frame(top: float, height: float) -> str:
    """The outline of a plotting row."""
    return f'<rect x="{LEFT}" y="{_f(top)}" width="{PLOT_W}" height="{_f(height)}" fill="none" stroke="#adb5bd"/>'


def svg_text(x: float, y: float, text: str, *, anchor: str = "start", color: str = COLOR_TEXT, weight: str = "normal", size: int | None = None) -> str:
    size_attr = f' font-size="{size}"' if size else ""
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" fill="{color}" font-weight="{weight}"{size_attr}>{esc(text)}</text>'


def svg_path(d: str, series: str, *, color: str = COLOR_LINE, width: float = 1.2, dash: str | None = None) -> str:
    if not d:
        return ""
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<path class="trace" data-series="{esc(series)}" d="{d}" fill="none" stroke="{color}" '
        f'stroke-width="{width}" stroke-linejoin="round" stroke-linecap="round"{dash_attr}/>'
    )


@dataclass
class Backdrop:
    """The label, alarm and warm-up bands of one file, computed once and drawn
    lightly behind every chart so a reader sees where things moved."""

    label: list[tuple[float, float]]
    alarm: list[tuple[float, float]]
    warmup: list[tuple[float, float]]

    def svg(self, top: float, height: float) -> str:
        """Light, full-height shading behind a chart's rows."""
        return (
            svg_bands(self.warmup, top, height, COLOR_WARMUP, 0.18, "band-warmup")
            + svg_bands(self.label, top, height, COLOR_LABEL, 0.16, "band-label")
            + svg_bands(self.alarm, top, height, COLOR_ALARM, 0.10, "band-alarm")
        )


def backdrop_for(time_us: np.ndarray, anomalous: np.ndarray, alarm: np.ndarray, warmup_end_us: int | None, axis: TimeAxis) -> Backdrop:
    t = np.asarray(time_us, dtype=np.int64)
    warm = []
    if warmup_end_us is not None and t.size and int(warmup_end_us) > axis.t0_us:
        warm = [(axis.left, float(min(axis.x(int(warmup_end_us)), axis.right)))]
    return Backdrop(
        label=band_spans(t, np.asarray(anomalous).astype(bool), axis),
        alarm=band_spans(t, np.asarray(alarm) == 1, axis),
        warmup=warm,
    )


# ---------------------------------------------------------------- the four charts


def render_bands_chart(axis: TimeAxis, backdrop: Backdrop) -> str:
    """Chart 1: where the labels say 'anomalous' (upper lane) and where an alarm
    was open (lower lane), with a legend."""
    legend_y, lane_h = 14, 22
    label_top, alarm_top = 26, 26 + lane_h + 4
    bottom = alarm_top + lane_h
    body = [svg_time_axis(axis, label_top, bottom)]
    # legend
    lx = LEFT
    for color, opacity, text in ((COLOR_LABEL, 0.75, "labelled anomalous"), (COLOR_ALARM, 0.75, "fault alarm open"), (COLOR_WARMUP, 0.18, "warm-up (detectors learning)")):
        body.append(f'<rect x="{lx}" y="{legend_y - 9}" width="14" height="10" fill="{color}" fill-opacity="{opacity}"/>')
        body.append(svg_text(lx + 19, legend_y, text))
        lx += 30 + 7 * len(text)
    body.append(svg_text(LEFT - 8, label_top + 15, "labels", anchor="end", weight="bold"))
    body.append(svg_text(LEFT - 8, alarm_top + 15, "alarms", anchor="end", weight="bold"))
    body.append('<g clip-path="url(#clip-bands)">')
    body.append(svg_bands(backdrop.warmup, label_top, bottom - label_top, COLOR_WARMUP, 0.18, "band-warmup"))
    body.append(svg_bands(backdrop.label, label_top, lane_h, COLOR_LABEL, 0.75, "band-label"))
    body.append(svg_bands(backdrop.alarm, alarm_top, lane_h, COLOR_ALARM, 0.75, "band-alarm"))
    body.append("</g>")
    body += [svg_frame(label_top, lane_h), svg_frame(alarm_top, lane_h)]
    return svg_document("bands", bottom + AXIS_H, body, "labels and alarms over time")


def fault_runs(time_us: np.ndarray, top_fault: Sequence[str], keep: np.ndarray, axis: TimeAxis) -> list[tuple[float, float, str]]:
    """(x0, x1, fault) of the stretches where one fault was on top, among the
    rows in `keep`; stretches of the same fault a few pixels apart are joined so
    a flicker does not split one story into many labels."""
    t = np.asarray(time_us, dtype=np.int64)
    if t.size == 0 or len(top_fault) != t.size:
        return []
    names = np.asarray(top_fault, dtype=str).copy()
    names[~np.asarray(keep, dtype=bool)] = ""
    change = np.flatnonzero(names[1:] != names[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [t.size]))
    named = names[starts] != ""
    starts, ends = starts[named], ends[named]
    if starts.size == 0:
        return []
    faults = names[starts]
    x0 = axis.x(t[starts])
    x1 = axis.x(row_end_times(t)[ends - 1])
    # join a run to the one before when it is the same fault less than 12 px on
    new = np.concatenate(([True], (faults[1:] != faults[:-1]) | (x0[1:] - x1[:-1] >= 12)))
    group = np.flatnonzero(new)
    gx1 = np.maximum.reduceat(x1, group)
    return [(float(a), float(b), str(f)) for a, b, f in zip(x0[group], gx1, faults[group])]


def render_probability_chart(axis: TimeAxis, backdrop: Backdrop, time_us: np.ndarray, probability: np.ndarray, top_fault: Sequence[str]) -> str:
    """Chart 2: the fused P(any fault) 0..1 with the 0.5 line; above the curve,
    the names of the faults that were on top for the longest stretches while
    P >= 0.5 (written out, no tooltips needed)."""
    label_y, top, h = 16, 30, 150
    bottom = top + h
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    y_of = scale(0.0, 1.0, top, h)
    body = [svg_time_axis(axis, top, bottom)]
    body.append(f'<g clip-path="url(#clip-probability)">{backdrop.svg(top, h)}</g>')
    for v in (0.0, 0.5, 1.0):
        body.append(svg_text(LEFT - 8, float(y_of(v)) + 4, f"{v:g}", anchor="end", color=COLOR_MUTED))
    body.append(f'<line class="threshold" x1="{LEFT}" y1="{_f(float(y_of(0.5)))}" x2="{LEFT + PLOT_W}" y2="{_f(float(y_of(0.5)))}" stroke="{COLOR_ALARM}" stroke-dasharray="5 4"/>')
    body.append(svg_text(LEFT - 30, top + h / 2 - 20, "P(any fault)", anchor="end", weight="bold"))
    body.append(f'<g clip-path="url(#clip-probability)">{svg_path(line_path(column_extents(time_us, p, axis), y_of), "probability")}</g>')
    body.append(svg_frame(top, h))
    # the longest stretches first; skip a name that would overlap one already written
    placed: list[tuple[float, float]] = []
    written = 0
    for x0, x1, fault in sorted(fault_runs(time_us, top_fault, p >= 0.5, axis), key=lambda r: r[0] - r[1]):
        if written >= MAX_FAULT_LABELS:
            break
        half = 3.3 * len(fault) + 4
        cx = min(max((x0 + x1) / 2, axis.left + half), axis.right - half)
        if any(cx - half < b and cx + half > a for a, b in placed):
            continue
        placed.append((cx - half, cx + half))
        written += 1
        body.append(f'<line class="fault-run" x1="{_f(max(x0, axis.left))}" y1="{label_y + 6}" x2="{_f(min(x1, axis.right))}" y2="{label_y + 6}" stroke="{COLOR_TEXT}" stroke-width="2"/>')
        body.append(f'<text class="fault-label" x="{_f(cx)}" y="{label_y}" text-anchor="middle" fill="{COLOR_TEXT}">{esc(fault)}</text>')
    body.append(svg_text(LEFT - 8, label_y + 4, "top fault", anchor="end", color=COLOR_MUTED))
    return svg_document("probability", bottom + AXIS_H, body, "fused fault probability over time")


def neg_log10(p: np.ndarray) -> np.ndarray:
    """-log10(p) capped at SCORE_CAP; p = 0 counts as the cap, NaN stays a gap."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -np.log10(np.clip(p, 0.0, 1.0))
    return np.where(np.isnan(p), np.nan, np.minimum(s, SCORE_CAP))


def render_scores_chart(axis: TimeAxis, backdrop: Backdrop, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Chart 3: one row per detector/scale, -log10(p) from 0 to 8, with the
    p = 0.001 threshold dashed: above the line the detector finds the window
    unusual."""
    row_h, gap, top0 = 44, 14, 10
    names = list(scores)
    if not names:
        body = [svg_text(LEFT, 24, "no detector scores for this file", color=COLOR_MUTED)]
        return svg_document("scores", 40, body, "detector scores (none)")
    bottom = top0 + len(names) * (row_h + gap) - gap
    body = [svg_time_axis(axis, top0, bottom)]
    body.append(f'<g clip-path="url(#clip-scores)">{backdrop.svg(top0, bottom - top0)}</g>')
    for i, name in enumerate(names):
        top = top0 + i * (row_h + gap)
        window_end, p = scores[name]
        y_of = scale(0.0, SCORE_CAP, top, row_h)
        y_thr = float(y_of(SCORE_THRESHOLD))
        body.append(svg_text(LEFT - 8, top + 13, _short(name), anchor="end", weight="bold"))
        body.append(svg_text(LEFT - 8, top + 27, f"−log10 p, 0…{SCORE_CAP:g}", anchor="end", color=COLOR_MUTED, size=10))
        body.append(f'<line class="threshold" x1="{LEFT}" y1="{_f(y_thr)}" x2="{LEFT + PLOT_W}" y2="{_f(y_thr)}" stroke="{COLOR_ALARM}" stroke-dasharray="5 4"/>')
        ext = column_extents(np.asarray(window_end), neg_log10(p), axis)
        body.append(f'<g clip-path="url(#clip-scores)">{svg_path(line_path(ext, y_of), name)}</g>')
        body.append(svg_frame(top, row_h))
    body.append(svg_text(LEFT + PLOT_W - 4, top0 + 10, "dashed: p = 0.001", anchor="end", color=COLOR_ALARM, size=10))
    return svg_document("scores", bottom + AXIS_H, body, "detector scores over time")


def render_tags_chart(axis: TimeAxis, backdrop: Backdrop, time_us: np.ndarray, tags: dict[str, np.ndarray]) -> str:
    """Chart 4: small multiples, one row per tag, each scaled to its own
    min..max (printed at the left), over the label and alarm bands."""
    row_h, gap, top0 = 30, 12, 36  # time labels above as well: the chart is tall
    names = list(tags)[:MAX_TAGS]
    if not names:
        body = [svg_text(LEFT, 24, "no tags in this file", color=COLOR_MUTED)]
        return svg_document("tags", 40, body, "tag traces (none)")
    bottom = top0 + len(names) * (row_h + gap) - gap
    body = [svg_time_axis(axis, top0, bottom), svg_tick_labels(axis, 12)]
    body.append(f'<g clip-path="url(#clip-tags)">{backdrop.svg(top0, bottom - top0)}</g>')
    for i, name in enumerate(names):
        top = top0 + i * (row_h + gap)
        values = np.asarray(tags[name], dtype=np.float64)
        finite = values[np.isfinite(values)]
        body.append(svg_text(LEFT - 8, top + 12, _short(name), anchor="end", weight="bold"))
        if finite.size == 0:
            body.append(svg_text(LEFT - 8, top + 25, "no values", anchor="end", color=COLOR_MUTED, size=10))
            body.append(svg_frame(top, row_h))
            continue
        lo, hi = float(finite.min()), float(finite.max())
        body.append(svg_text(LEFT - 8, top + 25, f"{fmt_value(lo)} … {fmt_value(hi)}", anchor="end", color=COLOR_MUTED, size=10))
        ext = column_extents(time_us, values, axis)
        body.append(svg_path(line_path(ext, scale(lo, hi, top + 1, row_h - 2)), name, width=1.0))
        body.append(svg_frame(top, row_h))
    return svg_document("tags", bottom + AXIS_H, body, "tag traces over time")


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; color: #212529; margin: 24px; max-width: 1460px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin: 28px 0 4px; }
p.note, p.caption { color: #495057; max-width: 1000px; margin: 4px 0 8px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #dee2e6; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.totals td { font-weight: bold; border-top: 2px solid #495057; }
svg.chart { display: block; max-width: 100%; height: auto; }
.swatch { display: inline-block; width: 14px; height: 10px; margin: 0 4px 0 12px; }
code { background: #f1f3f5; padding: 0 3px; }
"""

#: (heading, metrics key or None, formatter) of the metric columns, shared by index and file pages
METRIC_COLUMNS = (
    ("rows", "rows", fmt_count),
    ("precision", "precision", fmt_ratio),
    ("recall", "recall", fmt_ratio),
    ("F1", "f1", fmt_ratio),
    ("false-alarm rate", "false_alarm_rate", fmt_ratio),
    ("missed-alarm rate", "missed_alarm_rate", fmt_ratio),
    ("event recall", "event_recall", fmt_ratio),
    ("episodes detected", None, None),
    ("mean delay", "mean_detection_delay_s", fmt_delay),
)

HOW_TO_READ = """
<p class="note"><b>How to read this.</b> Each input file was replayed through edgewatch as if it
came from the plant, and what edgewatch said (a fault alarm open or not, row by row) was compared
with the file's labels (anomalous or not). <b>Precision</b>: of the rows with an alarm open, the
share that were labelled anomalous (low precision = false alarms). <b>Recall</b>: of the
anomalous rows, the share covered by an alarm. <b>F1</b> combines the two (1 is perfect).
<b>False-alarm rate</b>: share of normal rows with an alarm open. <b>Missed-alarm rate</b>: share
of anomalous rows without one. <b>Event recall</b>: share of labelled episodes (stretches of
anomalous rows) that raised an alarm at all, with the counts beside it. <b>Mean delay</b>: how long,
on average, from the start of a detected episode to its first alarm (a dash when none was detected).
A dash elsewhere means the figure is undefined (e.g. no anomalous rows). Click a file for its
charts: labels and alarms, the fault probability, the detectors' scores and every tag on one shared
time axis, then the list of alarm events.</p>
"""


def metric_cells(metrics: dict) -> list[str]:
    """The printed values of METRIC_COLUMNS for one metrics dict."""
    cells = []
    for _, key, fmt in METRIC_COLUMNS:
        if key is None:
            cells.append(f"{fmt_count(metrics.get('detected_episodes'))} / {fmt_count(metrics.get('episodes'))}")
        else:
            cells.append(fmt(metrics.get(key)))
    return cells


def _metric_header() -> str:
    return "".join(f'<th class="num">{esc(h)}</th>' for h, _, _ in METRIC_COLUMNS)


def _metric_tds(metrics: dict) -> str:
    return "".join(f'<td class="num">{esc(c)}</td>' for c in metric_cells(metrics))


def html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def page_file_names(results: Sequence[Any]) -> list[str]:
    """A safe, unique file name per result: stems can hold any character, and
    two inputs in different folders can share a stem."""
    taken = {"index"}
    out = []
    for r in results:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", str(r.name)).strip("._") or "file"
        name, k = base, 2
        while name.lower() in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name.lower())
        out.append(name + ".html")
    return out


def render_index(results: Sequence[Any], totals: dict, page_names: Sequence[str]) -> str:
    rows = []
    for r, page in zip(results, page_names):
        rows.append(
            f'<tr><td><a href="{esc(page)}">{esc(r.name)}</a></td><td>{esc(r.asset_id)}</td>{_metric_tds(r.metrics)}</tr>'
        )
    rows.append(f'<tr class="totals"><td>all files</td><td></td>{_metric_tds(totals)}</tr>')
    body = (
        "<h1>edgewatch backtest</h1>"
        f'<p class="note">{len(results)} file(s) replayed. Figures are over the replayed rows of each file; the last row adds all files together.</p>'
        f'<table class="metrics"><thead><tr><th>file</th><th>asset</th>{_metric_header()}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"{HOW_TO_READ}"
    )
    return html_page("edgewatch backtest", body)


def _alarm_table(alarms: Sequence[dict]) -> str:
    """Chart 5: the alarm events in time order."""
    if not alarms:
        return '<p class="note">No alarm events for this file.</p>'

    def when(a: dict):
        t = a.get("source_data_time_us")
        return (t is None, t if t is not None else 0)

    ordered = sorted(alarms, key=when)
    shown = ordered[:MAX_EVENTS]
    rows = "".join(
        f"<tr><td>{esc(utc_text(a.get('source_data_time_us')))}</td><td>{esc(a.get('event', ''))}</td>"
        f"<td>{esc(a.get('fault') or '')}</td><td>{esc(a.get('message') or '')}</td><td><code>{esc(a.get('alert_id') or '')}</code></td></tr>"
        for a in shown
    )
    more = f'<p class="note">{len(ordered) - len(shown):,} later events not listed.</p>' if len(ordered) > len(shown) else ""
    return (
        '<table class="alarms"><thead><tr><th>time (UTC)</th><th>event</th><th>fault</th><th>message</th><th>alert id</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>{more}"
    )


def _sorted_by_time(result: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows in time order (the replay should already be; if not, sort once
    rather than draw lines that go back in time)."""
    t = np.asarray(result.time_us, dtype=np.int64)
    if t.size > 1 and np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        return t[order], order
    return t, None


def render_file_page(result: Any, index_href: str = "index.html") -> str:
    t, order = _sorted_by_time(result)

    def rows_of(a) -> np.ndarray:
        a = np.asarray(a)
        return a[order] if order is not None else a

    anomalous, alarm, probability = rows_of(result.anomalous), rows_of(result.alarm), rows_of(result.probability)
    # top_fault of the wrong length (not filled by the backtest) is left out, not guessed
    top_fault = rows_of(np.asarray(result.top_fault, dtype=str)) if len(result.top_fault) == t.size else np.empty(0, dtype=str)
    tags = {name: rows_of(v) for name, v in result.tags.items()}

    axis = TimeAxis.spanning(t)
    backdrop = backdrop_for(t, anomalous, alarm, result.warmup_end_us, axis)
    m = result.metrics
    span = f"{utc_text(int(t.min()))} to {utc_text(int(t.max()))}" if t.size else "no rows"
    label_cols = ", ".join(result.labels) if result.labels else "none"
    tag_names = list(result.tags)
    left_out = tag_names[MAX_TAGS:]
    left_out_note = (
        f'<p class="note">{len(left_out)} more tag(s) not drawn (only the first {MAX_TAGS} are): {esc(", ".join(left_out))}.</p>'
        if left_out
        else ""
    )
    warm = (
        f" Warm-up (detectors still learning normal behaviour, grey) ends at {esc(utc_text(result.warmup_end_us))}."
        if result.warmup_end_us and t.size and int(result.warmup_end_us) > int(t.min())
        else ""
    )
    counts = " · ".join(f"{k.upper()} {fmt_count(m.get(k))}" for k in ("tp", "fp", "tn", "fn"))
    body = f"""
<p><a href="{esc(index_href)}">← all files</a></p>
<h1>{esc(result.name)} — asset {esc(result.asset_id)}</h1>
<p class="note">Source: <code>{esc(result.source)}</code>. {fmt_count(t.size)} rows, {esc(span)}. Label columns: {esc(label_cols)}.{warm}</p>
<table class="metrics"><thead><tr>{_metric_header()}</tr></thead><tbody><tr>{_metric_tds(m)}</tr></tbody></table>
<p class="note">Row counts (alarm vs label): {esc(counts)} — TP alarm on an anomalous row, FP alarm on a normal row, TN no alarm on a normal row, FN no alarm on an anomalous row.</p>
<p class="note">All charts below share one time axis (UTC). Orange: the labels say anomalous; red: a fault alarm was open; grey: warm-up.</p>
<h2>1. Labels and alarms</h2>
<p class="caption">Where the file's labels mark an anomaly (top lane) and where edgewatch had a fault alarm open (bottom lane). Good detection: red under orange, little red elsewhere.</p>
{render_bands_chart(axis, backdrop)}
<h2>2. Fault probability</h2>
<p class="caption">The fused probability that some fault is present, 0 to 1; dashed line at 0.5. Above the chart, the fault ranked first during the longest stretches with probability ≥ 0.5.</p>
{render_probability_chart(axis, backdrop, t, probability, top_fault)}
<h2>3. Detector scores</h2>
<p class="caption">One row per detector and window scale: −log10 of the detector's p-value (how unusual the window looks; 3 means p = 0.001, drawn dashed; values above {SCORE_CAP:g} are drawn at {SCORE_CAP:g}). Gaps are windows without a score.</p>
{render_scores_chart(axis, backdrop, result.scores)}
<h2>4. Tags</h2>
<p class="caption">Each tag on its own scale, from its minimum (bottom) to its maximum (top), printed at the left. Gaps are missing values.</p>
{left_out_note}
{render_tags_chart(axis, backdrop, t, tags)}
<h2>5. Alarm events</h2>
{_alarm_table(result.alarms)}
"""
    return html_page(f"{result.name} — edgewatch backtest", body)


def write_report(results: Sequence[Any], totals: dict, out_dir: Path) -> Path:
    """Write index.html and one page per file into out_dir; returns the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = page_file_names(results)
    for result, page in zip(results, names):
        (out_dir / page).write_text(render_file_page(result), encoding="utf-8")
    index = out_dir / "index.html"
    index.write_text(render_index(results, totals, names), encoding="utf-8")
    return index
