"""Fault alarms (stream.alarms): what an operator sees on the alarm list.

Every event any test here provokes goes through the worker's serialiser and is
validated against stream/schemas/alarm.schema.json, and the alarm-state record of
every alarm it touches against alarm-state.schema.json (``Checked`` below), with
the validator tests/test_schemas.py uses for the other wire schemas.
"""

from __future__ import annotations

import json
import uuid

import pytest

from stream.alarms import AlarmBook, AlarmSettings, alarm_id
from stream.alerts import _ALERT_NAMESPACE
from stream.config import AssetConfig
from tests.test_schemas import as_sent, assert_valid, doc_example, validator

S = 1_000_000
#: 2026-03-14T08:15:00Z, the time of the examples in docs/wire-schema.md
T0 = 1_773_476_100_000_000


def asset(asset_id: str, *, criticality: str = "high", area: str = "water-treatment", type: str = "pump") -> AssetConfig:
    return AssetConfig(id=asset_id, type=type, criticality=criticality, area=area, tags=[{"id": "bearing_temp_de"}, {"id": "run_state"}])


class Checked:
    """An AlarmBook whose every event and alarm-state record is validated against its schema."""

    def __init__(self, settings: AlarmSettings | None = None, assets: list[AssetConfig] | None = None):
        self.book = AlarmBook(settings or AlarmSettings(), assets or [asset("pump-3")])

    def _checked(self, events: list[dict]) -> list[dict]:
        sent = [as_sent(e) for e in events]
        for event in sent:
            assert_valid("alarm", event)
        for alert_id in self.book.touched(events):
            record = self.book.snapshot(alert_id)
            assert record is not None, f"no alarm-state record for {alert_id}"
            assert_valid("alarm-state", as_sent(record))
        return sent

    def evaluate(self, *args, **kwargs) -> list[dict]:
        return self._checked(self.book.evaluate(*args, **kwargs))

    def command(self, cmd: dict, now_us: int) -> tuple[list[dict], str | None]:
        events, error = self.book.command(cmd, now_us)
        assert error is None or events == [], "an error comes without events"
        return self._checked(events), error

    def tick(self, now_us: int) -> list[dict]:
        return self._checked(self.book.tick(now_us))

    def __getattr__(self, name):
        return getattr(self.book, name)


def run(book: Checked, probabilities: list, *, asset_id: str = "pump-3", fault: str = "bearing_wear", start: int = T0, step_s: int = 10, **context) -> list[dict]:
    """Feed one probability per window (every step_s seconds from start); all events."""
    events = []
    for i, p in enumerate(probabilities):
        events += book.evaluate(asset_id, start + i * step_s * S, {fault: p}, context or None)
    return events


