"""Fast-rule latency: how long from a reading batch's bytes to its evidence, inside the worker.

The fast rules (stream.rules) exist so that a limit crossing, a jump, a stuck
sensor or a lost signal reaches the operator at once. This benchmark measures
the part of that path the worker owns, per batch: the encoded bytes handed to
``Pipeline.process`` (decode, validate, every fast rule, alert messages built)
until the outputs come back. Kafka and faust are left out on purpose (see
``edgewatch bench`` for those); what is left is the cost the rules add to
every batch and the tail they add to batches that carry an event.

Batches are what connectors send: one asset, ``batch_s`` of all its tags at
``rate_hz`` (samples interleaved in arrival order, binary-encoded with
``stream.wire.encode_reading_batch``), assets in turn, as one partition's
consumer sees them. Every tag has limits (H/L and HH/LL), a rate limit and a
flatline duration, and bad quality is on, so every rule runs. Signals are
slow sines with noise; each asset gets occasional limit excursions, steps
faster than the rate limit, stuck stretches and Bad-quality stretches.

Rows: ``Pipeline.process`` over all batches (bytes to evidence: decode,
validate, every fast rule, alert messages built), the same for the batches
that raised or cleared an alert (the latency that matters to an operator), and
``FastRules.evaluate`` alone on the same batches, decoded beforehand, to show
what decoding and validation cost around the rules. p99 and max on a shared
machine include scheduling noise; p50 is the code's cost.

Windows and detectors, which will later run in the same ``Pipeline.process``
call, are not part of this measurement (today they do not exist).

Run: ``python -m edgewatch.bench_rules [--assets 100 --tags 20 --seconds 300]``.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter

import numpy as np
from rich.console import Console
from rich.table import Table

from stream.config import parse_config
from stream.pipeline import Pipeline, Source
from stream.wire import QUALITY_BAD, ReadingBatch, decode_reading_batch, encode_reading_batch

#: 2026-03-14T08:15:00Z: event time of the first sample
START_US = 1_773_476_100_000_000
NORMAL = 50.0
LIMITS = {"low_low": 0.0, "low": 10.0, "high": 90.0, "high_high": 100.0, "deadband": 1.0}
MAX_RATE_PER_S = 60.0  # noise of 0.5 at 10 Hz moves ~7 per second: far inside
FLATLINE_AFTER_S = 60.0
BAD_AFTER_S = 5.0
#: per asset and kind, one event every this many seconds on average
EVENT_EVERY_S = 100.0


def bench_config(assets: int, tags: int):
    doc = {
        "assets": [
            {
                "id": f"bench-{a}",
                "type": "pump",
                "tags": [
                    {
                        "id": f"t{t}",
                        "unit": "bar",
                        "limits": LIMITS,
                        "max_rate_per_s": MAX_RATE_PER_S,
                        "flatline_after_s": FLATLINE_AFTER_S,
                        "flatline_tolerance": 0.01,
                    }
                    for t in range(tags)
                ],
            }
            for a in range(assets)
        ],
        "rules": {"bad_quality": {"after_s": BAD_AFTER_S}},
    }
    return parse_config(doc, "edgewatch/bench_rules.py", environ={})


class _Asset:
    """One asset's signals and its scheduled events, sliced into batches on demand."""

    KINDS = ("limit", "rate", "flatline", "bad_quality")
    DURATION_S = {"limit": 3.0, "rate": 4.0, "flatline": FLATLINE_AFTER_S + 15.0, "bad_quality": BAD_AFTER_S + 2.0}

    def __init__(self, asset_id: str, tags: int, seconds: float, rng: np.random.Generator):
        self.asset_id = asset_id
        self.tag_ids = [f"t{t}" for t in range(tags)]
        self.phase = rng.uniform(0, 2 * np.pi, tags)
        self.period_s = rng.uniform(60, 600, tags)
        self.rng = rng
        self.events = []  # (kind, tag, start_us, end_us)
        for kind in self.KINDS:
            for _ in range(rng.poisson(seconds / EVENT_EVERY_S)):
                start = START_US + int(rng.uniform(0, seconds) * 1e6)
                self.events.append((kind, int(rng.integers(tags)), start, start + int(self.DURATION_S[kind] * 1e6)))

    def batch(self, seq: int, start_us: int, batch_s: float, rate_hz: float) -> ReadingBatch:
        per_tag = max(1, int(round(batch_s * rate_hz)))
        n_tags = len(self.tag_ids)
        # Arrival order: every tag's sample of one instant, then the next instant.
        ts = start_us + np.repeat((np.arange(per_tag) * (1e6 / rate_hz)).astype(np.int64), n_tags)
        tag = np.tile(np.arange(n_tags), per_tag)
        t_s = (ts - START_US) / 1e6
        value = NORMAL + 20 * np.sin(2 * np.pi * t_s / self.period_s[tag] + self.phase[tag]) + self.rng.normal(0, 0.5, ts.shape[0])
        quality = np.zeros(ts.shape[0], dtype=np.uint32)
        end_us = int(ts[-1])
        for kind, event_tag, start, stop in self.events:
            if stop < start_us or start > end_us:
                continue
            hit = (tag == event_tag) & (ts >= start) & (ts < stop)
            if not hit.any():
                continue
            if kind == "limit":
                value[hit] = 105.0 + self.rng.normal(0, 0.5, int(hit.sum()))  # through H and HH
            elif kind == "rate":
                value[hit] += 25.0  # a step of 25 in 100 ms: 250 per second
            elif kind == "flatline":
                value[hit] = 42.0  # frozen transmitter
            else:
                value[hit], quality[hit] = np.nan, QUALITY_BAD
        return ReadingBatch.from_columns(self.asset_id, self.tag_ids, tag, ts, value, quality, seq=seq)


