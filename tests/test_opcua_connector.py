"""The OPC UA connector against a real OPC UA server (the simulator, asyncua) over real sockets.

One server and one connector are shared by the tests that only write values
and read what arrives (values, addresses, missing nodes, deadband, non-numeric
values, server-side overflow); the tests that break the connection (server
restart, network cut through a TCP proxy, first connection failing) and the
buffer-overflow tests start their own.
"""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
import pytest_asyncio
from asyncua import ua

from connectors.base import BAD_COMMUNICATION_ERROR, BAD_DECODING_ERROR, BAD_NO_COMMUNICATION, CollectingSink, now_us
from connectors.opcua.client import NotificationBuffer
from connectors.opcua.simserver import SimOpcUaServer
from tests.opcua_helpers import Running, wait_for
from edgewatch.localkafka import free_port
from stream.config import parse_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

UNCERTAIN_LAST_USABLE = 0x4090_0000
BAD_SENSOR_FAILURE = 0x808B_0000
BAD_NODE_ID_UNKNOWN = 0x8034_0000
BAD_NO_MATCH = 0x806F_0000
GOOD_WITH_OVERFLOW_BIT = 0x0000_0480  # InfoType DataValue + Overflow (Part 4, 7.39)


def plant(port: int, extra_assets: list | None = None, **connection) -> tuple:
    """A config with one OPC UA connection; returns (config, connection)."""
    doc = {
        "connections": {
            "opcua": [
                {
                    "id": "plc-1",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}",
                    "publishing_interval_ms": 50,
                    "timeout_s": 2,
                    "reconnect_initial_delay_s": 0.2,
                    "reconnect_max_delay_s": 1.0,
                    **connection,
                }
            ]
        },
        "assets": [
            {
                "id": "pump-1",
                "tags": [
                    {"id": "flow", "source": {"opcua": "plc-1", "node_id": "ns=2;s=Pump1.Flow"}},
                    {"id": "bearing_temp", "normal_range": [45, 60], "source": {"opcua": "plc-1", "browse_path": "2:Plant/2:Pump1/2:BearingTemp"}},
                    {"id": "vibration", "source": {"opcua": "plc-1", "node_id": "ns=2;i=1001", "deadband": 0.5}},
                ],
            },
            {"id": "fan-1", "tags": [{"id": "speed", "source": {"opcua": "plc-1", "node_id": "ns=3;s=Fan1.Speed"}}]},
            *(extra_assets or []),
        ],
    }
    config = parse_config(doc, "test-opcua.yaml", environ={})
    return config, config.connections.opcua[0]




def values_since(sink: CollectingSink, asset: str, tag: str, since_us: int) -> list:
    return [s for s in sink.of(asset, tag) if s.ts_us >= since_us]




