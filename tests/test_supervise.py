"""`edgewatch worker` runs its rules and analytics roles as two child processes:
a role that dies takes the service down (so the orchestrator restarts it), and
no role outlives the service, even when the service is killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgewatch.processes import supervise

SLEEPER = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_pid(path: Path, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"no pid in {path}")


def test_a_role_that_exits_stops_the_other_and_fails_the_service(tmp_path):
    pid_file = tmp_path / "rules.pid"
    code = supervise(
        {"rules": SLEEPER + [str(pid_file)], "analytics": [sys.executable, "-c", "import time; time.sleep(1); raise SystemExit(3)"]},
        poll_s=0.05,
    )
    assert code == 3
    assert not _alive(_wait_for_pid(pid_file)), "the rules role outlived the failed analytics role"


def test_a_role_that_exits_cleanly_still_fails_the_service(tmp_path):
    pid_file = tmp_path / "rules.pid"
    code = supervise({"rules": SLEEPER + [str(pid_file)], "analytics": [sys.executable, "-c", "pass"]}, poll_s=0.05)
    assert code == 1, "half a worker must not look like a clean stop"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_role_outlives_the_service(tmp_path, how):
    files = {role: tmp_path / f"{role}.pid" for role in ("rules", "analytics")}
    program = (
        "import sys; from edgewatch.processes import supervise; "
        f"sys.exit(supervise({ {r: SLEEPER + [str(f)] for r, f in files.items()}!r}))"
    )
    service = subprocess.Popen([sys.executable, "-c", program], cwd=Path(__file__).resolve().parents[1])
    try:
        pids = [_wait_for_pid(f) for f in files.values()]
        assert all(_alive(pid) for pid in pids)
        service.send_signal(how)
        service.wait(30)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids), f"a role outlived the service after {how.name}"
        if how == signal.SIGTERM:
            assert service.returncode == 0, "a requested stop is a clean exit"
    finally:
        if service.poll() is None:
            service.kill()