def kinds(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


_commands = iter(range(1, 1_000_000))


def cmd(command: str, alert_id: str | None, *, asset_id: str = "pump-3", user: str = "j.mueller", command_id: str | None = None, **fields) -> dict:
    doc = {
        "schema_version": 1,
        "kind": "alert_command",
        "command_id": command_id or str(uuid.UUID(int=next(_commands))),
        "command": command,
        "asset_id": asset_id,
        "user": user,
        "issued_at": "2026-03-14T08:20:00.000Z",
        **fields,
    }
    if alert_id is not None:
        doc["alert_id"] = alert_id
    assert validator("alert-command").is_valid(doc), f"test command does not follow alert-command.schema.json: {doc}"
    return doc


# --------------------------------------------------------------------------- raise and return


def test_a_probability_wobbling_around_the_thresholds_raises_one_alarm():
    book = Checked()
    # Above on (0.7) for 20 s -> one raise; then it wobbles across 0.7 and down into
    # the deadband, and across 0.3 without staying below it for the off-delay.
    events = run(book, [0.75, 0.8, 0.72, 0.82, 0.65, 0.75, 0.5, 0.68, 0.72, 0.4, 0.8, 0.25, 0.35, 0.25, 0.2, 0.31, 0.1, 0.28, 0.5])
    assert kinds(events) == ["raised"]
    assert len(book.open_alarms("pump-3")) == 1
    # Only a full off-delay (60 s) at or below 0.3 returns it: once.
    events = run(book, [0.2] * 8, start=T0 + 200 * S)
    assert kinds(events) == ["returned"]


def test_a_one_window_spike_raises_nothing():
    book = Checked()
    assert run(book, [0.1, 0.95, 0.1, 0.1]) == []
    assert run(book, [0.9, 0.9, 0.2], start=T0 + 100 * S) == [], "10 s above the threshold is shorter than the 20 s on-delay"
    events = run(book, [0.9, 0.9, 0.9], start=T0 + 200 * S)
    (raised,) = events
    assert raised["event"] == "raised" and raised["source_data_time_us"] == T0 + 220 * S
    assert raised["episode_start_us"] == T0 + 200 * S, "the episode starts where P first crossed, not where the delay ran out"


def test_the_off_delay_keeps_the_alarm_until_the_fault_is_gone_for_a_minute():
    book = Checked()
    run(book, [0.9, 0.9, 0.9])
    assert run(book, [0.2] * 6, start=T0 + 30 * S) == [], "50 s below off_threshold is not yet 60 s"
    assert run(book, [0.5], start=T0 + 90 * S) == [], "a window in the deadband restarts the off-delay"
    assert run(book, [0.2] * 6, start=T0 + 100 * S) == []
    (returned,) = run(book, [0.2], start=T0 + 160 * S)
    assert (returned["event"], returned["state"], returned["annunciated"]) == ("returned", "returned_unacknowledged", True)
    assert returned["source_data_time_us"] == T0 + 160 * S


def test_returned_unacknowledged_then_acknowledge_closes_it():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    run(book, [0.1] * 7, start=T0 + 30 * S)
    assert book.snapshot(raised["alert_id"])["state"] == "returned_unacknowledged"
    (closed,), error = book.command(cmd("acknowledge", raised["alert_id"]), T0 + 200 * S)
    assert error is None
    assert (closed["event"], closed["state"], closed["annunciated"]) == ("closed", "normal", False)
    assert closed["command"]["user"] == "j.mueller"
    record = book.snapshot(raised["alert_id"])
    assert record["closed"] and record["closed_at_us"] == T0 + 200 * S and record["acknowledged"]["user"] == "j.mueller"
    assert book.open_alarms("pump-3") == []


def test_acknowledge_then_return_closes_it():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    (acked,), error = book.command(cmd("acknowledge", raised["alert_id"]), T0 + 25 * S)
    assert error is None and (acked["event"], acked["state"]) == ("acknowledged", "active_acknowledged")
    events = run(book, [0.1] * 7, start=T0 + 30 * S)
    assert [(e["event"], e["state"]) for e in events] == [("closed", "normal")]
    assert events[0]["alert_id"] == raised["alert_id"]


# --------------------------------------------------------------------------- episodes and ids


def test_a_fault_back_soon_after_returning_reopens_the_same_alarm_and_later_one_is_a_new_episode():
    book = Checked()  # realarm_after_s 300
    (first,) = run(book, [0.9, 0.9, 0.9])
    book.command(cmd("acknowledge", first["alert_id"]), T0 + 25 * S)
    (closed,) = run(book, [0.1] * 7, start=T0 + 30 * S)  # closed at T0 + 90 s
    assert closed["event"] == "closed"
    # Back 110 s after it closed: the same alarm, active and waiting for an acknowledgement again.
    (back,) = run(book, [0.9, 0.9, 0.9], start=T0 + 200 * S)
    assert (back["event"], back["alert_id"], back["state"]) == ("reopened", first["alert_id"], "active_unacknowledged")
    assert back["episode_start_us"] == first["episode_start_us"]
    # Returned and not acknowledged: coming back re-opens it too, whatever the time.
    (returned,) = run(book, [0.1] * 7, start=T0 + 230 * S)
    (again,) = run(book, [0.9, 0.9, 0.9], start=T0 + 1_000 * S)
    assert (returned["event"], again["event"], again["alert_id"]) == ("returned", "reopened", first["alert_id"])
    # Closed, and normal for longer than realarm_after_s: a new episode with a new id.
    book.command(cmd("acknowledge", first["alert_id"]), T0 + 1_025 * S)
    run(book, [0.1] * 7, start=T0 + 1_030 * S)
    (new,) = run(book, [0.9, 0.9, 0.9], start=T0 + 1_500 * S)
    assert new["event"] == "raised" and new["alert_id"] != first["alert_id"]
    assert new["alert_id"] == alarm_id("pump-3", "bearing_wear", T0 + 1_500 * S)
    # The old one is still known: late feedback on it works.
    _, error = book.command(cmd("feedback", first["alert_id"], label="false_alarm"), T0 + 2_000 * S)
    assert error is None


def test_two_faults_on_one_asset_are_two_alarms_and_one_fault_never_two():
    book = Checked()
    events = []
    for i in range(12):
        events += book.evaluate("pump-3", T0 + i * 10 * S, {"bearing_wear": 0.9, "cavitation": 0.8 if i >= 2 else 0.1})
    raised = [e for e in events if e["event"] == "raised"]
    assert sorted(e["fault"] for e in raised) == ["bearing_wear", "cavitation"]
    assert len({e["alert_id"] for e in raised}) == 2
    assert len(book.open_alarms("pump-3")) == 2


def test_the_alert_id_is_uuid5_of_asset_fault_and_episode_start():
    book = Checked()
    (raised,) = run(book, [0.2, 0.8, 0.85, 0.9], start=T0)
    start = T0 + 10 * S
    assert raised["episode_start_us"] == start
    assert raised["alert_id"] == str(uuid.uuid5(_ALERT_NAMESPACE, f"pump-3|fault|bearing_wear|{start}"))


SCRIPT = [0.1, 0.75, 0.8, 0.9, 0.95, 0.6, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]


def test_replaying_the_same_input_into_a_fresh_book_gives_the_same_ids_and_events():
    live, replay = Checked(), Checked()
    assert run(live, SCRIPT) == run(replay, SCRIPT)
    assert live.state_of("pump-3") == replay.state_of("pump-3")


@pytest.mark.parametrize("cut", [2, 4, 8, 14])  # in the on-delay, just raised, returning, re-opening
def test_a_worker_restarted_from_its_changelog_mid_episode_never_mints_a_second_id(cut):
    uninterrupted = run(Checked(), SCRIPT)
    before = Checked()
    events = run(before, SCRIPT[:cut])
    saved = json.loads(json.dumps(before.state_of("pump-3")))  # what the changelog holds
    after = Checked()
    after.restore("pump-3", saved)
    # At-least-once: the restarted worker sees the last windows once more; they change nothing.
    assert run(after, SCRIPT[cut - 2 : cut], start=T0 + (cut - 2) * 10 * S) == []
    events += run(after, SCRIPT[cut:], start=T0 + cut * 10 * S)
    assert events == uninterrupted
    assert len({e["alert_id"] for e in events}) == 1


# --------------------------------------------------------------------------- shelving


def test_shelving_hides_the_alarm_until_it_expires_on_tick():
    book = Checked()
    (raised,) = run(book, [0.75, 0.75, 0.75])
    (shelved,), error = book.command(cmd("shelve", raised["alert_id"], duration_s=3600, comment="inspection booked"), T0 + 40 * S)
    assert error is None
    assert (shelved["shelved"], shelved["annunciated"]) == (True, False)
    assert shelved["shelved_until"] == "2026-03-14T09:15:40.000000Z"
    (escalated,) = run(book, [0.97], start=T0 + 50 * S)
    assert escalated["event"] == "escalated" and not escalated["annunciated"], "a shelved alarm still tracks its state, quietly"
    assert not book.snapshot(raised["alert_id"])["annunciated"]
    assert book.tick(T0 + 3_600 * S) == []
    (expired,) = book.tick(T0 + 3_640 * S)
    assert (expired["event"], expired["shelved"], expired["annunciated"], expired["command"]) == ("unshelved", False, True, None)
    assert book.snapshot(raised["alert_id"])["annunciated"]
    assert book.tick(T0 + 4_000 * S) == []


def test_shelving_outlasts_the_episode_and_hides_the_next_one():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    book.command(cmd("shelve", raised["alert_id"], duration_s=7200), T0 + 30 * S)
    book.command(cmd("acknowledge", raised["alert_id"]), T0 + 31 * S)
    run(book, [0.1] * 7, start=T0 + 40 * S)
    (new,) = run(book, [0.9, 0.9, 0.9], start=T0 + 1_000 * S)
    assert new["event"] == "raised" and new["alert_id"] != raised["alert_id"]
    assert (new["shelved"], new["annunciated"]) == (True, False)


def test_unshelve_shows_the_alarm_again():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    book.command(cmd("shelve", raised["alert_id"], duration_s=600), T0 + 30 * S)
    (unshelved,), error = book.command(cmd("unshelve", raised["alert_id"]), T0 + 60 * S)
    assert error is None and (unshelved["event"], unshelved["shelved"], unshelved["annunciated"]) == ("unshelved", False, True)
    _, error = book.command(cmd("unshelve", raised["alert_id"]), T0 + 70 * S)
    assert error and "not shelved" in error
    assert book.tick(T0 + 10_000 * S) == [], "nothing left to expire"


def test_shelving_longer_than_the_maximum_is_cut_to_it():
    book = Checked(AlarmSettings(max_shelve_s=8 * 3600))
    (raised,) = run(book, [0.9, 0.9, 0.9])
    (shelved,), error = book.command(cmd("shelve", raised["alert_id"], duration_s=2 * 86_400), T0 + 3_600 * S)
    assert error is None, "cut, not refused: commands arrive over Kafka and a refusal could go unseen"
    assert shelved["shelved_until"] == "2026-03-14T17:15:00.000000Z"  # 08:15 + 1 h + 8 h
    assert shelved["command"]["duration_s"] == 2 * 86_400 and "at most 28800 s" in shelved["message"]
    assert book.tick(T0 + 9 * 3_600 * S)[0]["event"] == "unshelved"


# --------------------------------------------------------------------------- suppression


def machine_settings(**kw) -> AlarmSettings:
    return AlarmSettings(assets={"pump-3": {"machine_state": {"tag": "run_state", "states": {"running": [1], "stopped": [0], "maintenance": [2, 3]}}}}, **kw)


def test_a_stopped_machine_suppresses_its_alarms_and_running_again_lifts_it():
    book = Checked(machine_settings())
    assert book.machine_state_tag("pump-3") == "run_state"
    assert book.machine_state("pump-3", T0, 1.0) == "running"
    assert book.machine_state("pump-3", T0 + 5 * S, 0.0) == "stopped"
    (raised,) = run(book, [0.9, 0.9, 0.9], start=T0 + 10 * S)
    assert (raised["suppressed"], raised["suppressed_by"], raised["machine_state"], raised["annunciated"]) == (True, ["machine_state"], "stopped", False)
    # The machine starts at T0+100 s. A window before that, judged later, is still "stopped":
    # the state counts by event time, as in a replay.
    assert book.machine_state("pump-3", T0 + 100 * S, 1) == "running"
    assert run(book, [0.9], start=T0 + 90 * S) == []
    (lifted,) = run(book, [0.9], start=T0 + 100 * S)
    assert (lifted["event"], lifted["suppressed"], lifted["annunciated"], lifted["machine_state"]) == ("unsuppressed", False, True, "running")
    # Maintenance suppresses too; an unknown code does not.
    book.machine_state("pump-3", T0 + 110 * S, 3)
    (maint,) = run(book, [0.9], start=T0 + 110 * S)
    assert maint["event"] == "suppressed" and maint["machine_state"] == "maintenance"
    assert book.machine_state("pump-3", T0 + 120 * S, 42) == "unknown"
    assert run(book, [0.9], start=T0 + 120 * S)[0]["event"] == "unsuppressed"
    assert book.machine_state("pump-3", T0 + 130 * S, float("nan")) is None, "a Bad reading keeps the last known state"


def test_out_of_service_by_command_suppresses_the_asset_until_unsuppressed():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    (suppressed,), error = book.command(cmd("suppress", None, comment="pump isolated for repair"), T0 + 40 * S)
    assert error is None
    assert (suppressed["event"], suppressed["alert_id"], suppressed["suppressed_by"], suppressed["annunciated"]) == ("suppressed", raised["alert_id"], ["out_of_service"], False)
    _, error = book.command(cmd("suppress", None), T0 + 41 * S)
    assert error and "out of service already" in error and "unsuppress" in error
    # A new fault while out of service is tracked, not shown.
    (other,) = [e for e in (book.evaluate("pump-3", T0 + (50 + 10 * i) * S, {"cavitation": 0.9}) for i in range(3)) if e][0]
    assert (other["event"], other["suppressed"], other["annunciated"]) == ("raised", True, False)
    events, error = book.command(cmd("unsuppress", None), T0 + 200 * S)
    assert error is None and kinds(events) == ["unsuppressed", "unsuppressed"] and all(e["annunciated"] for e in events)
    _, error = book.command(cmd("unsuppress", None), T0 + 201 * S)
    assert error and "not out of service" in error


# --------------------------------------------------------------------------- late data


def test_backfilled_data_is_marked_late_and_not_annunciated():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9], replayed=True)
    assert (raised["late"], raised["annunciated"]) == (True, False)
    record = book.snapshot(raised["alert_id"])
    assert record["raised_late"] and record["annunciated"], "the alarm is real: once live, it is on the list"
    (returned,) = run(book, [0.1] * 7, start=T0 + 30 * S)  # live again
    assert (returned["late"], returned["annunciated"]) == (False, True)


