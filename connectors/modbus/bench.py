"""How many Modbus devices one connector process polls, and at what cost.

``bench_modbus`` starts ``devices`` simulated devices (each its own TCP port,
``registers`` holding registers mapped to tags of mixed types), runs one
``ModbusConnector`` per device in this process into a counting sink, and
reports expected against received samples, skipped polls, poll latency and the
connector process's CPU time per wall second.

The simulated devices run in a child process (multiprocessing, spawn) by
default, so that ``time.process_time`` of this process measures the connectors
alone; ``servers_in_child=False`` runs them in this process's event loop
instead (then the CPU figure covers both, and says so).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from typing import Sequence

from connectors.modbus.client import ModbusConnector
from stream.config import AssetConfig, ModbusConnection, TagConfig

# The repeating pattern of tag types laid over a device's registers: a mix as on
# a real drive (scaled integers, floats, a counter, a status word).
_PATTERN: tuple[tuple[str, int], ...] = (("float32", 2), ("uint16", 1), ("int16", 1), ("int32", 2), ("uint32", 2), ("float64", 4), ("float32", 2))


def tag_layout(registers: int) -> list[tuple[str, int]]:
    """(type, address) pairs filling exactly ``registers`` holding registers."""
    layout, address, i = [], 0, 0
    while address < registers:
        type_, words = _PATTERN[i % len(_PATTERN)]
        if address + words > registers:
            type_, words = "uint16", 1
        layout.append((type_, address))
        address += words
        i += 1
    return layout


def device_config(index: int, registers: int, port: int, interval_s: float) -> tuple[ModbusConnection, list[tuple[AssetConfig, TagConfig]]]:
    connection_id = f"bench-{index:03d}"
    connection = ModbusConnection(
        id=connection_id,
        host="127.0.0.1",
        port=max(port, 1),
        poll_interval_s=interval_s,
        timeout_s=max(1.0, interval_s),
        retries=1,
        reconnect_max_delay_s=2.0,
    )
    asset = AssetConfig.model_validate(
        {
            "id": f"machine-{index:03d}",
            "tags": [
                {"id": f"r{address:03d}", "source": {"modbus": connection_id, "address": address, "type": type_, "scale": 0.5 if type_ == "int16" else 1.0}}
                for type_, address in tag_layout(registers)
            ],
        }
    )
    return connection, [(asset, tag) for tag in asset.tags]


def _value(tag_index: int, tick: int) -> float:
    return float((tag_index * 7 + tick) % 1000)


async def _start_servers(devices: int, registers: int, interval_s: float):
    from connectors.modbus.simserver import SimModbusServer

    servers = []
    for index in range(devices):
        connection, tags = device_config(index, registers, 0, interval_s)
        server = SimModbusServer(connection, tags, host="127.0.0.1", port=0)
        await server.start()
        servers.append((server, tags))
    return servers


def _update_values(servers, tick: int) -> None:
    for server, tags in servers:
        for i, (asset, tag) in enumerate(tags):
            server.set(asset.id, tag.id, _value(i, tick))


async def _serve(devices: int, registers: int, interval_s: float, ports_out, stop) -> None:
    servers = await _start_servers(devices, registers, interval_s)
    _update_values(servers, 0)
    ports_out.send([server.port for server, _ in servers])
    cpu_start = time.process_time()
    tick = 0
    try:
        while not stop.is_set():
            await asyncio.sleep(min(interval_s, 0.1))
            tick += 1
            if tick % max(1, round(interval_s / 0.1)) == 0:
                _update_values(servers, tick)
    finally:
        ports_out.send(time.process_time() - cpu_start)
        for server, _ in servers:
            await server.stop()


def _serve_process(devices: int, registers: int, interval_s: float, ports_out, stop) -> None:
    """The child process: serve until ``stop`` is set, then report its CPU seconds."""
    asyncio.run(_serve(devices, registers, interval_s, ports_out, stop))


class CountingSink:
    """A sink that only counts (the benchmark must not measure a list growing)."""

    def __init__(self) -> None:
        self.samples = 0
        self.bad = 0
        self.events: list = []

    def put_samples(self, asset_id, tag_ids, ts_us, values, qualities) -> None:
        self.samples += len(values)
        self.bad += sum(1 for q in qualities if q)

    def put_event(self, event) -> None:
        self.events.append(event)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_modbus(devices: int = 100, registers: int = 50, seconds: float = 20.0, interval_s: float = 1.0, servers_in_child: bool = True) -> dict:
    """Poll ``devices`` simulated devices for ``seconds``; return the figures."""
    process = stop = None
    local_servers = []
    server_cpu_s = math.nan
    if servers_in_child:
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        stop = context.Event()
        process = context.Process(target=_serve_process, args=(devices, registers, interval_s, send, stop), daemon=True, name="modbus-bench-servers")
        process.start()
        if not await asyncio.to_thread(receive.poll, 120):
            process.terminate()
            raise RuntimeError("the simulated Modbus devices did not start within 120 s")
        ports = receive.recv()
    else:
        local_servers = await _start_servers(devices, registers, interval_s)
        _update_values(local_servers, 0)
        ports = [server.port for server, _ in local_servers]

    sink = CountingSink()
    connectors = []
    for index, port in enumerate(ports):
        connection, tags = device_config(index, registers, port, interval_s)
        connectors.append(ModbusConnector(connection, tags, sink))
    tags_total = sum(len(r.slots) for c in connectors for r in c.requests)

    cpu_start, wall_start = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(c.run()) for c in connectors]
    try:
        await asyncio.sleep(seconds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall_s = time.perf_counter() - wall_start
    cpu_s = time.process_time() - cpu_start

    if process is not None:
        stop.set()
        if await asyncio.to_thread(receive.poll, 30):
            server_cpu_s = receive.recv()
        await asyncio.to_thread(process.join, 30)
        if process.is_alive():
            process.terminate()
    for server, _ in local_servers:
        await server.stop()

    polls_per_device = math.ceil(seconds / interval_s - 1e-9)
    expected = tags_total * polls_per_device
    durations = [d for c in connectors for d in c.poll_durations]
    return {
        "devices": devices,
        "registers_per_device": registers,
        "tags": tags_total,
        "interval_s": interval_s,
        "seconds": round(wall_s, 3),
        "expected_samples": expected,
        "received_samples": sink.samples,
        "bad_samples": sink.bad,
        "received_ratio": round(sink.samples / expected, 4) if expected else math.nan,
        "polls": sum(c.polls for c in connectors),
        "polls_skipped": sum(c.polls_skipped for c in connectors),
        "polls_overrun": sum(c.polls_overrun for c in connectors),
        "comm_events": len(sink.events),
        "poll_latency_p50_ms": round(_percentile(durations, 0.50) * 1000, 3),
        "poll_latency_p99_ms": round(_percentile(durations, 0.99) * 1000, 3),
        "connector_cpu_s_per_s": round(cpu_s / wall_s, 4),
        "server_cpu_s_per_s": round(server_cpu_s / wall_s, 4) if not math.isnan(server_cpu_s) else None,
        "servers": "child process (connector CPU measured alone)" if servers_in_child else "same process (CPU includes the simulated devices)",
    }


if __name__ == "__main__":  # python -m connectors.modbus.bench [devices] [seconds]
    import json
    import sys

    args = [float(a) for a in sys.argv[1:3]]
    figures = asyncio.run(bench_modbus(devices=int(args[0]) if args else 100, seconds=args[1] if len(args) > 1 else 20.0))
    print(json.dumps(figures, indent=2))
