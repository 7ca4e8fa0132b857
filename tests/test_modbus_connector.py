"""The Modbus connector against real in-process pymodbus servers: coalescing, poll
groups, devices going offline and coming back, gateways, refused reads; plus the
request plan, the fixed-rate schedule, sample.yaml and a benchmark smoke run."""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import asynccontextmanager

import pytest

from connectors.base import BAD_COMMUNICATION_ERROR, BAD_NO_COMMUNICATION, GOOD, CollectingSink
from connectors.modbus.client import BAD_CONFIGURATION_ERROR, FixedRateSchedule, ModbusConnector
from connectors.modbus.plan import MAX_BITS_PER_READ, plan_reads
from connectors.modbus.simserver import SimModbusServer
from edgewatch.localkafka import REPO, free_port
from stream.config import ServiceConfig, load_config, parse_config

pytestmark = pytest.mark.timeout(60)

FAST = {"timeout_s": 0.1, "retries": 1, "poll_interval_s": 0.1, "reconnect_max_delay_s": 0.2}


def make_config(connections: list[dict], assets: list[dict]) -> ServiceConfig:
    for connection in connections:
        connection.setdefault("host", "127.0.0.1")
        connection.setdefault("port", free_port())
        for key, value in FAST.items():
            connection.setdefault(key, value)
    return parse_config({"connections": {"modbus": connections}, "assets": assets}, "test-modbus.yaml", environ={})


def tags(connection: str, addresses, **source) -> list[dict]:
    return [{"id": f"t{a}", "source": {"modbus": connection, "address": a, **source}} for a in addresses]


def one_device(addresses=range(10), **connection) -> tuple[ServiceConfig, object]:
    config = make_config([{"id": "dev", **connection}], [{"id": "pump-1", "tags": tags("dev", addresses)}])
    return config, config.connections.modbus[0]


@asynccontextmanager
async def running(connector: ModbusConnector):
    task = asyncio.create_task(connector.run())
    try:
        yield task
    finally:
        assert not task.done(), f"the connector stopped by itself: {task.exception()!r}"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def good(sink: CollectingSink, asset: str, tag: str):
    return [s for s in sink.of(asset, tag) if s.quality == GOOD]


# --- the plan ---------------------------------------------------------------


def test_plan_coalesces_contiguous_and_near_addresses():
    config, connection = one_device(addresses=range(10))
    requests = plan_reads(connection, config.sources("dev"))
    assert [(r.address, r.count) for r in requests] == [(0, 10)]
    assert [s.offset for s in requests[0].slots] == list(range(10))

    near, connection = one_device(addresses=[0, 9, 19], max_read_gap=8)  # gaps of 8 and 9 registers
    assert [(r.address, r.count) for r in plan_reads(connection, near.sources("dev"))] == [(0, 10), (19, 1)]
    none, connection = one_device(addresses=[0, 2], max_read_gap=0)
    assert len(plan_reads(connection, none.sources("dev"))) == 2


def test_plan_respects_the_request_size_and_keeps_values_whole():
    config = make_config(
        [{"id": "dev", "max_registers_per_read": 10}],
        [{"id": "a", "tags": tags("dev", range(9)) + [{"id": "f", "source": {"modbus": "dev", "address": 9, "type": "float32"}}]}],
    )
    requests = plan_reads(config.connections.modbus[0], config.sources("dev"))
    # the float32 at 9..10 does not fit the first request of 10 registers: it starts the next one
    assert [(r.address, r.count) for r in requests] == [(0, 9), (9, 2)]


def test_plan_separates_units_tables_and_poll_intervals():
    config = make_config(
        [{"id": "gw", "poll_groups": {"fast": 0.05}}],
        [
            {
                "id": "a",
                "tags": [
                    {"id": "u1", "source": {"modbus": "gw", "unit_id": 1, "address": 0}},
                    {"id": "u2", "source": {"modbus": "gw", "unit_id": 2, "address": 1}},
                    {"id": "in", "source": {"modbus": "gw", "unit_id": 1, "table": "input", "address": 1}},
                    {"id": "fast", "source": {"modbus": "gw", "unit_id": 1, "address": 1, "poll_group": "fast"}},
                    {"id": "flag", "source": {"modbus": "gw", "unit_id": 1, "address": 0, "type": "bool", "bit": 3}},
                ],
            }
        ],
    )
    requests = plan_reads(config.connections.modbus[0], config.sources("gw"))
    summary = sorted((r.interval_s, r.unit_id, r.table, r.address, r.count, tuple(s.tag_id for s in r.slots)) for r in requests)
    assert summary == [
        (0.05, 1, "holding", 1, 1, ("fast",)),
        (0.1, 1, "holding", 0, 1, ("u1", "flag")),  # a bit field shares its register's read
        (0.1, 1, "input", 1, 1, ("in",)),
        (0.1, 2, "holding", 1, 1, ("u2",)),
    ]


