"""An MES / SCADA consumer of edgewatch alarms: a starting point for integrators.

Two jobs (docs/mes-integration.md explains both; docs/wire-schema.md has the formats):

* ``rebuild_view``: after a (re)start, read the compacted ``<prefix>.alarm-state``
  topic from the beginning to its end: the latest record per ``alert_id`` is every
  alarm's current state; a tombstone (null value) means "forget this alarm".
* ``follow``: then tail ``<prefix>.alerts``, which carries two kinds of message:
  ``kind: "alarm"`` (fault alarm events; de-duplicate on ``event_id``) and
  ``kind: "alert"`` (fast-rule alerts; de-duplicate on ``(alert_id, state)``).
  Delivery is at-least-once, so a message may come twice; the ids make that harmless.

Needs only confluent-kafka (``pip install confluent-kafka``). Run::

    python examples/mes_consumer.py --bootstrap 127.0.0.1:9092 --prefix edgewatch
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import OrderedDict
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

#: what a topic created a moment ago may answer until every broker knows it and it has a leader
_NOT_READY_YET = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE}


def topic(prefix: str, suffix: str) -> str:
    """Topic names are ``<kafka.topic_prefix>.<suffix>``; an empty prefix gives the bare suffix."""
    return f"{prefix}.{suffix}" if prefix else suffix


def _end_offsets(consumer: Consumer, name: str, timeout_s: float) -> dict[int, int]:
    """{partition: its end offset now}, leaving out empty partitions."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = consumer.list_topics(name, timeout=timeout_s).topics[name]
            if meta.error is not None:
                raise KafkaException(meta.error)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s) for p in sorted(meta.partitions)}
            return {p: high for p, (low, high) in ends.items() if high > low}
        except KafkaException as exc:
            # The worker creates its topics at start: still missing after timeout_s, it has not run yet.
            if exc.args[0].code() not in _NOT_READY_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def rebuild_view(bootstrap: str, prefix: str, timeout_s: float = 10.0) -> dict[str, dict]:
    """Every alarm edgewatch still knows, as ``{alert_id: alarm-state record}``.

    Reads ``<prefix>.alarm-state`` from the beginning up to the end offsets it finds
    at the start (what comes later, ``follow`` delivers). Closed alarms are included
    (``record["closed"]`` is true); leave them out for an "open alarms" list.
    ``timeout_s``: the longest to wait for the topic, or for the next message.
    """
    name = topic(prefix, "alarm-state")
    # A fresh group id: this consumer only reads (assign, no commits) and shares
    # neither offsets nor partitions with anything else.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"mes-view-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        end = _end_offsets(consumer, name, timeout_s)
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in end])
        view: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: nothing for {timeout_s} s, partitions {sorted(end)} not read to their end")
            for message in consumer.consume(500, timeout=0.5):
                deadline = time.monotonic() + timeout_s
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(message.error())
                    end.pop(message.partition(), None)  # at the end (also if compaction removed the last records)
                    continue
                alert_id = message.key().decode()  # the key is the alarm's alert_id
                if message.value() is None:
                    view.pop(alert_id, None)  # a tombstone: edgewatch forgot the alarm, so do we
                else:
                    view[alert_id] = json.loads(message.value())  # a later record replaces an earlier one
                if message.offset() + 1 >= end.get(message.partition(), 0):
                    end.pop(message.partition(), None)
        return view
    finally:
        consumer.close()


def follow(bootstrap: str, prefix: str, on_alarm: Callable[[dict], None], on_alert: Callable[[dict], None], *,
           group_id: str = "mes-alerts", stop: Callable[[], bool] = lambda: False, remember: int = 100_000) -> None:
    """Tail ``<prefix>.alerts`` until ``stop()`` is true: ``on_alarm(event)`` once per
    fault alarm event, ``on_alert(alert)`` once per fast-rule alert message.

    A stable ``group_id`` makes a restarted consumer carry on where it stopped (its
    first start reads only new messages). An offset is committed only after its
    handler returned, so a crash re-delivers rather than loses: make the handlers
    idempotent on the same ids as the de-duplication here.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id,
                         "auto.offset.reset": "latest",  # the state before comes from rebuild_view
                         "enable.auto.offset.store": False})  # an offset is stored once its message is handled
    consumer.subscribe([topic(prefix, "alerts")])
    seen: OrderedDict = OrderedDict()  # ids handled, the oldest forgotten first
    try:
        while not stop():
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().fatal():
                    raise KafkaException(message.error())
                continue  # transient (a broker restarting ...): librdkafka retries by itself
            event = json.loads(message.value()) if message.value() is not None else {}
            if event.get("kind") == "alarm":
                ident, handler = ("alarm", event["event_id"]), on_alarm
            elif event.get("kind") == "alert":
                ident, handler = ("alert", event["alert_id"], event["state"]), on_alert
            else:
                ident, handler = None, None  # a kind from a later version: skip it
            if handler is not None and ident not in seen:
                handler(event)
                seen[ident] = True
                if len(seen) > remember:
                    seen.popitem(last=False)
            consumer.store_offsets(message)
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Print edgewatch's open alarms, then follow alarms and alerts.")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    parser.add_argument("--prefix", default="edgewatch", help="the topic prefix (kafka.topic_prefix)")
    parser.add_argument("--group", default="mes-alerts", help="consumer group that follows the alerts topic")
    args = parser.parse_args()

    view = rebuild_view(args.bootstrap, args.prefix)
    open_alarms = sorted((r for r in view.values() if not r["closed"]), key=lambda r: r["first_raised_us"])
    print(f"{len(open_alarms)} open alarm(s), {len(view)} known:")
    for r in open_alarms:
        print(f"  [{r['priority']}] {r['state']}{'' if r['annunciated'] else ' (not shown)'} {r['alert_id']}: {r['message']}")

    print("following; Ctrl-C stops")
    try:
        follow(args.bootstrap, args.prefix,
               on_alarm=lambda e: print(f"alarm {e['event']:<12} [{e['priority']}] {e['state']} {e['alert_id']}: {e['message']}"),
               on_alert=lambda a: print(f"alert {a['state']:<12} [{a['priority']}] {a['alert_id']}: {a['message']}"),
               group_id=args.group)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
