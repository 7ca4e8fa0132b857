"""Creating the service's topics (idempotent), with confluent-kafka's AdminClient.

faust would auto-create topics with its own defaults; we create them explicitly so
that partitions, compaction and retention are what the deployment asks for.
"""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.config import KafkaSettings
from stream.topics import COMPACTED


def ensure_topics(kafka: KafkaSettings, timeout_s: float = 30.0, extra_config: dict | None = None) -> list[str]:
    """Create any missing topic of the deployment; return the names created.

    ``readings`` and every other topic get ``kafka.partitions`` partitions, so
    outputs keyed by asset id land on the same partition number as their input.
    """
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = []
    for kind, name in kafka.topics.all().items():
        if name in existing:
            continue
        # Compacted: the latest value per key is what counts. Tombstones are kept a week
        # (broker default: a day) so an MES that was down over a weekend still sees them.
        config = {"cleanup.policy": "compact", "delete.retention.ms": str(7 * 86_400_000)} if kind in COMPACTED else {}
        config.update(extra_config or {})
        wanted.append(NewTopic(name, num_partitions=kafka.partitions, replication_factor=kafka.replication_factor, config=config))
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker won the race
                raise
    return created


def delete_topics(bootstrap_servers: str, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics (tests and benchmarks clean up after themselves)."""
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    for future in admin.delete_topics(list(names), operation_timeout=timeout_s).values():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise
