"""History to learn from or replay: reading batches in event-time order, from
a historian's CSV export or the ``readings`` topic (the simulator's own history
is connectors.simulator.history, since stream never imports connectors).

Every source yields :class:`stream.wire.ReadingBatch` objects, the very shape the
connectors put on Kafka, so training and offline replay run the same pipeline
code as the live worker (``stream.replay``).
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from stream.config import AssetConfig, ServiceConfig
from stream.wire import QUALITY_BAD, ReadingBatch, WireError, decode_reading_batch

#: connectors cut a batch per asset every this long (connect.batch_interval_s default).
DEFAULT_BATCH_S = 0.5


class HistoryError(ValueError):
    """History cannot be read. The text names the file, row and column and what to do."""


# --------------------------------------------------------------------------- CSV


def parse_time_column(texts: Sequence[str], time_format: str, path: str, column: str, first_row: int = 2) -> np.ndarray:
    """Timestamps of a CSV column as int64 microseconds since the epoch (UTC).

    ``time_format``: ``iso`` (ISO 8601; no offset means UTC), ``epoch_s``,
    ``epoch_ms``, ``epoch_us``, or a ``strptime`` pattern such as
    ``%d.%m.%Y %H:%M:%S`` (read as UTC)."""
    out = np.empty(len(texts), dtype=np.int64)
    scale = {"epoch_s": 1e6, "epoch_ms": 1e3, "epoch_us": 1.0}.get(time_format)
    for i, text in enumerate(texts):
        text = text.strip()
        try:
            if scale is not None:
                out[i] = int(round(float(text) * scale))
                continue
            if time_format == "iso":
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            else:
                moment = datetime.strptime(text, time_format)
        except (ValueError, OverflowError):
            raise HistoryError(
                f"{path}, row {first_row + i}, column {column!r}: cannot read {text!r} as a time in format {time_format!r}; "
                "pass --time-format (iso, epoch_s, epoch_ms, epoch_us or a strptime pattern like '%Y-%m-%d %H:%M:%S')"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
        out[i] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return out


def read_csv_columns(
    path: str | Path,
    *,
    separator: str = ",",
    time_column: str | None = "time",
    time_format: str = "iso",
    sample_period_s: float | None = None,
    start_us: int = 0,
    tags: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A wide CSV export (one time column, one column per tag) as
    (ts_us (n,), tag names, values (n, tags)). Empty cells become NaN (a gap).

    Without a time column, rows are ``sample_period_s`` apart from ``start_us``."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=separator)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HistoryError(f"{path}: cannot be read as CSV: {exc}") from None
    if not header:
        raise HistoryError(f"{path}: the file is empty; it needs a header row naming the columns")
    header = [h.strip() for h in header]
    if time_column is not None and time_column not in header:
        raise HistoryError(
            f"{path}: no time column {time_column!r} (columns: {', '.join(header)}); "
            "name it with --time-column, or give --sample-period-s when the file has no time column"
        )
    if time_column is None and sample_period_s is None:
        raise HistoryError(f"{path}: without a time column the sample period is needed (--sample-period-s)")
    candidates = [h for h in header if h != time_column and h not in exclude]
    if tags is not None:
        absent = [t for t in tags if t not in header]
        if absent:
            raise HistoryError(f"{path}: no column(s) {', '.join(map(repr, absent))} (columns: {', '.join(header)})")
        candidates = list(tags)
    position = {h: i for i, h in enumerate(header)}
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise HistoryError(f"{path}: the file has a header but no data rows")
    values = np.full((len(rows), len(candidates)), np.nan)
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise HistoryError(f"{path}, row {r + 2}: {len(row)} fields, the header has {len(header)} (separator {separator!r}?)")
        for c, name in enumerate(candidates):
            cell = row[position[name]].strip()
            if cell == "":
                continue
            try:
                values[r, c] = float(cell)
            except ValueError:
                raise HistoryError(
                    f"{path}, row {r + 2}, column {name!r}: {cell!r} is not a number; "
                    "fix the export, or leave the column out (--tags / --label-columns)"
                ) from None
    if time_column is not None:
        ts_us = parse_time_column([row[position[time_column]] for row in rows], time_format, str(path), time_column)
    else:
        ts_us = start_us + np.round(np.arange(len(rows)) * sample_period_s * 1e6).astype(np.int64)
    if len(ts_us) > 1 and np.any(np.diff(ts_us) < 0):
        i = int(np.argmax(np.diff(ts_us) < 0))
        raise HistoryError(f"{path}, row {i + 3}: time goes backwards; sort the export by time")
    return ts_us, candidates, values


def csv_history(
    path: str | Path,
    asset: AssetConfig,
    *,
    batch_s: float = DEFAULT_BATCH_S,
    **options,
) -> Iterator[ReadingBatch]:
    """Reading batches of one asset from a wide CSV export (see read_csv_columns).

    Columns that are not tags of ``asset`` are an error unless excluded, so a
    misspelt tag is not silently left out. Empty cells are gaps: they are sent
    as Bad quality samples (NaN), as a connector would."""
    ts_us, names, values = read_csv_columns(path, **options)
    known = {t.id for t in asset.tags}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HistoryError(
            f"{path}: column(s) {', '.join(map(repr, unknown))} are not tags of asset {asset.id!r} "
            f"(its tags: {', '.join(sorted(known))}); rename them or pass --tags with the columns to use"
        )
    yield from matrix_batches(asset.id, names, ts_us, values, batch_s=batch_s)


def matrix_batches(asset_id: str, names: Sequence[str], ts_us: np.ndarray, values: np.ndarray, *, batch_s: float = DEFAULT_BATCH_S) -> Iterator[ReadingBatch]:
    """Cut a (rows x tags) matrix into reading batches of ``batch_s`` of event time."""
    if len(ts_us) == 0:
        return
    batch_us = max(1, int(batch_s * 1e6))
    bucket = (ts_us - ts_us[0]) // batch_us
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    n_tags = len(names)
    seq = 0
    for rows in np.split(np.arange(len(ts_us)), cuts):
        block = values[rows]
        ts = np.repeat(ts_us[rows], n_tags)
        tag_index = np.tile(np.arange(n_tags, dtype=np.uint16), len(rows))
        value = block.reshape(-1)
        quality = np.where(np.isfinite(value), 0, QUALITY_BAD).astype(np.uint32)
        seq += 1
        yield ReadingBatch.from_columns(asset_id, list(names), tag_index, ts, value, quality, seq=seq)


# --------------------------------------------------------------------------- Kafka


def kafka_history(config: ServiceConfig, asset_ids: Sequence[str], start_us: int, end_us: int, *, timeout_s: float = 10.0) -> Iterator[ReadingBatch]:
    """Reading batches of ``asset_ids`` from the ``readings`` topic whose samples
    fall in [start_us, end_us) of event time, partition by partition.

    Starts at the broker's offset for ``start_us`` (message timestamps are the
    connector's send time, which is at or after the samples' event time, so no
    sample of the range is skipped) and stops at the end of each partition or at
    the first batch whose samples all lie past ``end_us``. Samples outside the
    range are cut off; undecodable messages are skipped (they are in the
    dead-letter topic already)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = config.kafka.topics.readings
    wanted = set(asset_ids)
    consumer = Consumer(
        {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "group.id": "edgewatch-train",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            raise HistoryError(f"cannot reach Kafka at {config.kafka.bootstrap_servers}: {exc}") from None
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise HistoryError(f"topic {topic} does not exist on {config.kafka.bootstrap_servers}")
        partitions = sorted(metadata.topics[topic].partitions)
        starts = consumer.offsets_for_times([TopicPartition(topic, p, start_us // 1000) for p in partitions], timeout=timeout_s)
        for tp in starts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=timeout_s)
            offset = tp.offset if tp.offset >= 0 else high
            if offset >= high:
                continue
            consumer.assign([TopicPartition(topic, tp.partition, offset)])
            done = False
            while not done:
                messages = consumer.consume(1000, timeout=timeout_s)
                if not messages:
                    break
                for message in messages:
                    if message.error() is not None:
                        continue
                    if message.offset() >= high - 1:
                        done = True
                    try:
                        batch = decode_reading_batch(message.value())
                    except WireError:
                        continue
                    if batch.asset_id not in wanted:
                        continue
                    if int(batch.ts_us.min()) >= end_us:
                        done = True
                        break
                    keep = (batch.ts_us >= start_us) & (batch.ts_us < end_us)
                    if keep.all():
                        yield batch
                    elif keep.any():
                        yield ReadingBatch.from_columns(
                            batch.asset_id, batch.tags, batch.tag_index[keep], batch.ts_us[keep], batch.value[keep],
                            batch.quality[keep], replayed=batch.replayed, seq=batch.seq,
                        )
                    if done:
                        break
    finally:
        consumer.close()


def iso_to_us(text: str) -> int:
    """'2026-11-20T08:00:00Z' (or with an offset) -> microseconds since the epoch."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(math.floor(moment.timestamp() * 1_000_000))
