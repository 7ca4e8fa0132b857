"""The secured set-up an integrator follows, with the commands the README gives:
`edgewatch opcua certificate`, then `edgewatch opcua trust` against a running
server (here `edgewatch simulate` offering Basic256Sha256 / SignAndEncrypt), then
the connector reads the server over the encrypted channel."""

from __future__ import annotations

import asyncio
import socket
import time

import yaml
from typer.testing import CliRunner

from connectors.base import CollectingSink
from edgewatch.cli import app
from edgewatch.localkafka import free_port
from edgewatch.processes import Child, edgewatch_command
from stream.config import load_config
from tests.opcua_helpers import Running

runner = CliRunner()


def write_plant(tmp_path, port: int):
    doc = {
        "connections": {
            "opcua": [
                {
                    "id": "plc-7",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}/edgewatch/",
                    "security": {
                        "policy": "Basic256Sha256",
                        "mode": "SignAndEncrypt",
                        "certificate": str(tmp_path / "pki" / "own" / "cert.der"),
                        "private_key": str(tmp_path / "pki" / "own" / "key.pem"),
                        "trust_dir": str(tmp_path / "pki" / "trusted"),
                    },
                    "reconnect_max_delay_s": 2,
                }
            ]
        },
        "simulator": {"pki_dir": str(tmp_path / "sim-pki"), "ground_truth_file": str(tmp_path / "truth.jsonl")},
        "assets": [
            {
                "id": "pump-7",
                "type": "pump",
                "tags": [
                    {"id": "flow", "source": {"opcua": "plc-7", "node_id": "ns=2;s=pump-7.flow"}},
                    {"id": "speed", "source": {"opcua": "plc-7", "node_id": "ns=2;s=pump-7.speed"}},
                ],
            }
        ],
    }
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def wait_for_port(port: int, child: Child, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert child.alive(), child.log_tail()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on {port}:\n{child.log_tail()}")


def test_certificate_then_trust_then_an_encrypted_session(tmp_path):
    port = free_port()
    plant = write_plant(tmp_path, port)
    config = load_config(plant, environ={})

    made = runner.invoke(app, ["opcua", "certificate", "--config", str(plant), "--connection", "plc-7"])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "pki" / "own" / "cert.der").stat().st_size > 500 and "thumbprint sha1" in made.output
    again = runner.invoke(app, ["opcua", "certificate", "--config", str(plant), "--connection", "plc-7"])
    assert again.exit_code == 2 and "--force" in again.output
    unknown = runner.invoke(app, ["opcua", "trust", "--config", str(plant), "--connection", "plc-9"])
    assert unknown.exit_code == 2 and "plc-7" in unknown.output

    simulator = Child(edgewatch_command("simulate", "--config", str(plant)), log_path=tmp_path / "simulate.log")
    try:
        wait_for_port(port, simulator)

        async def read(seconds: float) -> CollectingSink:
            running = Running(config.connections.opcua[0], config.sources("plc-7"), config_path=str(plant))
            await asyncio.sleep(seconds)
            await running.stop()
            return running.sink

        # not trusted yet: refused, no value read
        refused = asyncio.run(read(3))
        assert not [s for s in refused.samples if s.quality == 0]

        trusted = runner.invoke(app, ["opcua", "trust", "--config", str(plant), "--connection", "plc-7"])
        assert trusted.exit_code == 0, trusted.output
        assert list((tmp_path / "pki" / "trusted").iterdir()), "nothing was written to the trust folder"

        sink = asyncio.run(read(4))
        good = [s for s in sink.samples if s.quality == 0 and s.tag_id == "flow"]
        assert len(good) >= 10, f"{len(good)} good flow samples over the encrypted session"
        assert all(60 < s.value < 130 for s in good), "the simulated pump's flow is out of its range"
    finally:
        simulator.stop()