# --------------------------------------------------------------------------- floods


def test_twenty_alarms_in_one_area_become_ten_alarms_and_one_flood_that_ends():
    line1 = [asset(f"pump-{i}", area="line-1") for i in range(20)]
    line2 = [asset("fan-1", area="line-2", type="fan")]
    book = Checked(AlarmSettings(), line1 + line2)  # flood_rate 10 in 600 s, ends below 5
    events = []
    # Every asset reports a window every 10 s; pump-i's fault starts at T0 + i s.
    for k in range(80):
        for i, a in enumerate(line1):
            t = T0 + (k * 10 + i) * S
            events += book.evaluate(a.id, t, {"bearing_wear": 0.9 if k < 10 else 0.5})
        events += book.evaluate("fan-1", T0 + (k * 10 + 5) * S, {"imbalance": 0.9 if k >= 3 else 0.1})
    raised = [e for e in events if e["event"] == "raised"]
    line1_raised = [e for e in raised if e["area"] == "line-1"]
    assert len(line1_raised) == 20
    assert [e["annunciated"] for e in line1_raised] == [True] * 10 + [False] * 10
    floods = [e for e in events if e["fault"] == "alarm_flood"]
    assert kinds(floods) == ["flood_started"] + ["flood_updated"] * 9 + ["flood_ended"]
    assert len({e["alert_id"] for e in floods}) == 1, "one flood alarm"
    ended = floods[-1]
    assert ended["flood"]["count"] == 10
    assert [(m["asset_id"], m["fault"]) for m in ended["flood"]["members"]] == [(f"pump-{i}", "bearing_wear") for i in range(10, 20)]
    assert all(e["flood_id"] == ended["alert_id"] for e in line1_raised[10:])
    assert ended["state"] == "normal" and ended["area"] == "line-1"
    # pump-i raised at T0 + 20 + i s. It ends once fewer than 5 alarms were raised in the last
    # 600 s: when pump-15's raise (T0 + 35 s) leaves the window, at T0 + 635 s, four are left.
    assert ended["source_data_time_us"] == T0 + 635 * S
    # Another area is not affected.
    (fan,) = [e for e in raised if e["asset_id"] == "fan-1"]
    assert fan["annunciated"] and fan["flood_id"] is None
    # The grouped alarms that are still open are shown on their own again.
    assert set(book.touched([ended])) >= {e["alert_id"] for e in line1_raised[10:]}
    assert all(book.snapshot(e["alert_id"])["annunciated"] for e in line1_raised[10:])
    # The flood alarm's record says it is over.
    assert book.snapshot(ended["alert_id"])["closed"]


