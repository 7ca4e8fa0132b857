"""The command line: every command explains itself, and user mistakes get a
message and exit code 2, never a traceback."""

import pytest
from typer.testing import CliRunner

from edgewatch.cli import app

runner = CliRunner()

COMMANDS = [
    [],
    ["worker"],
    ["simulate"],
    ["connect"],
    ["opcua"],
    ["opcua", "certificate"],
    ["opcua", "trust"],
    ["demo"],
    ["bench"],
    ["bench-connectors"],
    ["kafka"],
    ["kafka", "fetch"],
    ["kafka", "start"],
    ["kafka", "stop"],
    ["kafka", "status"],
    ["topics"],
    ["topics", "create"],
    ["config"],
    ["config", "check"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgewatch")
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_invalid_config_is_reported_without_traceback(tmp_path):
    path = tmp_path / "plant.yaml"
    path.write_text("assets:\n  - id: pump-3\n    tags:\n      - {id: bearing_temp, limits: {low: 9, high: 1}}\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert 'configuration invalid for device "pump-3" tag "bearing_temp": field limits:' in result.output
    assert str(path) in result.output
    assert "Traceback" not in result.output


def test_worker_refuses_a_missing_config(tmp_path):
    result = runner.invoke(app, ["worker", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_bad_fault_schedule_is_explained():
    result = runner.invoke(app, ["simulate", "--fault", "pump-1-bearing", "--duration", "0"])
    assert result.exit_code == 2
    assert "ASSET:KIND@START_S" in result.output and "cavitation" in result.output


def test_fault_that_does_not_fit_the_asset_is_explained():
    result = runner.invoke(app, ["simulate", "--fault", "fan-1:cavitation@10", "--duration", "0"])
    assert result.exit_code == 2
    assert "fan-1" in result.output and "cavitation" in result.output


def test_sample_config_checks_clean():
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0 and "valid; 3 assets, 27 tags" in result.output


def test_connect_names_the_device_and_field_of_a_bad_source(tmp_path):
    path = tmp_path / "plant.yaml"
    path.write_text(
        "connections:\n  modbus: [{id: gw-1, host: 127.0.0.1}]\n"
        "assets:\n  - id: pump-3\n    tags:\n      - {id: bearing_temp, source: {modbus: gw-1, address: 7, type: real}}\n"
    )
    result = runner.invoke(app, ["connect", "--config", str(path)])
    assert result.exit_code == 2
    assert 'configuration invalid for device "pump-3" tag "bearing_temp": field source.type' in result.output


def test_connect_refuses_a_plant_without_sources(tmp_path):
    path = tmp_path / "plant.yaml"
    path.write_text("assets:\n  - id: pump-3\n    tags:\n      - {id: bearing_temp}\n")
    result = runner.invoke(app, ["connect", "--config", str(path)])
    assert result.exit_code == 2
    assert "no tag in" in result.output and "has a source" in result.output
