"""Child processes that the demo and the benchmark start and must always stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class Child:
    """A child process in its own session, stopped with SIGTERM then SIGKILL."""

    def __init__(self, args: list[str], env: dict | None = None, log_path: Path | None = None):
        self.args = args
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                args,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us; we stop children in order
                # ...and if we are killed with -9 (a test's timeout, an OOM kill), they go too:
                # a demo killed that way left the simulator, connectors and worker running
                preexec_fn=_die_with_parent,
            )
        finally:
            if log_path:
                out.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int:
        """Stop the child and everything it started; return its exit code."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL at once, as a crash or an OOM kill would."""
        self._signal(signal.SIGKILL)
        self.process.wait(10)

    def _signal(self, sig: int) -> None:
        if self.process.returncode is not None:
            return  # reaped: its pid and group may belong to someone else now
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def edgewatch_command(*args: str) -> list[str]:
    """The command line that runs ``edgewatch ARGS`` with this interpreter."""
    return [sys.executable, "-m", "edgewatch", *args]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def interrupt_on_sigterm():
    """Make SIGTERM raise KeyboardInterrupt, as Ctrl-C does, so that `finally`
    blocks stop what we started. Returns the previous handler."""
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _load_prctl():
    """libc's prctl, looked up in the parent: between fork and exec a child of a
    process with threads (Kafka clients) must not import or load anything, or it
    may wait forever on a lock another thread held at the fork."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: stopping is then up to SIGTERM, as elsewhere


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child, before exec: Linux sends SIGKILL to it when its parent dies,
    so a supervisor killed with -9 (an OOM kill) leaves no orphan behind."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def supervise(commands: dict[str, list[str]], poll_s: float = 0.5) -> int:
    """Run several commands as one service and return an exit code.

    The children share our stdout/stderr and process group (so Ctrl-C and a
    container's SIGTERM through us reach them). When one of them exits, the
    others are stopped and its code is ours: a half-running worker (alerts but
    no analytics, or the reverse) must be visible to the orchestrator, which
    then restarts the whole service.
    """
    import time

    children: dict[str, subprocess.Popen] = {}
    previous = interrupt_on_sigterm()
    code = 0
    try:
        for name, args in commands.items():
            children[name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        while True:
            for name, child in children.items():
                if child.poll() is not None:
                    code = child.returncode
                    print(f"edgewatch: {name} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
                    return code if code != 0 else 1  # one role gone is a failure of the service
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for child in children.values():
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
        signal.signal(signal.SIGTERM, previous)
