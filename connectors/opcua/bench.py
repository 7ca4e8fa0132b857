"""How many tags one OPC UA connector process can follow: ``bench_opcua``.

A ``SimOpcUaServer`` with ``items`` Double variables runs in a child process
(so this process's CPU time is the connector's alone) and writes every variable
``rate_hz`` times a second, all with the round's source timestamp. This
process runs one ``OpcUaConnector`` into a counting sink and reports:

- expected vs received samples (only samples stamped after the start signal:
  the initial values sent when the items are created are not counted);
- drops: the connector's client-side buffer overflow and server-side
  overflow (values flagged with the Overflow info bit);
- notification latency: time the sink received a sample minus its source
  timestamp (a round is written in slices of 500 values, each stamped as it is
  written; the latency includes the wait for the next publishing interval, the
  server encoding the notifications and the connector decoding them);
- connector CPU seconds per wall second over the measured window.

Run: ``.venv/bin/python -m connectors.opcua.bench --items 10000 --seconds 30``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import resource
import socket
import time

from connectors.base import ConnectorEvent, now_us

_TAGS_PER_ASSET = 100
#: values written per write_many call (and per source timestamp) within a round.
_WRITE_SLICE = 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench_config(items: int, port: int, publishing_interval_ms: float):
    from stream.config import parse_config

    assets = []
    for a in range(math.ceil(items / _TAGS_PER_ASSET)):
        count = min(_TAGS_PER_ASSET, items - a * _TAGS_PER_ASSET)
        asset = f"asset-{a:04d}"
        tags = [{"id": f"t{t:03d}", "source": {"opcua": "bench", "node_id": f"ns=2;s={asset}.t{t:03d}"}} for t in range(count)]
        assets.append({"id": asset, "tags": tags})
    doc = {
        "connections": {"opcua": [{"id": "bench", "endpoint": f"opc.tcp://127.0.0.1:{port}", "publishing_interval_ms": publishing_interval_ms}]},
        "assets": assets,
    }
    return parse_config(doc, "bench", environ={})


def _serve(items: int, port: int, publishing_interval_ms: float, rate_hz: float, seconds: float, pipe) -> None:
    """Child process: the simulated server, writing rounds of values on command."""
    logging.basicConfig(level=logging.ERROR)
    from connectors.opcua.simserver import SimOpcUaServer

    async def main() -> None:
        config = _bench_config(items, port, publishing_interval_ms)
        tags = config.sources("bench")
        server = SimOpcUaServer(config.connections.opcua[0], tags)
        await server.start()
        loop = asyncio.get_running_loop()
        pipe.send("ready")
        await loop.run_in_executor(None, pipe.recv)  # "go"
        keys = [(asset.id, tag.id) for asset, tag in tags]
        rounds = max(1, round(rate_hz * seconds))
        period = 1.0 / rate_hz
        start = time.monotonic()
        write_s = []
        for r in range(rounds):
            await asyncio.sleep(max(0.0, start + r * period - time.monotonic()))
            t0 = time.perf_counter()
            # every tag once per round, in slices stamped when written: a slice's
            # latency then starts when its values change, not when the round began.
            for first in range(0, len(keys), _WRITE_SLICE):
                ts = now_us()
                rows = [(a, t, float(r + (i % 7) * 0.1), ts, 0) for i, (a, t) in enumerate(keys[first : first + _WRITE_SLICE])]
                await server.write_many(rows)
                await asyncio.sleep(0)  # let the server publish between slices, as a PLC would
            write_s.append(time.perf_counter() - t0)
        pipe.send({"rounds": rounds, "write_s_max": max(write_s), "write_s_mean": sum(write_s) / len(write_s)})
        await loop.run_in_executor(None, pipe.recv)  # "stop"
        await server.stop()

    asyncio.run(main())


class _CountingSink:
    """Counts samples stamped at or after ``since_us`` and keeps what latency needs, cheaply."""

    def __init__(self) -> None:
        self.since_us = 1 << 62
        self.initial = 0
        self.received = 0
        self.calls: list[tuple[int, list]] = []
        self.events: list[ConnectorEvent] = []

    def put_samples(self, asset_id, tag_ids, ts_us, values, qualities) -> None:
        if ts_us[0] >= self.since_us:
            self.received += len(ts_us)
            self.calls.append((now_us(), ts_us))
        else:
            self.initial += len(ts_us)

    def put_event(self, event: ConnectorEvent) -> None:
        self.events.append(event)

    def latencies_ms(self) -> list[float]:
        return sorted((received - ts) / 1000.0 for received, stamps in self.calls for ts in stamps)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


async def bench_opcua(items: int = 10_000, rate_hz: float = 1.0, seconds: float = 30.0, publishing_interval_ms: float = 100.0) -> dict:
    """Run the benchmark described in the module docstring; return its figures as a dict."""
    from connectors.opcua.client import OpcUaConnector

    port = _free_port()
    config = _bench_config(items, port, publishing_interval_ms)
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_serve, args=(items, port, publishing_interval_ms, rate_hz, seconds, child_end), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    sink = _CountingSink()
    connector = OpcUaConnector(config.connections.opcua[0], config.sources("bench"), sink)
    task = None
    try:
        if not await loop.run_in_executor(None, parent_end.poll, 300):
            raise RuntimeError("the simulated OPC UA server did not start within 300 s")
        parent_end.recv()
        setup = time.monotonic()
        task = asyncio.create_task(connector.run())
        while sink.initial < items:  # every item's initial value: all monitored items are live
            if task.done():
                task.result()
            if time.monotonic() - setup > 120:
                raise RuntimeError(f"only {sink.initial} of {items} items subscribed after 120 s: {connector.health.to_dict()}")
            await asyncio.sleep(0.1)
        subscribe_s = time.monotonic() - setup
        await asyncio.sleep(1.0)
        sink.since_us = now_us()
        cpu0, wall0 = _cpu_s(), time.monotonic()
        parent_end.send("go")
        server_report = None
        expected = None
        deadline = None
        while True:
            await asyncio.sleep(0.05)
            if server_report is None and parent_end.poll():
                server_report = parent_end.recv()
                expected = server_report["rounds"] * items
                deadline = time.monotonic() + 10.0
            if expected is not None and (sink.received >= expected or time.monotonic() > deadline):
                break
            if not child.is_alive():
                raise RuntimeError("the simulated OPC UA server process died")
        wall = time.monotonic() - wall0
        cpu = _cpu_s() - cpu0
    finally:
        if task is not None:  # the connector first, so the server's stop is no connection loss
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if child.is_alive():
            parent_end.send("stop")
        child.join(10)
        if child.is_alive():
            child.terminate()
    latencies = sink.latencies_ms()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 1) if latencies else math.nan

    health = connector.health
    client_drops = health.dropped_samples - health.extra["server_overflows"]
    return {
        "machine": _machine(),
        "items": items,
        "rate_hz": rate_hz,
        "seconds": seconds,
        "publishing_interval_ms": publishing_interval_ms,
        "subscribe_s": round(subscribe_s, 2),
        "expected_samples": expected,
        "received_samples": sink.received,
        "missing_samples": expected - sink.received,
        "dropped_client_overflow": client_drops,
        "dropped_server_overflow": health.extra["server_overflows"],
        "latency_ms_p50": pct(50),
        "latency_ms_p99": pct(99),
        "latency_ms_max": round(latencies[-1], 1) if latencies else math.nan,
        "connector_cpu_s_per_s": round(cpu / wall, 3),
        "wall_s": round(wall, 2),
        "server_write_s_per_round_mean": round(server_report["write_s_mean"], 3),
        "server_write_s_per_round_max": round(server_report["write_s_max"], 3),
        "events": [e.event for e in sink.events],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rate-hz", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--publishing-interval-ms", type=float, default=100.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(bench_opcua(args.items, args.rate_hz, args.seconds, args.publishing_interval_ms))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
