"""What every connector (OPC UA, Modbus) hands on, and what it reports.

A connector turns protocol reads into *samples* (asset, tag, source time, value,
OPC UA StatusCode quality) and *connector events* (communication lost and
restored, samples dropped). It gives both to a ``SampleSink``; the sink batches
samples per asset into wire-schema reading batches and writes them, with the
events, to the durable spool that forwards to Kafka. Connectors know nothing of
Kafka or the spool, which keeps them testable against a real server with a
``CollectingSink``.

Quality follows OPC UA StatusCodes everywhere, also for Modbus, so detectors and
alarms read one convention: a device that does not answer yields samples with a
Bad code and a NaN value, never zeros.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

from stream.wire import SCHEMA_VERSION, utc_iso

# OPC UA StatusCodes the connectors write themselves (Part 4, 7.34).
GOOD = 0x0000_0000
#: a low-level communication error: the device stopped answering.
BAD_COMMUNICATION_ERROR = 0x8005_0000
#: communication is configured but was never established (no last value).
BAD_NO_COMMUNICATION = 0x8031_0000
#: the request timed out.
BAD_TIMEOUT = 0x800A_0000
#: the address or value cannot be decoded as configured (wrong type, bit out of range).
BAD_DECODING_ERROR = 0x8007_0000

EventName = Literal["comm_lost", "comm_restored", "samples_dropped", "spool_dropped"]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class ConnectorEvent:
    """Something about the data path that detectors and operators must know.

    ``comm_lost`` / ``comm_restored`` bracket a gap: samples inside it are
    missing because the device was unreachable, not because the process
    changed. ``samples_dropped`` counts samples lost on purpose by a bounded
    queue (``count``); ``spool_dropped`` counts batches the full spool gave up.
    """

    event: EventName
    connector: Literal["opcua", "modbus", "spool"]
    device: str
    ts_us: int
    assets: tuple[str, ...] = ()
    detail: str = ""
    count: int = 0

    def to_message(self) -> dict:
        """The JSON message on the ``events`` topic (stream/schemas/connector-event.schema.json)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "connector_event",
            "event": self.event,
            "connector": self.connector,
            "device": self.device,
            "ts": utc_iso(self.ts_us),
            "ts_us": self.ts_us,
            "assets": list(self.assets),
            "detail": self.detail,
            "count": self.count,
        }


class SampleSink(Protocol):
    """Where connectors put what they read. Implementations must be cheap and
    never block on the network: they are called from the connectors' event loop."""

    def put_samples(
        self,
        asset_id: str,
        tag_ids: Sequence[str],
        ts_us: Sequence[int],
        values: Sequence[float],
        qualities: Sequence[int],
    ) -> None:
        """Samples of one asset; the sequences are parallel and of equal length."""

    def put_event(self, event: ConnectorEvent) -> None: ...


@dataclass
class CollectedSample:
    asset_id: str
    tag_id: str
    ts_us: int
    value: float
    quality: int


class CollectingSink:
    """A sink that keeps everything in memory: for tests and the benchmarks."""

    def __init__(self) -> None:
        self.samples: list[CollectedSample] = []
        self.events: list[ConnectorEvent] = []
        self._lock = threading.Lock()

    def put_samples(self, asset_id, tag_ids, ts_us, values, qualities) -> None:
        with self._lock:
            self.samples.extend(
                CollectedSample(asset_id, t, int(ts), float(v), int(q)) for t, ts, v, q in zip(tag_ids, ts_us, values, qualities)
            )

    def put_event(self, event: ConnectorEvent) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, asset_id: str, tag_id: str) -> list[CollectedSample]:
        with self._lock:
            return [s for s in self.samples if s.asset_id == asset_id and s.tag_id == tag_id]

    def latest(self, asset_id: str, tag_id: str) -> CollectedSample | None:
        found = self.of(asset_id, tag_id)
        return found[-1] if found else None

    def event_names(self) -> list[str]:
        with self._lock:
            return [e.event for e in self.events]


@dataclass
class DeviceHealth:
    """Health of one connection (an OPC UA server or a Modbus device), as the
    runner reports it in its health file and log: what an integrator checks first."""

    connector: Literal["opcua", "modbus"]
    device: str
    connected: bool = False
    #: when the last good read or notification arrived (us since epoch), 0 if never.
    last_ok_us: int = 0
    samples: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    reconnects: int = 0
    dropped_samples: int = 0
    last_error: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        age = (now_us() - self.last_ok_us) / 1e6 if self.last_ok_us else math.inf
        return {
            "connector": self.connector,
            "device": self.device,
            "connected": self.connected,
            "last_ok": utc_iso(self.last_ok_us) if self.last_ok_us else None,
            "seconds_since_last_ok": None if math.isinf(age) else round(age, 3),
            "samples": self.samples,
            "reads_ok": self.reads_ok,
            "reads_failed": self.reads_failed,
            "reconnects": self.reconnects,
            "dropped_samples": self.dropped_samples,
            "last_error": self.last_error,
            **self.extra,
        }
