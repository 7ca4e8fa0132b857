"""Bayesian fusion, judged by what an operator would see: each pump fault named when
its signature shows, calm normal operation kept calm, a pattern no fault explains
called an unknown anomaly, a stuck or dropped-out transmitter called a sensor
fault, one odd window ignored, recovery once the fault is gone, stale scores left
out, learning and feedback moving the model (feedback only within bounds, and
logged), persisted state that carries on exactly, and config overrides that take
effect or say what is wrong."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pydantic import ValidationError

from stream.config import AssetConfig
from stream.fusion import AssetFusion, FaultNetwork, FusionSettings, role_from_name
from stream.fusion.evidence import StepEvidence
from stream.rules.events import RuleEvent

S = 1_000_000
T0 = 1_773_475_200 * S  # 2026-03-14 08:00 UTC
DETECTORS = ("isolation_forest", "lstm_autoencoder", "halfspace_trees")
PUMP_TAGS = (
    "flow",
    "suction_pressure",
    "discharge_pressure",
    "motor_current",
    "speed",
    "bearing_temp_de",
    "bearing_temp_nde",
    "motor_winding_temp",
    "seal_leak_flow",
    "vibration_rms",
    "vibration_kurtosis",
)
#: the primary tags of each pump fault (the simulator's signatures) and which way they
#: move: "+" above the normal range, "-" below. Kurtosis rises with the impacts of a
#: bearing defect or cavitation and falls when a 1x / 2x sine dominates.
PUMP_FAULTS = {
    "bearing_wear": ("+vibration_kurtosis", "+vibration_rms", "+bearing_temp_de"),
    "cavitation": ("-suction_pressure", "-discharge_pressure", "+vibration_rms", "+vibration_kurtosis"),
    "seal_leak": ("+seal_leak_flow",),
    "misalignment_imbalance": ("+vibration_rms", "-vibration_kurtosis"),
    "overheating": ("+motor_winding_temp",),
}


MOTOR_TAGS = ("speed", "motor_current", "power_factor", "winding_temp", "bearing_temp_de", "bearing_temp_nde", "vibration_rms", "vibration_kurtosis")
FAN_TAGS = ("speed", "motor_current", "airflow", "differential_pressure", "bearing_temp", "vibration_rms", "vibration_kurtosis")
COMPRESSOR_TAGS = (
    "speed",
    "suction_pressure",
    "discharge_pressure",
    "discharge_temp",
    "motor_current",
    "oil_pressure",
    "oil_temp",
    "vibration_rms",
    "vibration_kurtosis",
)


def pump(asset_id: str = "pump-3", tags=PUMP_TAGS) -> AssetConfig:
    return AssetConfig(id=asset_id, type="pump", tags=[{"id": t, "normal_range": [0.0, 1.0]} for t in tags])


def fusion_for(asset: AssetConfig | None = None, settings: FusionSettings | None = None, network: FaultNetwork | None = None) -> AssetFusion:
    asset = asset or pump()
    settings = settings or FusionSettings()
    return AssetFusion(asset, network or FaultNetwork.for_asset_type(asset.type, settings), settings)


def score(detector: str, scale: str, end_us: int, p: float, tops=(), asset_id: str = "pump-3") -> dict:
    """A score message as stream.detection.score_message makes it (the fields fusion reads and more).
    A top tag "-name" is below its normal range [0, 1], "name" or "+name" above it."""
    shares = (0.35, 0.3, 0.2, 0.1, 0.05)

    def top(i: int, tag: str) -> dict:
        below = tag.startswith("-")
        name = tag.lstrip("+-")
        return {"id": name, "contribution": shares[i], "feature": "mean", "value": -1.0 if below else 2.0, "normal_range": [0.0, 1.0]}

    return {
        "schema_version": 1,
        "kind": "score",
        "asset_id": asset_id,
        "asset_type": "pump",
        "detector": detector,
        "model_version": 4,
        "scale": scale,
        "window_end_us": end_us,
        "raw_score": 0.0,
        "p_value": p,
        "score": 1 - p,
        "threshold": 0.999,
        "false_alarm_rate": 0.001,
        "anomalous": p <= 0.001,
        "top_tags": [top(i, t) for i, t in enumerate(tops)],
        "replayed": False,
    }


def window(fusion: AssetFusion, k: int, p: float = 0.5, tops=(), scale: str = "1s", step: bool = True):
    """One closed 1 s window (k seconds after T0): a score from each detector, then a step."""
    end = T0 + k * S
    fusion.observe_scores([score(d, scale, end, p, tops, fusion.asset.id) for d in DETECTORS])
    return fusion.step(end) if step else None


def calm(fusion: AssetFusion, start: int, n: int = 20) -> int:
    for k in range(start, start + n):
        window(fusion, k)
    return start + n


# --------------------------------------------------------------------------- naming faults


@pytest.mark.parametrize("fault", sorted(PUMP_FAULTS))
def test_each_pump_fault_is_named_first_with_over_80_percent_within_4_windows(fault):
    fusion = fusion_for()
    k = calm(fusion, 0)
    named = []
    for k in range(k, k + 5):
        result = window(fusion, k, p=1e-6, tops=PUMP_FAULTS[fault])
        named.append(result.top_state == fault and result.top_fault_probability > 0.8)
    assert named.index(True) <= 3 and all(named[named.index(True) :]), named
    assert result.top_state == fault
    assert result.top_fault == fault
    assert result.top_fault_probability > 0.8
    assert list(result.posterior)[0] == fault  # ordered, highest first
    assert result.p_any_fault == pytest.approx(1 - result.posterior["normal"])
    words = fault.replace("_", " ") if fault != "misalignment_imbalance" else "misalignment/imbalance"
    assert result.message.startswith(f"pump-3: {words} ")
    first = PUMP_FAULTS[fault][0]
    assert f"{first.lstrip('+-')}" in result.message and ("fell" if first.startswith("-") else "rose") in result.message


def test_a_sustained_fault_passes_80_percent_within_3_windows():
    fusion = fusion_for()
    k = calm(fusion, 0)
    probabilities = [window(fusion, k + i, p=1e-6, tops=PUMP_FAULTS["bearing_wear"]).posterior["bearing_wear"] for i in range(3)]
    assert probabilities[-1] > 0.8, probabilities
    assert probabilities == sorted(probabilities)


def test_the_message_reads_like_an_operator_line_with_value_direction_and_evidence():
    fusion = fusion_for()
    k = calm(fusion, 0)
    for k in range(k, k + 5):
        fusion.observe_scores([score(d, "1s", T0 + k * S, 2e-4, ["vibration_kurtosis", "bearing_temp_de"]) for d in DETECTORS])
        result = fusion.step(T0 + k * S)
    assert result.message.startswith("pump-3: bearing wear ")
    assert result.message.endswith("(vibration_kurtosis, bearing_temp_de rose)")
    # the evidence behind it: tags with value and normal range, detectors with p-values and versions
    top = result.drivers["top_tags"][0]
    assert top["id"] == "vibration_kurtosis" and top["value"] == 2.0 and top["normal_range"] == [0.0, 1.0]
    assert {d["detector"] for d in result.drivers["detectors"]} == set(DETECTORS)
    assert all(d["p_value"] == 2e-4 and d["model_version"] == 4 for d in result.drivers["detectors"])
    context = result.context()
    assert context["explanation"] == "vibration_kurtosis, bearing_temp_de rose"
    assert context["model_versions"]["isolation_forest/1s"] == 4
    json.dumps(result.as_dict())  # JSON-ready


def test_the_kurtosis_direction_tells_bearing_wear_from_misalignment():
    """Both raise the vibration; impacts raise the kurtosis, a 1x / 2x sine lowers it."""
    named = {}
    for kurtosis in ("+vibration_kurtosis", "-vibration_kurtosis"):
        fusion = fusion_for()
        k = calm(fusion, 0)
        for k in range(k, k + 5):
            result = window(fusion, k, p=1e-6, tops=(kurtosis, "+vibration_rms"))
        named[kurtosis[0]] = result.top_state
    assert named == {"+": "bearing_wear", "-": "misalignment_imbalance"}


def test_normal_operation_stays_calm_over_1000_windows():
    """Calibrated p-values are uniform when nothing is wrong; top tags are then noise."""
    rng = np.random.default_rng(7)
    fusion = fusion_for()
    p_any = []
    for k in range(1000):
        end = T0 + k * S
        scales = ["1s"] + (["10s"] if k % 10 == 9 else []) + (["1m"] if k % 60 == 59 else [])
        fusion.observe_scores(
            [score(d, sc, end, float(rng.uniform()), list(rng.choice(PUMP_TAGS, 3, replace=False))) for sc in scales for d in DETECTORS]
        )
        p_any.append(fusion.step(end).p_any_fault)
    p_any = np.array(p_any)
    assert np.mean(p_any < 0.05) >= 0.99, p_any.max()
    assert np.sum(p_any > 0.5) <= 3


def test_an_anomaly_that_fits_no_signature_is_an_unknown_anomaly_not_the_closest_fault():
    fusion = fusion_for()
    k = calm(fusion, 0)
    for k in range(k, k + 6):
        # speed is in no pump fault's signature; suction pressure rising and the winding
        # cooling go against the signatures that name them
        result = window(fusion, k, p=1e-6, tops=("+speed", "+suction_pressure", "-motor_winding_temp"))
    assert result.top_state == "unknown_anomaly"
    assert result.top_fault_probability > 0.8


# --------------------------------------------------------------------------- sensor faults


def test_a_flat_lined_transmitter_is_a_sensor_fault():
    fusion = fusion_for()
    k = calm(fusion, 0)
    fusion.observe_rules([("flatline", "flow", "flatline", "active", T0 + k * S)])
    for k in range(k, k + 10):
        result = window(fusion, k)  # the detectors see nothing unusual
    assert result.top_state == "sensor_fault"
    assert result.top_fault_probability > 0.8
    assert result.message.startswith("pump-3: sensor fault ") and result.message.endswith(" (flow flat)")


def test_a_transmitter_reading_bad_is_a_sensor_fault():
    asset = pump()
    fusion = fusion_for(asset)
    k = calm(fusion, 0)
    position = [t.id for t in asset.tags].index("discharge_pressure")
    event = RuleEvent("bad_quality", position, "bad_quality", "active", T0 + k * S, None, 5.0, T0 + k * S, observed=5.0, quality=0x80310000)
    fusion.observe_rules([event])
    for k in range(k, k + 6):
        fusion.observe_quality(1 / 11)  # one tag of eleven Bad
        result = window(fusion, k)
    assert result.top_state == "sensor_fault" and result.top_fault_probability > 0.8
    assert "discharge_pressure Bad quality" in result.message


def test_a_lone_spike_is_a_sensor_fault_but_jumps_on_several_tags_are_not():
    fusion = fusion_for()
    k = calm(fusion, 0)
    for k in range(k, k + 6):
        fusion.observe_rules([("rate_of_change", "flow", "rate", "active", T0 + k * S), ("rate_of_change", "flow", "rate", "cleared", T0 + k * S + 1)])
        result = window(fusion, k, p=1e-3, tops=("flow",))
    assert result.drivers["rules"][0]["kind"] == "spike"
    assert result.top_state == "sensor_fault"

    # a limit crossed and back within one step, on one tag alone: a glitch, not the process
    blip = fusion_for()
    k = calm(blip, 0)
    for k in range(k, k + 6):
        blip.observe_rules([("limit", "flow", "high", "active", T0 + k * S - S // 2), ("limit", "flow", "high", "cleared", T0 + k * S - S // 2 + 100_000)])
        result = window(blip, k)
    assert result.drivers["rules"][0]["kind"] == "spike" and result.top_state == "sensor_fault"
    assert result.message.endswith("(flow spiking)")

    several = fusion_for()
    k = calm(several, 0)
    for k in range(k, k + 6):
        several.observe_rules([("rate_of_change", tag, "rate", "active", T0 + k * S) for tag in ("flow", "suction_pressure", "discharge_pressure")])
        result = window(several, k, p=1e-6, tops=PUMP_FAULTS["cavitation"])
    assert {hit["kind"] for hit in result.drivers["rules"]} == {"rate_of_change"}
    assert result.top_state == "cavitation"


# --------------------------------------------------------------------------- dynamics


def test_one_noisy_window_does_not_flip_the_top_state():
    fusion = fusion_for()
    k = calm(fusion, 0)
    # every detector extreme, with a perfect bearing-wear pattern, for one window only
    noisy = window(fusion, k, p=1e-9, tops=PUMP_FAULTS["bearing_wear"])
    assert noisy.top_state == "normal" and noisy.p_any_fault < 0.2
    after = [window(fusion, k + i).p_any_fault for i in range(1, 6)]
    assert max(after) < noisy.p_any_fault and after[-1] < 0.01


def test_it_returns_to_normal_after_the_fault_ends():
    fusion = fusion_for()
    k = calm(fusion, 0)
    for k in range(k, k + 60):
        window(fusion, k, p=1e-6, tops=PUMP_FAULTS["cavitation"])
    assert fusion.probability("cavitation") > 0.99
    states = [window(fusion, k + i) for i in range(1, 21)]
    first_normal = next(i for i, r in enumerate(states, 1) if r.top_state == "normal")
    assert first_normal <= 10
    assert states[-1].p_any_fault < 0.05
    assert states[-1].message.startswith("pump-3: normal (")


def test_the_step_size_matters():
    network = FaultNetwork.for_asset_type("pump")
    one, ten = network.transition(1.0), network.transition(10.0)
    assert np.allclose(np.linalg.matrix_power(one, 10), ten, atol=1e-9)  # exp(Q dt), not a per-step constant
    assert ten[0, 0] < one[0, 0] and np.allclose(one.sum(axis=1), 1.0)
    # a long silence relaxes the belief to where the state settles with no evidence
    assert np.allclose(network.transition(1e6)[3], network.stationary(), atol=1e-6)


def test_stale_scores_are_left_out_and_missing_scores_are_not_read_as_normal():
    fusion = fusion_for()
    k = calm(fusion, 0)
    before = fusion.posterior.copy()
    # a 10 s score whose window ended 25 s (more than 2 lengths) before the step: stale
    end = T0 + k * S
    fusion.observe_scores([score(d, "10s", end - 25 * S, 1e-6, PUMP_FAULTS["bearing_wear"]) for d in DETECTORS])
    stale = fusion.step(end)
    untouched = fusion_for()
    calm(untouched, 0)
    untouched.step(end)
    assert stale.drivers["stale_scores"] == 3
    assert stale.evidence.empty
    assert np.array_equal(fusion.posterior, untouched.posterior)
    assert not np.array_equal(before, fusion.posterior)  # the clock moved on all the same

    # a fresh 10 s score is shown as a driver for 2 window lengths, then no more
    shown = fusion_for()
    k = calm(shown, 0)
    shown.observe_scores([score(d, "10s", T0 + k * S, 1e-3, ("flow",)) for d in DETECTORS])
    assert any(d["scale"] == "10s" for d in shown.step(T0 + k * S).drivers["detectors"])
    assert any(d["scale"] == "10s" for d in shown.step(T0 + (k + 20) * S).drivers["detectors"])
    assert not any(d["scale"] == "10s" for d in shown.step(T0 + (k + 21) * S).drivers["detectors"])

    # scores stop during a fault: belief fades at the recovery rate, slower than under normal scores
    quiet, calmed = fusion_for(), fusion_for()
    for f in (quiet, calmed):
        k = calm(f, 0)
        for k in range(k, k + 10):
            window(f, k, p=1e-6, tops=PUMP_FAULTS["overheating"])
    for i in range(1, 6):
        quiet.step(T0 + (k + i) * S)
        window(calmed, k + i)
    assert quiet.probability("overheating") > 0.9 > calmed.probability("overheating")


def test_a_redelivered_score_counts_once():
    once, twice = fusion_for(), fusion_for()
    for f in (once, twice):
        calm(f, 0)
    messages = [score(d, "1s", T0 + 20 * S, 1e-4, PUMP_FAULTS["seal_leak"]) for d in DETECTORS]
    once.observe_scores(messages)
    twice.observe_scores(messages + messages)
    assert np.array_equal(once.step(T0 + 20 * S).evidence.levels, twice.step(T0 + 20 * S).evidence.levels)
    twice.observe_scores(messages)  # at-least-once delivery, after the step
    twice.step(T0 + 21 * S)
    once.step(T0 + 21 * S)
    assert np.allclose(once.posterior, twice.posterior)


# --------------------------------------------------------------------------- learning


def test_labeled_history_moves_the_posterior_toward_the_labeled_state():
    """This plant's seal leaks show as speed, flow and current (no seal-leak transmitter)."""
    pattern = ("speed", "flow", "motor_current")
    teacher = fusion_for()
    k = calm(teacher, 0)
    records = [(window(teacher, k + i, p=1e-6, tops=pattern).evidence, "seal_leak") for i in range(5)]
    records += [(window(teacher, k + 5 + i).evidence.to_dict(), "normal") for i in range(5)]

    def run(network):
        fusion = fusion_for(network=network)
        k = calm(fusion, 0)
        for k in range(k, k + 6):
            result = window(fusion, k, p=1e-6, tops=pattern)
        return result

    network = FaultNetwork.for_asset_type("pump")
    before = run(network)
    assert before.top_state == "unknown_anomaly"
    assert network.learn_from_labeled(json.loads(json.dumps([{"evidence": StepEvidence.coerce(e).to_dict(), "label": s} for e, s in records * 40]))) == 400
    after = run(network)
    assert after.posterior["seal_leak"] > before.posterior["seal_leak"]
    assert after.top_state == "seal_leak"


