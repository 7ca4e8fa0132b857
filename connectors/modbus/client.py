"""The Modbus TCP connector: polls one ``ModbusConnection`` and hands on samples.

One TCP connection per configured connection (a device, or a gateway with
several unit ids behind it), opened with pymodbus' ``AsyncModbusTcpClient``;
``framer: rtu`` sends RTU frames over that TCP stream, as serial gateways in
transparent mode expect. The tags are read by the requests of
:mod:`connectors.modbus.plan`; one asyncio task per poll interval runs them at a
fixed rate (a poll that overruns its interval makes the next ticks be skipped
and counted, never queued up behind it).

Per request, the samples of each asset go to ``sink.put_samples`` stamped with
the time the answer arrived, quality Good.

When a device does not answer
-----------------------------
Each unit id is tracked on its own, with a ``DeviceHealth`` each (device name:
the connection id, or ``<connection id>/<unit id>`` on a connection with
several unit ids).

* A unit counts as *lost* when a request gets no answer after ``retries`` extra
  attempts of ``timeout_s`` each, when a gateway answers exception 0x0A / 0x0B
  (path unavailable / target device failed to respond), or when the TCP
  connection is down (refused, unreachable, dropped).
* At that transition the connector emits ONE ``comm_lost`` event (also when
  the device was never reached since start: the gap starts there) and logs one
  warning. The unit's health shows ``connected: False``, ``reads_failed`` and
  ``last_error``.
* While lost, **every poll** still yields one sample per tag of the unit, value
  NaN, quality ``Bad_CommunicationError`` (0x80050000) if the unit had answered
  before, ``Bad_NoCommunication`` (0x80310000) if it never had. Never zeros:
  detectors see a gap with a reason and a steady sample clock.
* A lost unit is not polled with full retries (that would hold up the other
  units on a shared gateway line): it is *probed* with one attempt, first at
  the next poll, then after a capped exponential backoff (0.5 s doubling up to
  ``reconnect_max_delay_s``). Its first answer emits ONE ``comm_restored``;
  from then on it is polled normally.
* The TCP connection is reopened by its own task with the same backoff; polls
  never wait for it. When every unit of a connection has stopped answering
  the connection is closed and reopened too (a half-open TCP connection to a
  rebooted device otherwise never recovers).

When a device refuses a read
----------------------------
A Modbus exception response means the device is there but will not serve the
request as configured. The connector first splits a coalesced request into one
request per tag, so that one wrong address does not blank its neighbours, then
marks the tags the device still refuses, every poll, with value NaN and

* ``Bad_ConfigurationError`` (0x80890000) for exceptions 01 illegal function,
  02 illegal data address, 03 illegal data value: the configuration asks for
  something this device does not have (fix table, address, unit_id, or the
  read size);
* ``Bad_DeviceFailure`` (0x808B0000) for the others (04 server device failure,
  05/06 busy, 08 memory parity, ...).

It logs the device, table, address and tags once per refused read (no log
storm); the rest of the device keeps being read. A value that decodes to NaN
or infinity (a float register holding a NaN pattern) gets ``Bad_DecodingError``.

pymodbus' own log lines (one per timeout, with frame dumps) are passed on only
when this module's logger is at DEBUG; the connector logs each event itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from connectors.base import (
    BAD_COMMUNICATION_ERROR,
    BAD_DECODING_ERROR,
    BAD_NO_COMMUNICATION,
    GOOD,
    ConnectorEvent,
    DeviceHealth,
    SampleSink,
    now_us,
)
from connectors.modbus.plan import ReadRequest, plan_reads
from stream.config import AssetConfig, ModbusConnection, TagConfig

log = logging.getLogger(__name__)

#: the configuration's framer -> pymodbus' (``rtu``: RTU frames, with CRC and no MBAP header, over TCP).
FRAMERS = {"tcp": FramerType.SOCKET, "rtu": FramerType.RTU}

#: OPC UA Bad_ConfigurationError: the device refuses the read as configured (exceptions 01-03).
BAD_CONFIGURATION_ERROR = 0x8089_0000
#: OPC UA Bad_DeviceFailure: the device reports a failure of its own (exceptions 04 and up).
BAD_DEVICE_FAILURE = 0x808B_0000

#: the first wait before reopening a connection or probing a lost unit; doubles up to reconnect_max_delay_s.
INITIAL_BACKOFF_S = 0.5

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x07: "negative acknowledge",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
#: exceptions by which a gateway says the unit behind it is unreachable: the unit is lost, not misconfigured.
GATEWAY_UNREACHABLE = (0x0A, 0x0B)
_EXCEPTION_HINTS = {
    0x01: "the device does not serve this table; check the tag's table (holding, input, coil, discrete)",
    0x02: "the device has no such address; check address (zero-based: register 40001 is address 0), table and unit_id",
    0x03: "the device refuses this read size; lower max_registers_per_read or set max_read_gap: 0",
}


def exception_quality(code: int) -> int:
    """The quality of tags whose read the device answered with exception ``code``."""
    return BAD_CONFIGURATION_ERROR if code in (0x01, 0x02, 0x03) else BAD_DEVICE_FAILURE


class _QuietPymodbus(logging.Filter):
    """pymodbus logs an error with a frame dump per timeout: with a device offline
    that is a line per probe. The connector reports transitions itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or log.isEnabledFor(logging.DEBUG)


