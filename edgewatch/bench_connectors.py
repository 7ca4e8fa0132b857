"""`edgewatch bench-connectors`: how much one connector process reads.

Two runs, one after the other, each against simulated servers in a child
process (so the connector's CPU time is its own):

* OPC UA: ``items`` monitored items changing at 1 Hz, one subscription, one
  connector (``connectors.opcua.bench``);
* Modbus: ``devices`` Modbus TCP devices of ``registers`` holding registers
  each, polled at 1 Hz by one connector per device in one process
  (``connectors.modbus.bench``).

The figures go to the ``bench:connectors`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from edgewatch.bench import machine_description, print_rows, replace_section

def run_connector_bench(items: int, devices: int, registers: int, seconds: float, output: Path, console: Console) -> dict:
    from connectors.modbus.bench import bench_modbus
    from connectors.opcua.bench import bench_opcua

    console.print(f"OPC UA: {items:,} monitored items at 1 Hz for {seconds:.0f} s ...")
    opcua = asyncio.run(bench_opcua(items=items, rate_hz=1.0, seconds=seconds))
    console.print(f"Modbus: {devices} devices x {registers} registers at 1 Hz for {seconds:.0f} s ...")
    modbus = asyncio.run(bench_modbus(devices=devices, registers=registers, seconds=seconds, interval_s=1.0))
    _report(opcua, modbus, console, output)
    return {"opcua": opcua, "modbus": modbus}


def _report(opcua: dict, modbus: dict, console: Console, output: Path) -> None:
    dropped = opcua["dropped_client_overflow"] + opcua["dropped_server_overflow"]
    rows = [
        (
            f"OPC UA: {opcua['items']:,} monitored items at {opcua['rate_hz']:g} Hz, one connector",
            f"{opcua['received_samples']:,} of {opcua['expected_samples']:,} samples",
            f"{dropped} dropped, {opcua['missing_samples']} missing",
            "target: no drops",
        ),
        (
            "  latency source timestamp -> connector",
            f"p50 {opcua['latency_ms_p50']} ms",
            f"p99 {opcua['latency_ms_p99']} ms (max {opcua['latency_ms_max']})",
            "",
        ),
        ("  connector CPU", f"{opcua['connector_cpu_s_per_s']:.3f} core", f"publishing interval {opcua['publishing_interval_ms']} ms", ""),
        (
            f"Modbus: {modbus['devices']} devices x {modbus['registers_per_device']} registers ({modbus['tags']:,} tags) at 1 Hz",
            f"{modbus['received_samples']:,} of {modbus['expected_samples']:,} samples",
            f"{modbus['polls_skipped']} polls skipped, {modbus['bad_samples']} Bad",
            "target: every poll on time",
        ),
        ("  poll round trip", f"p50 {modbus['poll_latency_p50_ms']} ms", f"p99 {modbus['poll_latency_p99_ms']} ms", ""),
        ("  connector CPU", f"{modbus['connector_cpu_s_per_s']:.3f} core", "", ""),
    ]
    print_rows("edgewatch bench-connectors", rows, console)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} with `edgewatch bench-connectors` on: {machine_description(kafka=False)}.",
        f"{opcua['seconds']:.0f} s per protocol; simulated servers in a child process on the same machine.",
    ]
    heading = (
        "## Connectors (`edgewatch bench-connectors`)\n\n"
        "Reproduce: `scripts/bootstrap.sh && .venv/bin/edgewatch bench-connectors` (no Kafka; about 2 minutes).\n"
        "One connector process reads simulated servers that run in a child process; received samples are\n"
        "counted in the connector (no Kafka in the path; the spool's cost is measured by `tests/test_spool.py`\n"
        "and the broker-outage behaviour by `tests/test_connect_outage.py`).\n"
    )
    replace_section(output, "connectors", lines, rows, heading)
    console.print(f"figures written to {output}")