def test_a_worker_restarted_in_the_middle_of_a_flood_carries_on_with_the_same_flood():
    assets = [asset(f"pump-{i}", area="line-1") for i in range(8)]

    def windows(book, ks):
        events = []
        for k in ks:
            for i in range(8):
                events += book.evaluate(f"pump-{i}", T0 + (k * 10 + i) * S, {"cavitation": 0.9 if k < 5 else 0.5})
        return events

    settings = AlarmSettings(flood_rate=3, flood_end_rate=2, flood_window_s=120)
    uninterrupted = windows(Checked(settings, assets), range(20))
    before = Checked(settings, assets)
    events = windows(before, range(4))
    saved_assets = {a.id: json.loads(json.dumps(before.state_of(a.id))) for a in assets}
    saved_area = json.loads(json.dumps(before.area_state("line-1")))
    after = Checked(settings, assets)
    for asset_id, state in saved_assets.items():
        after.restore(asset_id, state)
    after.restore_area("line-1", saved_area)
    events += windows(after, range(4, 20))
    assert events == uninterrupted
    assert kinds([e for e in events if e["fault"] == "alarm_flood"]) == ["flood_started"] + ["flood_updated"] * 4 + ["flood_ended"]


def test_a_flood_alarm_takes_an_acknowledge_from_one_of_its_assets():
    assets = [asset(f"pump-{i}", area="line-1") for i in range(4)]
    book = Checked(AlarmSettings(flood_rate=2, flood_end_rate=1), assets)
    events = []
    for k in range(3):
        for i in range(4):
            events += book.evaluate(f"pump-{i}", T0 + (k * 10 + i) * S, {"cavitation": 0.9})
    flood = [e for e in events if e["event"] == "flood_started"][0]
    _, error = book.command(cmd("acknowledge", flood["alert_id"], asset_id="pump-0"), T0 + 40 * S)
    assert error and "pump-2, pump-3" in error
    (acked,), error = book.command(cmd("acknowledge", flood["alert_id"], asset_id="pump-3"), T0 + 40 * S)
    assert error is None and acked["state"] == "active_acknowledged"
    _, error = book.command(cmd("shelve", flood["alert_id"], asset_id="pump-3", duration_s=60), T0 + 41 * S)
    assert error and "grouped alarms" in error