def test_operator_feedback_is_bounded_and_logged(caplog):
    fusion = fusion_for()
    k = calm(fusion, 0)
    for k in range(k, k + 5):
        strong = window(fusion, k, p=1e-6, tops=PUMP_FAULTS["bearing_wear"])
    network = fusion.network
    with caplog.at_level(logging.INFO, logger="stream.fusion"):
        changes = [fusion.feedback(strong, "false_alarm", user="night shift") for _ in range(100)]
    lines = [r.getMessage() for r in caplog.records if "feedback 'false_alarm'" in r.getMessage()]
    assert len(lines) == 100
    assert "on pump-3 by night shift -> state normal" in lines[0] and "P(extreme|normal)" in lines[0]
    assert changes[0].added["score_level"] > 0 and not changes[0].capped
    assert changes[-1].capped  # the involvement rows of normal are full: feedback stops there
    # P(role involved | normal) from 0.30 to at most (15 + 10) / (50 + 10): 20 % of its prior strength of 50
    assert network.p_involved[0].max() == pytest.approx(25 / 60)

    # the same strong evidence on a fresh asset still says bearing wear, clearly
    again = fusion_for(network=network)
    k = calm(again, 0)
    for k in range(k, k + 5):
        result = window(again, k, p=1e-6, tops=PUMP_FAULTS["bearing_wear"])
    assert result.top_state == "bearing_wear" and result.top_fault_probability > 0.8

    confirmed = network.feedback(strong, "confirmed:bearing_wear")
    assert confirmed.state == "bearing_wear" and confirmed.added["score_level"] > 0
    with pytest.raises(ValueError, match="bearing_wear, cavitation"):
        network.feedback(strong, "confirmed:bearing_waer")
    assert network.feedback(strong, "unsure").state is None


