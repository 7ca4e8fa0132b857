"""The alert message: what MES and SCADA read on the ``alerts`` topic.

An alert id is derived from the asset, the rule, the tag, the condition and the
event time the episode started, never from a clock or a counter: replaying the
same readings (at-least-once delivery, a restarted worker) yields the same id,
so consumers can de-duplicate on (alert_id, state).
"""

from __future__ import annotations

import uuid

from stream.config import AssetConfig
from stream.rules import LimitCrossing
from stream.wire import SCHEMA_VERSION, utc_iso

# Fixed namespace: changing it would change every alert id ever issued.
_ALERT_NAMESPACE = uuid.UUID("6f1c5d2e-2a4b-4c1e-9d1f-0e5d7a3b8c42")

_PRIORITY_BY_CRITICALITY = {"high": "high", "medium": "medium", "low": "low"}


def alert_id(asset_id: str, rule: str, tag_id: str, condition: str, episode_start_us: int) -> str:
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{asset_id}|{rule}|{tag_id}|{condition}|{episode_start_us}"))


def limit_alert(asset: AssetConfig, crossing: LimitCrossing, *, replayed: bool, source: dict | None) -> dict:
    """The alert message for one limit crossing (schema: stream/schemas/alert.schema.json)."""
    tag = asset.tags[crossing.tag_position]
    unit = f" {tag.unit}" if tag.unit else ""
    if crossing.state == "active":
        relation = "above high" if crossing.condition == "high" else "below low"
        text = f"{asset.id} {tag.id} {crossing.value:g}{unit} {relation} limit {crossing.limit:g}{unit}"
    else:
        text = f"{asset.id} {tag.id} back to {crossing.value:g}{unit}, inside {crossing.condition} limit {crossing.limit:g}{unit}"
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "alert",
        "alert_id": alert_id(asset.id, "limit", tag.id, crossing.condition, crossing.episode_start_us),
        "asset_id": asset.id,
        "asset_type": asset.type,
        "area": asset.area,
        "rule": "limit",
        "condition": crossing.condition,
        "state": crossing.state,
        "priority": _PRIORITY_BY_CRITICALITY[asset.criticality],
        "tag": {
            "id": tag.id,
            "unit": tag.unit,
            "value": crossing.value,
            "limit": crossing.limit,
            "normal_range": list(tag.normal_range) if tag.normal_range else None,
        },
        "episode_start": utc_iso(crossing.episode_start_us),
        "event_time": utc_iso(crossing.ts_us),
        "event_time_us": crossing.ts_us,
        "replayed": replayed,
        "source": source,
        "message": text,
    }