def test_plan_reads_up_to_2000_coils_per_request():
    config = make_config(
        [{"id": "io"}],
        [{"id": "a", "tags": [{"id": f"c{i}", "source": {"modbus": "io", "table": "coil", "address": i, "type": "bool"}} for i in range(2001)]}],
    )
    requests = plan_reads(config.connections.modbus[0], config.sources("io"))
    assert [(r.address, r.count) for r in requests] == [(0, MAX_BITS_PER_READ), (2000, 1)]


def test_plan_refuses_a_value_wider_than_a_request():
    config = make_config(
        [{"id": "dev", "max_registers_per_read": 2}],
        [{"id": "a", "tags": [{"id": "hours", "source": {"modbus": "dev", "address": 0, "type": "int64"}}]}],
    )
    with pytest.raises(ValueError, match="raise max_registers_per_read"):
        plan_reads(config.connections.modbus[0], config.sources("dev"))


def test_fixed_rate_schedule_skips_missed_ticks_instead_of_drifting():
    schedule = FixedRateSchedule(1.0, start=100.0)
    assert schedule.delay(99.5) == 0.5
    schedule.done(100.2)  # a quick poll: the next tick stays on the grid
    assert schedule.next_at == 101.0 and schedule.skipped == 0
    schedule.done(103.5)  # the poll of 101.0 ran until 103.5: ticks 102 and 103 are skipped
    assert schedule.next_at == 104.0 and schedule.skipped == 2 and schedule.overruns == 1
    assert schedule.delay(103.5) == 0.5


# --- against a real server --------------------------------------------------


@pytest.mark.asyncio
async def test_coalescing_on_the_wire():
    config, connection = one_device(addresses=range(10))
    async with SimModbusServer(connection, config.sources("dev")) as server:
        await ModbusConnector(connection, config.sources("dev"), CollectingSink()).read_once()
        assert server.requests == {1: 1}  # 10 contiguous tags: one request

    config, connection = one_device(addresses=[*range(10), 100])
    async with SimModbusServer(connection, config.sources("dev")) as server:
        sink = CollectingSink()
        await ModbusConnector(connection, config.sources("dev"), sink).read_once()
        assert server.requests == {1: 2}  # a gap of 90 registers: two requests
        assert len(sink.samples) == 11 and all(s.quality == GOOD for s in sink.samples)


@pytest.mark.asyncio
async def test_simulator_values_arrive_as_set():
    """SimModbusServer.set encodes as the connector decodes, bit fields sharing a register included."""
    config = make_config(
        [{"id": "dev", "byte_order": "CDAB"}],
        [
            {
                "id": "m",
                "tags": [
                    {"id": "temp", "source": {"modbus": "dev", "address": 0, "type": "int16", "scale": 0.1, "offset": -20}},
                    {"id": "flow", "source": {"modbus": "dev", "address": 1, "type": "float32", "byte_order": "DCBA"}},
                    {"id": "energy", "source": {"modbus": "dev", "address": 3, "type": "float64"}},
                    {"id": "hours", "source": {"modbus": "dev", "address": 7, "type": "uint32", "scale": 0.5}},
                    {"id": "running", "source": {"modbus": "dev", "address": 9, "type": "bool", "bit": 0}},
                    {"id": "mode", "source": {"modbus": "dev", "address": 9, "type": "uint16", "bit": 4, "bits": 3}},
                    {"id": "trip", "source": {"modbus": "dev", "address": 9, "type": "bool", "bit": 15}},
                    {"id": "valve", "source": {"modbus": "dev", "table": "coil", "address": 3, "type": "bool"}},
                ],
            }
        ],
    )
    connection = config.connections.modbus[0]
    values = {"temp": 52.3, "flow": 101.25, "energy": 123456.789, "hours": 8760.5, "running": 1, "mode": 5, "trip": 1, "valve": 1}
    async with SimModbusServer(connection, config.sources("dev")) as server:
        for tag, value in values.items():
            server.set("m", tag, value)
        server.set("m", "running", 0)  # clears bit 0 only
        assert server.registers(1, "holding", 9) == [0x8050]
        sink = CollectingSink()
        await ModbusConnector(connection, config.sources("dev"), sink).read_once()
    read = {s.tag_id: s.value for s in sink.samples}
    assert read == pytest.approx({**values, "running": 0})