def test_the_network_stores_what_it_learned():
    network = FaultNetwork.for_asset_type("pump")
    fusion = fusion_for(network=network)
    calm(fusion, 0)
    network.feedback(window(fusion, 20, p=1e-6, tops=("flow",)), "false_alarm")
    restored = FaultNetwork.for_asset_type("pump")
    restored.load_state(json.loads(json.dumps(network.to_state())))
    assert np.allclose(restored.p_level, network.p_level) and np.allclose(restored.p_involved, network.p_involved)


# --------------------------------------------------------------------------- persistence


def test_state_round_trip_gives_identical_next_steps():
    asset = pump()
    network = FaultNetwork.for_asset_type("pump")
    fusion = fusion_for(asset, network=network)
    k = calm(fusion, 0)
    for k in range(k, k + 3):
        window(fusion, k, p=1e-6, tops=PUMP_FAULTS["cavitation"])
    fusion.observe_rules([("limit", "suction_pressure", "low", "active", T0 + k * S)])
    fusion.observe_scores([score(d, "1m", T0 + (k + 1) * S, 1e-3, ("flow",)) for d in DETECTORS])  # pending
    stored = json.dumps(fusion.to_state())
    assert len(stored) < 4000
    restored = AssetFusion.from_state(asset, network, fusion.settings, json.loads(stored))
    for i in range(1, 5):
        a = window(fusion, k + i, p=2e-3, tops=PUMP_FAULTS["cavitation"])
        b = window(restored, k + i, p=2e-3, tops=PUMP_FAULTS["cavitation"])
        assert a.posterior == b.posterior
        assert a.message == b.message and a.drivers == b.drivers