# --------------------------------------------------------------------------- commands


def test_a_command_sent_twice_is_applied_once():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    ack = cmd("acknowledge", raised["alert_id"])
    events, error = book.command(ack, T0 + 40 * S)
    assert error is None and kinds(events) == ["acknowledged"]
    assert book.command(ack, T0 + 41 * S) == ([], None), "the same command_id again: nothing, and no error"
    _, error = book.command(cmd("acknowledge", raised["alert_id"]), T0 + 42 * S)
    assert error and "acknowledged already, by j.mueller" in error
    # The memory survives a restart.
    fresh = Checked()
    fresh.restore("pump-3", json.loads(json.dumps(book.state_of("pump-3"))))
    assert fresh.command(ack, T0 + 43 * S) == ([], None)


def test_an_unknown_alert_id_gets_an_error_naming_it():
    book = Checked()
    unknown = "00000000-0000-5000-8000-000000000000"
    events, error = book.command(cmd("acknowledge", unknown), T0)
    assert events == [] and unknown in error and "pump-3" in error


@pytest.mark.parametrize(
    "doc, words",
    [
        ("not a command", "JSON object"),
        ({"command": "silence", "command_id": "x", "asset_id": "pump-3", "user": "u"}, "unknown command 'silence'"),
        ({"command": "acknowledge", "command_id": "x", "asset_id": "pump-3", "user": "u"}, "without alert_id"),
        ({"command": "acknowledge", "asset_id": "pump-3", "user": "u", "alert_id": "a"}, "without command_id"),
        ({"command": "shelve", "command_id": "x", "asset_id": "pump-3", "user": "u", "alert_id": "a"}, "needs duration_s"),
        ({"command": "feedback", "command_id": "x", "asset_id": "pump-3", "user": "u", "alert_id": "a", "label": "meh"}, "label must be one of"),
        ({"command": "suppress", "command_id": "x", "asset_id": "pump-9", "user": "u"}, "unknown asset 'pump-9'"),
    ],
)
def test_a_bad_command_gets_an_answer_in_words_never_an_exception(doc, words):
    events, error = Checked().command(doc, T0)
    assert events == [] and words in error


