"""The on-disk spool without Kafka: order, restarts, torn and damaged files, the
size bound, the one-owner lock, and a process killed with SIGKILL mid-stream."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from connectors.spool import SEGMENT_SUFFIX, Spool, SpoolError, SpoolLockedError

REPO = Path(__file__).resolve().parent.parent
TOPIC = "edgewatch.readings"


def payload(i: int, size: int | None = None) -> bytes:
    """A value that tells which record it is, and whether it is intact."""
    size = size if size is not None else 40 + (i * 7919) % 3000
    return (i.to_bytes(8, "little") * (size // 8 + 1))[:size]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + SEGMENT_SUFFIX))


def read_all(spool: Spool, from_index: int = 0) -> list:
    out, at = [], from_index
    while batch := spool.read(at, max_records=97, max_bytes=64 * 1024):
        out.extend(batch)
        at = batch[-1].index + 1
    return out


def test_append_read_ack_keep_order(tmp_path):
    with Spool(tmp_path / "spool") as spool:
        for i in range(300):
            key = None if i % 10 == 0 else f"asset-{i % 3}".encode()
            assert spool.append(TOPIC if i % 2 else "edgewatch.events", key, payload(i), created_us=1_000 + i) == i
        assert spool.next_index == 300 and spool.pending_records == 300 and spool.first_unacked == 0

        records = read_all(spool)
        assert [r.index for r in records] == list(range(300))
        for r in records:
            assert r.value == payload(r.index)
            assert r.key == (None if r.index % 10 == 0 else f"asset-{r.index % 3}".encode())
            assert r.topic == (TOPIC if r.index % 2 else "edgewatch.events")
            assert r.created_us == 1_000 + r.index

        assert [r.index for r in spool.read(250, max_records=5)] == [250, 251, 252, 253, 254]
        assert len(spool.read(0, max_records=1000, max_bytes=1)) == 1  # always at least one

        spool.ack(99)
        assert spool.first_unacked == 100 and spool.pending_records == 200
        spool.ack(50)  # going back is a no-op
        assert spool.first_unacked == 100
        spool.ack(299)
        assert spool.pending_records == 0 and spool.first_unacked == 300
        assert spool.read(300) == []


def test_reopen_keeps_unacknowledged_records_and_indexes_continue(tmp_path):
    directory = tmp_path / "spool"
    with Spool(directory, segment_bytes=16 * 1024, max_bytes=1 << 20) as spool:
        for i in range(200):
            spool.append(TOPIC, b"k", payload(i))
        spool.ack(119)
    with Spool(directory, segment_bytes=16 * 1024, max_bytes=1 << 20) as spool:
        assert spool.first_unacked == 120 and spool.pending_records == 80 and spool.next_index == 200
        records = read_all(spool, spool.first_unacked)
        assert [r.index for r in records] == list(range(120, 200))
        assert all(r.value == payload(r.index) for r in records)
        assert spool.append(TOPIC, b"k", payload(200)) == 200
        spool.ack(200)
        assert spool.pending_records == 0
    # Everything acknowledged: the old segments are gone, yet indexes are never reused.
    with Spool(directory, segment_bytes=16 * 1024, max_bytes=1 << 20) as spool:
        assert len(segments(directory)) == 1
        assert spool.pending_records == 0
        assert spool.append(TOPIC, b"k", b"x") == 201


def test_acknowledged_segments_are_deleted(tmp_path):
    directory = tmp_path / "spool"
    with Spool(directory, segment_bytes=8 * 1024, max_bytes=1 << 20) as spool:
        for i in range(100):
            spool.append(TOPIC, b"k", payload(i, 1000))
        assert len(segments(directory)) >= 10
        spool.ack(49)
        remaining = segments(directory)
        assert int(remaining[0].name.split(".")[0]) <= 50  # the segment holding record 50 stays
        assert len(remaining) < 10
        spool.ack(99)
        assert len(segments(directory)) == 1  # only the segment being written


def test_torn_tail_is_cut_and_every_complete_record_kept(tmp_path, caplog):
    directory = tmp_path / "spool"
    with Spool(directory) as spool:
        for i in range(50):
            spool.append(TOPIC, b"k", payload(i, 5000))
    tail = segments(directory)[-1]
    with open(tail, "r+b") as f:  # the last record cut short in the middle of its value
        f.truncate(tail.stat().st_size - 2000)
    with caplog.at_level(logging.WARNING, logger="connectors.spool"), Spool(directory) as spool:
        assert "incomplete record" in caplog.text
        records = read_all(spool)
        assert [r.index for r in records] == list(range(49))
        assert all(r.value == payload(r.index, 5000) for r in records)
        assert spool.corrupt_records == 0  # a torn write is not damage
        # Record 49 had been appended (the state file says so): its index is not reused.
        assert spool.next_index == 50
        assert spool.append(TOPIC, b"k", payload(50, 5000)) == 50
        assert [r.value for r in spool.read(49)] == [payload(50, 5000)]

    # A torn frame header (only 3 bytes of it written) and a zero-filled tail too.
    for garbage in (b"\x10\x00\x00", b"\x00" * 4096):
        with open(segments(directory)[-1], "ab") as f:
            f.write(garbage)
        with Spool(directory) as spool:
            assert spool.next_index == 51
            assert [r.index for r in read_all(spool)] == [*range(49), 50]


def test_damaged_record_in_the_middle_skips_to_the_next_segment(tmp_path, caplog):
    directory = tmp_path / "spool"
    options = dict(segment_bytes=16 * 1024, max_bytes=1 << 20)
    with Spool(directory, **options) as spool:
        for i in range(60):
            spool.append(TOPIC, b"k", payload(i, 1000))
    first, second = segments(directory)[:2]
    second_first_index = int(second.name.split(".")[0])
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in a sealed segment
    first.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="connectors.spool"), Spool(directory, **options) as spool:
        records = read_all(spool)
        indexes = [r.index for r in records]
        damaged_at = next(i for i in range(60) if i not in indexes)
        lost = second_first_index - damaged_at
        assert indexes == list(range(damaged_at)) + list(range(second_first_index, 60))
        assert all(r.value == payload(r.index, 1000) for r in records)
        assert spool.corrupt_records == lost > 0
        assert "is damaged" in caplog.text and f"{lost} records lost" in caplog.text
        assert spool.take_drop_report()[0] == lost  # reported to the owner like a drop
        # Still usable: the forwarder acknowledges past the damage, the spool goes on.
        spool.ack(59)
        assert spool.pending_records == 0
        assert spool.append(TOPIC, b"k", b"after") == 60
        assert [r.value for r in spool.read(spool.first_unacked)] == [b"after"]


def test_damage_in_the_segment_being_written_moves_appends_to_a_new_segment(tmp_path, caplog):
    directory = tmp_path / "spool"
    with Spool(directory) as spool:
        for i in range(20):
            spool.append(TOPIC, b"k", payload(i, 1000))
        active = segments(directory)[-1]
        with open(active, "r+b") as f:  # damage behind the spool's back, while it is open
            f.seek(5000)
            f.write(b"\xff" * 4)
        with caplog.at_level(logging.ERROR, logger="connectors.spool"):
            indexes = [r.index for r in read_all(spool)]
        assert indexes == list(range(len(indexes))) and len(indexes) < 20
        assert spool.append(TOPIC, b"k", b"new") == 20
        assert [r.index for r in spool.read(indexes[-1] + 1)] == [20]
        assert len(segments(directory)) == 2


def test_full_spool_drops_the_oldest_records_counted_and_reported(tmp_path, caplog):
    directory = tmp_path / "spool"
    max_bytes = 64 * 1024
    with caplog.at_level(logging.WARNING, logger="connectors.spool"):
        with Spool(directory, max_bytes=max_bytes, segment_bytes=16 * 1024) as spool:
            for i in range(300):
                spool.append(TOPIC, b"k", payload(i, 1000))
                assert spool.disk_bytes <= max_bytes
            assert sum(p.stat().st_size for p in segments(directory)) <= max_bytes
            records = read_all(spool)
            kept = [r.index for r in records]
            assert kept == list(range(kept[0], 300))  # the newest, contiguous
            assert spool.dropped_records == kept[0] == 300 - spool.pending_records
            assert spool.first_unacked == kept[0]
            assert spool.dropped_bytes >= spool.dropped_records * 1000
            assert spool.take_drop_report() == (spool.dropped_records, spool.dropped_bytes)
            assert spool.take_drop_report() == (0, 0)  # since the last call
    drop_warnings = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(drop_warnings) == 1  # rate-limited: no warning per segment


def test_dropping_acknowledged_records_is_not_a_loss(tmp_path):
    with Spool(tmp_path / "spool", max_bytes=64 * 1024, segment_bytes=16 * 1024) as spool:
        for i in range(300):
            spool.append(TOPIC, b"k", payload(i, 1000))
            spool.ack(i)
        assert spool.dropped_records == 0 and spool.take_drop_report() == (0, 0)


def test_a_second_owner_is_refused_with_a_clear_error(tmp_path):
    directory = tmp_path / "spool"
    spool = Spool(directory)
    try:
        with pytest.raises(SpoolLockedError) as refused:
            Spool(directory)
        assert f"pid {os.getpid()}" in str(refused.value)
        other = subprocess.run(
            [sys.executable, "-c", f"from connectors.spool import Spool; Spool({str(directory)!r})"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode != 0
        assert (
            f"spool directory {directory} is in use by another edgewatch connect (pid {os.getpid()}); "
            "give each connector process its own spool.dir"
        ) in other.stderr
    finally:
        spool.close()
    Spool(directory).close()  # free again once the owner closed it


def test_errors_say_what_to_do(tmp_path):
    with Spool(tmp_path / "spool", max_bytes=64 * 1024, segment_bytes=16 * 1024) as spool:
        with pytest.raises(SpoolError, match="does not fit a spool segment.*max_batch_samples"):
            spool.append(TOPIC, b"k", b"x" * 20_000)
    spool.close()  # twice is fine
    with pytest.raises(SpoolError, match="closed"):
        spool.append(TOPIC, b"k", b"x")


def test_fsync_mode_and_wait_for(tmp_path):
    with Spool(tmp_path / "spool", fsync_interval_s=0.05) as spool:
        assert spool.wait_for(0, 0.01) is False
        for i in range(10):
            spool.append(TOPIC, b"k", payload(i))
        assert spool.wait_for(9, 0.01) is True
        time.sleep(0.2)  # the fsync thread runs meanwhile
        spool.ack(4)
    with Spool(tmp_path / "spool") as spool:
        assert spool.first_unacked == 5 and spool.next_index == 10


def test_appending_is_cheap(tmp_path):
    """2,000 records/s of 2-20 KiB must cost well under 10 % of a core."""
    values = [os.urandom(n) for n in (2048, 8192, 20480)]
    with Spool(tmp_path / "spool") as spool:
        started = time.process_time()
        for i in range(3000):
            spool.append(TOPIC, b"pump-1", values[i % 3])
        cpu_per_record = (time.process_time() - started) / 3000
    assert cpu_per_record * 2000 < 0.10, f"{cpu_per_record * 1e6:.0f} us CPU per append: {cpu_per_record * 2000:.0%} of a core"


CHILD = textwrap.dedent(
    """
    import sys
    from connectors.spool import Spool

    spool = Spool(sys.argv[1], segment_bytes=256 * 1024, max_bytes=1 << 30)
    i = spool.next_index
    while True:
        size = 100 + (i * 7919) % 30000
        value = (i.to_bytes(8, "little") * (size // 8 + 1))[:size]
        index = spool.append("t", str(i % 7).encode(), value)
        assert index == i, (index, i)
        if i % 25 == 0:
            print(index, flush=True)  # only after append returned
        i += 1
    """
)


@pytest.mark.parametrize("round_", range(3))
def test_kill_9_mid_stream_loses_no_appended_record(tmp_path, round_):
    """A child appends as fast as it can and reports indexes once ``append``
    returned; we SIGKILL it at an arbitrary moment. Every record up to the last
    reported one (and any after it that made it) must be there, intact,
    contiguous, without duplicates; a torn last write must be gone."""
    directory = tmp_path / "spool"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(directory)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    reported = -1
    try:
        started = time.monotonic()
        while reported < 2000 + 500 * round_ and time.monotonic() - started < 30:
            line = child.stdout.readline()
            if not line:
                break
            reported = int(line)
        time.sleep(0.003 * round_)  # vary the moment
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # lines already in the pipe were reported before the kill too
        reported = max([reported, *(int(x) for x in rest.split())])
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert reported >= 1000, "the child did not get going"

    with Spool(directory) as spool:  # the dead child's lock is gone with it
        records = read_all(spool)
        indexes = [r.index for r in records]
        assert indexes == list(range(len(indexes))), "records missing or repeated"
        assert len(indexes) - 1 >= reported
        for r in records:
            size = 100 + (r.index * 7919) % 30000
            assert r.value == (r.index.to_bytes(8, "little") * (size // 8 + 1))[:size], f"record {r.index} damaged"
            assert r.key == str(r.index % 7).encode()
        assert spool.next_index == len(indexes)
        assert spool.corrupt_records == 0
        assert spool.append("t", b"0", b"after the kill") == len(indexes)