# --------------------------------------------------------------------------- configuration


def test_a_config_cpt_override_takes_effect():
    default = fusion_for()
    settings = FusionSettings.model_validate(
        {"cpt": {"pump": {"involvement": {"overheating": {"winding_temp": 0.02}}, "score_level": {"overheating": {"extreme": 0.05}}}}}
    )
    network = FaultNetwork.for_asset_type("pump", settings)
    i = network.state_index["overheating"]
    assert network.p_involved[i, network_role("winding_temp")] == pytest.approx(0.02)
    # a partial row: the levels not named keep their proportions in what is left
    assert network.p_level[i] == pytest.approx([0.3 / 0.8 * 0.95, 0.2 / 0.8 * 0.95, 0.3 / 0.8 * 0.95, 0.05])
    directed = FaultNetwork.for_asset_type("pump", FusionSettings(cpt={"pump": {"involvement": {"cavitation": {"flow": {"rose": 0.1, "fell": 0.6}}}}}))
    c, flow = directed.state_index["cavitation"], network_role("flow")
    assert (directed.p_rose[c, flow], directed.p_fell[c, flow]) == (pytest.approx(0.1), pytest.approx(0.6))
    overridden = fusion_for(settings=settings, network=network)
    results = []
    for f in (default, overridden):
        k = calm(f, 0)
        for k in range(k, k + 5):
            result = window(f, k, p=1e-6, tops=PUMP_FAULTS["overheating"])
        results.append(result)
    assert results[0].top_state == "overheating"
    assert results[1].top_state != "overheating" and results[1].posterior["overheating"] < 0.2


