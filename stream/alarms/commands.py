"""Operator commands (alert-commands topic, stream/schemas/alert-command.schema.json):
read one, check it, and say in words what is wrong with it.

The checks here are about the command alone (is it complete, does it make sense);
whether the alarm it names exists and is in a state that allows it is the book's
business (stream.alarms.book). Nothing here raises: a bad command from an HMI must
not stop the worker, it gets an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: commands on one alarm (alert_id required)
ALARM_COMMANDS = ("acknowledge", "shelve", "unshelve", "comment", "feedback")
#: commands on a whole asset: take it out of service and back (alert_id optional)
ASSET_COMMANDS = ("suppress", "unsuppress")
COMMANDS = ALARM_COMMANDS + ASSET_COMMANDS
LABELS = ("true_fault", "false_alarm", "planned_maintenance", "unsure")

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")


@dataclass(frozen=True)
class Command:
    command_id: str
    command: str
    asset_id: str
    alert_id: str | None
    user: str
    comment: str | None = None
    duration_s: int | None = None
    label: str | None = None
    fault: str | None = None

    def who(self, now_us: int) -> dict:
        """Who did it and when, as kept on the alarm (acknowledged, shelved, ...)."""
        return {"user": self.user, "at_us": now_us, "command_id": self.command_id, "comment": self.comment}

    def fields(self) -> dict:
        """The ``command`` object of the events it causes (alarm.schema.json)."""
        out = {"command_id": self.command_id, "command": self.command, "user": self.user, "comment": self.comment}
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        if self.label is not None:
            out["label"] = self.label
        if self.fault is not None:
            out["fault"] = self.fault
        return out


def parse(doc) -> tuple[Command | None, str | None]:
    """(command, None), or (None, what is wrong with it and how to fix it)."""
    if not isinstance(doc, dict):
        return None, f"a command is a JSON object (stream/schemas/alert-command.schema.json), got {type(doc).__name__}"
    name = doc.get("command")
    if name not in COMMANDS:
        return None, f"unknown command {name!r}: use one of {', '.join(COMMANDS)}"
    for key in ("command_id", "asset_id", "user"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            why = {
                "command_id": "give every command its own UUID, so that a re-sent one is applied once",
                "asset_id": "the asset the alarm belongs to (the alarm's asset_id)",
                "user": "the operator's login, for the alarm's audit trail",
            }[key]
            return None, f"{name} command without {key}: {why}"
    alert_id = doc.get("alert_id")
    if alert_id is not None and not isinstance(alert_id, str):
        return None, f"{name} command {doc['command_id']}: alert_id must be a string (the alarm's alert_id), got {alert_id!r}"
    if name in ALARM_COMMANDS and not alert_id:
        return None, f"{name} command {doc['command_id']} without alert_id: say which alarm (its alert_id from the alerts topic)"
    comment = doc.get("comment")
    if comment is not None and (not isinstance(comment, str) or not comment.strip()):
        return None, f"{name} command {doc['command_id']}: comment must be non-empty text"
    if name == "comment" and comment is None:
        return None, f"comment command {doc['command_id']} without comment text: put the text in 'comment'"
    duration = doc.get("duration_s")
    if name == "shelve":
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 1 or int(duration) != duration:
            return None, f"shelve command {doc['command_id']} needs duration_s, whole seconds of at least 1 (e.g. 3600 for an hour), got {duration!r}"
        duration = int(duration)
    elif duration is not None:
        return None, f"{name} command {doc['command_id']}: duration_s belongs to shelve only; leave it out"
    label, fault = doc.get("label"), doc.get("fault")
    if name == "feedback":
        if label not in LABELS:
            return None, f"feedback command {doc['command_id']}: label must be one of {', '.join(LABELS)}, got {label!r}"
        if fault is not None:
            if label != "true_fault":
                return None, f"feedback command {doc['command_id']}: fault names the confirmed fault and goes with label true_fault only (got {label})"
            if not isinstance(fault, str) or not _IDENTIFIER.match(fault):
                return None, f"feedback command {doc['command_id']}: fault must be a fault name such as bearing_wear, got {fault!r}"
    elif label is not None or fault is not None:
        return None, f"{name} command {doc['command_id']}: label and fault belong to feedback only; leave them out"
    return Command(doc["command_id"], name, doc["asset_id"], alert_id or None, doc["user"], comment, duration, label, fault), None


def seen(memory: list, command_id: str) -> bool:
    return command_id in memory


def remember(memory: list, command_id: str, keep: int) -> None:
    """Remember an applied command's id; the oldest go once there are ``keep``."""
    memory.append(command_id)
    del memory[: max(0, len(memory) - keep)]
