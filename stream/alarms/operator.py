"""Operator commands on the alarm book: acknowledge, shelve, unshelve, comment,
feedback, and taking an asset out of service (suppress / unsuppress); and the
shelving clock (``tick``).

A part of ``AlarmBook`` (stream.alarms.book), kept apart because it is a job of its
own: it checks a command against the alarm's state and answers in words when it
cannot apply it. Shelving and commands run on the operator's clock (``now_us``),
never on event time.
"""

from __future__ import annotations

import logging

from stream.alarms import commands as cmds
from stream.alarms import flood as floods
from stream.alarms import lifecycle as life
from stream.alarms import messages as text

log = logging.getLogger(__name__)


class OperatorCommands:
    """Mixed into AlarmBook; uses its records and event builders."""

    def command(self, cmd: dict, now_us: int) -> tuple[list[dict], str | None]:
        """Apply one operator command (alert-command.schema.json) at ``now_us`` (the
        worker's clock; in a replay, the command's issued_at).

        Returns (events, None), or ([], what is wrong and what to do) for a command
        that is incomplete, names an unknown alarm or asset, or is not allowed in the
        alarm's state. A command whose command_id was applied already returns
        ([], None): re-sending is harmless. Never raises.
        """
        try:
            return self._command(cmd, int(now_us))
        except Exception as exc:  # a bad command must never stop the worker
            log.exception("alarm command failed: %r", cmd)
            return [], f"command not applied: {type(exc).__name__}: {exc} (an edgewatch bug; please report it with the command)"

    def tick(self, now_us: int) -> list[dict]:
        """End every shelving whose time is up at ``now_us`` (operator clock)."""
        events = []
        for asset_id in sorted(self._states):
            for fault in sorted(self._states[asset_id]["points"]):
                events += self._expire_shelving(self._assets[asset_id], self._states[asset_id]["points"][fault], int(now_us))
        return events

    def _command(self, doc, now_us: int) -> tuple[list[dict], str | None]:
        command, error = cmds.parse(doc)
        if error:
            return [], error
        asset = self._assets.get(command.asset_id)
        if asset is None:
            return [], f"{command.command} command {command.command_id}: unknown asset {command.asset_id!r} (configured: {text.listing(self._assets)})"
        if command.command in cmds.ASSET_COMMANDS:
            memory = self._state(asset.id)["commands"]
            if cmds.seen(memory, command.command_id):
                return [], None
            events, error = self._asset_command(asset, command, now_us)
        else:
            where = self._index.get(command.alert_id)
            if where is None:
                return [], (
                    f"{command.command} command {command.command_id}: unknown alert_id {command.alert_id} for asset {command.asset_id}: "
                    f"no open or recently closed alarm has this id (the book forgets a closed alarm after "
                    f"{self.settings.closed_kept} newer ones of its asset); check the id on the alerts topic"
                )
            if where[0] == "area":
                area = self._areas[where[1]]
                memory = area["commands"]
                if cmds.seen(memory, command.command_id):
                    return [], None
                events, error = self._flood_command(area, command, now_us)
            else:
                if where[1] != command.asset_id:
                    return [], (
                        f"{command.command} command {command.command_id}: alarm {command.alert_id} belongs to asset {where[1]}, "
                        f"not {command.asset_id}: send it with asset_id {where[1]}"
                    )
                memory = self._states[asset.id]["commands"]
                if cmds.seen(memory, command.command_id):
                    return [], None
                events, error = self._alarm_command(asset, command, now_us)
        if error is None:
            # The memory lives in the asset's (or the area's) state, which the handler marked changed.
            cmds.remember(memory, command.command_id, self.settings.remembered_commands)
        return events, error

    def _alarm_command(self, asset, command, now_us) -> tuple[list[dict], str | None]:
        point, episode = self._find(asset.id, command.alert_id)
        words = f"{asset.id} {self._fault_words(asset.id, episode['fault'])}"
        name = f"alarm {command.alert_id} ({words})"
        fields = command.fields()
        who = command.who(now_us)
        current = point is not None and point["episode"] is episode
        events = []
        if command.command == "acknowledge":
            if episode["state"] == life.NORMAL:
                return [], f"{name} is closed since {text.clock(episode['closed_us'])}: nothing to acknowledge"
            if episode["state"] == life.ACTIVE_ACK:
                by = episode["acknowledged"]
                return [], f"{name} was acknowledged already, by {by['user']} at {text.clock(by['at_us'])}"
            kind = life.acknowledge(episode, now_us, who)
            message = f"{asset.id}: {self._fault_words(asset.id, episode['fault'])} acknowledged by {command.user}"
            if kind == "closed":
                message += "; closed (it had returned to normal)"
            events.append(self._event(kind, asset, point, episode, late=False, t=None, message=message, command=fields, cause=command.command_id))
        elif command.command in ("shelve", "unshelve"):
            if not current:
                return [], f"{name} is an older alarm of {words}; shelving acts on the current one, {point['episode']['alert_id']}: send the command with that id"
            expired = self._expire_shelving(asset, point, now_us)
            if command.command == "unshelve" and expired:
                return expired, None  # its time was up just now: unshelved already
            events += expired
            if command.command == "shelve":
                granted = min(command.duration_s, self.settings.max_shelve_s)
                until = now_us + granted * 1_000_000
                point["shelved"] = {**who, "until_us": until, "requested_s": command.duration_s}
                message = f"{asset.id}: {self._fault_words(asset.id, episode['fault'])} shelved by {command.user} until {text.clock(until)}"
                if granted < command.duration_s:
                    message += f" (asked for {text.seconds(command.duration_s)}; at most {text.seconds(self.settings.max_shelve_s)} allowed, alarms.max_shelve_s)"
            else:
                if point["shelved"] is None:
                    return [], f"{name} is not shelved: nothing to unshelve"
                point["shelved"] = None
                message = f"{asset.id}: {self._fault_words(asset.id, episode['fault'])} unshelved by {command.user}"
            episode["last_change_us"] = now_us
            kind = "shelved" if command.command == "shelve" else "unshelved"
            events.append(self._event(kind, asset, point, episode, late=False, t=None, message=message, command=fields, cause=command.command_id))
        elif command.command == "comment":
            life.add_comment(episode, who)
            episode["last_change_us"] = now_us
            message = f"{asset.id}: {self._fault_words(asset.id, episode['fault'])}: {command.user}: {command.comment}"
            events.append(self._event("commented", asset, point, episode, late=False, t=None, message=message, command=fields, cause=command.command_id))
        elif command.command == "feedback":
            episode["feedback"] = {"label": command.label, "fault": command.fault, "user": command.user, "at_us": now_us, "command_id": command.command_id}
            episode["last_change_us"] = now_us
            verdict = f"confirmed {self._fault_words(asset.id, command.fault)}" if command.fault else command.label.replace("_", " ")
            message = f"{asset.id}: {self._fault_words(asset.id, episode['fault'])}: feedback by {command.user}: {verdict}"
            events.append(self._event("feedback", asset, point, episode, late=False, t=None, message=message, command=fields, cause=command.command_id))
        if command.comment is not None and command.command != "comment":
            life.add_comment(episode, who)  # a reason given with an acknowledge or a shelve belongs in the log too
        self._changed_assets.add(asset.id)
        return events, None

    def _asset_command(self, asset, command, now_us) -> tuple[list[dict], str | None]:
        state = self._state(asset.id)
        out = state["out_of_service"]
        if command.command == "suppress":
            if out is not None:
                return [], f"{asset.id} is out of service already, since {text.clock(out['at_us'])} by {out['user']}; send unsuppress to return it to service"
            state["out_of_service"] = command.who(now_us)
        else:
            if out is None:
                return [], f"{asset.id} is not out of service (a suppress command takes it out); machine-state suppression ends by itself"
            state["out_of_service"] = None
        self._changed_assets.add(asset.id)
        causes = self._causes(asset.id, state, self._machine_now(state))
        events = []
        caused_by = {"fields": command.fields(), "at_us": now_us}
        for fault in sorted(state["points"]):
            point = state["points"][fault]
            if life.is_open(point["episode"]) and point["episode"]["suppressed_by"] != causes:
                events.append(self._suppression_changed(asset, point, causes, None, False, caused_by))
        return events, None

    def _flood_command(self, area, command, now_us) -> tuple[list[dict], str | None]:
        flood = next(f for f in ([area["flood"]] if area["flood"] else []) + area["closed"] if f["alert_id"] == command.alert_id)
        members = sorted({m["asset_id"] for m in flood["members"]})
        if command.asset_id not in members:
            return [], (
                f"{command.command} command {command.command_id}: flood alarm {command.alert_id} of area {flood['area']} groups "
                f"alarms of {', '.join(members)}; send it with one of those as asset_id"
            )
        if command.command not in ("acknowledge", "comment"):
            return [], (
                f"{command.command} does not apply to flood alarm {command.alert_id}: it groups other alarms; "
                "acknowledge or comment on it, and shelve or give feedback on the grouped alarms (flood.members)"
            )
        who = command.who(now_us)
        if command.command == "acknowledge":
            if flood["state"] == life.NORMAL:
                return [], f"flood alarm {command.alert_id} of area {flood['area']} is over since {text.clock(flood['closed_us'])}: nothing to acknowledge"
            if flood["state"] == life.ACTIVE_ACK:
                by = flood["acknowledged"]
                return [], f"flood alarm {command.alert_id} was acknowledged already, by {by['user']} at {text.clock(by['at_us'])}"
            floods.acknowledge(flood, now_us, who)
            if command.comment is not None:
                life.add_comment(flood, who)
            kind, message = "acknowledged", f"{flood['area']}: alarm flood acknowledged by {command.user}"
        else:
            life.add_comment(flood, who)
            flood["last_change_us"] = now_us
            kind, message = "commented", f"{flood['area']}: alarm flood: {command.user}: {command.comment}"
        self._changed_areas.add(flood["area"])
        return [self._flood_event(kind, flood, t=None, cause=command.command_id, message=message, command=command.fields())], None

    def _expire_shelving(self, asset, point, now_us) -> list[dict]:
        shelved = point["shelved"]
        if shelved is None or shelved["until_us"] > now_us:
            return []
        point["shelved"] = None
        self._changed_assets.add(asset.id)
        episode = point["episode"]
        episode["last_change_us"] = shelved["until_us"]
        message = f"{asset.id}: {self._fault_words(asset.id, episode['fault'])} shelving by {shelved['user']} expired"
        return [self._event("unshelved", asset, point, episode, late=False, t=None, message=message, cause=f"expired:{shelved['until_us']}")]
