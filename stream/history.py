"""History to learn from or replay: reading batches in event-time order, from
a historian's CSV or Parquet export or the ``readings`` topic (the simulator's own history
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
    _check_tags_of(path, asset, names)
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


# --------------------------------------------------------------------------- Parquet

#: microseconds per unit of an epoch --time-format (as parse_time_column scales them)
_EPOCH_US = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}
#: a Parquet timestamp unit -> (multiply, floor-divide) to microseconds; ns is cut to us
_TIMESTAMP_US = {"s": (1_000_000, 1), "ms": (1_000, 1), "us": (1, 1), "ns": (1, 1_000)}
_INT64_MAX = int(np.iinfo(np.int64).max)


def read_parquet_columns(
    path: str | Path,
    *,
    time_column: str | None = "time",
    time_format: str = "iso",
    sample_period_s: float | None = None,
    start_us: int = 0,
    tags: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    batch_rows: int = 65_536,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A wide Parquet export (one time column, one column per tag) as
    (ts_us (n,), tag names, values (n, tags)): what read_csv_columns returns for
    the same data written as CSV, with the same column rules and errors.

    Read with pyarrow column-wise, row group by row group in batches of
    ``batch_rows`` rows, and only the time and tag columns, so memory holds the
    result and one batch, never the whole file. Errors name the file, the
    column and, where there is one, the row; rows are numbered from 1, the
    first data row (a Parquet file has no header row).

    The time column may be
      * a timestamp of any unit (s, ms, us; ns is cut to us), with or without a
        time zone: one **without a time zone is read as UTC**. ``time_format``
        does not apply to it;
      * integer or floating-point numbers since the epoch: their unit must be
        given as ``time_format`` epoch_s, epoch_ms or epoch_us, as for a CSV
        column of numbers (floats are rounded to the microsecond);
      * text, read as parse_time_column reads a CSV cell (iso with no offset =
        UTC, epoch_*, or a strptime pattern; parsed by pyarrow, and by
        parse_time_column where pyarrow does not accept the text).
    Tag columns: integer, floating-point, decimal or boolean (0/1), or text
    holding numbers as a CSV cell would. A null (or empty text) is a gap, NaN,
    as an empty CSV cell is: csv_history and parquet_history send it as a Bad
    quality sample, never as 0. A row whose time and tag columns are all null is
    skipped, as a blank CSV line is.

    Without a time column, rows are ``sample_period_s`` apart from ``start_us``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except (OSError, pa.ArrowException) as exc:
        raise HistoryError(f"{path}: cannot be read as Parquet: {exc}") from None
    schema = parquet.schema_arrow
    header = list(schema.names)
    if not header:
        raise HistoryError(f"{path}: the file has no columns; it needs a time column and one column per tag")
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
    columns = candidates + ([time_column] if time_column is not None else [])
    twice = sorted({c for c in columns if header.count(c) > 1})
    if twice:
        raise HistoryError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once; give each column its own name")
    for name in candidates:
        kind = _plain_type(schema.field(name).type)
        if not (_is_number_type(kind) or _is_text_type(kind)):
            raise HistoryError(
                f"{path}, column {name!r}: type {kind} is not a number; "
                "export the tag as a float or integer column, or leave the column out"
            )
    if time_column is not None:
        kind = _plain_type(schema.field(time_column).type)
        if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and time_format not in _EPOCH_US:
            raise HistoryError(
                f"{path}, column {time_column!r}: the times are numbers ({kind}), which format {time_format!r} cannot read; "
                "give their unit with --time-format epoch_s, epoch_ms or epoch_us"
            )
        if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind) or _is_text_type(kind) or pa.types.is_null(kind)):
            raise HistoryError(
                f"{path}, column {time_column!r}: type {kind} cannot be read as a time; the time column must be a timestamp, "
                "numbers since the epoch (with --time-format epoch_s, epoch_ms or epoch_us) or text (with --time-format)"
            )

    n = parquet.metadata.num_rows
    values = np.full((n, len(candidates)), np.nan)
    ts_us = np.zeros(n, dtype=np.int64)
    blank = np.zeros(n, dtype=bool)
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            size = batch.num_rows
            part = slice(row, row + size)
            empty = np.ones(size, dtype=bool)
            for c, name in enumerate(candidates):
                column = _plain_column(batch.column(name))
                empty &= _nulls(column)
                values[part, c] = _parquet_numbers(column, path, name, row + 1)
            if time_column is not None:
                column = _plain_column(batch.column(time_column))
                missing = _nulls(column)
                empty &= missing
                if np.any(missing & ~empty):
                    at = row + 1 + int(np.argmax(missing & ~empty))
                    raise HistoryError(f"{path}, row {at}, column {time_column!r}: the time is missing (null); every row with values needs one")
                ts_us[part] = _parquet_times(column, time_format, path, time_column, row + 1)
            blank[part] = empty
            row += size
    except (OSError, pa.ArrowException) as exc:
        raise HistoryError(f"{path}: cannot be read as Parquet (row {row + 1} on): {exc}") from None
    rows = None  # 1-based row numbers of the rows kept, where some were skipped
    if blank.any():
        keep = ~blank
        rows = np.flatnonzero(keep) + 1
        values, ts_us = values[keep], ts_us[keep]
    if len(values) == 0:
        raise HistoryError(f"{path}: the file has columns but no data rows")
    if time_column is None:
        ts_us = start_us + np.round(np.arange(len(values)) * sample_period_s * 1e6).astype(np.int64)
    elif len(ts_us) > 1 and np.any(np.diff(ts_us) < 0):
        i = int(np.argmax(np.diff(ts_us) < 0)) + 1
        at = int(rows[i]) if rows is not None else i + 1
        raise HistoryError(
            f"{path}, row {at}, column {time_column!r}: time goes backwards "
            f"({np.datetime64(int(ts_us[i]), 'us')}Z after {np.datetime64(int(ts_us[i - 1]), 'us')}Z); sort the export by time"
        )
    return ts_us, candidates, values


def parquet_history(
    path: str | Path,
    asset: AssetConfig,
    *,
    batch_s: float = DEFAULT_BATCH_S,
    **options,
) -> Iterator[ReadingBatch]:
    """Reading batches of one asset from a wide Parquet export (see
    read_parquet_columns): the batches csv_history yields for the same data.

    Columns that are not tags of ``asset`` are an error unless excluded, so a
    misspelt tag is not silently left out. Nulls are gaps: they are sent as Bad
    quality samples (NaN), as a connector would."""
    ts_us, names, values = read_parquet_columns(path, **options)
    _check_tags_of(path, asset, names)
    yield from matrix_batches(asset.id, names, ts_us, values, batch_s=batch_s)


def _plain_type(kind):
    """The type of the values: a dictionary-encoded column's value type."""
    import pyarrow as pa

    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_text_type(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _is_number_type(kind) -> bool:
    import pyarrow as pa

    t = pa.types
    return t.is_integer(kind) or t.is_floating(kind) or t.is_decimal(kind) or t.is_boolean(kind) or t.is_null(kind)


def _plain_column(column):
    """A batch column without dictionary encoding; text trimmed as a CSV cell is."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
    if _is_text_type(column.type):
        column = pc.utf8_trim_whitespace(column)
    return column


def _nulls(column) -> np.ndarray:
    """Which cells are empty: null, or text that is empty (after trimming)."""
    import pyarrow.compute as pc

    empty = column.is_null()
    if _is_text_type(column.type):
        empty = pc.fill_null(pc.or_kleene(empty, pc.equal(column, "")), False)
    return empty.to_numpy(zero_copy_only=False)


def _parquet_numbers(column, path: Path, name: str, first_row: int) -> np.ndarray:
    """One batch of a tag column as float64, nulls (and empty text) as NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if _is_text_type(column.type):
        column = pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)
        try:
            column = column.cast(pa.float64())
        except pa.ArrowException:
            # pyarrow refuses some text: read it as the CSV path does, which names the row.
            out = np.full(len(column), np.nan)
            for i, text in enumerate(column.to_pylist()):
                if text is None:
                    continue
                try:
                    out[i] = float(text)
                except ValueError:
                    raise HistoryError(
                        f"{path}, row {first_row + i}, column {name!r}: {text!r} is not a number; "
                        "fix the export, or leave the column out"
                    ) from None
            return out
    else:
        column = column.cast(pa.float64(), safe=False)  # int64 beyond 2**53 rounds, as float() of its text would
    return column.fill_null(np.nan).to_numpy(zero_copy_only=False)


