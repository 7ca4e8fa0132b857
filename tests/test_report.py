"""The backtest report: write the pages from stand-in results, then open them as
a reader's browser would (html.parser) and check what a person would see: the
links work, the numbers are there, the bands sit at the right times, long files
are reduced, text is escaped and the SVG is well-formed."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from edgewatch.report import (
    LEFT,
    MAX_TAGS,
    PLOT_W,
    SCORE_CAP,
    TimeAxis,
    band_spans,
    column_extents,
    fmt_count,
    fmt_delay,
    fmt_ratio,
    line_path,
    metric_cells,
    neg_log10,
    page_file_names,
    scale,
    write_report,
)

T0 = 1_767_225_600_000_000  # 2026-01-01 00:00:00 UTC
EVIL_TAG = "<script>alert(1)</script>"


@dataclass
class StandInResult:
    """The fields of stream.backtest.FileResult, which the report duck-types."""

    name: str
    source: str
    asset_id: str
    time_us: np.ndarray
    tags: dict
    labels: dict
    anomalous: np.ndarray
    probability: np.ndarray
    alarm: np.ndarray
    top_fault: list
    scores: dict
    alarms: list
    metrics: dict
    warmup_end_us: int = 0


def metrics(**kw) -> dict:
    base = dict(
        precision=0.7, recall=0.7, f1=0.7, false_alarm_rate=0.2, missed_alarm_rate=0.3, event_recall=1.0,
        mean_detection_delay_s=30.0, rows=600, episodes=1, detected_episodes=1, tp=70, fp=30, tn=470, fn=30,
    )
    base.update(kw)
    return base


def small_result() -> StandInResult:
    """600 rows, 1 s apart: labelled episode rows 200..299, alarm open 230..329."""
    n = 600
    t = T0 + np.arange(n, dtype=np.int64) * 1_000_000
    anomalous = np.zeros(n, dtype=bool)
    anomalous[200:300] = True
    alarm = np.zeros(n, dtype=np.int8)
    alarm[230:330] = 1
    probability = np.where(anomalous, 0.9, 0.05)
    top_fault = ["bearing_wear" if a else "" for a in anomalous]
    rng = np.random.default_rng(1)
    tags = {
        "bearing_temp": 50 + rng.normal(size=n) + anomalous * 20,
        "flow": 100 + rng.normal(size=n),
        EVIL_TAG: rng.normal(size=n),
    }
    w = t[::10]
    scores = {"iforest/60s": (w, np.where(anomalous[::10], 1e-6, 0.3)), "mahalanobis/10s": (w, np.full(w.size, 0.5))}
    alarms = [
        {"event": "raised", "fault": "bearing_wear", "message": "Bearing wear suspected on pump-1", "source_data_time_us": int(t[230]), "alert_id": "al-1"},
        {"event": "returned", "fault": "bearing_wear", "message": "Bearing wear condition cleared", "source_data_time_us": int(t[330]), "alert_id": "al-1"},
    ]
    return StandInResult(
        name="pump_run_1", source="data/pump_run_1.csv", asset_id="pump-1", time_us=t, tags=tags,
        labels={"fault_label": np.where(anomalous, "bearing", "normal")}, anomalous=anomalous,
        probability=probability, alarm=alarm, top_fault=top_fault, scores=scores, alarms=alarms,
        metrics=metrics(), warmup_end_us=int(t[60]),
    )


def big_result() -> StandInResult:
    """200,000 rows at 10 Hz, 40 tags (one with a NaN stretch), no labels at all."""
    n = 200_000
    t = T0 + np.arange(n, dtype=np.int64) * 100_000
    rng = np.random.default_rng(2)
    tags = {f"tag_{i:02d}": np.cumsum(rng.normal(size=n)) for i in range(39)}
    with_gap = np.sin(np.arange(n) / 500.0)
    with_gap[80_000:90_000] = np.nan
    tags = {"tag_nan": with_gap, **tags}
    w = t[::600]
    return StandInResult(
        name="line 2/big", source="data/big.parquet", asset_id="fan-1", time_us=t, tags=tags, labels={},
        anomalous=np.zeros(n, dtype=bool), probability=rng.random(n) * 0.3, alarm=np.zeros(n, dtype=np.int8),
        top_fault=[""] * n, scores={"iforest/60s": (w, rng.random(w.size))}, alarms=[],
        metrics=metrics(precision=None, recall=None, f1=None, event_recall=None, mean_detection_delay_s=None, rows=n, episodes=0, detected_episodes=0, tp=0, fp=0, tn=n, fn=0),
    )


TOTALS = metrics(precision=0.6543, recall=0.4321, f1=0.5214, false_alarm_rate=0.0123, missed_alarm_rate=0.5679,
                 event_recall=0.5, mean_detection_delay_s=42.26, rows=200_600, episodes=2, detected_episodes=1)


class Page(HTMLParser):
    """What a reader sees: links, text, tables, and the SVG elements by chart."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.text: list[str] = []
        self.svgs: list[str] = []  # chart ids in page order
        self.elements: list[tuple[str, str, dict]] = []  # (chart id, tag, attrs) inside SVGs
        self.svg_text: dict[str, list[str]] = {}
        self.rows: list[tuple[str, list[str]]] = []  # (tr class, cell texts)
        self._svg: str | None = None
        self._row: list[str] | None = None
        self._row_class = ""
        self._cell: list[str] | None = None
        self.feed(source)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "svg":
            self._svg = a.get("id", "")
            self.svgs.append(self._svg)
            self.svg_text[self._svg] = []
        elif self._svg is not None:
            self.elements.append((self._svg, tag, a))
        if tag == "tr":
            self._row, self._row_class = [], a.get("class", "")
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "svg":
            self._svg = None
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row_class, self._row))
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._svg is not None:
            self.svg_text[self._svg].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def all_text(self) -> str:
        return " ".join(self.text)

    def in_chart(self, chart: str, tag: str, css_class: str | None = None) -> list[dict]:
        return [a for c, t, a in self.elements if c == chart and t == tag and (css_class is None or a.get("class") == css_class)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    small, big = small_result(), big_result()
    index = write_report([small, big], TOTALS, out)
    return out, index, small, big


def open_page(path: Path) -> tuple[str, Page]:
    source = path.read_text(encoding="utf-8")
    return source, Page(source)


def file_pages(out: Path, index: Path) -> list[Path]:
    _, page = open_page(index)
    return [out / href for href in page.links]


def test_index_links_to_every_file_page(report):
    out, index, small, big = report
    assert index == out / "index.html"
    _, page = open_page(index)
    assert len(page.links) == 2
    for href in page.links:
        assert "/" not in href and (out / href).is_file()
    text = page.all_text()
    assert small.name in text and big.name in text
    assert "How to read this" in text


def test_index_prints_the_totals_row(report):
    _, index, _, _ = report
    _, page = open_page(index)
    totals = [cells for cls, cells in page.rows if cls == "totals"]
    assert len(totals) == 1
    cells = totals[0]
    assert cells[2:] == metric_cells(TOTALS)
    for expected in ("0.654", "0.432", "0.521", "0.012", "0.568", "0.500", "1 / 2", "42.3 s", "200,600"):
        assert expected in cells
    # one row per file, each with its own figures; undefined ones print as a dash
    body = [cells for cls, cells in page.rows if cls == "" and cells and cells[0] != "file"]
    assert [c[0] for c in body] == ["pump_run_1", "line 2/big"]
    assert body[1][2:] == metric_cells(big_result().metrics)
    assert "—" in body[1]


def test_formatters():
    assert fmt_ratio(0.12345) == "0.123" and fmt_ratio(None) == "—" and fmt_ratio(float("nan")) == "—"
    assert fmt_delay(None) == "—" and fmt_delay(3.04) == "3.0 s"
    assert fmt_count(1234567) == "1,234,567"


def test_file_page_shows_charts_tags_and_alarm_events(report):
    out, index, small, _ = report
    source, page = open_page(file_pages(out, index)[0])
    assert page.svgs == ["bands", "probability", "scores", "tags"]
    text = page.all_text()
    assert "pump_run_1" in text and "pump-1" in text
    tag_text = "".join(page.svg_text["tags"])
    assert "bearing_temp" in tag_text and "flow" in tag_text and EVIL_TAG in tag_text
    for alarm in small.alarms:
        assert alarm["message"] in text
    assert "raised" in text and "returned" in text
    # the top fault is written over the probability curve, the scores have their rows
    assert "bearing_wear" in "".join(page.svg_text["probability"])
    assert "iforest/60s" in "".join(page.svg_text["scores"])
    # time ticks in UTC
    assert "2026-01-01" in "".join(page.svg_text["bands"]) and "time (UTC)" in text
    # self-contained: no script, no external URL
    assert "<script" not in source and "http://" not in source and "https://" not in source


def test_text_is_escaped(report):
    out, index, _, _ = report
    source, page = open_page(file_pages(out, index)[0])
    assert EVIL_TAG not in source
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in source
    assert EVIL_TAG in page.all_text()  # and a reader sees it literally


def test_bands_sit_at_their_times(report):
    out, index, small, _ = report
    _, page = open_page(file_pages(out, index)[0])
    axis = TimeAxis.spanning(small.time_us)
    t = small.time_us

    def extent(rect):
        x = float(rect["x"])
        return x, x + float(rect["width"])

    (label,) = page.in_chart("bands", "rect", "band-label")
    (alarm,) = page.in_chart("bands", "rect", "band-alarm")
    # rows 200..299 labelled: from row 200's time to row 300's (where the state ends)
    assert extent(label) == pytest.approx((axis.x(t[200]), axis.x(t[300])), abs=0.11)
    assert extent(alarm) == pytest.approx((axis.x(t[230]), axis.x(t[330])), abs=0.11)
    # the same bands, lightly, behind the tag traces
    for chart in ("probability", "scores", "tags"):
        assert float(page.in_chart(chart, "rect", "band-label")[0]["x"]) == pytest.approx(axis.x(t[200]), abs=0.06)
        assert float(page.in_chart(chart, "rect", "band-alarm")[0]["x"]) == pytest.approx(axis.x(t[230]), abs=0.06)
    (warm,) = page.in_chart("bands", "rect", "band-warmup")
    assert extent(warm) == pytest.approx((LEFT, axis.x(t[60])), abs=0.11)


def test_every_chart_uses_the_same_axis(report):
    out, index, _, _ = report
    for path in file_pages(out, index):
        source, page = open_page(path)
        # same width and viewBox width everywhere: the charts scale together
        svg_tags = re.findall(r"<svg [^>]*>", source)
        sizes = {(re.search(r'width="([^"]+)"', s).group(1), re.search(r'viewBox="0 0 (\S+) ', s).group(1)) for s in svg_tags}
        assert len(sizes) == 1 and len(svg_tags) == 4
        for chart in page.svgs:
            for a in page.in_chart(chart, "path", "trace"):
                xs = [float(v) for v in re.findall(r"[ML]([-\d.]+),", a["d"])]
                assert xs and min(xs) >= LEFT and max(xs) <= LEFT + PLOT_W


def test_svg_is_well_formed_xml(report):
    out, index, _, _ = report
    for path in file_pages(out, index):
        source = path.read_text(encoding="utf-8")
        blocks = re.findall(r"<svg\b.*?</svg>", source, flags=re.S)
        assert len(blocks) == 4
        for block in blocks:
            ET.fromstring(block)


def test_big_file_is_reduced_and_small(report):
    out, index, _, big = report
    path = file_pages(out, index)[1]
    assert path.name == "line_2_big.html"
    assert path.stat().st_size < 3_000_000
    source, page = open_page(path)
    traces = page.in_chart("tags", "path", "trace")
    assert len(traces) == MAX_TAGS
    for a in traces:
        # at most first/min/max/last per pixel column, never one point per row
        assert len(re.findall(r"[MLVh]", a["d"])) <= 4 * PLOT_W + 4
    # the 10 tags not drawn are named
    text = page.all_text()
    left_out = list(big.tags)[MAX_TAGS:]
    assert len(left_out) == 10
    assert "10 more tag(s) not drawn" in text
    for name in left_out:
        assert name in text
    assert "No alarm events" in text


def test_nan_gap_breaks_the_line(report):
    out, index, _, big = report
    _, page = open_page(file_pages(out, index)[1])
    (trace,) = [a for a in page.in_chart("tags", "path", "trace") if a["data-series"] == "tag_nan"]
    assert trace["d"].count("M") == 2
    # and the gap lies where the NaNs are: no drawn column strictly inside it
    axis = TimeAxis.spanning(big.time_us)
    gap = (axis.x(big.time_us[80_000]), axis.x(big.time_us[89_999]))
    xs = [float(v) for v in re.findall(r"[ML]([-\d.]+),", trace["d"])]
    assert not [x for x in xs if gap[0] + 1 < x < gap[1] - 1]
    # a full series without NaN is one segment
    (full,) = [a for a in page.in_chart("tags", "path", "trace") if a["data-series"] == "tag_00"]
    assert full["d"].count("M") == 1


def test_column_extents_keeps_extremes_and_gaps():
    t = T0 + np.arange(10_000, dtype=np.int64)
    v = np.zeros(10_000)
    v[5_000] = 7.0  # a one-row spike must survive the reduction
    v[7_000:7_010] = np.nan
    axis = TimeAxis(T0, T0 + 10_000, left=0, width=100)
    ext = column_extents(t, v, axis)
    assert ext.x.size == 100
    assert ext.high.max() == 7.0
    assert ext.break_before.sum() == 1
    d = line_path(ext, scale(0, 7, 0, 70))
    assert d.count("M") == 2


def test_line_path_lone_point_is_visible_and_all_nan_is_empty():
    axis = TimeAxis(T0, T0 + 100, left=0, width=100)
    t = T0 + np.arange(5, dtype=np.int64) * 20
    d = line_path(column_extents(t, np.array([1.0, np.nan, 2.0, np.nan, 3.0]), axis), scale(0, 4, 0, 40))
    assert d.count("M") == 3 and d.count("h1") == 3
    assert line_path(column_extents(t, np.full(5, np.nan), axis), scale(0, 1, 0, 10)) == ""


def test_flickering_labels_merge_into_few_bands():
    n = 200_000
    t = T0 + np.arange(n, dtype=np.int64) * 1000
    mask = np.arange(n) % 2 == 0
    axis = TimeAxis.spanning(t)
    spans = band_spans(t, mask, axis)
    assert len(spans) == 1 and spans[0][0] == pytest.approx(LEFT)


def test_scores_are_capped_and_nan_stays_a_gap():
    s = neg_log10(np.array([1.0, 0.001, 0.0, 1e-30, np.nan]))
    assert s[:4] == pytest.approx([0.0, 3.0, SCORE_CAP, SCORE_CAP])
    assert np.isnan(s[4])


def test_page_names_are_safe_and_unique():
    r = lambda name: StandInResult(name, "", "", np.zeros(0, np.int64), {}, {}, np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int8), [], {}, [], {})
    assert page_file_names([r("a b"), r("a_b"), r("index"), r("../x")]) == ["a_b.html", "a_b-2.html", "index-2.html", "x.html"]


def test_empty_file_still_gives_a_page(tmp_path):
    empty = StandInResult("empty", "e.csv", "pump-9", np.zeros(0, np.int64), {"x": np.zeros(0)}, {}, np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int8), [], {}, [], metrics(rows=0))
    index = write_report([empty], metrics(rows=0), tmp_path)
    source = (tmp_path / "empty.html").read_text()
    assert index.exists() and source.count("<svg") == 4
    for block in re.findall(r"<svg\b.*?</svg>", source, flags=re.S):
        ET.fromstring(block)