def test_a_command_in_a_state_that_does_not_allow_it_is_refused():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    book.command(cmd("acknowledge", raised["alert_id"]), T0 + 30 * S)
    run(book, [0.1] * 7, start=T0 + 40 * S)  # closed
    _, error = book.command(cmd("acknowledge", raised["alert_id"]), T0 + 200 * S)
    assert error and "is closed since" in error
    _, error = book.command(cmd("acknowledge", raised["alert_id"], asset_id="fan-1"), T0 + 200 * S)
    assert error and "unknown asset" in error


def test_feedback_can_confirm_another_fault_and_comments_go_on_closed_alarms():
    book = Checked()
    (raised,) = run(book, [0.9, 0.9, 0.9])
    book.command(cmd("acknowledge", raised["alert_id"], comment="checking"), T0 + 30 * S)
    run(book, [0.1] * 7, start=T0 + 40 * S)
    (fb,), error = book.command(cmd("feedback", raised["alert_id"], label="true_fault", fault="misalignment"), T0 + 500 * S)
    assert error is None and fb["command"]["fault"] == "misalignment" and "confirmed misalignment" in fb["message"]
    (note,), error = book.command(cmd("comment", raised["alert_id"], comment="coupling realigned"), T0 + 600 * S)
    assert error is None and note["state"] == "normal"
    record = book.snapshot(raised["alert_id"])
    assert record["feedback"]["fault"] == "misalignment"
    assert [c["comment"] for c in record["comments"]] == ["checking", "coupling realigned"]
    bad = cmd("feedback", raised["alert_id"], label="true_fault", fault="misalignment") | {"label": "false_alarm"}
    assert not validator("alert-command").is_valid(bad), "the schema refuses a fault with another label"
    _, error = book.command(bad, T0 + 700 * S)
    assert error and "true_fault only" in error