def _parquet_times(column, time_format: str, path: Path, name: str, first_row: int) -> np.ndarray:
    """One batch of the time column as int64 microseconds since the epoch (UTC);
    nulls (rows skipped as blank) come out as 0."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_null(kind):
        return np.zeros(len(column), dtype=np.int64)
    if pa.types.is_timestamp(kind):
        multiply, divide = _TIMESTAMP_US[kind.unit]
        ints = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return _epoch_ints(ints, multiply, divide, f"a {kind} time", path, name, first_row)
    scale = _EPOCH_US.get(time_format)
    if pa.types.is_integer(kind):
        ints = column.fill_null(0).to_numpy(zero_copy_only=False)
        return _epoch_ints(ints, scale, 1, f"a time in format {time_format!r}", path, name, first_row)
    if pa.types.is_floating(kind):
        return _epoch_floats(column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False), scale, time_format, path, name, first_row)
    try:  # text
        if scale is not None:
            numbers = column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
            return _epoch_floats(numbers, scale, time_format, path, name, first_row)
        if time_format == "iso":
            try:
                stamps = column.cast(pa.timestamp("us", tz="UTC"))  # every text with an offset
            except pa.ArrowException:
                stamps = column.cast(pa.timestamp("us"))  # every text without one: UTC
        else:
            stamps = pc.strptime(column, format=time_format, unit="us", error_is_null=False)
        return stamps.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    except pa.ArrowException:
        pass
    # Text pyarrow does not take (mixed offsets, %f, ...): parse_time_column,
    # which reads it as the CSV path does or names the row it cannot read.
    texts = column.to_pylist()
    present = [i for i, text in enumerate(texts) if text is not None]
    if len(present) == len(texts):
        return parse_time_column(texts, time_format, str(path), name, first_row=first_row)
    out = np.zeros(len(texts), dtype=np.int64)
    for i in present:
        out[i] = parse_time_column([texts[i]], time_format, str(path), name, first_row=first_row + i)[0]
    return out


def _epoch_ints(ints: np.ndarray, multiply: int, divide: int, what: str, path: Path, name: str, first_row: int) -> np.ndarray:
    limit = _INT64_MAX // multiply
    bad = (ints > limit) | (ints < -limit)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise HistoryError(f"{path}, row {first_row + i}, column {name!r}: {int(ints[i])} is out of range for {what}")
    us = ints.astype(np.int64) * multiply
    return us // divide if divide != 1 else us


def _epoch_floats(numbers: np.ndarray, scale: int, time_format: str, path: Path, name: str, first_row: int) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        us = np.round(numbers * float(scale))
        bad = ~(np.abs(us) < 2.0**63)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise HistoryError(
            f"{path}, row {first_row + i}, column {name!r}: cannot read {float(numbers[i])!r} as a time in format {time_format!r}; "
            "pass --time-format (iso, epoch_s, epoch_ms, epoch_us or a strptime pattern like '%Y-%m-%d %H:%M:%S')"
        )
    return us.astype(np.int64)


def _check_tags_of(path: str | Path, asset: AssetConfig, names: Sequence[str]) -> None:
    """Every column read must be a tag of the asset (a misspelt one is not left out silently)."""
    known = {t.id for t in asset.tags}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HistoryError(
            f"{path}: column(s) {', '.join(map(repr, unknown))} are not tags of asset {asset.id!r} "
            f"(its tags: {', '.join(sorted(known))}); rename them or pass --tags with the columns to use"
        )


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
