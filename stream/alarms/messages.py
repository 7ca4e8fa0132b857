"""What the alarm book sends: alarm events (stream/schemas/alarm.schema.json), the
current-state records of the compacted alarm-state topic (alarm-state.schema.json),
and the one line an operator reads in each.

Builders only: they read the book's records and never change them.
"""

from __future__ import annotations

import math

from stream.alarms.ids import FLOOD_FAULT
from stream.alarms.lifecycle import NORMAL
from stream.config import AssetConfig
from stream.wire import SCHEMA_VERSION, utc_iso

#: what fusion's context may carry per top tag / per piece of evidence (the rest is dropped).
_TAG_FIELDS = ("id", "value", "normal_range", "feature")
_EVIDENCE_FIELDS = ("detector", "scale", "p_value")


# --------------------------------------------------------------------------- fusion's context


def _number(x):
    if x is None or isinstance(x, bool):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _tag(entry: dict) -> dict:
    low_high = entry.get("normal_range")
    normal_range = [_number(low_high[0]), _number(low_high[1])] if low_high is not None and len(low_high) == 2 else None
    if normal_range is not None and None in normal_range:
        normal_range = None
    return {"id": str(entry["id"]), "value": _number(entry.get("value")), "normal_range": normal_range, "feature": entry.get("feature")}


def _evidence(entry: dict) -> dict:
    return {"detector": str(entry["detector"]), "scale": entry.get("scale"), "p_value": _number(entry.get("p_value"))}


def context_for(context: dict | None, fault: str) -> dict:
    """The part of fusion's context an alarm keeps: top tags, evidence, model versions
    and the one-line explanation. ``context["by_fault"][fault]`` overrides the shared
    keys when fusion explains each fault apart."""
    context = dict(context or {})
    context.update((context.pop("by_fault", None) or {}).get(fault) or {})
    versions = context.get("model_versions") or {}
    explanation = context.get("explanation")
    return {
        "top_tags": [_tag(t) for t in context.get("top_tags") or []],
        "evidence": [_evidence(e) for e in context.get("evidence") or []],
        "model_versions": {str(k): (v if isinstance(v, (int, str)) and not isinstance(v, bool) else str(v)) for k, v in versions.items()},
        "explanation": str(explanation) if explanation else None,
    }


# --------------------------------------------------------------------------- one line for people


def fault_words(fault: str) -> str:
    return fault.replace("_", " ")


def percent(p: float | None) -> str:
    return "?" if p is None else f"{round(p * 100)} %"


def why(context: dict) -> str:
    """Fusion's explanation, or else which top tags left their normal range and how."""
    if context.get("explanation"):
        return context["explanation"]
    rose, fell, other = [], [], []
    for tag in context.get("top_tags", []):
        value, normal = tag["value"], tag["normal_range"]
        if value is not None and normal is not None and value > normal[1]:
            rose.append(tag["id"])
        elif value is not None and normal is not None and value < normal[0]:
            fell.append(tag["id"])
        else:
            other.append(tag["id"])
    parts = [f"{', '.join(rose)} rose"] if rose else []
    parts += [f"{', '.join(fell)} fell"] if fell else []
    parts += [f"{', '.join(other)} changed"] if other else []
    return "; ".join(parts)


def with_why(text: str, context: dict) -> str:
    reason = why(context)
    return f"{text} \u2014 {reason}" if reason else text


def listing(items, most: int = 10) -> str:
    """Names for an error message: "a, b, c" (the first ``most``, then how many more)."""
    names = sorted(items)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "") if names else "none"


def seconds(s: float) -> str:
    """A duration for people: 600 s."""
    return f"{s:g} s"


def clock(us: int) -> str:
    """A wall time as an operator reads it: 2026-03-14 09:17 UTC."""
    return utc_iso(us)[:16].replace("T", " ") + " UTC"


# --------------------------------------------------------------------------- records


def _iso(us: int | None) -> str | None:
    return None if us is None else utc_iso(us)


def _times(record: dict) -> dict:
    return {
        "first_raised": _iso(record["first_raised_us"]),
        "first_raised_us": record["first_raised_us"],
        "last_change": _iso(record["last_change_us"]),
        "last_change_us": record["last_change_us"],
        "episode_start": _iso(record["episode_start_us"]),
        "episode_start_us": record["episode_start_us"],
    }


