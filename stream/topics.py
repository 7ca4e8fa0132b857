"""Kafka topic names, all under one configurable prefix.

The names are part of the contract that MES / SCADA integrators see: change them
deliberately and document it (docs/wire-schema.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

#: topic kind -> topic suffix (the message kinds on them: docs/wire-schema.md).
TOPIC_SUFFIXES = {
    "readings": "readings",
    "features": "features",
    "scores": "scores",
    "alerts": "alerts",
    "deadletter": "deadletter",
    "models": "models",
    "alert_commands": "alert-commands",
    "alarm_state": "alarm-state",
    "events": "connector-events",
}

#: topics whose latest value per key is what matters: Kafka keeps them compacted.
COMPACTED = frozenset({"models", "alarm_state"})


@dataclass(frozen=True)
class TopicNames:
    """The concrete topic names for one deployment, e.g. ``edgewatch.readings``."""

    readings: str
    features: str
    scores: str
    alerts: str
    deadletter: str
    models: str
    alert_commands: str
    alarm_state: str
    events: str

    @classmethod
    def with_prefix(cls, prefix: str) -> "TopicNames":
        join = (lambda s: f"{prefix}.{s}") if prefix else (lambda s: s)
        return cls(**{kind: join(suffix) for kind, suffix in TOPIC_SUFFIXES.items()})

    def all(self) -> dict[str, str]:
        """kind -> topic name, for every topic the service uses."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