def network_role(role: str) -> int:
    from stream.fusion.roles import ROLE_INDEX

    return ROLE_INDEX[role]


@pytest.mark.parametrize(
    "cpt, field, says",
    [
        ({"pump": {"involvement": {"bearing_waer": {"vibration": 0.9}}}}, "fusion.cpt.pump.involvement.bearing_waer", "unknown state of a pump"),
        ({"pump": {"involvement": {"bearing_wear": {"vibrations": 0.9}}}}, "fusion.cpt.pump.involvement.bearing_wear.vibrations", "unknown role"),
        ({"pump": {"involvement": {"bearing_wear": {"vibration": 1.5}}}}, "fusion.cpt.pump.involvement.bearing_wear.vibration", "from 0 to 1"),
        ({"pump": {"score_level": {"cavitation": {"anomalous": 0.7, "extreme": 0.6}}}}, "fusion.cpt.pump.score_level.cavitation", "sum to 1.3"),
        ({"fan": {"rule_hit": {"flatline": {"cavitation": {"*": 0.1}}}}}, "fusion.cpt.fan.rule_hit.flatline.cavitation", "unknown state of a fan"),
        ({"pumps": {}}, "fusion.cpt.pumps", "unknown asset type"),
        ({"pump": {"involvement": {"cavitation": {"flow": {"down": 0.5}}}}}, "fusion.cpt.pump.involvement.cavitation.flow.down", "unknown direction"),
        ({"pump": {"involvment": {}}}, "fusion.cpt.pump.involvment", "unknown node"),
    ],
)
def test_a_bad_override_says_which_field_and_why(cpt, field, says):
    with pytest.raises(ValidationError) as error:
        FusionSettings.model_validate({"cpt": cpt})
    text = str(error.value)
    assert f"{field}:" in text and says in text