def test_closed_alarms_are_forgotten_after_closed_kept_newer_ones_with_a_tombstone():
    book = Checked(AlarmSettings(closed_kept=2, realarm_after_s=0))
    ids = []
    for n in range(4):
        start = T0 + n * 1_000 * S
        (raised,) = run(book, [0.9, 0.9, 0.9], start=start)
        book.command(cmd("acknowledge", raised["alert_id"]), start + 30 * S)
        run(book, [0.1] * 7, start=start + 40 * S)
        ids.append(raised["alert_id"])
    first, second = ids[:2]
    # The latest closed alarm stays with its fault; two older ones are kept; the first is gone.
    assert book.take_tombstones() == [first]
    assert book.snapshot(first) is None and book.snapshot(second)["closed"]
    _, error = book.command(cmd("comment", first, comment="late"), T0)
    assert error and "unknown alert_id" in error


# --------------------------------------------------------------------------- priority


def test_priority_follows_probability_band_and_asset_criticality():
    assets = [asset("pump-low", criticality="low"), asset("pump-med", criticality="medium"), asset("pump-high", criticality="high")]
    priorities = {}
    for p in (0.75, 0.9, 0.97):
        book = Checked(AlarmSettings(), assets)
        for a in assets:
            (raised,) = run(book, [p] * 3, asset_id=a.id)
            priorities[a.criticality, p] = raised["priority"]
    assert priorities == {
        ("low", 0.75): "low", ("low", 0.9): "low", ("low", 0.97): "medium",
        ("medium", 0.75): "low", ("medium", 0.9): "medium", ("medium", 0.97): "high",
        ("high", 0.75): "medium", ("high", 0.9): "high", ("high", 0.97): "urgent",
    }  # fmt: skip


def test_priority_escalates_once_when_the_probability_climbs_and_never_drops():
    book = Checked()
    events = run(book, [0.75, 0.75, 0.75, 0.8, 0.9, 0.92, 0.97, 0.98, 0.75, 0.96])
    assert [(e["event"], e["priority"]) for e in events] == [("raised", "medium"), ("escalated", "high"), ("escalated", "urgent")]
    assert "priority high -> urgent" in events[-1]["message"]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"on_threshold": 0.5, "off_threshold": 0.6}, "off_threshold (0.6) must be below on_threshold (0.5)"),
        ({"priority_matrix": {"low": ["low"], "medium": ["low"], "high": ["low"]}}, "needs 3"),
        ({"priority_matrix": {"high": ["low", "medium", "high"]}}, "missing: low, medium"),
        ({"flood_rate": 3, "flood_end_rate": 5}, "must not exceed flood_rate"),
        ({"assets": {"pump-3": {"machine_state": {"tag": "t", "states": {"running": [1], "stopped": [1]}}}}}, "both running and stopped"),
        ({"on_delay": 5}, "Extra inputs are not permitted"),
    ],
)
def test_settings_that_make_no_sense_are_refused_with_the_reason(settings, words):
    with pytest.raises(ValueError, match=None) as caught:
        AlarmSettings(**settings)
    assert words in str(caught.value)