@pytest.mark.asyncio
async def test_poll_groups_run_at_their_own_rates():
    config = make_config(
        [{"id": "dev", "poll_interval_s": 0.3, "poll_groups": {"fast": 0.05}}],
        [
            {
                "id": "fan-1",
                "tags": [
                    {"id": "vibration", "source": {"modbus": "dev", "address": 0, "poll_group": "fast"}},
                    {"id": "temp", "source": {"modbus": "dev", "address": 1}},
                ],
            }
        ],
    )
    connection = config.connections.modbus[0]
    sink = CollectingSink()
    connector = ModbusConnector(connection, config.sources("dev"), sink)
    async with SimModbusServer(connection, config.sources("dev")):
        async with running(connector):
            await asyncio.sleep(1.2)
    fast, slow = len(good(sink, "fan-1", "vibration")), len(good(sink, "fan-1", "temp"))
    assert 3 <= slow <= 6, slow  # ticks at 0, 0.3, 0.6, 0.9 (1.2)
    assert fast >= 3 * slow, (fast, slow)  # 6x the rate; loose for a busy machine


@pytest.mark.asyncio
async def test_device_offline_gives_bad_nan_samples_one_event_each_way_and_recovers():
    config, connection = one_device(addresses=range(3))
    sources = config.sources("dev")
    sink = CollectingSink()
    connector = ModbusConnector(connection, sources, sink)
    [health] = connector.healths
    assert health.device == "dev"
    async with SimModbusServer(connection, sources) as server:
        server.set("pump-1", "t0", 42)
        async with running(connector):
            await wait_until(lambda: good(sink, "pump-1", "t0"), what="first good sample")
            assert health.connected

            server.set_online(False)
            await wait_until(lambda: "comm_lost" in sink.event_names(), what="comm_lost")
            lost_at = len(sink.samples)
            await asyncio.sleep(0.6)  # several polls while offline
            offline = sink.samples[lost_at:]
            assert len(offline) >= 3 * 3
            assert all(math.isnan(s.value) and s.quality == BAD_COMMUNICATION_ERROR for s in offline)
            assert not health.connected
            assert health.reads_failed >= 1 and health.last_error

            server.set("pump-1", "t0", 7)
            server.set_online(True)
            await wait_until(lambda: "comm_restored" in sink.event_names(), what="comm_restored")
            await wait_until(lambda: sink.latest("pump-1", "t0").quality == GOOD, what="a good sample after recovery")
            assert sink.latest("pump-1", "t0").value == 7
            assert health.connected and health.reconnects == 1
            await asyncio.sleep(0.3)
    assert sink.event_names() == ["comm_lost", "comm_restored"]
    lost, restored = sink.events
    assert lost.connector == "modbus" and lost.device == "dev" and lost.assets == ("pump-1",)
    assert "no answer" in lost.detail
    assert restored.ts_us > lost.ts_us


@pytest.mark.asyncio
async def test_one_unit_of_a_gateway_offline_while_the_other_delivers():
    config = make_config(
        [{"id": "gw", "framer": "rtu"}],
        [
            {"id": "fan-1", "tags": [{"id": "speed", "source": {"modbus": "gw", "unit_id": 1, "address": 0}}]},
            {"id": "fan-2", "tags": [{"id": "speed", "source": {"modbus": "gw", "unit_id": 2, "address": 0}}]},
        ],
    )
    connection = config.connections.modbus[0]
    sources = config.sources("gw")
    sink = CollectingSink()
    connector = ModbusConnector(connection, sources, sink)
    unit1, unit2 = connector.healths
    assert (unit1.device, unit2.device) == ("gw/1", "gw/2")
    async with SimModbusServer(connection, sources) as server:
        server.set("fan-1", "speed", 1450)
        server.set("fan-2", "speed", 1490)
        async with running(connector):
            await wait_until(lambda: good(sink, "fan-2", "speed"), what="unit 2 answers")
            server.set_online(False, unit_id=2)
            await wait_until(lambda: "comm_lost" in sink.event_names(), what="comm_lost of unit 2")
            before = len(good(sink, "fan-1", "speed"))
            await asyncio.sleep(0.8)
            assert len(good(sink, "fan-1", "speed")) - before >= 4  # unit 1 keeps its pace
            assert sink.latest("fan-2", "speed").quality == BAD_COMMUNICATION_ERROR
            assert unit1.connected and not unit2.connected
            server.set_online(True, unit_id=2)
            await wait_until(lambda: "comm_restored" in sink.event_names(), what="comm_restored of unit 2")
            await wait_until(lambda: sink.latest("fan-2", "speed").quality == GOOD, what="unit 2 good again")
    assert [(e.event, e.device, e.assets) for e in sink.events] == [("comm_lost", "gw/2", ("fan-2",)), ("comm_restored", "gw/2", ("fan-2",))]
    assert sink.latest("fan-2", "speed").value == 1490