def test_roles_come_from_tag_names_or_the_config():
    assert [role_from_name(t) for t in ("Pump1.BearingTempDE", "P101_BRG_TMP_DE", "seal_leak_flow", "discharge_temp", "FT101")] == [
        "bearing_temp",
        "bearing_temp",
        "seal_flow",
        "process_temp",
        "flow",
    ]
    # a plant whose motor winding thermometer is called TT_104: by name a process temperature
    # (which no pump fault moves alone), by config the winding temperature
    tags = ("VIB_1", "VIB_1_KURT", "TT_104", "FT_201", "PT_202", "SPEED")
    plain = fusion_for(pump("pump-9", tags))
    named = fusion_for(pump("pump-9", tags), FusionSettings(tag_roles={"pump-9": {"TT_104": "winding_temp"}}))
    for f in (plain, named):
        k = calm(f, 0)
        for k in range(k, k + 5):
            result = window(f, k, p=1e-6, tops=("+TT_104",))
    assert result.top_state == "overheating" and result.top_fault_probability > 0.8
    assert plain.roles["TT_104"] == "process_temp" and plain.probability("overheating") < 0.2
    with pytest.raises(ValidationError, match="tag_roles.pump-9.TT_104"):
        FusionSettings.model_validate({"tag_roles": {"pump-9": {"TT_104": "bearing_temperature"}}})


