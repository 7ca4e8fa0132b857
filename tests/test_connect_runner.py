"""`edgewatch connect` as one process: a device that is down does not stop the
others, everything read lands in the spool while Kafka is unreachable, and the
health file says which device is up."""

from __future__ import annotations

import asyncio

import orjson

from connectors.modbus.simserver import SimModbusServer
from connectors.runner import ConnectorService
from connectors.spool import Spool
from edgewatch.localkafka import free_port
from stream.config import parse_config
from stream.wire import decode_reading_batch


def plant(tmp_path, opcua_port: int, modbus_port: int):
    return parse_config(
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},  # nothing listens: the spool keeps everything
            "connections": {
                "opcua": [{"id": "plc-1", "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}", "reconnect_max_delay_s": 1}],
                "modbus": [{"id": "gw-1", "host": "127.0.0.1", "port": modbus_port, "poll_interval_s": 0.2, "timeout_s": 0.5}],
            },
            "connect": {
                "spool_dir": str(tmp_path / "spool"),
                "health_file": str(tmp_path / "health.json"),
                "health_interval_s": 0.5,
                "batch_interval_s": 0.2,
            },
            "assets": [
                {"id": "pump-1", "tags": [{"id": "flow", "source": {"opcua": "plc-1", "node_id": "ns=2;s=pump-1.flow"}}]},
                {"id": "fan-1", "tags": [{"id": "speed", "source": {"modbus": "gw-1", "address": 0, "type": "float32"}}]},
            ],
        },
        "test-plant.yaml",
        environ={},
    )


def test_a_device_that_is_down_does_not_stop_the_others(tmp_path):
    config = plant(tmp_path, opcua_port=free_port(), modbus_port=free_port())  # no OPC UA server at all

    async def run() -> dict:
        server = SimModbusServer(config.connections.modbus[0], config.sources("gw-1"))
        await server.start()
        server.set("fan-1", "speed", 1450.0)
        service = ConnectorService(config, "test-plant.yaml")
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await asyncio.sleep(4)
        stop.set()
        await task
        await server.stop()
        return orjson.loads((tmp_path / "health.json").read_bytes())

    health = asyncio.run(run())
    devices = {d["device"]: d for d in health["devices"]}
    assert devices["gw-1"]["connected"] and devices["gw-1"]["samples"] >= 10
    assert not devices["plc-1"]["connected"] and devices["plc-1"]["last_error"]
    assert health["spool"]["pending_records"] > 0, "what was read while Kafka is unreachable must wait in the spool"

    with Spool(tmp_path / "spool") as spool:
        records = spool.read(spool.first_unacked, max_records=10_000)
    readings = [decode_reading_batch(r.value) for r in records if r.topic == config.kafka.topics.readings]
    events = [orjson.loads(r.value) for r in records if r.topic == config.kafka.topics.events]
    fan = [b for b in readings if b.asset_id == "fan-1"]
    assert fan and all(float(v) == 1450.0 for b in fan for v in b.value)
    pump = [b for b in readings if b.asset_id == "pump-1"]
    assert pump and all(int(q) & 0x8000_0000 for b in pump for q in b.quality), "the unreachable server's tag must be Bad, not a value"
    assert [(e["event"], e["device"]) for e in events] == [("comm_lost", "plc-1")]
    assert [b.seq for b in readings] == sorted(b.seq for b in readings) and len({b.seq for b in readings}) == len(readings)
