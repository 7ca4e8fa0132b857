"""The README's first command: `edgewatch demo` serves a simulated plant over real
OPC UA and Modbus servers, reads it with the real connectors, streams it through
a real broker into a worker, shows an alert within the first minute, and on
Ctrl-C stops everything it started."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

MARKER = "edgewatch-demo-"  # the demo's working folder; its broker and worker carry it


def leftover_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if MARKER.encode() in blob and state != "Z":
            found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()[:200]!r}")
    return found


def test_demo_raises_an_alert_within_a_minute_and_ctrl_c_stops_everything():
    demo = subprocess.Popen(
        [sys.executable, "-m", "edgewatch", "demo", "--fault", "pump-1:cavitation@15"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    lines, alert_after_s = [], None
    started = time.monotonic()
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("ALERT active: pump-1 suction_pressure"):
                alert_after_s = time.monotonic() - started
                break
            if time.monotonic() - started > 90:
                break
    finally:
        demo.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            rest, _ = demo.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            rest = demo.communicate()[0] + "\n(the demo did not stop within 120 s of Ctrl-C)"
    output = "".join(lines) + rest
    assert alert_after_s is not None, output
    assert alert_after_s < 60, f"first alert after {alert_after_s:.0f} s\n{output}"
    assert "below low limit 0.8 bar" in output
    assert demo.returncode == 0, output
    assert "Everything it started is stopped" in output
    assert leftover_processes() == []


def test_a_demo_killed_with_minus_9_takes_everything_it_started_with_it():
    # A test's timeout or an OOM kill gives no chance to clean up: the children must
    # go by themselves (they once outlived the demo: broker, simulator, connectors, worker).
    demo = subprocess.Popen(
        [sys.executable, "-m", "edgewatch", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    lines = []
    try:
        for line in demo.stdout:  # wait until the children run and readings flow
            lines.append(line)
            if " samples (" in line and not line.strip().startswith("0 s") and " 0 samples" not in line:
                break
    finally:
        demo.kill()
        demo.wait(10)
    assert any(" samples (" in line for line in lines), "".join(lines)
    deadline = time.monotonic() + 30
    while leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftover_processes() == []