class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class TcpProxy:
    """Forwards TCP connections to a target port; ``cut()`` drops them all and refuses new ones until ``allow()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self.port = 0
        self._links: set[tuple] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.refusing = True
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()

    def allow(self) -> None:
        self.refusing = False

    async def _accept(self, reader, writer) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)

        async def pump(source, sink) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._links.discard(link)


# --- one server, one connector: data path ------------------------------------------------


GHOSTS = [
    {
        "id": "ghost-1",
        "tags": [
            {"id": "missing_node", "source": {"opcua": "plc-1", "node_id": "ns=2;s=NoSuchNode"}},
            {"id": "missing_path", "source": {"opcua": "plc-1", "browse_path": "2:Plant/2:NoSuchPump/2:Flow"}},
        ],
    },
    {"id": "mixer-1", "tags": [{"id": "mode", "source": {"opcua": "plc-1", "node_id": "ns=2;s=Mixer1.Mode"}}]},
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared():
    """The simulated server (with a String node the config reads as a tag) and one connector."""
    config, connection = plant(free_port())
    server = SimOpcUaServer(connection, config.sources("plc-1"))
    await server.start()
    await server.server.nodes.objects.add_variable(ua.NodeId("Mixer1.Mode", 2), ua.QualifiedName("Mixer1.Mode", 2), "auto")
    full, _ = plant(0, extra_assets=GHOSTS)
    recorder = LogRecorder()
    logging.getLogger("connectors.opcua").addHandler(recorder)
    running = Running(connection, full.sources("plc-1"))
    await wait_for(lambda: running.connector.health.extra["monitored_items"] == 5, what="the monitored items")
    yield server, running, recorder
    await running.stop()
    logging.getLogger("connectors.opcua").removeHandler(recorder)
    await server.stop()


async def test_values_arrive_with_source_timestamps_and_status_codes(shared):
    server, running, _ = shared
    t0 = now_us() - 5_000_000  # source timestamps in the past: the connector must keep them
    await server.write_many(
        [
            ("pump-1", "flow", 101.5, t0, 0),
            ("pump-1", "bearing_temp", 52.25, t0 + 1000, UNCERTAIN_LAST_USABLE),
            ("fan-1", "speed", 1450.0, t0 + 2000, BAD_SENSOR_FAILURE),
        ]
    )
    sink = running.sink

    def stamped(asset, tag, ts):
        return [s for s in sink.of(asset, tag) if s.ts_us == ts]

    await wait_for(lambda: stamped("pump-1", "flow", t0) and stamped("pump-1", "bearing_temp", t0 + 1000) and stamped("fan-1", "speed", t0 + 2000), what="three values")
    (flow,), (temp,), (speed,) = stamped("pump-1", "flow", t0), stamped("pump-1", "bearing_temp", t0 + 1000), stamped("fan-1", "speed", t0 + 2000)
    assert (flow.value, flow.quality) == (101.5, 0)
    assert (temp.value, temp.quality) == (52.25, UNCERTAIN_LAST_USABLE)
    # a Bad value is null on the wire (the server must drop it): NaN with the server's code
    assert math.isnan(speed.value) and speed.quality == BAD_SENSOR_FAILURE


async def test_node_id_and_browse_path_both_reach_their_nodes(shared):
    server, running, _ = shared
    ts = now_us()
    await server.write_many([("pump-1", "bearing_temp", 47.0, ts, 0), ("fan-1", "speed", 1480.0, ts, 0), ("pump-1", "flow", 99.0, ts, 0)])
    await wait_for(lambda: len([s for s in running.sink.samples if s.ts_us == ts]) == 3, what="the three values")
    got = {(s.asset_id, s.tag_id): s.value for s in running.sink.samples if s.ts_us == ts}
    assert got == {("pump-1", "bearing_temp"): 47.0, ("fan-1", "speed"): 1480.0, ("pump-1", "flow"): 99.0}
    # browse path 2:Plant/2:Pump1/2:BearingTemp resolved to the simulator's node
    assert running.connector._by_handle[2].node_id == server.node_id("pump-1", "bearing_temp")


async def test_missing_nodes_are_reported_once_and_marked_bad(shared):
    _, running, recorder = shared
    health = running.connector.health.to_dict()
    assert health["monitored_items"] == 5 and health["bad_tags"] == 2 and health["connected"]
    node = running.sink.of("ghost-1", "missing_node")
    path = running.sink.of("ghost-1", "missing_path")
    assert len(node) == 1 and math.isnan(node[0].value) and node[0].quality == BAD_NODE_ID_UNKNOWN
    assert len(path) == 1 and math.isnan(path[0].value) and path[0].quality == BAD_NO_MATCH
    logged = [m for m in recorder.messages if "ghost-1" in m]
    assert len(logged) == 2
    assert any("missing_node" in m and "ns=2;s=NoSuchNode" in m and "BadNodeIdUnknown" in m for m in logged)
    assert any("missing_path" in m and "2:Plant/2:NoSuchPump/2:Flow" in m and "BadNoMatch" in m for m in logged)


async def test_deadband_suppresses_small_changes(shared):
    server, running, _ = shared
    t0 = now_us()
    for i, value in enumerate([10.0, 10.2, 10.4, 11.0, 11.3]):  # deadband 0.5 (absolute)
        await server.write("pump-1", "vibration", value, t0 + i)
    await wait_for(lambda: any(s.value == 11.0 for s in values_since(running.sink, "pump-1", "vibration", t0)), what="11.0")
    await asyncio.sleep(0.3)
    assert [s.value for s in values_since(running.sink, "pump-1", "vibration", t0)] == [10.0, 11.0]


async def test_non_numeric_value_is_nan_bad_and_logged_once(shared):
    server, running, recorder = shared
    mode = running.sink.of("mixer-1", "mode")
    assert mode and math.isnan(mode[0].value) and mode[0].quality == BAD_DECODING_ERROR
    await server.server.write_attribute_value(ua.NodeId("Mixer1.Mode", 2), ua.DataValue(ua.Variant("manual", ua.VariantType.String)))
    await wait_for(lambda: len(running.sink.of("mixer-1", "mode")) == 2, what="the second string value")
    logged = [m for m in recorder.messages if "non-numeric" in m]
    assert len(logged) == 1 and "mixer-1" in logged[0] and "mode" in logged[0] and "ns=2;s=Mixer1.Mode" in logged[0]


async def test_server_side_overflow_flag_counts_as_dropped(shared):
    server, running, _ = shared
    before = running.connector.health.dropped_samples
    ts = now_us()
    await server.write("pump-1", "flow", 5.0, ts, GOOD_WITH_OVERFLOW_BIT)
    await wait_for(lambda: values_since(running.sink, "pump-1", "flow", ts), what="the flagged value")
    assert values_since(running.sink, "pump-1", "flow", ts)[0].quality == GOOD_WITH_OVERFLOW_BIT
    health = running.connector.health
    assert health.dropped_samples == before + 1 and health.extra["server_overflows"] == 1
    dropped = [e for e in running.sink.events if e.event == "samples_dropped"]
    assert dropped and dropped[-1].count == 1 and "Overflow" in dropped[-1].detail


# --- the connection breaks ------------------------------------------------------------------


def assert_one_marked_gap(sink: CollectingSink, tags: list[tuple[str, str]], before_us: int, after_us: int) -> None:
    assert [e.event for e in sink.events if e.event.startswith("comm_")] == ["comm_lost", "comm_restored"]
    lost = next(e for e in sink.events if e.event == "comm_lost")
    assert before_us <= lost.ts_us <= after_us and lost.device == "plc-1" and set(lost.assets) == {"pump-1", "fan-1"}
    for asset, tag in tags:
        marks = [s for s in sink.of(asset, tag) if s.quality == BAD_COMMUNICATION_ERROR]
        assert len(marks) == 1 and math.isnan(marks[0].value) and marks[0].ts_us == lost.ts_us, (asset, tag)


ALL_TAGS = [("pump-1", "flow"), ("pump-1", "bearing_temp"), ("pump-1", "vibration"), ("fan-1", "speed")]


async def test_server_restart_marks_one_gap_and_data_flows_again():
    config, connection = plant(free_port())
    server = SimOpcUaServer(connection, config.sources("plc-1"))
    await server.start()
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.connected, what="the first connection")
        await server.write("pump-1", "flow", 1.0, now_us())
        await wait_for(lambda: any(s.value == 1.0 for s in running.sink.of("pump-1", "flow")), what="1.0")
        before = now_us()
        await server.stop()
        await asyncio.sleep(3.0)
        after = now_us()
        assert not running.connector.health.connected
        await server.start()
        await wait_for(lambda: "comm_restored" in running.sink.event_names(), timeout=15, what="comm_restored")
        ts = now_us()
        await server.write_many([("pump-1", "flow", 2.0, ts, 0), ("fan-1", "speed", 1500.0, ts, 0)])
        await wait_for(lambda: values_since(running.sink, "fan-1", "speed", ts) and values_since(running.sink, "pump-1", "flow", ts), what="values after the restart")
        assert_one_marked_gap(running.sink, ALL_TAGS, before, after)
        assert running.connector.health.reconnects == 1 and running.connector.health.connected
        assert not running.task.done()
    finally:
        await running.stop()
        await server.stop()


async def test_browse_path_resolved_again_when_the_restarted_server_moved_the_node():
    """Before: the path 2:pump-1/2:flow leads to ns=2;s=A; after the restart to ns=2;s=B."""
    port = free_port()

    def server_with_node(identifier: str, decoy: str | None = None) -> SimOpcUaServer:
        """pump-1/flow at ns=2;s=<identifier>; pump-1/decoy (another variable) at ns=2;s=<decoy>."""
        _, connection = plant(port)
        tags = [{"id": "flow", "source": {"opcua": "plc-1", "node_id": f"ns=2;s={identifier}"}}]
        if decoy:
            tags.append({"id": "decoy", "source": {"opcua": "plc-1", "node_id": f"ns=2;s={decoy}"}})
        served = parse_config({"connections": {"opcua": [connection.model_dump()]}, "assets": [{"id": "pump-1", "tags": tags}]}, "served.yaml", environ={})
        return SimOpcUaServer(connection, served.sources("plc-1"))

    doc = {"connections": {"opcua": [plant(port)[1].model_dump()]}, "assets": [{"id": "pump-1", "tags": [{"id": "flow", "source": {"opcua": "plc-1", "browse_path": "2:pump-1/2:flow"}}]}]}
    config = parse_config(doc, "by-path.yaml", environ={})
    before, after = server_with_node("A"), server_with_node("B", decoy="A")  # the old id now names another variable
    await before.start()
    running = Running(config.connections.opcua[0], config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.connected, what="the first connection")
        assert running.connector._by_handle[1].node_id == ua.NodeId("A", 2)
        await before.stop()
        await after.start()
        await wait_for(lambda: "comm_restored" in running.sink.event_names(), timeout=15, what="comm_restored")
        assert running.connector._by_handle[1].node_id == ua.NodeId("B", 2)
        ts = now_us()
        await after.write_many([("pump-1", "decoy", 666.0, ts, 0), ("pump-1", "flow", 8.0, ts, 0)])
        await wait_for(lambda: values_since(running.sink, "pump-1", "flow", ts), what="a value from the moved node")
        await asyncio.sleep(0.2)
        assert [s.value for s in values_since(running.sink, "pump-1", "flow", ts)] == [8.0]
        assert running.sink.event_names() == ["comm_lost", "comm_restored"]
    finally:
        await running.stop()
        await before.stop()
        await after.stop()


async def test_network_cut_marks_one_gap_and_recovers_what_the_server_kept():
    config, connection = plant(free_port())
    server = SimOpcUaServer(connection, config.sources("plc-1"))
    await server.start()
    proxy = TcpProxy(int(connection.endpoint.rsplit(":", 1)[1]))
    await proxy.start()
    via_proxy = connection.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{proxy.port}"})
    running = Running(via_proxy, config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.connected, what="the first connection")
        before = now_us()
        proxy.cut()
        await wait_for(lambda: "comm_lost" in running.sink.event_names(), what="comm_lost")
        t_cut = now_us()
        await server.write("pump-1", "flow", 3.0, t_cut)  # written while the connector cannot see the server
        await asyncio.sleep(2.5)
        after = now_us()
        proxy.allow()
        await wait_for(lambda: "comm_restored" in running.sink.event_names(), timeout=15, what="comm_restored")
        # the session survived the cut: the server delivers what it queued during it
        await wait_for(lambda: any(s.value == 3.0 for s in running.sink.of("pump-1", "flow")), timeout=5, what="the value written during the cut")
        ts = now_us()
        await server.write("pump-1", "flow", 4.0, ts)
        await wait_for(lambda: values_since(running.sink, "pump-1", "flow", ts), timeout=5, what="a value after the cut")
        assert_one_marked_gap(running.sink, ALL_TAGS, before, after)
        assert running.connector.health.reconnects == 1
    finally:
        await running.stop()
        await proxy.stop()
        await server.stop()


async def test_first_connection_failing_marks_no_communication_then_recovers():
    config, connection = plant(free_port())
    running = Running(connection, config.sources("plc-1"))
    server = SimOpcUaServer(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: "comm_lost" in running.sink.event_names(), what="comm_lost")
        never = running.sink.of("pump-1", "flow")
        assert len(never) == 1 and math.isnan(never[0].value) and never[0].quality == BAD_NO_COMMUNICATION
        assert "cannot be reached" in running.connector.health.last_error
        await server.start()
        await wait_for(lambda: "comm_restored" in running.sink.event_names(), timeout=15, what="comm_restored")
        ts = now_us()
        await server.write("pump-1", "flow", 7.0, ts)
        await wait_for(lambda: values_since(running.sink, "pump-1", "flow", ts), what="a value")
    finally:
        await running.stop()
        await server.stop()


# --- overflow of the client-side buffer -----------------------------------------------------


def burst_plant(port: int, overflow: str) -> tuple:
    """10 tags that each queue up to 200 values on the server, and a client buffer of 100."""
    tags = [{"id": f"t{i}", "source": {"opcua": "plc-1", "node_id": f"ns=2;s=Burst.t{i}", "queue_size": 200}} for i in range(10)]
    doc = {
        "connections": {
            "opcua": [
                {
                    "id": "plc-1",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}",
                    "publishing_interval_ms": 500,
                    "queue_maxsize": 100,
                    "overflow": overflow,
                    "reconnect_initial_delay_s": 0.2,
                    "reconnect_max_delay_s": 1.0,
                }
            ]
        },
        "assets": [{"id": "burst-1", "tags": tags}],
    }
    config = parse_config(doc, "test-burst.yaml", environ={})
    return config, config.connections.opcua[0]


async def burst(server: SimOpcUaServer, t0: int) -> None:
    """1000 changes (100 per tag) inside one publishing interval."""
    await server.write_many([("burst-1", f"t{i}", float(k), t0 + k, 0) for k in range(100) for i in range(10)])


async def test_client_buffer_overflow_drops_oldest_and_counts_every_drop():
    config, connection = burst_plant(free_port(), "drop_oldest")
    server = SimOpcUaServer(connection, config.sources("plc-1"))
    await server.start()
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.extra["monitored_items"] == 10 and len(running.sink.samples) == 10, what="initial values")
        t0 = now_us()
        await burst(server, t0)
        health = running.connector.health
        await wait_for(lambda: len([s for s in running.sink.samples if s.ts_us >= t0]) + health.dropped_samples >= 1000, what="all 1000 accounted for")
        await asyncio.sleep(0.6)
        received = [s for s in running.sink.samples if s.ts_us >= t0]
        assert health.dropped_samples > 0 and len(received) + health.dropped_samples == 1000
        assert any(s.value == 99.0 for s in received)  # the newest survive (drop_oldest)
        events = [e for e in running.sink.events if e.event == "samples_dropped"]
        assert events and events[0].count > 0 and sum(e.count for e in events) <= health.dropped_samples
        assert "queue_maxsize 100" in events[0].detail
    finally:
        await running.stop()
        await server.stop()


async def test_client_buffer_overflow_with_disconnect_policy_reconnects_with_a_marked_gap():
    config, connection = burst_plant(free_port(), "disconnect")
    server = SimOpcUaServer(connection, config.sources("plc-1"))
    await server.start()
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: len(running.sink.samples) == 10, what="initial values")
        await burst(server, now_us())
        await wait_for(lambda: "comm_restored" in running.sink.event_names(), timeout=15, what="comm_restored")
        names = running.sink.event_names()
        assert names.count("comm_lost") == 1 and "samples_dropped" in names
        assert running.connector.health.dropped_samples > 0
    finally:
        await running.stop()
        await server.stop()


async def test_notification_buffer_policies():
    oldest = NotificationBuffer(10, "drop_oldest")
    assert oldest.put(list(range(6)), False) == (0, False)
    assert oldest.put(list(range(6, 12)), False) == (2, False)
    assert oldest.pop() == ([2, 3, 4, 5], False) and oldest.pop() == (list(range(6, 12)), False) and oldest.pop() is None
    assert oldest.put(list(range(25)), True) == (15, False) and oldest.pop() == (list(range(15, 25)), True)

    newest = NotificationBuffer(10, "drop_newest")
    assert newest.put(list(range(6)), False) == (0, False)
    assert newest.put(list(range(6, 12)), False) == (2, False)
    assert newest.put([99], False) == (1, False)
    assert newest.pop() == (list(range(6)), False) and newest.pop() == ([6, 7, 8, 9], False)

    disconnect = NotificationBuffer(10, "disconnect")
    assert disconnect.put(list(range(6)), False) == (0, False)
    assert disconnect.put(list(range(6, 12)), False) == (6, True)
    assert disconnect.size == 6