def test_every_asset_type_names_its_faults():
    for asset_type, tags, tops, fault in [
        ("motor", MOTOR_TAGS, ("+winding_temp",), "overheating"),
        ("motor", MOTOR_TAGS, ("+vibration_rms", "-vibration_kurtosis"), "misalignment_imbalance"),
        ("fan", FAN_TAGS, ("+vibration_kurtosis", "+vibration_rms", "+bearing_temp"), "bearing_wear"),
        ("compressor", COMPRESSOR_TAGS, ("+oil_temp", "+discharge_temp"), "overheating"),
        ("compressor", COMPRESSOR_TAGS, ("+vibration_kurtosis", "+vibration_rms"), "bearing_wear"),
        ("compressor", COMPRESSOR_TAGS, ("+vibration_rms", "-vibration_kurtosis"), "misalignment_imbalance"),
        ("generic", ("load", "temperature", "vibration_rms", "vibration_kurtosis"), ("+temperature",), "overheating"),
    ]:
        asset = AssetConfig(id=f"{asset_type}-1", type=asset_type, tags=[{"id": t} for t in tags])
        fusion = fusion_for(asset)
        k = calm(fusion, 0)
        for k in range(k, k + 5):
            result = window(fusion, k, p=1e-6, tops=tops)
        assert result.top_state == fault, (asset_type, result.posterior)


def test_when_the_evidence_cannot_tell_two_faults_apart_the_message_names_both():
    """A compressor whose vibration rose with its kurtosis not blamed: bearing wear
    (kurtosis up) and misalignment/imbalance (kurtosis down) fit alike."""
    fusion = fusion_for(AssetConfig(id="compressor-1", type="compressor", tags=[{"id": t} for t in COMPRESSOR_TAGS]))
    k = calm(fusion, 0)
    for k in range(k, k + 5):
        result = window(fusion, k, p=1e-6, tops=("+vibration_rms",))
    assert result.p_any_fault > 0.9
    assert " or " in result.message and "bearing wear" in result.message and "misalignment/imbalance" in result.message


def test_alert_messages_are_accepted_as_rule_evidence():
    fusion = fusion_for()
    k = calm(fusion, 0)
    alert = {"rule": "flatline", "tag": {"id": "speed"}, "condition": "flatline", "state": "active", "event_time_us": T0 + k * S}
    fusion.observe_rules([alert])
    result = window(fusion, k)
    assert result.drivers["rules"] == [{"rule": "flatline", "tag": "speed", "condition": "flatline", "kind": "flatline", "role": "speed"}]
    fusion.observe_rules([{**alert, "state": "cleared"}])
    assert window(fusion, k + 1).drivers["rules"] == [{"rule": "flatline", "tag": "speed", "condition": "flatline", "kind": "flatline", "role": "speed"}]
    assert window(fusion, k + 2).drivers["rules"] == []  # cleared: counted in the step it cleared in, not after
