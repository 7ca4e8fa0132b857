"""Sends the spool's records to Kafka, in spool order, and acknowledges them back.

``SpoolForwarder`` is a daemon thread with one idempotent confluent-kafka
producer (``enable.idempotence=true``, ``acks=all``). It reads the spool from
the first unacknowledged record, keeps a bounded window of records handed to
the producer (``max_in_flight_records`` / ``max_in_flight_bytes``) and moves the
spool's acknowledged position only over the contiguous prefix of records whose
delivery the broker confirmed. Nothing is taken out of the spool before that.

Outages. ``message.timeout.ms=0`` (infinite): librdkafka never gives up on a
message because Kafka is away, it retries until the broker is back, and the
idempotent producer (sequence numbers per partition, at most 5 requests in
flight) makes those retries land exactly once and in order. While the broker is
unreachable the forwarder stops handing new records to the producer: they wait
in the spool, on disk and bounded, not in librdkafka's memory. It notices the
outage from librdkafka's "all brokers down" error (confirmed by a metadata
request), or from deliveries stalling for ``stall_after_s``, and checks for the
broker's return with a metadata request every second.

What is guaranteed, per spool record:

* No loss: a record leaves the spool only once Kafka confirmed it (acks=all).
  The exceptions are counted, never silent: the spool's bounded-size drops
  (``Spool.dropped_records``), damaged spool records (``Spool.corrupt_records``)
  and records the broker refuses as such, too large or malformed, which could
  never be delivered and would block the spool forever
  (``rejected_records``, logged as errors).
* Order: records are handed to the producer strictly in spool order, so per
  Kafka partition (one key always maps to one partition) they are written in
  spool order, also across broker outages of any length and librdkafka's
  retries.
* Duplicates, only as a resend of a contiguous run of records in spool order,
  and only in two cases: (1) the process ended without a clean ``stop`` (kill,
  crash, or ``stop`` timing out with records in flight): the records confirmed
  in the last ~0.2 s before (the spool writes its acknowledged position at most
  that often) and those in flight are sent again by the next forwarder; (2) a
  delivery fails despite the infinite timeout (topic missing or deleted,
  authorisation revoked, a fatal producer error): the forwarder waits for every
  outstanding delivery, acknowledges the confirmed prefix, and sends everything
  again from the first record not confirmed, after a pause that grows from
  0.5 s to 30 s while the failure persists (a warning per kind of failure a
  minute). That record holds up the ones behind it, for the sake of order.
  Records behind it that had already gone through then arrive twice, and the
  failed record's first copy comes after their first copies: what holds in
  every case is that the last copy of every record is in spool order.
  Downstream de-duplicates by (asset, seq).

Replayed marking. A record that waited in the spool longer than
``replay_after_s`` before it was handed to the producer is backfill: for a
binary reading batch (value starting with ``EWRB``) the forwarder sets
FLAG_REPLAYED in the flags at bytes 6..7 (a two-byte patch, no re-encoding); a
JSON reading batch (``{"kind": "reading_batch", ...}``) gets ``"replayed": true``
(re-serialised, only when it is backfill). Everything else (connector events,
other messages) is sent unchanged. So after an outage the backlog arrives
marked, and after a restart the records left from before it too. Records that
were already handed to the producer when the broker went away (at most the
last moments before the outage was noticed) were fresh then and stay unmarked.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.spool import MIB, Spool, SpoolRecord
from stream.wire import FLAG_REPLAYED, MAGIC

log = logging.getLogger(__name__)

#: librdkafka's own log lines (connect failures, retries). During an outage it
#: reports every reconnect attempt; we let one line per kind through a minute,
#: our own warning/info pair tells the story.
_rdkafka_log = logging.getLogger(__name__ + ".librdkafka")


class _OncePerInterval(logging.Filter):
    def __init__(self, interval_s: float):
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, message).
        key = (record.levelno, record.args[0] if isinstance(record.args, tuple) and record.args else record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval_s:
            return False
        self._last[key] = now
        return True


_rdkafka_log.addFilter(_OncePerInterval(60.0))

#: Settings that make an outage of any length a delay, never a failure. The
#: caller's producer_config may override the non-essential ones (linger, sizes).
PRODUCER_DEFAULTS = {
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "message.max.bytes": 8_000_000,
    # 0 = infinite: no message fails because the broker is away for minutes.
    "message.timeout.ms": 0,
    # Come back quickly once the broker is there again.
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 2000,
}
#: Settings the guarantees depend on: always applied.
# murmur2 of the key, as the Java client (and so most MES producers) and faust pick a
# partition: an asset's readings and the commands about it (HTTP API, MES) then land
# on the same partition number, where the worker keeps that asset's state. librdkafka's
# own default (CRC32) would put them on different partitions.
PRODUCER_REQUIRED = {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}

# Broker answers that mean "this record will never be accepted", whatever we do.
_REJECTED_FOR_GOOD = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG,
}
_PROBE_INTERVAL_S = 1.0
_PROBE_TIMEOUT_S = 1.0
_FAILURE_LOG_INTERVAL_S = 60.0

_PENDING, _DELIVERED, _FAILED, _REJECTED = range(4)


class _InFlight:
    """A record handed to the producer, waiting for its delivery report."""

    __slots__ = ("index", "size", "topic", "state", "error", "replayed", "generation")

    def __init__(self, index: int, size: int, topic: str, replayed: bool, generation: int):
        self.generation = generation
        self.index = index
        self.size = size
        self.topic = topic
        self.replayed = replayed
        self.state = _PENDING
        self.error: KafkaError | None = None


class SpoolForwarder(threading.Thread):
    """Forwards ``spool`` to Kafka in order; see the module docstring for the guarantees.

    ``producer_config`` is confluent-kafka configuration (at least
    ``bootstrap.servers``); idempotence and acks=all are always set. The spool
    belongs to the caller: ``stop`` does not close it.
    """

    def __init__(
        self,
        spool: Spool,
        producer_config: dict,
        replay_after_s: float = 5.0,
        *,
        max_in_flight_records: int = 1000,
        max_in_flight_bytes: int = 32 * MIB,
        stall_after_s: float = 5.0,
        name: str = "spool-forwarder",
    ):
        super().__init__(name=name, daemon=True)
        if "bootstrap.servers" not in producer_config:
            raise ValueError("producer_config needs bootstrap.servers (the Kafka brokers to forward the spool to)")
        self.spool = spool
        self.replay_after_s = replay_after_s
        self.max_in_flight_records = max_in_flight_records
        self.max_in_flight_bytes = max_in_flight_bytes
        self.stall_after_s = stall_after_s
        self._config = {**PRODUCER_DEFAULTS, **producer_config, **PRODUCER_REQUIRED}
        self._config["error_cb"] = self._on_error
        self._config.setdefault("logger", _rdkafka_log)

        #: records whose delivery Kafka confirmed (a record sent twice counts twice).
        self.sent_records = 0
        #: confirmed records that went out marked replayed.
        self.replayed_records = 0
        #: records the broker refused for good (too large, malformed): given up, logged.
        self.rejected_records = 0
        #: times the forwarder went back to the first unconfirmed record after a failed delivery.
        self.rewinds = 0
        self.last_error: str | None = None
        #: False while Kafka is (or, before the first contact, may be) unreachable.
        self.broker_reachable = False

        try:
            self._producer: Producer | None = Producer(self._config)
        except KafkaException as exc:
            raise ValueError(f"invalid Kafka producer configuration for the spool forwarder: {exc.args[0].str()}") from None
        self._window: deque[_InFlight] = deque()
        self._window_bytes = 0
        self._next_read = 0
        self._failed = False
        self._fatal = False
        #: bumped at every rewind; reports for records of an older window are stale.
        self._generation = 0
        self._down_signal = False
        self._last_progress = time.monotonic()
        self._busy_since = 0.0
        self._next_probe = 0.0
        self._outage_since: float | None = None
        self._resume_at = 0.0
        self._backoff_s = 0.5
        self._failure_logged: dict[str, float] = {}
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ public

    def stop(self, timeout_s: float = 10.0) -> int:
        """Stop forwarding: first try, for up to ``timeout_s``, to send what the
        spool holds (if Kafka is reachable), then give up the producer. Returns
        the number of records still pending in the spool; they are sent by the
        next forwarder on this spool, marked replayed if they are old by then."""
        self._stop_deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_s + 10.0)
            if self.is_alive():
                log.error("the spool forwarder did not stop within %.0f s", timeout_s + 10.0)
        return self.spool.pending_records

    def stats(self) -> dict:
        """Counters for the connector's health file."""
        return {
            "broker_reachable": self.broker_reachable,
            "sent_records": self.sent_records,
            "replayed_records": self.replayed_records,
            "rejected_records": self.rejected_records,
            "rewinds": self.rewinds,
            "in_flight_records": len(self._window),
            "pending_records": self.spool.pending_records,
            "pending_bytes": self.spool.pending_bytes,
            "dropped_records": self.spool.dropped_records,
            "outage_s": None if self._outage_since is None else round(time.monotonic() - self._outage_since, 1),
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        self._next_read = self.spool.first_unacked
        self._probe()  # know at once whether Kafka is there, before sending anything
        while True:
            try:
                if self.spool.closed:
                    log.error("the spool was closed under the running forwarder; stop the forwarder before closing its spool")
                    break
                if self._stopping.is_set() and self._should_exit():
                    break
                self._step()
            except Exception as exc:  # a bug or a disk error: report it, keep going
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("spool forwarder: unexpected error; starting again from the first unsent record in 1 s")
                if self._stopping.wait(1.0):
                    break
                self._failed = True
        self._shutdown()

    def _should_exit(self) -> bool:
        if time.monotonic() >= self._stop_deadline:
            return True
        if not self._window and (self.spool.pending_records == 0 or not self.broker_reachable):
            return True
        return False

    def _step(self) -> None:
        producer = self._producer
        producer.poll(0)  # delivery reports and errors, in this thread
        self._advance_ack()
        if self._failed:
            self._recover_from_failure()
            return
        now = time.monotonic()
        self._check_reachability(now)
        produced = 0
        if self.broker_reachable and now >= self._resume_at:
            produced = self._produce_more()
        if not produced:
            if self._window:
                producer.poll(0.05)  # wait for delivery reports
            elif self.broker_reachable:
                self.spool.wait_for(self._next_read, 0.1)
            else:
                self._stopping.wait(0.05)
        self.spool.tick()

    def _produce_more(self) -> int:
        room = self.max_in_flight_records - len(self._window)
        room_bytes = self.max_in_flight_bytes - self._window_bytes
        if room <= 0 or room_bytes <= 0:
            return 0
        records = self.spool.read(self._next_read, max_records=min(room, 500), max_bytes=min(room_bytes, 4 * MIB))
        produced = 0
        now_us = time.time_ns() // 1000
        for record in records:
            value, replayed = self._mark_backfill(record, now_us)
            entry = _InFlight(record.index, len(value), record.topic, replayed, self._generation)
            try:
                self._producer.produce(
                    record.topic, value=value, key=record.key, on_delivery=functools.partial(self._on_delivery, entry)
                )
            except BufferError:  # librdkafka's queue is full: read this record again later
                break
            except KafkaException as exc:
                entry.state = _FAILED
                entry.error = exc.args[0]
                self._failed = True
            self._window.append(entry)
            self._window_bytes += entry.size
            self._next_read = record.index + 1
            produced += 1
            if self._failed:
                break
        if produced and len(self._window) == produced:
            self._busy_since = time.monotonic()  # the stall clock starts with the first record in flight
        if produced:
            self._producer.poll(0)
        return produced

    def _mark_backfill(self, record: SpoolRecord, now_us: int) -> tuple[bytes, bool]:
        """The value to send, flagged replayed if it waited longer than replay_after_s."""
        value = record.value
        if now_us - record.created_us <= self.replay_after_s * 1e6:
            return value, False
        if value[:4] == MAGIC and len(value) >= 8:
            flags = int.from_bytes(value[6:8], "little")
            if not flags & FLAG_REPLAYED:
                value = b"".join((value[:6], (flags | FLAG_REPLAYED).to_bytes(2, "little"), value[8:]))
            return value, True
        if value[:1] == b"{" and b'"reading_batch"' in value:
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                return value, False
            if isinstance(doc, dict) and doc.get("kind") == "reading_batch":
                doc["replayed"] = True
                return orjson.dumps(doc), True
        return value, False

    # ------------------------------------------------------------------ delivery

    def _on_delivery(self, entry: _InFlight, err: KafkaError | None, _msg) -> None:
        if entry.generation != self._generation:  # from before a rewind: that record is sent again anyway
            if err is None:
                self.sent_records += 1
            return
        if err is None:
            entry.state = _DELIVERED
            self.sent_records += 1
            if entry.replayed:
                self.replayed_records += 1
            self._last_progress = time.monotonic()
            self._set_reachable(True)
        else:
            entry.state = _FAILED
            entry.error = err
            self._failed = True

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = True
            self._failed = True
            self.last_error = f"fatal: {err.str()}"
            log.error(
                "Kafka producer fatal error: %s; starting a new producer and sending again from the first unconfirmed record",
                err.str(),
            )
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down_signal = True

    def _advance_ack(self) -> None:
        """Acknowledge the contiguous prefix of delivered records in the spool."""
        last = None
        while self._window and self._window[0].state in (_DELIVERED, _REJECTED):
            entry = self._window.popleft()
            self._window_bytes -= entry.size
            last = entry.index
        if last is not None:
            self.spool.ack(last)
            self._backoff_s = 0.5

    def _recover_from_failure(self) -> None:
        """A delivery failed: wait for all outstanding reports, acknowledge what
        went through in order, give up records refused for good, then send again
        from the first unconfirmed record."""
        if any(entry.state == _PENDING for entry in self._window) and not self._fatal:
            self._producer.poll(0.1)
            return
        first_failure: _InFlight | None = None
        for entry in self._window:
            if entry.state in (_DELIVERED, _REJECTED):
                continue
            if entry.state == _FAILED and entry.error is not None and entry.error.code() in _REJECTED_FOR_GOOD:
                entry.state = _REJECTED
                self.rejected_records += 1
                log.error(
                    "Kafka refuses spool record %d for topic %s for good (%s); giving it up so that it does not block "
                    "the spool. For a too-large batch: lower connect.max_batch_samples or raise the topic's "
                    "max.message.bytes",
                    entry.index,
                    entry.topic,
                    entry.error.str(),
                )
                continue
            first_failure = entry
            break
        # Acknowledge the delivered/rejected prefix, then forget the rest: it is sent again.
        self._advance_ack()
        if first_failure is not None:
            self.rewinds += 1
            error = first_failure.error
            reason = error.str() if error is not None else "no delivery report"
            self.last_error = reason
            self._log_failure(first_failure, error, reason)
            self._resume_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, 30.0)
        self._window.clear()
        self._window_bytes = 0
        self._generation += 1
        if self._fatal:
            self._replace_producer()
        self._next_read = self.spool.first_unacked
        self._failed = False

    def _log_failure(self, entry: _InFlight, error: KafkaError | None, reason: str) -> None:
        key = f"{entry.topic}:{error.code() if error is not None else None}"
        now = time.monotonic()
        if now - self._failure_logged.get(key, -1e9) < _FAILURE_LOG_INTERVAL_S:
            return
        self._failure_logged[key] = now
        hint = ""
        if error is not None and error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            hint = f"; topic {entry.topic} does not exist on the cluster: create it (the worker creates its topics at start)"
        elif error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            hint = f"; grant this client WRITE on topic {entry.topic}"
        log.warning(
            "could not deliver spool record %d to %s: %s%s; sending again from there in %.1f s "
            "(records after it may arrive twice)",
            entry.index,
            entry.topic,
            reason,
            hint,
            self._backoff_s,
        )

    def _replace_producer(self) -> None:
        old, self._producer = self._producer, None
        try:
            old.purge()
            old.flush(0)
        except Exception:
            pass
        self._producer = Producer(self._config)
        self._fatal = False

    # ------------------------------------------------------------------ reachability

    def _check_reachability(self, now: float) -> None:
        if self.broker_reachable:
            waiting_since = max(self._last_progress, self._busy_since)
            if self._window and now - waiting_since > self.stall_after_s:
                self._set_reachable(False, f"no delivery confirmed for {self.stall_after_s:.0f} s")
            elif self._down_signal:
                # librdkafka also reports "all brokers down" late, once the broker
                # is back: believe it only if a metadata request fails too.
                self._down_signal = False
                self._probe()
        elif not self._window and now >= self._next_probe:
            # Records still in flight report the broker's return themselves.
            self._probe()

    def _probe(self) -> bool:
        """One metadata request: True (and reachable) if the cluster answers."""
        self._next_probe = time.monotonic() + _PROBE_INTERVAL_S
        try:
            ok = bool(self._producer.list_topics(timeout=_PROBE_TIMEOUT_S).brokers)
            reason = "no broker in the metadata"
        except KafkaException as exc:
            ok = False
            reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
        if ok:
            self._down_signal = False
            self._last_progress = time.monotonic()
        self._set_reachable(ok, reason)
        return ok

    def _set_reachable(self, reachable: bool, reason: str = "") -> None:
        if reachable:
            if self._outage_since is not None:
                log.info(
                    "Kafka is reachable again after %.1f s; sending the %d records spooled meanwhile "
                    "(those older than %.0f s marked replayed)",
                    time.monotonic() - self._outage_since,
                    self.spool.pending_records,
                    self.replay_after_s,
                )
                self._outage_since = None
            self.broker_reachable = True
            return
        self.broker_reachable = False
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.last_error = reason
            log.warning(
                "Kafka is unreachable (%s): keeping new data in the spool at %s, %d records (%.1f MB) waiting so far",
                reason,
                self.spool.directory,
                self.spool.pending_records,
                self.spool.pending_bytes / MIB,
            )

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        producer = self._producer
        if producer is not None:
            try:
                producer.poll(0)
                self._advance_ack()
                producer.purge()  # what is left is sent again by the next forwarder
                producer.flush(0)
            except Exception:
                log.exception("spool forwarder: error while closing the producer")
        self._window.clear()
        self._window_bytes = 0
        self._producer = None
        if not self.spool.closed:
            self.spool.flush()  # the acknowledged position, now rather than in 0.2 s
        self._stopped.set()