def test_a_machine_state_tag_the_asset_does_not_have_is_refused():
    settings = AlarmSettings(assets={"pump-3": {"machine_state": {"tag": "motor_running", "states": {"running": [1]}}}})
    with pytest.raises(ValueError, match="'motor_running', which is not a tag of pump-3"):
        AlarmBook(settings, [asset("pump-3")])
    with pytest.raises(ValueError, match="names asset 'pump-9'"):
        AlarmBook(AlarmSettings(assets={"pump-9": {}}), [asset("pump-3")])


# --------------------------------------------------------------------------- documented examples


def documented_alarm_scenario() -> dict[str, dict]:
    """The alarm event and alarm-state record docs/wire-schema.md shows, made by the real code:
    pump-3's bearing wear rises over three 10 s windows and is raised; j.mueller acknowledges."""
    book = Checked(AlarmSettings(), [AssetConfig(id="pump-3", type="pump", criticality="high", area="water-treatment", tags=[{"id": "bearing_temp_de"}])])
    context = {
        "replayed": False,
        "top_tags": [
            {"id": "vibration_kurtosis", "value": 5.2, "normal_range": [2.6, 3.4], "feature": "kurtosis", "contribution": 0.58},
            {"id": "bearing_temp_de", "value": 71.4, "normal_range": [45.0, 60.0], "feature": "mean", "contribution": 0.27},
        ],
        "evidence": [
            {"detector": "isolation_forest", "scale": "10s", "p_value": 0.00002},
            {"detector": "lstm_autoencoder", "scale": "1s", "p_value": 0.0004},
        ],
        "model_versions": {"isolation_forest": 3, "lstm_autoencoder": 2, "halfspace_trees": 0},
        "explanation": "vibration_kurtosis, bearing_temp_de rose",
    }
    events = []
    for i, p in enumerate([0.74, 0.81, 0.87]):
        events += book.evaluate("pump-3", T0 + i * 10 * S, {"bearing_wear": p}, context)
    (raised,) = events
    ack = cmd("acknowledge", raised["alert_id"], command_id="5d7c7f3e-1b0c-4c55-9f0e-2a86b1a7c0d4", comment="bearing inspection booked for 09:30")
    _, error = book.command(ack, T0 + 162_310_000)
    assert error is None
    return {"alarm": raised, "alarm-state": as_sent(book.snapshot(raised["alert_id"]))}


@pytest.mark.parametrize("stem", ["alarm", "alarm-state"])
def test_docs_alarm_examples_are_what_the_code_produces(stem):
    example = doc_example(stem)
    assert_valid(stem, example)
    assert example == documented_alarm_scenario()[stem], (
        f"the {stem} example in docs/wire-schema.md differs from what the code produces for "
        "tests/test_alarms.py documented_alarm_scenario: update the docs"
    )


def test_the_documented_message_reads_as_an_operator_expects():
    raised = documented_alarm_scenario()["alarm"]
    assert raised["message"] == "pump-3: bearing wear 87 % \u2014 vibration_kurtosis, bearing_temp_de rose"
    assert (raised["priority"], raised["state"], raised["annunciated"]) == ("high", "active_unacknowledged", True)


def test_command_schema_takes_suppress_without_alert_id_and_wants_it_elsewhere():
    v = validator("alert-command")
    base = {k: v_ for k, v_ in doc_example("alert-command").items() if k not in ("duration_s", "label", "comment", "alert_id")}
    assert v.is_valid({**base, "command": "suppress"})
    assert v.is_valid({**base, "command": "unsuppress", "comment": "repair done"})
    assert not v.is_valid({**base, "command": "acknowledge"}), "acknowledge without alert_id passes"
    with_id = {**base, "alert_id": doc_example("alert-command")["alert_id"]}
    assert v.is_valid({**with_id, "command": "feedback", "label": "true_fault", "fault": "cavitation"})
    assert not v.is_valid({**with_id, "command": "comment", "comment": "x", "fault": "cavitation"})