def _stats(name: str, durations_ns: list[int], samples: int, extra: dict) -> dict:
    ms = np.array(durations_ns, dtype=float) / 1e6
    return {
        "measure": name,
        "batches": len(durations_ns),
        "samples": samples,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "samples_per_s": samples / (ms.sum() / 1e3),
        **extra,
    }


def bench_fast_rules(assets: int = 100, tags: int = 20, rate_hz: float = 10, batch_s: float = 0.5, seconds: float = 300) -> list[dict]:
    """Time the fast-rule path per batch; return one row per measurement (see the module doc)."""
    config = bench_config(assets, tags)
    end_us = START_US + int(seconds * 1e6)
    rng = np.random.default_rng(42)
    sources = [_Asset(f"bench-{a}", tags, seconds, rng) for a in range(assets)]
    slots = int(seconds / batch_s)
    # Encoded up front, so that generating signals is not timed; assets in turn within each slot.
    messages = [
        (a.asset_id.encode(), encode_reading_batch(a.batch(k, START_US + int(k * batch_s * 1e6), batch_s, rate_hz)))
        for k in range(slots)
        for a in sources
    ]

    def clock() -> float:
        return end_us / 1e6 + 60  # "now": just after the last sample, so validation accepts every batch

    # Warm up (first calls pay for numpy's first-use setup), then measure.
    # As the worker runs it: process() is the fast path up to the evidence; stream 2
    # (windows, features, the online detector) runs after, in detect(), timed apart.
    Pipeline(config, clock=clock).process(messages[0][1], Source("warm-up", 0, 0, messages[0][0]), {})
    pipeline, store = Pipeline(config, clock=clock, defer_detection=True), {}
    durations, alerts, samples, with_evidence = [], Counter(), 0, []
    stream2_durations, windows = [], 0
    process, perf = pipeline.process, time.perf_counter_ns
    gc.collect()
    for offset, (key, raw) in enumerate(messages):
        source = Source("edgewatch.readings", 0, offset, key)
        t0 = perf()
        out = process(raw, source, store)
        durations.append(perf() - t0)
        if out.deadletter is not None:
            raise RuntimeError(f"benchmark batch rejected: {out.deadletter['reason']}")
        samples += out.samples
        if out.alerts:
            with_evidence.append((durations[-1], out.samples))
        alerts.update(f"{a['rule']}/{a['state']}" for a in out.alerts)
        out.apply_state(store)  # as the worker does once the alerts are sent (not timed)
        t0 = perf()
        pipeline.detect(out)
        stream2_durations.append(perf() - t0)
        windows += len(out.features)
    rows = [
        _stats("Pipeline.process, all batches", durations, samples, {"alerts": dict(alerts)}),
        _stats(
            "Pipeline.process, batches with an alert",
            [d for d, _ in with_evidence],
            sum(n for _, n in with_evidence),
            {},
        ),
        _stats("stream 2 after the evidence (windows, features, online detector), all batches", stream2_durations, samples, {"windows": windows}),
    ]

    # Rules alone on the same batches, decoded and mapped to tag positions beforehand.
    pipeline = Pipeline(config, clock=clock)
    prepared = []
    for key, raw in messages:
        batch = decode_reading_batch(raw)
        asset = pipeline._assets[batch.asset_id]
        tag_position = np.fromiter((asset.tag_position[t] for t in batch.tags), dtype=np.intp)[batch.tag_index]
        prepared.append((asset.rules, tag_position, batch))
    states: dict = {}
    gc.collect()
    rule_durations, events = [], Counter()
    perf = time.perf_counter_ns
    for rules, tag_position, batch in prepared:
        state = states.get(batch.asset_id, {})
        t0 = perf()
        found, new_state = rules.evaluate(tag_position, batch.ts_us, batch.value, batch.quality, state)
        rule_durations.append(perf() - t0)
        events.update(f"{e.rule}/{e.state}" for e in found)
        if new_state is not state:
            states[batch.asset_id] = new_state
    rows.append(_stats("FastRules.evaluate only, all batches", rule_durations, samples, {"alerts": dict(events)}))
    return rows


def print_table(rows: list[dict], console: Console, title: str) -> None:
    table = Table(title=title)
    for column in ("measure", "batches", "samples", "p50 ms", "p99 ms", "max ms", "samples/s"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in rows:
        table.add_row(
            row["measure"],
            f"{row['batches']:,}",
            f"{row['samples']:,}",
            f"{row['p50_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['max_ms']:.3f}",
            f"{row['samples_per_s']:,.0f}",
        )
    console.print(table)
    alerts = rows[0].get("alerts", {})
    console.print("alerts raised / cleared: " + ", ".join(f"{k} {v:,}" for k, v in sorted(alerts.items())))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=100)
    parser.add_argument("--tags", type=int, default=20)
    parser.add_argument("--rate-hz", type=float, default=10)
    parser.add_argument("--batch-s", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args(argv)
    from edgewatch.bench import machine_description

    console = Console()
    console.print(
        f"{args.assets} assets x {args.tags} tags at {args.rate_hz:g} Hz, batches of {args.batch_s:g} s, "
        f"{args.seconds:g} s of event time; every rule on every tag ..."
    )
    rows = bench_fast_rules(args.assets, args.tags, args.rate_hz, args.batch_s, args.seconds)
    print_table(rows, console, f"fast rules, reading to evidence ({machine_description(kafka=False)})")
    return rows


if __name__ == "__main__":
    main()
