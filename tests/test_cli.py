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
    ["demo"],
    ["bench"],
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
    assert "ASSET:TAG@START_S" in result.output


def test_sample_config_checks_clean():
    result = runner.invoke(app, ["config", "check"])
    assert result.exit_code == 0 and "valid; 3 assets, 13 tags" in result.output


def test_simulate_fails_loudly_when_nothing_reaches_kafka(tmp_path):
    from edgewatch.localkafka import free_port

    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = runner.invoke(app, ["simulate", "--duration", "1"], env={"EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": closed})
    assert result.exit_code == 1
    assert f"not every batch reached Kafka at {closed}" in result.output
