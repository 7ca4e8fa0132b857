"""The alert message: what MES and SCADA read on the ``alerts`` topic.

One builder for every fast rule (stream.rules): limit, rate_of_change,
flatline and bad_quality. Limit alerts are exactly what they were before the
other rules existed, field for field and id for id.

An alert id is derived from the asset, the rule, the tag, the condition and the
event time the episode started, never from a clock or a counter: replaying the
same readings (at-least-once delivery, a restarted worker) yields the same id,
so consumers can de-duplicate on (alert_id, state).
"""

from __future__ import annotations

import uuid

from stream.config import AssetConfig
from stream.rules import RuleEvent
from stream.wire import SCHEMA_VERSION, utc_iso

# Fixed namespace: changing it would change every alert id ever issued.
_ALERT_NAMESPACE = uuid.UUID("6f1c5d2e-2a4b-4c1e-9d1f-0e5d7a3b8c42")

_PRIORITY_BY_CRITICALITY = {"high": "high", "medium": "medium", "low": "low"}


def alert_id(asset_id: str, rule: str, tag_id: str, condition: str, episode_start_us: int) -> str:
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{asset_id}|{rule}|{tag_id}|{condition}|{episode_start_us}"))


def rule_alert(asset: AssetConfig, event: RuleEvent, *, replayed: bool, source: dict | None) -> dict:
    """The alert message for one rule event (schema: stream/schemas/alert.schema.json)."""
    tag = asset.tags[event.tag_position]
    tag_fields = {
        "id": tag.id,
        "unit": tag.unit,
        "value": event.value,
        "limit": event.limit,
        "normal_range": list(tag.normal_range) if tag.normal_range else None,
    }
    # Limit alerts carry no more than they always did; the other rules say what they measured.
    if event.rule != "limit":
        tag_fields["observed"] = event.observed
    if event.quality is not None:
        tag_fields["quality"] = event.quality
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "alert",
        "alert_id": alert_id(asset.id, event.rule, tag.id, event.condition, event.episode_start_us),
        "asset_id": asset.id,
        "asset_type": asset.type,
        "area": asset.area,
        "rule": event.rule,
        "condition": event.condition,
        "state": event.state,
        "priority": _PRIORITY_BY_CRITICALITY[asset.criticality],
        "tag": tag_fields,
        "episode_start": utc_iso(event.episode_start_us),
        "event_time": utc_iso(event.ts_us),
        "event_time_us": event.ts_us,
        "replayed": replayed,
        "source": source,
        "message": _MESSAGES[event.rule](asset.id, tag.id, tag.unit, event),
    }


#: the old name, from when limits were the only rule
limit_alert = rule_alert

# Limit names as operators say them; "high" and "low" read as they always did.
_LIMIT_WORDS = {"high": "high", "low": "low", "high_high": "high-high", "low_low": "low-low"}


def _num(x: float) -> str:
    return f"{x:g}"


def _seconds(s: float) -> str:
    return _num(round(s, 1))


def _limit_message(asset_id: str, tag_id: str, unit: str, e: RuleEvent) -> str:
    u = f" {unit}" if unit else ""
    word = _LIMIT_WORDS[e.condition]
    if e.state == "active":
        relation = f"above {word}" if e.condition in ("high", "high_high") else f"below {word}"
        return f"{asset_id} {tag_id} {_num(e.value)}{u} {relation} limit {_num(e.limit)}{u}"
    return f"{asset_id} {tag_id} back to {_num(e.value)}{u}, inside {word} limit {_num(e.limit)}{u}"


def _rate_message(asset_id: str, tag_id: str, unit: str, e: RuleEvent) -> str:
    per_s = f" {unit}/s" if unit else "/s"
    if e.state == "active":
        direction = "rose" if e.observed > 0 else "fell"
        return f"{asset_id} {tag_id} {direction} {_num(abs(e.observed))}{per_s}, faster than {_num(e.limit)}{per_s}"
    u = f" {unit}" if unit else ""
    return f"{asset_id} {tag_id} changing {_num(abs(e.observed))}{per_s} again, within {_num(e.limit)}{per_s} (at {_num(e.value)}{u})"


def _flatline_message(asset_id: str, tag_id: str, unit: str, e: RuleEvent) -> str:
    u = f" {unit}" if unit else ""
    if e.state == "active":
        return f"{asset_id} {tag_id} flat at {_num(e.value)}{u} for {_seconds(e.observed)} s"
    return f"{asset_id} {tag_id} moving again at {_num(e.value)}{u} after {_seconds(e.observed)} s flat"


def _bad_quality_message(asset_id: str, tag_id: str, unit: str, e: RuleEvent) -> str:
    if e.state == "active":
        return f"{asset_id} {tag_id} Bad quality (0x{e.quality:08X}) for {_seconds(e.observed)} s"
    u = f" {unit}" if unit else ""
    return f"{asset_id} {tag_id} Good quality again at {_num(e.value)}{u} after {_seconds(e.observed)} s Bad"


_MESSAGES = {
    "limit": _limit_message,
    "rate_of_change": _rate_message,
    "flatline": _flatline_message,
    "bad_quality": _bad_quality_message,
}