def _acknowledged(who: dict | None) -> dict | None:
    if who is None:
        return None
    return {"user": who["user"], "at": utc_iso(who["at_us"]), "at_us": who["at_us"], "command_id": who["command_id"]}


def alarm_fields(asset: AssetConfig, episode: dict, shelved: dict | None, machine_state: str | None) -> dict:
    """The fields an alarm's events and its alarm-state record share."""
    context = episode["context"]
    return {
        "alert_id": episode["alert_id"],
        "asset_id": asset.id,
        "asset_type": asset.type,
        "area": asset.area,
        "fault": episode["fault"],
        "probability": episode["probability"],
        "priority": episode["priority"],
        "state": episode["state"],
        "shelved": shelved is not None,
        "shelved_until": _iso(shelved["until_us"]) if shelved else None,
        "suppressed": bool(episode["suppressed_by"]),
        "suppressed_by": list(episode["suppressed_by"]),
        "machine_state": machine_state,
        "flood_id": episode["flood_id"],
        **_times(episode),
        "top_tags": [dict(t) for t in context["top_tags"]],
        "evidence": [dict(e) for e in context["evidence"]],
        "model_versions": dict(context["model_versions"]),
        "explanation": context["explanation"],
        "flood": None,
    }


def flood_fields(flood: dict, window_s: float, flood_rate: int) -> dict:
    """The same for an area's flood alarm: no asset, no probability, the grouped alarms."""
    return {
        "alert_id": flood["alert_id"],
        "asset_id": None,
        "asset_type": None,
        "area": flood["area"],
        "fault": FLOOD_FAULT,
        "probability": None,
        "priority": flood["priority"],
        "state": flood["state"],
        "shelved": False,
        "shelved_until": None,
        "suppressed": False,
        "suppressed_by": [],
        "machine_state": None,
        "flood_id": None,
        **_times(flood),
        "top_tags": [],
        "evidence": [],
        "model_versions": {},
        "explanation": None,
        "flood": {
            "count": len(flood["members"]),
            "members": [dict(m) for m in flood["members"]],
            "rate": flood["rate"],
            "window_s": window_s,
            "flood_rate": flood_rate,
        },
    }


def alarm_event(event: str, event_id: str, fields: dict, *, annunciated: bool, late: bool, source_data_time_us: int | None, command: dict | None, message: str) -> dict:
    """One alarm event (alarm.schema.json). ``fields`` come from alarm_fields / flood_fields."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "alarm",
        "event_id": event_id,
        "event": event,
        **fields,
        "annunciated": annunciated and not late,
        "late": late,
        "source_data_time": _iso(source_data_time_us),
        "source_data_time_us": source_data_time_us,
        "command": command,
        "message": message,
    }


def snapshot(fields: dict, record: dict, *, annunciated: bool) -> dict:
    """The alarm-state record (alarm-state.schema.json) of an alarm or flood alarm."""
    closed = record["state"] == NORMAL
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "alarm_state",
        **fields,
        "closed": closed,
        "closed_at": _iso(record["closed_us"]) if closed else None,
        "closed_at_us": record["closed_us"] if closed else None,
        "annunciated": annunciated and not closed,
        "raised_late": bool(record.get("raised_late", False)),
        "acknowledged": _acknowledged(record["acknowledged"]),
        "comments": [
            {"user": c["user"], "at": utc_iso(c["at_us"]), "at_us": c["at_us"], "command_id": c["command_id"], "comment": c["comment"]}
            for c in record["comments"]
        ],
        "feedback": _feedback(record.get("feedback")),
        "last_event": record["last_event"],
        "message": record.get("message", ""),
    }


def _feedback(feedback: dict | None) -> dict | None:
    if feedback is None:
        return None
    return {
        "label": feedback["label"],
        "fault": feedback.get("fault"),
        "user": feedback["user"],
        "at": utc_iso(feedback["at_us"]),
        "at_us": feedback["at_us"],
        "command_id": feedback["command_id"],
    }