_pymodbus_logger = logging.getLogger("pymodbus.logging")
if not any(isinstance(f, _QuietPymodbus) for f in _pymodbus_logger.filters):
    _pymodbus_logger.addFilter(_QuietPymodbus())


class FixedRateSchedule:
    """Tick times ``start + k * interval`` on the monotonic clock. A poll that ends
    after the next tick skips the ticks it missed (counted) instead of letting
    them pile up, so a slow device degrades to fewer samples, never to drift."""

    def __init__(self, interval_s: float, start: float):
        self.interval_s = interval_s
        self.next_at = start
        self.skipped = 0
        self.overruns = 0

    def delay(self, now: float) -> float:
        return max(0.0, self.next_at - now)

    def done(self, now: float) -> None:
        """A poll started at ``next_at`` ended at ``now``: move to the next tick."""
        self.next_at += self.interval_s
        if now > self.next_at:
            missed = int((now - self.next_at) // self.interval_s) + 1
            self.skipped += missed
            self.overruns += 1
            self.next_at += missed * self.interval_s


@dataclass
class _UnitState:
    """Connection state of one unit id, and its health."""

    unit_id: int
    health: DeviceHealth
    assets: tuple[str, ...]
    #: answered at least once since start.
    ever_answered: bool = False
    #: comm_lost was emitted and comm_restored not yet.
    lost: bool = False
    probe_at: float = 0.0
    probe_delay: float = 0.0
    logged_refusals: set = field(default_factory=set)

    @property
    def device(self) -> str:
        return self.health.device

    def bad_quality(self) -> int:
        return BAD_COMMUNICATION_ERROR if self.ever_answered else BAD_NO_COMMUNICATION


@dataclass
class _Outcome:
    """How one request went: registers/bits, an exception code, or no answer."""

    data: Sequence | None = None
    exception: int | None = None
    error: str = ""
    link_down: bool = False
    #: no answer at all (as opposed to a gateway saying the unit is unreachable).
    silent: bool = False


class _Link:
    """The TCP connection of one ModbusConnection, reopened with backoff by its own
    task so that polls never wait for a connect."""

    def __init__(self, connection: ModbusConnection):
        self.connection = connection
        self.endpoint = f"{connection.host}:{connection.port}"
        self.client: AsyncModbusTcpClient | None = None
        self.last_error = ""
        self.connects = 0
        self.first_attempt = asyncio.Event()
        self._lost = asyncio.Event()
        self._delay = 0.0
        self._answered = False
        self._drop_logged = False

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    def answered(self) -> None:
        """A device answered: the link is sound, the next loss reconnects at once."""
        self._answered = True
        self._drop_logged = False

    def drop(self, reason: str) -> None:
        """Close the connection (no unit answers on it); the link task reopens it."""
        if self.client is not None:
            # once per outage at INFO: while the device stays silent this repeats every backoff
            level = logging.DEBUG if self._drop_logged else logging.INFO
            log.log(level, "Modbus %s (%s): %s; closing the connection and reopening it", self.connection.id, self.endpoint, reason)
            self._drop_logged = True
            self.client.close()
        self.last_error = f"{reason} on {self.endpoint}; the connection was closed and is being reopened"
        self._lost.set()

    async def _open(self) -> bool:
        connection = self.connection
        generation = self.connects + 1

        def on_connect(up: bool) -> None:  # called by pymodbus; ignore a replaced client's calls
            if not up and self.connects == generation:
                self._lost.set()

        client = AsyncModbusTcpClient(
            connection.host,
            port=connection.port,
            framer=FRAMERS[connection.framer],
            name=f"edgewatch-{connection.id}",
            timeout=connection.timeout_s,
            retries=0,  # the connector retries itself: fewer attempts when probing a lost unit
            reconnect_delay=0,  # and reconnects itself, with its own backoff
            trace_connect=on_connect,
        )
        # pymodbus closes the connection after retries+3 unanswered requests; with a
        # gateway one silent unit must not cut off the others: the connector decides.
        client.set_max_no_responses(1 << 30)
        try:
            ok = await client.connect()
        except asyncio.CancelledError:
            client.close()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to connect is a retry, not a crash
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        else:
            reason = "refused, unreachable or no answer"
        if not ok or not client.connected:
            client.close()
            self.last_error = (
                f"cannot open a TCP connection to {self.endpoint} within {connection.timeout_s} s ({reason}); "
                "check host, port, that the device's Modbus TCP server is enabled and that no firewall blocks the port"
            )
            return False
        self.connects = generation
        self.client = client
        self.last_error = ""
        self._lost.clear()
        self._answered = False
        return True

    async def run(self) -> None:
        cap = self.connection.reconnect_max_delay_s
        try:
            while True:
                if self.client is not None:  # the previous connection, closed or lost
                    self.client.close()
                    self.client = None
                if await self._open():
                    self.first_attempt.set()
                    await self._lost.wait()
                    self.last_error = self.last_error or f"the connection to {self.endpoint} was closed"
                    if self._answered:
                        self._delay = 0.0
                        continue
                self.first_attempt.set()
                self._delay = min(max(INITIAL_BACKOFF_S, self._delay * 2), cap)
                await asyncio.sleep(self._delay)
        finally:
            if self.client is not None:
                self.client.close()
                self.client = None


class ModbusConnector:
    """Polls the tags of one Modbus connection into ``sink``.

    ``tags`` are the (asset, tag) pairs whose source names this connection
    (``ServiceConfig.sources(connection.id)``). Raises ValueError at construction
    if a tag cannot be read as configured; :meth:`run` itself never raises on
    device or network problems.
    """

    def __init__(self, connection: ModbusConnection, tags: list[tuple[AssetConfig, TagConfig]], sink: SampleSink):
        self.connection = connection
        self.sink = sink
        self.requests: list[ReadRequest] = plan_reads(connection, tags)
        self.unit_ids = sorted({r.unit_id for r in self.requests})
        several = len(self.unit_ids) > 1
        self._units: dict[int, _UnitState] = {}
        for unit_id in self.unit_ids:
            device = f"{connection.id}/{unit_id}" if several else connection.id
            assets = sorted({s.asset_id for r in self.requests if r.unit_id == unit_id for s in r.slots})
            health = DeviceHealth(
                "modbus",
                device,
                extra={
                    "endpoint": f"{connection.host}:{connection.port}",
                    "unit_id": unit_id,
                    "framer": connection.framer,
                    "polls_skipped": 0,
                    "exception_responses": 0,
                },
            )
            self._units[unit_id] = _UnitState(unit_id, health, tuple(assets))
        #: one DeviceHealth per unit id, in unit id order.
        self.healths: list[DeviceHealth] = [self._units[u].health for u in self.unit_ids]
        #: the requests of each poll interval; a request a device refuses is replaced by its parts.
        self.poll_groups: dict[float, list[ReadRequest]] = {}
        for request in self.requests:
            self.poll_groups.setdefault(request.interval_s, []).append(request)
        self.polls = 0
        self.polls_skipped = 0
        self.polls_overrun = 0
        #: seconds each recent poll took (all requests of one interval), for the benchmark and the health report.
        self.poll_durations: deque[float] = deque(maxlen=10_000)
        self._link: _Link | None = None

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    async def run(self) -> None:
        """Poll until cancelled."""
        link = self._link = _Link(self.connection)
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(link.run(), name=f"modbus-{self.connection.id}-link")]
        try:
            await link.first_attempt.wait()
            start = loop.time()
            for interval_s, requests in self.poll_groups.items():
                schedule = FixedRateSchedule(interval_s, start)
                tasks.append(asyncio.create_task(self._poll_loop(schedule, requests), name=f"modbus-{self.connection.id}-{interval_s}s"))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._link = None

    async def read_once(self) -> None:
        """Connect, read every request once into the sink, disconnect: a check of a
        device and its configuration without running the poll loops."""
        link = self._link = _Link(self.connection)
        task = asyncio.create_task(link.run())
        try:
            await link.first_attempt.wait()
            for requests in list(self.poll_groups.values()):
                await self._poll(requests)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._link = None

    async def _poll_loop(self, schedule: FixedRateSchedule, requests: list[ReadRequest]) -> None:
        loop = asyncio.get_running_loop()
        failures_logged = 0
        while True:
            delay = schedule.delay(loop.time())
            if delay:
                await asyncio.sleep(delay)
            started = loop.time()
            try:
                await self._poll(requests)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the polling of a plant; say it, a few times
                if failures_logged < 3:
                    failures_logged += 1
                    log.exception("Modbus %s: a poll failed unexpectedly (this is a bug, please report it)", self.connection.id)
            finished = loop.time()
            self.poll_durations.append(finished - started)
            self.polls += 1
            before = schedule.skipped
            schedule.done(finished)
            if schedule.skipped != before:
                self.polls_skipped += schedule.skipped - before
                self.polls_overrun += 1
                for unit in self._units.values():
                    unit.health.extra["polls_skipped"] = self.polls_skipped

    # --- one poll -------------------------------------------------------------

    async def _poll(self, requests: list[ReadRequest]) -> None:
        for request in list(requests):
            parts = await self._poll_request(request)
            if parts:
                # the device refused a coalesced read: read its tags one by one from now on
                index = requests.index(request)
                requests[index : index + 1] = parts
                for part in parts:
                    await self._poll_request(part)

    async def _poll_request(self, request: ReadRequest) -> list[ReadRequest] | None:
        """Read one request and hand on its samples. Returns the parts to read
        instead when the device refuses a request covering several tags."""
        unit = self._units[request.unit_id]
        link = self._link
        loop = asyncio.get_running_loop()
        if link is None or not link.connected:
            reason = (link.last_error if link else "") or "not connected"
            self._unit_failed(unit, request, _Outcome(error=reason, link_down=True))
            return None
        if unit.lost:
            if loop.time() < unit.probe_at:
                self._put_bad(request, unit.bad_quality())
                return None
            attempts = 1  # a probe: one try, so that a dead unit holds the line for one timeout only
        else:
            attempts = 1 + self.connection.retries
        outcome = await self._read(link, request, attempts)
        if outcome.data is not None:
            self._unit_answered(unit)
            self._put_data(request, unit, outcome.data)
        elif outcome.exception is not None and outcome.exception not in GATEWAY_UNREACHABLE:
            self._unit_answered(unit)
            parts = request.split() if len(request.slots) > 1 else []
            if len(parts) > 1:
                log.info(
                    "Modbus %s: %s answered exception %#04x (%s) to a read of %s; reading its tags one by one from now on",
                    unit.device,
                    request.describe(),
                    outcome.exception,
                    EXCEPTION_NAMES.get(outcome.exception, "unknown exception"),
                    request.tag_names(),
                )
                return parts
            self._refused(unit, request, outcome.exception)
        else:
            self._unit_failed(unit, request, outcome)
        return None

    async def _read(self, link: _Link, request: ReadRequest, attempts: int) -> _Outcome:
        connection = self.connection
        error = ""
        for _ in range(attempts):
            client = link.client
            if client is None or not link.connected:
                return _Outcome(error=link.last_error or f"the connection to {link.endpoint} is down", link_down=True)
            try:
                if request.table == "holding":
                    response = await client.read_holding_registers(request.address, count=request.count, device_id=request.unit_id)
                elif request.table == "input":
                    response = await client.read_input_registers(request.address, count=request.count, device_id=request.unit_id)
                elif request.table == "coil":
                    response = await client.read_coils(request.address, count=request.count, device_id=request.unit_id)
                else:
                    response = await client.read_discrete_inputs(request.address, count=request.count, device_id=request.unit_id)
            except ConnectionException:
                return _Outcome(error=f"the connection to {link.endpoint} dropped", link_down=True)
            except (ModbusException, asyncio.TimeoutError, OSError) as exc:
                error = str(exc) or type(exc).__name__
                continue
            link.answered()
            if response.isError():
                code = getattr(response, "exception_code", 0)
                if code in GATEWAY_UNREACHABLE:
                    return _Outcome(
                        exception=code,
                        error=f"gateway {link.endpoint} answers exception {code:#04x} ({EXCEPTION_NAMES[code]}) for unit {request.unit_id}",
                    )
                return _Outcome(exception=code)
            bit_table = request.table in ("coil", "discrete")
            data = response.bits if bit_table else response.registers
            # An answer of another size belongs to another request (a late answer to a
            # timed-out one: RTU frames carry no transaction id). Try again.
            if len(data) < request.count or len(data) >= request.count + (8 if bit_table else 1):
                error = f"answer of {len(data)} {'bits' if bit_table else 'registers'} to a read of {request.count}"
                continue
            return _Outcome(data=data)
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        return _Outcome(
            error=f"no answer from unit {request.unit_id} to a read of {request.describe()} within {connection.timeout_s} s ({tries}): {error}",
            silent=True,
        )

    # --- samples --------------------------------------------------------------

    def _put_data(self, request: ReadRequest, unit: _UnitState, data: Sequence) -> None:
        ts = now_us()
        health = unit.health
        health.reads_ok += 1
        health.last_ok_us = ts
        good = 0
        for group in request.by_asset:
            values, qualities = [], []
            for slot in group.slots:
                value = slot.codec.decode(data, slot.offset)
                if math.isfinite(value):
                    qualities.append(GOOD)
                    good += 1
                else:
                    qualities.append(BAD_DECODING_ERROR)
                values.append(value)
            self.sink.put_samples(group.asset_id, group.tag_ids, [ts] * len(values), values, qualities)
        health.samples += good

    def _put_bad(self, request: ReadRequest, quality: int) -> None:
        ts = now_us()
        for group in request.by_asset:
            n = len(group.tag_ids)
            self.sink.put_samples(group.asset_id, group.tag_ids, [ts] * n, [math.nan] * n, [quality] * n)

    # --- unit state -----------------------------------------------------------

    def _unit_answered(self, unit: _UnitState) -> None:
        health = unit.health
        was_lost = unit.lost
        unit.ever_answered = True
        unit.lost = False
        unit.probe_delay = 0.0
        health.connected = True
        if was_lost:
            health.reconnects += 1
            ts = now_us()
            log.info("Modbus %s (%s unit %d) answers again", unit.device, health.extra["endpoint"], unit.unit_id)
            self.sink.put_event(ConnectorEvent("comm_restored", "modbus", unit.device, ts, assets=unit.assets, detail=f"unit {unit.unit_id} answers again"))

    def _unit_failed(self, unit: _UnitState, request: ReadRequest, outcome: _Outcome) -> None:
        health = unit.health
        reason = outcome.error
        health.connected = False
        health.reads_failed += 1
        health.last_error = reason
        if outcome.link_down:
            unit.probe_at = 0.0  # probe as soon as the connection is back (the link task did the waiting)
            unit.probe_delay = 0.0
        else:
            # the connection is up but this unit does not answer: probe it with backoff
            unit.probe_delay = min(max(INITIAL_BACKOFF_S, unit.probe_delay * 2), self.connection.reconnect_max_delay_s)
            unit.probe_at = asyncio.get_running_loop().time() + unit.probe_delay
        if not unit.lost:
            unit.lost = True
            ts = now_us()
            state = "stopped answering" if unit.ever_answered else "was not reached since start"
            log.warning(
                "Modbus %s (%s unit %d) %s: %s. Its tags get NaN with quality %s until it answers again",
                unit.device,
                health.extra["endpoint"],
                unit.unit_id,
                state,
                reason,
                "Bad_CommunicationError" if unit.ever_answered else "Bad_NoCommunication",
            )
            self.sink.put_event(ConnectorEvent("comm_lost", "modbus", unit.device, ts, assets=unit.assets, detail=reason))
        self._put_bad(request, unit.bad_quality())
        # no unit answers on an open connection: reopen it (a half-open TCP connection never recovers)
        link = self._link
        if outcome.silent and link is not None and link.connected and all(u.lost for u in self._units.values()):
            link.drop("no unit answers")

    def _refused(self, unit: _UnitState, request: ReadRequest, code: int) -> None:
        health = unit.health
        health.reads_failed += 1
        health.extra["exception_responses"] += 1
        quality = exception_quality(code)
        key = (request.table, request.address, request.count, code)
        if key not in unit.logged_refusals:
            unit.logged_refusals.add(key)
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            hint = _EXCEPTION_HINTS.get(code, "the device reports a failure of its own; check the device")
            message = f"{request.describe()} answered exception {code:#04x} ({name}) for tags {request.tag_names()}"
            health.last_error = message
            health.extra.setdefault("refused_reads", []).append(message)
            log.error(
                "Modbus %s (%s): %s: %s. These tags get NaN with quality %s; logged once",
                unit.device,
                health.extra["endpoint"],
                message,
                hint,
                "Bad_ConfigurationError" if quality == BAD_CONFIGURATION_ERROR else "Bad_DeviceFailure",
            )
        self._put_bad(request, quality)
