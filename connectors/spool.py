"""The durable store-and-forward spool between the connectors and Kafka.

Connectors must never lose a reading because Kafka is away (a broker restart, a
cut uplink, a cluster upgrade), and they must never block the event loop that
polls the devices while it is away. So every message goes to disk first, here,
and a forwarder thread (``connectors.forwarder``) sends it on in order and
acknowledges it back. The spool is an append-only log of records:

* each record has an index, an int that increases by one per record, is never
  reused and carries on across restarts;
* records live in *segment* files named by the index of their first record
  (``00000000000000001234.seg``), at most ``segment_bytes`` each; a segment is
  deleted once all its records are acknowledged;
* every record is framed as ``length + crc32 + payload``, so a write torn by a
  crash is recognised and cut off when the spool is opened again, and a record
  damaged later (disk error, someone editing the file) is detected when read:
  the rest of its segment is skipped, counted (``corrupt_records``, and in
  ``take_drop_report``) and logged as an error, and the spool carries on with
  the next segment instead of becoming unusable;
* the acknowledged position ("every record <= N has been delivered") is kept in
  ``state.json``, replaced atomically (write a temporary file, rename it).

Durability. ``append`` returns once the record is in the operating system's page
cache (one ``pwritev``): a killed process (``kill -9``, OOM killer, a crash)
loses nothing it had appended, because the kernel writes the data back anyway.
A power loss or kernel crash can lose what was not yet written back; with
``fsync_interval_s`` set, a background thread fsyncs the segments and the state
file that often, which bounds that loss to the last interval.

Delivery is at-least-once. The acknowledged position is written at most every
``ACK_PERSIST_INTERVAL_S`` (0.2 s) and on ``close``; after a kill -9 the records
acknowledged in the last fraction of a second (and any that were in flight) are
sent again. Downstream tolerates that: readings carry ``(asset, seq)``.

Bounded. The spool never holds more than ``max_bytes`` on disk. When an append
would exceed it, the OLDEST whole segments are deleted, also when they hold
records not yet sent: during a long outage the newest data is worth more. The
records given up are counted (``dropped_records`` / ``dropped_bytes``), logged
as a warning (at most once a minute) and handed to the owner by
``take_drop_report()`` so that it can emit a ``spool_dropped`` connector event.

One process owns a spool directory: ``Spool`` takes an exclusive ``flock`` on
``LOCK`` in it and refuses to open a directory another process holds.

Thread safety: all public methods take one lock. Connectors append from their
asyncio thread while the forwarder reads and acknowledges from its own thread.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

DEFAULT_MAX_BYTES = 1 * GIB
DEFAULT_SEGMENT_BYTES = 16 * MIB
MIN_SEGMENT_BYTES = 4 * KIB
#: how often at most the acknowledged position is written to disk (and on close).
ACK_PERSIST_INTERVAL_S = 0.2
#: drops are logged at most this often; the counters are exact regardless.
DROP_LOG_INTERVAL_S = 60.0

SEGMENT_MAGIC = b"EWSPOOL1"
SEGMENT_SUFFIX = ".seg"
STATE_FILE = "state.json"
LOCK_FILE = "LOCK"

# Frame: payload_len u32, crc32(payload) u32, then the payload, which starts with
# index u64, created_us i64, topic_len u16, key_len u32 (NO_KEY: the key is None),
# followed by topic (UTF-8), key and value.
_HEAD = struct.Struct("<II")
_META = struct.Struct("<QqHI")
_FRAME_OVERHEAD = _HEAD.size + _META.size
_NO_KEY = 0xFFFF_FFFF
_MAX_PAYLOAD = 0xFFFF_FFF0
_READ_CHUNK = 256 * KIB


class SpoolError(RuntimeError):
    """The spool cannot do what was asked. The text says what to do about it."""


class SpoolLockedError(SpoolError):
    """Another process owns the spool directory."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled message: where it goes (topic, key), what it is (value) and
    when it was appended (``created_us``, wall clock, microseconds since the epoch)."""

    index: int
    topic: str
    key: bytes | None
    value: bytes
    created_us: int

    @property
    def size(self) -> int:
        """Bytes the record takes in its segment file."""
        return _FRAME_OVERHEAD + len(self.topic.encode()) + len(self.key or b"") + len(self.value)


class _Segment:
    """One segment file. Its records have indexes ``first .. end - 1`` (``end`` is
    exclusive; for a sealed segment read from disk it is the next segment's first
    index, an upper bound if records inside were damaged)."""

    __slots__ = ("first", "end", "size", "path", "fd")

    def __init__(self, first: int, path: Path, size: int, end: int):
        self.first = first
        self.path = path
        self.size = size
        self.end = end
        self.fd: int | None = None

    @property
    def records(self) -> int:
        return self.end - self.first


def _now_us() -> int:
    return time.time_ns() // 1000


def _segment_name(first: int) -> str:
    return f"{first:020d}{SEGMENT_SUFFIX}"


class Spool:
    """An on-disk, bounded, crash-safe FIFO of Kafka records with indexes.

    ``directory`` is created if missing. ``max_bytes`` bounds the disk use (oldest
    segments are dropped beyond it); ``segment_bytes`` is the size of one file (it
    is lowered to a quarter of ``max_bytes`` for small spools, so that dropping
    one segment always makes room); ``fsync_interval_s`` adds periodic fsync for
    power-loss safety (None: rely on the OS, which is crash-safe but not
    power-loss-safe).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync_interval_s: float | None = None,
    ):
        if max_bytes < 2 * MIN_SEGMENT_BYTES:
            raise ValueError(f"spool max_bytes must be at least {2 * MIN_SEGMENT_BYTES} bytes, got {max_bytes}")
        if fsync_interval_s is not None and fsync_interval_s <= 0:
            raise ValueError(f"spool fsync_interval_s must be positive or None, got {fsync_interval_s}")
        self.directory = Path(directory).resolve()
        self.max_bytes = int(max_bytes)
        self.segment_bytes = max(MIN_SEGMENT_BYTES, min(int(segment_bytes), self.max_bytes // 4))
        self.fsync_interval_s = fsync_interval_s

        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._closed = False
        self._segments: list[_Segment] = []
        self._total_bytes = 0
        self._next_index = 0
        self._acked = -1
        self._ack_dirty = False
        self._ack_persisted_at = 0.0
        # The read cursor: the byte offset of record ``index`` in segment ``first``.
        self._cursor: tuple[int, int, int] | None = None  # (segment first, index, offset)
        self._read_fds: dict[int, int] = {}

        self.dropped_records = 0
        self.dropped_bytes = 0
        self.corrupt_records = 0
        self._report_records = 0
        self._report_bytes = 0
        self._drop_log_at = 0.0
        self._drop_log_pending = (0, 0)
        self._unsynced: set[Path] = set()
        self._dir_dirty = False

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"cannot create the spool directory {self.directory}: {exc}; set connect.spool_dir to a writable folder"
            ) from exc
        self._lock_fd = self._take_directory_lock()
        try:
            self._recover()
        except BaseException:
            self._release()
            raise

        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        if fsync_interval_s is not None:
            self._sync_thread = threading.Thread(target=self._sync_loop, name=f"spool-fsync:{self.directory.name}", daemon=True)
            self._sync_thread.start()

    # ------------------------------------------------------------------ opening

    def _take_directory_lock(self) -> int:
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise SpoolLockedError(
                f"spool directory {self.directory} is in use by another edgewatch connect (pid {holder}); "
                "give each connector process its own spool.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _recover(self) -> None:
        """Load the state file and the segments; cut off a torn tail; delete what is acknowledged."""
        state = self._load_state()
        self._acked = state.get("acked", -1)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

        found: list[tuple[int, Path]] = []
        for path in self.directory.glob("*" + SEGMENT_SUFFIX):
            try:
                found.append((int(path.name[: -len(SEGMENT_SUFFIX)]), path))
            except ValueError:
                log.warning("ignoring %s in the spool directory: not a segment name", path)
        found.sort()
        for i, (first, path) in enumerate(found):
            end = found[i + 1][0] if i + 1 < len(found) else first
            self._segments.append(_Segment(first, path, path.stat().st_size, end))

        last_valid_end = state.get("next_index", 0)
        start_new_segment = True
        if self._segments:
            tail = self._segments[-1]
            count, good_size, clean = self._scan_tail(tail)
            last_valid_end = max(last_valid_end, tail.first + count)
            if count == 0 and not clean:
                # Nothing usable: keep the file for inspection, out of the way.
                os.replace(tail.path, tail.path.with_name(tail.path.name + ".damaged"))
                self._segments.pop()
            else:
                tail.end = tail.first + count
                if good_size != tail.size:
                    with open(tail.path, "r+b") as f:
                        f.truncate(good_size)
                    tail.size = good_size
                # Append to the recovered tail unless it was damaged in the middle
                # (the records after the damage are gone; their indexes must not be reused).
                start_new_segment = not clean
        self._next_index = max(last_valid_end, self._acked + 1)
        if self._segments and self._segments[-1].end != self._next_index:
            start_new_segment = True
        self._total_bytes = sum(s.size for s in self._segments)

        self._delete_acknowledged(include_tail=True)
        if start_new_segment or not self._segments or self._segments[-1].size >= self.segment_bytes:
            if self._segments:
                self._segments[-1].end = min(self._segments[-1].end, self._next_index)
            self._open_new_segment()
        else:
            self._open_for_append(self._segments[-1])
        self._persist_state()

    def _load_state(self) -> dict:
        path = self.directory / STATE_FILE
        try:
            state = json.loads(path.read_text())
            acked, next_index = int(state["acked"]), int(state["next_index"])
            return {"acked": acked, "next_index": next_index}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "the spool state file %s is unreadable (%s): everything still in the spool will be sent again "
                "(duplicates possible)",
                path,
                exc,
            )
            return {}

    def _scan_tail(self, seg: _Segment) -> tuple[int, int, bool]:
        """Walk the last segment: (complete records, bytes up to the last of them, clean).

        ``clean`` is False when something other than a torn final write follows the
        last good record: that is damage, logged as an error.
        """
        with open(seg.path, "rb") as f:
            data = f.read()
        if len(data) < len(SEGMENT_MAGIC) and SEGMENT_MAGIC.startswith(data):  # killed while creating the segment
            with open(seg.path, "wb") as f:
                f.write(SEGMENT_MAGIC)
            seg.size = len(SEGMENT_MAGIC)
            return 0, len(SEGMENT_MAGIC), True
        if data[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            log.error(
                "spool segment %s does not start with the spool header: it is not a spool file or it is damaged; "
                "moving it aside to %s.damaged (its records are lost)",
                seg.path,
                seg.path.name,
            )
            self._count_corrupt(1, len(data))
            return 0, 0, False
        pos = len(SEGMENT_MAGIC)
        count = 0
        expected = seg.first
        while pos < len(data):
            frame = _parse_frame(data, pos, expected)
            if frame is None:
                break
            pos += _HEAD.size + frame[0]
            expected += 1
            count += 1
        if pos == len(data):
            return count, pos, True
        rest = memoryview(data)[pos:]
        torn = len(rest) < _HEAD.size or _HEAD.size + _HEAD.unpack_from(rest)[0] > len(rest) or not any(rest)
        if torn:
            log.warning(
                "spool segment %s ends in an incomplete record (%d bytes, a write cut short by a crash or kill); removed it, "
                "%d complete records kept",
                seg.path,
                len(rest),
                count,
            )
            return count, pos, True
        log.error(
            "spool segment %s is damaged at byte %d (record %d): cutting off the %d bytes from there; "
            "the records in them are lost",
            seg.path,
            pos,
            expected,
            len(rest),
        )
        self._count_corrupt(1, len(rest))
        return count, pos, False

    def _open_new_segment(self) -> _Segment:
        path = self.directory / _segment_name(self._next_index)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(fd, SEGMENT_MAGIC, 0)
        seg = _Segment(self._next_index, path, len(SEGMENT_MAGIC), self._next_index)
        seg.fd = fd
        self._segments.append(seg)
        self._total_bytes += seg.size
        self._dir_dirty = True
        return seg

    def _open_for_append(self, seg: _Segment) -> None:
        seg.fd = os.open(seg.path, os.O_RDWR)

    # ------------------------------------------------------------------ writing

    def append(self, topic: str, key: bytes | None, value: bytes, created_us: int | None = None) -> int:
        """Append one record; return its index. Once this returns, the record
        survives a crash of this process (see the module docstring for power loss).

        Raises ``SpoolError`` if the record is larger than a segment or the disk
        refuses the write (full, read-only); nothing is half-written then.
        """
        topic_b = topic.encode()
        key_len = _NO_KEY if key is None else len(key)
        payload_len = _META.size + len(topic_b) + (0 if key is None else key_len) + len(value)
        frame_len = _HEAD.size + payload_len
        if len(topic_b) > 0xFFFF:
            raise SpoolError(f"topic name of {len(topic_b)} bytes is too long for the spool")
        if frame_len > self.segment_bytes - len(SEGMENT_MAGIC) or payload_len > _MAX_PAYLOAD:
            raise SpoolError(
                f"a record of {frame_len} bytes does not fit a spool segment of {self.segment_bytes} bytes; "
                "send smaller batches (connect.max_batch_samples) or give the spool more room (connect.spool_max_mb)"
            )
        if created_us is None:
            created_us = _now_us()
        with self._lock:
            if self._closed:
                raise SpoolError(f"the spool in {self.directory} is closed")
            seg = self._segments[-1]
            if seg.size + frame_len > self.segment_bytes and seg.records:
                seg = self._roll()
            self._make_room(frame_len)
            index = self._next_index
            meta = _META.pack(index, created_us, len(topic_b), key_len)
            crc = zlib.crc32(meta)
            crc = zlib.crc32(topic_b, crc)
            if key:
                crc = zlib.crc32(key, crc)
            crc = zlib.crc32(value, crc)
            parts = [_HEAD.pack(payload_len, crc), meta, topic_b, key or b"", value]
            self._write(seg, parts, frame_len)
            seg.size += frame_len
            seg.end = index + 1
            self._total_bytes += frame_len
            self._next_index = index + 1
            if self.fsync_interval_s is not None:
                self._unsynced.add(seg.path)
            self._appended.notify_all()
            return index

    def _write(self, seg: _Segment, parts: list[bytes], total: int) -> None:
        assert seg.fd is not None
        try:
            written = os.pwritev(seg.fd, parts, seg.size)
            if written != total:  # short write (rare): finish it
                data = b"".join(parts)
                while written < total:
                    written += os.pwrite(seg.fd, data[written:], seg.size + written)
        except OSError as exc:
            try:
                os.ftruncate(seg.fd, seg.size)  # no half record left behind
            except OSError:
                pass
            raise SpoolError(
                f"cannot write to the spool segment {seg.path}: {exc}; free disk space on that file system "
                "or lower connect.spool_max_mb"
            ) from exc

    def _roll(self) -> _Segment:
        """Seal the active segment and start a new one at the next index."""
        old = self._segments[-1]
        if old.fd is not None:
            os.close(old.fd)
            old.fd = None
        return self._open_new_segment()

    def _make_room(self, need: int) -> None:
        """Drop the oldest segments until ``need`` more bytes fit under max_bytes."""
        while self._total_bytes + need > self.max_bytes and len(self._segments) > 1:
            seg = self._segments.pop(0)
            lost_from = max(seg.first, self._acked + 1)
            lost = max(0, seg.end - lost_from)
            lost_bytes = 0
            if lost:
                lost_bytes = seg.size - len(SEGMENT_MAGIC) if lost_from == seg.first else self._bytes_from(seg, lost_from)
            self._forget(seg)
            if lost:
                self.dropped_records += lost
                self.dropped_bytes += lost_bytes
                self._report_records += lost
                self._report_bytes += lost_bytes
                self._log_drop(lost, lost_bytes)

    def _bytes_from(self, seg: _Segment, index: int) -> int:
        """Bytes of the records of ``seg`` from ``index`` on (walks the frame headers)."""
        fd = self._fd_for(seg)
        pos = len(SEGMENT_MAGIC)
        at = seg.first
        while pos < seg.size and at < index:
            head = os.pread(fd, _HEAD.size, pos)
            if len(head) < _HEAD.size:
                break
            pos += _HEAD.size + _HEAD.unpack(head)[0]
            at += 1
        return max(0, seg.size - pos)

    def _log_drop(self, records: int, nbytes: int) -> None:
        pending_records, pending_bytes = self._drop_log_pending
        pending_records += records
        pending_bytes += nbytes
        now = time.monotonic()
        if now - self._drop_log_at >= DROP_LOG_INTERVAL_S:
            log.warning(
                "spool %s is full (max %.0f MB): dropped the oldest %d unsent records (%.1f MB) to make room "
                "(%d dropped since start); Kafka has been unreachable too long or connect.spool_max_mb is too small",
                self.directory,
                self.max_bytes / MIB,
                pending_records,
                pending_bytes / MIB,
                self.dropped_records,
            )
            self._drop_log_at = now
            pending_records = pending_bytes = 0
        self._drop_log_pending = (pending_records, pending_bytes)

    def _count_corrupt(self, records: int, nbytes: int) -> None:
        self.corrupt_records += records
        self._report_records += records
        self._report_bytes += nbytes

    def _forget(self, seg: _Segment) -> None:
        """Close and delete a segment's file and forget it."""
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        fd = self._read_fds.pop(seg.first, None)
        if fd is not None:
            os.close(fd)
        if self._cursor is not None and self._cursor[0] == seg.first:
            self._cursor = None
        seg.path.unlink(missing_ok=True)
        self._unsynced.discard(seg.path)
        self._total_bytes -= seg.size
        self._dir_dirty = True

    # ------------------------------------------------------------------ reading

    def read(self, from_index: int, max_records: int = 1000, max_bytes: int = 4 * MIB) -> list[SpoolRecord]:
        """Records in index order, starting at the first index >= ``from_index``
        that still exists (older ones may have been dropped or damaged). Stops after
        ``max_records`` or once ``max_bytes`` of values are collected (always at
        least one record if there is one). Reading does not consume anything:
        only ``ack`` does."""
        out: list[SpoolRecord] = []
        with self._lock:
            if self._closed:
                raise SpoolError(f"the spool in {self.directory} is closed")
            budget = max_bytes
            for seg in list(self._segments):
                if len(out) >= max_records or budget <= 0:
                    break
                if max(from_index, seg.first) < seg.end:
                    budget = self._read_segment(seg, max(from_index, seg.first), out, max_records, budget)
        return out

    def _read_segment(self, seg: _Segment, start: int, out: list, max_records: int, budget: int) -> int:
        """Append the records ``>= start`` of ``seg`` to ``out`` within the limits; return the budget left."""
        fd = self._fd_for(seg)
        if self._cursor is not None and self._cursor[0] == seg.first and self._cursor[1] <= start:
            expected, pos = self._cursor[1], self._cursor[2]
        else:
            expected, pos = seg.first, len(SEGMENT_MAGIC)
        buf = b""
        buf_at = pos
        while pos < seg.size and expected < seg.end and len(out) < max_records and budget > 0:
            off = pos - buf_at
            if off + _FRAME_OVERHEAD > len(buf):
                buf, buf_at, off = os.pread(fd, _READ_CHUNK, pos), pos, 0
            frame = None
            if off + _HEAD.size <= len(buf):
                need = _HEAD.size + _HEAD.unpack_from(buf, off)[0]
                if off + need > len(buf) and pos + need <= seg.size:
                    buf, buf_at, off = os.pread(fd, max(need, _READ_CHUNK), pos), pos, 0
                if pos + need <= seg.size:
                    frame = _parse_frame(buf, off, expected)
            if frame is None:
                self._skip_damaged(seg, pos, expected)
                return budget
            payload_len, record = frame
            pos += _HEAD.size + payload_len
            expected += 1
            if record.index >= start:
                out.append(record)
                budget -= len(record.value)
        if pos >= seg.size and expected < seg.end:  # a sealed file that lost its end (power loss without fsync)
            self._skip_damaged(seg, pos, expected)
            return budget
        self._cursor = (seg.first, expected, pos)
        return budget

    def _skip_damaged(self, seg: _Segment, pos: int, expected: int) -> None:
        """A record that fails its checks: give up the rest of its segment, loudly.
        The file is left as it is for inspection until it is acknowledged past."""
        lost = max(0, seg.end - expected)
        log.error(
            "spool segment %s is damaged at byte %d (record %d): skipping the rest of it, %d records lost; "
            "check the disk (dmesg, SMART) if this happens again",
            seg.path,
            pos,
            expected,
            lost,
        )
        self._count_corrupt(lost, seg.size - pos)
        if seg is self._segments[-1]:
            self._roll()  # new records must not land behind the damage
        seg.end = expected  # the records from here on no longer exist
        if self._cursor is not None and self._cursor[0] == seg.first:
            self._cursor = None

    def _fd_for(self, seg: _Segment) -> int:
        if seg.fd is not None:
            return seg.fd
        fd = self._read_fds.get(seg.first)
        if fd is None:
            for old in list(self._read_fds):  # keep one sealed segment open for reading
                os.close(self._read_fds.pop(old))
            fd = os.open(seg.path, os.O_RDONLY)
            self._read_fds[seg.first] = fd
        return fd

    def wait_for(self, from_index: int, timeout_s: float) -> bool:
        """Block until a record with index >= ``from_index`` exists, or the timeout; True if one does."""
        with self._appended:
            if self._next_index > from_index:
                return True
            self._appended.wait(timeout_s)
            return self._next_index > from_index

    # ------------------------------------------------------------------ acknowledging

    def ack(self, index: int) -> None:
        """Mark every record <= ``index`` delivered. Fully acknowledged segments are
        deleted; the position reaches disk within ACK_PERSIST_INTERVAL_S (or on close)."""
        with self._lock:
            if self._closed:
                raise SpoolError(f"the spool in {self.directory} is closed")
            index = min(index, self._next_index - 1)
            if index <= self._acked:
                return
            self._acked = index
            self._ack_dirty = True
            if len(self._segments) > 1 and self._segments[0].end - 1 <= index:
                self._persist_state()  # first, so the state never points before a deleted segment
                self._delete_acknowledged(include_tail=False)
            elif time.monotonic() - self._ack_persisted_at >= ACK_PERSIST_INTERVAL_S:
                self._persist_state()

    def tick(self) -> None:
        """Write a pending acknowledged position if it is due. The forwarder calls
        this from its loop so that the position also reaches disk when acks stop."""
        with self._lock:
            if not self._closed and self._ack_dirty and time.monotonic() - self._ack_persisted_at >= ACK_PERSIST_INTERVAL_S:
                self._persist_state()

    def flush(self) -> None:
        """Write the acknowledged position now (and fsync, if configured)."""
        with self._lock:
            if not self._closed and self._ack_dirty:
                self._persist_state()
        if self.fsync_interval_s is not None:
            self.sync()

    def _delete_acknowledged(self, include_tail: bool) -> None:
        while self._segments and self._segments[0].end - 1 <= self._acked:
            if len(self._segments) == 1 and not include_tail:
                break
            self._forget(self._segments.pop(0))

    def _persist_state(self) -> None:
        path = self.directory / STATE_FILE
        tmp = path.with_name(STATE_FILE + ".tmp")
        data = json.dumps({"acked": self._acked, "next_index": self._next_index}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if self.fsync_interval_s is not None:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.fsync_interval_s is not None:
            self._dir_dirty = True  # the rename reaches the disk with the directory's fsync
        self._ack_dirty = False
        self._ack_persisted_at = time.monotonic()

    # ------------------------------------------------------------------ fsync

    def _sync_loop(self) -> None:
        while not self._sync_stop.wait(self.fsync_interval_s):
            try:
                self.sync()
            except Exception:  # keep syncing; a transient error must not end the thread
                log.exception("spool fsync failed in %s", self.directory)

    def sync(self) -> None:
        """fsync what was appended since the last sync, the directory and the state."""
        with self._lock:
            if self._closed:
                return
            paths = list(self._unsynced)
            self._unsynced.clear()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        for path in paths:  # outside the lock: appends go on meanwhile
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # dropped or acknowledged meanwhile
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if dir_dirty:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ state

    @property
    def next_index(self) -> int:
        """The index the next append gets."""
        with self._lock:
            return self._next_index

    @property
    def first_unacked(self) -> int:
        """The lowest index not yet acknowledged that may still exist (next_index if none)."""
        with self._lock:
            return self._first_unacked()

    def _first_unacked(self) -> int:
        for seg in self._segments:
            lowest = max(seg.first, self._acked + 1)
            if lowest < seg.end:
                return lowest
        return self._next_index

    def _pending_records(self) -> int:
        return sum(max(0, seg.end - max(seg.first, self._acked + 1)) for seg in self._segments)

    @property
    def acked(self) -> int:
        """Every record <= this index is acknowledged (-1: none yet)."""
        with self._lock:
            return self._acked

    @property
    def pending_records(self) -> int:
        """Records appended and not yet acknowledged."""
        with self._lock:
            return self._pending_records()

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk of the records not yet acknowledged (within the oldest
        segment estimated in proportion to its records)."""
        with self._lock:
            total = 0
            for seg in self._segments:
                first = max(seg.first, self._acked + 1)
                if first >= seg.end:
                    continue
                data = seg.size - len(SEGMENT_MAGIC)
                if first > seg.first:
                    data = data * (seg.end - first) // seg.records
                total += data
            return total

    @property
    def disk_bytes(self) -> int:
        """Bytes of all segment files, what ``max_bytes`` bounds."""
        with self._lock:
            return self._total_bytes

    def take_drop_report(self) -> tuple[int, int]:
        """(records, bytes) given up since the last call, dropped because the spool
        was full or lost to damage; the owner turns it into a ``spool_dropped`` event."""
        with self._lock:
            report = (self._report_records, self._report_bytes)
            self._report_records = self._report_bytes = 0
            return report

    def stats(self) -> dict:
        with self._lock:
            first = self._first_unacked()
            return {
                "dir": str(self.directory),
                "next_index": self._next_index,
                "first_unacked": first,
                "pending_records": self._pending_records(),
                "disk_bytes": self._total_bytes,
                "segments": len(self._segments),
                "dropped_records": self.dropped_records,
                "dropped_bytes": self.dropped_bytes,
                "corrupt_records": self.corrupt_records,
            }

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Write the acknowledged position, fsync if configured, release the directory."""
        if self._sync_thread is not None:
            self._sync_stop.set()
            self._sync_thread.join()
            self._sync_thread = None
            self.sync()
        with self._lock:
            if self._closed:
                return
            try:
                self._persist_state()
            finally:
                self._closed = True
                self._appended.notify_all()
                for seg in self._segments:
                    if seg.fd is not None:
                        os.close(seg.fd)
                        seg.fd = None
                for fd in self._read_fds.values():
                    os.close(fd)
                self._read_fds.clear()
                self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, next_index={self._next_index}, acked={self._acked})"


def _parse_frame(buf, off: int, expected: int) -> tuple[int, SpoolRecord] | None:
    """Decode the frame at ``buf[off:]``: (payload_len, record), or None if it is
    incomplete, fails its CRC or does not hold record ``expected`` (the records
    of one segment have consecutive indexes)."""
    if off + _FRAME_OVERHEAD > len(buf):
        return None
    payload_len, crc = _HEAD.unpack_from(buf, off)
    start = off + _HEAD.size
    end = start + payload_len
    if payload_len < _META.size or end > len(buf):
        return None
    payload = memoryview(buf)[start:end]
    if zlib.crc32(payload) != crc:
        return None
    index, created_us, topic_len, key_len = _META.unpack_from(payload)
    at = _META.size
    key_bytes = 0 if key_len == _NO_KEY else key_len
    if index != expected or at + topic_len + key_bytes > payload_len:
        return None
    topic = bytes(payload[at : at + topic_len]).decode("utf-8", errors="replace")
    at += topic_len
    key = None if key_len == _NO_KEY else bytes(payload[at : at + key_len])
    at += key_bytes
    return payload_len, SpoolRecord(index, topic, key, bytes(payload[at:]), created_us)
