"""A real Apache Kafka broker on this machine, for development, the demo, the
benchmarks and the tests: no Docker, no mock.

The broker jars come from Maven Central through Maven (``kafka/pom.xml``) and are
cached outside the clone under ``$EDGEWATCH_CACHE/kafka/<version>-<pom hash>``.
The broker runs with the JDK in KRaft combined mode (broker and controller in
one process) on 127.0.0.1. Each broker has a data directory that holds its
storage, its config, its log and its pid file, so ``status`` and ``stop`` work
from another process.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from edgewatch.processes import _die_with_parent

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "kafka" / "pom.xml"


class KafkaSetupError(RuntimeError):
    """The broker cannot be fetched or started. The text says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEWATCH_CACHE", Path.home() / ".cache" / "edgewatch"))


def kafka_version(pom: Path = POM) -> str:
    if not pom.exists():
        raise KafkaSetupError(
            f"{pom} not found: the local Kafka broker tooling runs from a clone of the edgewatch repository, "
            "not from an installed package; in production point kafka.bootstrap_servers at your cluster"
        )
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if not match:
        raise KafkaSetupError(f"{pom} has no <kafka.version> property")
    return match.group(1)


def libs_dir(pom: Path = POM) -> Path:
    version = kafka_version(pom)  # first: it explains a missing pom
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:10]
    return cache_dir() / "kafka" / f"{version}-{digest}" / "libs"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaSetupError(f"'{tool}' was not found on PATH. {hint}")
    return path


def java_command() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        java = str(Path(java_home) / "bin" / "java")
    else:
        java = _require(
            "java",
            "The local Kafka broker needs Java 17 or newer: install a JDK "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME.",
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if match and int(match.group(1)) < 17:
        raise KafkaSetupError(f"Kafka 4 needs Java 17 or newer; {java} is Java {match.group(1)}. Install a newer JDK or set JAVA_HOME.")
    return java


def fetch(quiet: bool = False) -> Path:
    """Make sure the broker jars are in the cache; return their folder."""
    libs = libs_dir()
    if (libs / ".complete").exists():
        return libs
    mvn = _require(
        "mvn",
        "Maven fetches the Kafka broker jars from Maven Central: install it (e.g. `apt-get install maven`).",
    )
    java_command()  # fail early, with the Java hint, before a long download
    partial = libs.with_name(libs.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    if not quiet:
        print(f"edgewatch: fetching Apache Kafka {kafka_version()} from Maven Central into {libs.parent}")
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={partial}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise KafkaSetupError(
            "Maven could not fetch the Kafka broker jars (is Maven Central reachable?):\n" + (result.stdout + result.stderr)[-3000:]
        )
    (partial / ".complete").touch()
    libs.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(libs)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOG4J2 = """\
Configuration:
  Appenders:
    File:
      name: FILE
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: FILE
    Logger:
      - name: kafka.request.logger
        level: WARN
"""


class LocalKafka:
    """One broker with its data directory. ``start`` is idempotent."""

    def __init__(self, data_dir: str | Path, port: int = 9092, controller_port: int | None = None, heap: str = "768m",
                 die_with_parent: bool = False):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        #: the broker gets SIGKILL when the process that started it dies (the demo's own
        #: broker; not `edgewatch kafka start`'s, which outlives the command on purpose)
        self.die_with_parent = die_with_parent

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def pid(self) -> int | None:
        """The broker's pid if it is running, else None."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        process = getattr(self, "_process", None)
        if process is not None and process.pid == pid:
            # our own child: between fork and exec its cmdline is still Python's,
            # so the cmdline check below would call a starting broker "stopped"
            return pid if process.poll() is None else None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        try:
            # A zombie child (killed, not yet reaped by us) counts as stopped; and
            # after a reboot the pid in a stale file may belong to another program.
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return None
            if str(self.data_dir).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            pass
        return pid

    def _write_config(self) -> Path:
        props = self.data_dir / "server.properties"
        cport = self.controller_port
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{cport}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{cport}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data_dir / 'logs'}",
                    "num.partitions=1",
                    # One broker: internal topics cannot have more than one replica.
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # Tests and the demo join consumer groups often; do not wait 3 s each time.
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "delete.topic.enable=true",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j2.yaml").write_text(_LOG4J2.format(log=self.log_file))
        return props

    def start(self, timeout_s: float = 90.0) -> "LocalKafka":
        """Start the broker (formatting its storage the first time) and wait until it serves."""
        if self.pid() is not None:
            self.wait_ready(timeout_s)
            return self
        java = java_command()
        libs = fetch(quiet=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.controller_port is None:
            saved = self.data_dir / "controller.port"
            self.controller_port = int(saved.read_text()) if saved.exists() else free_port()
            saved.write_text(str(self.controller_port))
        props = self._write_config()
        classpath = f"{libs}/*"
        log4j = f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}"
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = _kafka_uuid()  # may start with "-": passed as --cluster-id=ID so it is not read as an option
            fmt = subprocess.run(
                [java, log4j, "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise KafkaSetupError(f"formatting Kafka storage in {self.data_dir} failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.data_dir / "broker.out", "ab") as out:
            process = subprocess.Popen(
                [java, f"-Xms256m", f"-Xmx{self.heap}", "-XX:+UseG1GC", log4j, "-cp", classpath, "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        self._process = process
        try:
            self.wait_ready(timeout_s)
        except KafkaSetupError:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Block until the broker answers a metadata request, or raise with its log's tail."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise KafkaSetupError(f"the Kafka broker exited during start-up; its log ends with:\n{self.log_tail()}")
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise KafkaSetupError(f"the Kafka broker did not become ready within {timeout_s:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker: SIGTERM for a clean shutdown, SIGKILL if it hangs. True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.pid() is not None:
                self._reap()
                time.sleep(0.2)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while self.pid() is not None and time.monotonic() < deadline:
                    self._reap()
                    time.sleep(0.1)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise KafkaSetupError(f"not allowed to stop the Kafka broker (pid {pid}): it belongs to another user") from None
        self._reap()
        self.pid_file.unlink(missing_ok=True)
        return True

    def _reap(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None:
            process.poll()

    def status(self) -> dict:
        pid = self.pid()
        return {"running": pid is not None, "pid": pid, "bootstrap": self.bootstrap, "data_dir": str(self.data_dir)}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log written)"


def _kafka_uuid() -> str:
    """A cluster id as Kafka writes it: 16 random bytes, URL-safe base64, no padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