@pytest.mark.asyncio
async def test_connection_refused_at_start_then_the_device_comes_up():
    config, connection = one_device(addresses=[0, 1])
    sources = config.sources("dev")
    sink = CollectingSink()
    connector = ModbusConnector(connection, sources, sink)
    server = SimModbusServer(connection, sources)
    async with running(connector):
        await wait_until(lambda: len(sink.samples) >= 4, what="samples while refused")
        assert all(math.isnan(s.value) and s.quality == BAD_NO_COMMUNICATION for s in sink.samples)
        assert sink.event_names() == ["comm_lost"]
        assert not connector.healths[0].connected
        assert "cannot open a TCP connection" in connector.healths[0].last_error
        server.set("pump-1", "t1", 3)
        await server.start()
        try:
            await wait_until(lambda: good(sink, "pump-1", "t1"), what="data after the server started")
            assert good(sink, "pump-1", "t1")[-1].value == 3
            # the port closes (device switched off), then opens again
            await server.stop()
            await wait_until(lambda: sink.event_names().count("comm_lost") == 2, what="second comm_lost")
            await wait_until(lambda: sink.latest("pump-1", "t1").quality == BAD_COMMUNICATION_ERROR, what="Bad after the drop")
            await server.start()
            await wait_until(lambda: sink.event_names().count("comm_restored") == 2, what="second comm_restored")
        finally:
            await server.stop()
    assert sink.event_names() == ["comm_lost", "comm_restored", "comm_lost", "comm_restored"]


@pytest.mark.asyncio
async def test_a_refused_address_marks_only_its_tag_and_is_logged_once(caplog):
    config, connection = one_device(addresses=range(5))
    sources = config.sources("dev")
    sink = CollectingSink()
    connector = ModbusConnector(connection, sources, sink)
    async with SimModbusServer(connection, sources) as server:
        for i in range(5):
            server.set("pump-1", f"t{i}", 10 + i)
        server.refuse_addresses(1, "holding", [2])
        with caplog.at_level(logging.INFO, logger="connectors.modbus.client"):
            async with running(connector):
                await wait_until(lambda: len(sink.of("pump-1", "t2")) >= 4, what="several polls")
    bad = sink.of("pump-1", "t2")
    assert all(math.isnan(s.value) and s.quality == BAD_CONFIGURATION_ERROR for s in bad)
    for i in (0, 1, 3, 4):
        assert sink.latest("pump-1", f"t{i}").value == 10 + i and sink.latest("pump-1", f"t{i}").quality == GOOD
    assert sink.event_names() == []  # the device answers: no communication loss
    health = connector.healths[0]
    assert health.connected and health.extra["exception_responses"] >= 3
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and "illegal data address" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert "holding address 2" in refusals[0].getMessage() and "pump-1/t2" in refusals[0].getMessage()


# --- sample.yaml and the benchmark ------------------------------------------


def test_sample_yaml_is_a_valid_config_naming_its_connections():
    config = load_config(REPO / "connectors" / "modbus" / "sample.yaml", environ={})
    connections = {c.id: c for c in config.connections.modbus}
    assert list(connections) == ["pump-drive", "line-gateway"]
    assert connections["line-gateway"].framer == "rtu"
    names = []
    for connection in connections.values():
        sources = config.sources(connection.id)
        assert sources and plan_reads(connection, sources)
        names += [h.device for h in ModbusConnector(connection, sources, CollectingSink()).healths]
    assert names == ["pump-drive", "line-gateway/1", "line-gateway/2"]
    used = [t.source for a in config.assets for t in a.tags if t.source is not None]
    assert {s.table for s in used} == {"holding", "input", "coil", "discrete"}
    assert {s.type for s in used} >= {"float32", "float64", "int16", "uint16", "uint32", "int64", "bool"}
    assert {s.byte_order for s in used if s.byte_order} >= {"CDAB", "DCBA", "BADC"}
    assert any(s.bit is not None for s in used) and any(s.poll_group for s in used)
    assert any(s.scale != 1 for s in used) and any(s.offset != 0 for s in used)


@pytest.mark.asyncio
async def test_bench_smoke():
    from connectors.modbus.bench import bench_modbus

    figures = await bench_modbus(devices=3, registers=20, seconds=1.0, interval_s=0.25)
    assert figures["servers"].startswith("child process")
    assert figures["expected_samples"] > 0
    assert figures["received_samples"] >= 0.75 * figures["expected_samples"]
    assert figures["bad_samples"] == 0 and figures["comm_events"] == 0
    assert figures["poll_latency_p99_ms"] > 0
