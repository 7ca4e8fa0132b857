"""The `edgewatch` command line. Each command wires connectors, stream and
detectors together; the logic lives in those packages."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from detectors.registry import RegistryError
from edgewatch.localkafka import REPO, KafkaSetupError, LocalKafka
from stream.config import ConfigError, load_config

DEFAULT_CONFIG = REPO / "config" / "plant.yaml"
DEFAULT_KAFKA_DIR = REPO / ".edgewatch" / "kafka"

app = typer.Typer(
    help="edgewatch: real-time anomaly service for factory equipment (OPC UA / Modbus -> Kafka -> alerts).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
kafka_app = typer.Typer(help="A local Apache Kafka broker (KRaft, from Maven Central) for development, the demo and tests.", no_args_is_help=True)
topics_app = typer.Typer(help="The service's Kafka topics.", no_args_is_help=True)
config_app = typer.Typer(help="The service configuration file.", no_args_is_help=True)
opcua_app = typer.Typer(help="OPC UA security: this connector's certificate and the servers it trusts.", no_args_is_help=True)
app.add_typer(opcua_app, name="opcua")
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(DEFAULT_CONFIG, "--config", "-c", envvar="EDGEWATCH_CONFIG", help="Service configuration (YAML).")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # asyncua and pymodbus log every request at INFO: our connectors say what matters.
    for chatty in ("asyncua", "pymodbus"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def user_errors(command):
    """Turn errors a user can cause into a clear message and exit code 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, KafkaSetupError, ValueError, RegistryError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def worker(
    config: Path = ConfigOption,
    role: Optional[str] = typer.Option(
        None,
        help="rules (fast rules, alerts), analytics (windows, features, detectors) or all (both, as two processes). "
        "Default: worker.role of the configuration (all).",
    ),
) -> None:
    """Run the stream worker: consume readings, raise alerts, publish features and scores (faust-streaming)."""
    cfg = load_config(config)
    role = role or cfg.worker.role
    if role not in ("all", "rules", "analytics"):
        raise typer.BadParameter(f"--role must be rules, analytics or all, got {role!r}")
    if role == "all":
        # Two processes, not one loop: the fast rules' alerts must never wait for a window's detectors.
        from edgewatch.processes import edgewatch_command, supervise

        raise typer.Exit(
            supervise({r: edgewatch_command("worker", "--config", str(config), "--role", r) for r in ("rules", "analytics")})
        )
    logging.basicConfig(level=cfg.worker.log_level.upper(), format=f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s")
    from stream.worker import run_worker  # faust is heavy; only this command needs it

    run_worker(cfg, role)


@app.command()
@user_errors
def connect(
    config: Path = ConfigOption,
    only: list[str] = typer.Option([], "--only", help="Run only this connection id (repeatable); default: all of the file."),
) -> None:
    """Read the plant's OPC UA servers and Modbus devices and publish to Kafka (through the durable spool)."""
    from connectors.runner import run_connect

    cfg = load_config(config)
    setup_logging(cfg.worker.log_level)
    run_connect(cfg, str(config), only)


@app.command()
@user_errors
def simulate(
    config: Path = ConfigOption,
    fault: list[str] = typer.Option(
        [], help="Add a fault: ASSET:KIND@START_S[+DURATION_S][*SEVERITY] or ASSET:KIND/TAG@... for a sensor fault (repeatable)."
    ),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
    listen_host: Optional[str] = typer.Option(None, help="Listen on this address instead of each connection's host (0.0.0.0 in a container)."),
    rate_hz: Optional[float] = typer.Option(None, min=0.1, max=1000, help="Value updates per second (default: simulator.rate_hz)."),
) -> None:
    """Serve a simulated plant over real OPC UA and Modbus TCP servers, at the addresses of the file's connections."""
    import asyncio
    import signal

    from connectors.simulator.serve import SimulatedPlant

    cfg = load_config(config)
    setup_logging(cfg.worker.log_level)
    plant = SimulatedPlant(cfg, fault, listen_host=listen_host, rate_hz=rate_hz)
    truth = plant.write_ground_truth()
    for server, tags in plant.opcua_servers:
        console.print(f"OPC UA {server.connection.id}: {server.endpoint} ({len(tags)} tags)")
    for server, tags in plant.modbus_servers:
        console.print(f"Modbus {server.connection.id}: {server.host}:{server.port} {server.connection.framer} ({len(tags)} tags)")
    for record in plant.simulation.ground_truth():
        console.print(f"fault scheduled: {record['episode']} from {record['start']} to {record['end'] or 'the end'}")
    console.print(f"ground truth: {truth}; {plant.rate_hz:g} updates per second")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await plant.run(stop, duration)

    asyncio.run(main())
    console.print(f"simulation stopped after {plant.updates:,} updates ({plant.late_updates} skipped for lack of CPU)")


@app.command()
@user_errors
def demo(
    config: Path = ConfigOption,
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
    fault: list[str] = typer.Option(
        ["pump-1:cavitation@20+40"],
        help="Fault schedule: ASSET:KIND@START_S[+DURATION_S][*SEVERITY] or ASSET:KIND/TAG@... (repeatable).",
    ),
) -> None:
    """Local Kafka + simulated plant (OPC UA, Modbus) + connectors + worker, with a live view of readings and alerts."""
    from edgewatch.demo import run_demo

    raise typer.Exit(run_demo(config, duration, fault, console))


@app.command()
@user_errors
def bench(
    samples: int = typer.Option(2_000_000, help="Samples in the throughput run."),
    batch_size: int = typer.Option(1000, help="Samples per Kafka message."),
    latency_rate: float = typer.Option(100_000, help="Samples per second offered in the latency run."),
    latency_seconds: float = typer.Option(20.0, help="Length of the latency run."),
    output: Path = typer.Option(REPO / "BENCHMARKS.md", help="Where the figures are written (a section is replaced)."),
    bootstrap: Optional[str] = typer.Option(None, help="Use this broker instead of starting a local one."),
) -> None:
    """End-to-end benchmark on a real broker: throughput, raw ceiling, alert latency."""
    from edgewatch.bench import run_bench

    run_bench(samples, batch_size, latency_rate, latency_seconds, output, bootstrap, console)


@app.command("bench-connectors")
@user_errors
def bench_connectors(
    items: int = typer.Option(10_000, help="OPC UA monitored items, changing at 1 Hz."),
    devices: int = typer.Option(100, help="Modbus TCP devices, polled at 1 Hz."),
    registers: int = typer.Option(50, help="Holding registers per Modbus device."),
    seconds: float = typer.Option(30.0, help="Length of each run."),
    output: Path = typer.Option(REPO / "BENCHMARKS.md", help="Where the figures are written (a section is replaced)."),
) -> None:
    """Connector benchmark: OPC UA monitored items and Modbus devices read by one process."""
    from edgewatch.bench_connectors import run_connector_bench

    run_connector_bench(items, devices, registers, seconds, output, console)


@app.command("bench-analytics")
@user_errors
def bench_analytics(
    quick: bool = typer.Option(False, "--quick", help="Shorter runs (a smoke test; figures are noisier)."),
    output: Path = typer.Option(REPO / "BENCHMARKS.md", help="Where the figures are written (a section is replaced)."),
) -> None:
    """Fast-rule latency, window/feature throughput and detector throughput (no Kafka)."""
    from edgewatch.bench_analytics import run_analytics

    run_analytics(output, console, quick=quick)


@app.command("bench-fusion")
@user_errors
def bench_fusion(
    updates: int = typer.Option(20_000, help="Fusion updates to time (one asset-window each)."),
    output: Path = typer.Option(REPO / "BENCHMARKS.md", help="Where the figures are written (a section is replaced)."),
) -> None:
    """Bayesian fusion: time per asset-window update (scores in, fault probabilities out)."""
    from edgewatch.bench_fusion import run_bench_fusion

    run_bench_fusion(updates, output, console)


@app.command("bench-gpu")
@user_errors
def bench_gpu_report(
    results: Path = typer.Argument(..., help="The JSON written by `python -m edgewatch.bench_gpu --out FILE` on the GPU machine."),
    output: Path = typer.Option(REPO / "BENCHMARKS.md", help="Where the figures are written (a section is replaced)."),
) -> None:
    """Write the LSTM autoencoder GPU-vs-CPU figures of a bench_gpu run into BENCHMARKS.md."""
    from edgewatch.bench_analytics import write_gpu_section

    write_gpu_section(results, output, console)


# ----------------------------------------------------------------------------- kafka

DataDirOption = typer.Option(DEFAULT_KAFKA_DIR, "--data-dir", help="Broker storage, config, log and pid file.")
PortOption = typer.Option(9092, "--port", help="Client port on 127.0.0.1.")


@kafka_app.command("fetch")
@user_errors
def kafka_fetch(quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Download the pinned Kafka broker jars with Maven (cached outside the clone)."""
    from edgewatch.localkafka import fetch, kafka_version

    libs = fetch(quiet=quiet)
    if not quiet:
        console.print(f"Apache Kafka {kafka_version()} jars are in {libs}")


@kafka_app.command("start")
@user_errors
def kafka_start(data_dir: Path = DataDirOption, port: int = PortOption, timeout: float = typer.Option(90.0, help="Seconds to wait until ready.")) -> None:
    """Start the broker in the background and wait until it serves."""
    broker = LocalKafka(data_dir, port=port).start(timeout_s=timeout)
    console.print(f"Kafka is running on {broker.bootstrap} (pid {broker.pid()}); log: {broker.log_file}")


@kafka_app.command("stop")
@user_errors
def kafka_stop(data_dir: Path = DataDirOption) -> None:
    """Stop the broker started with `edgewatch kafka start`."""
    stopped = LocalKafka(data_dir).stop()
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
@user_errors
def kafka_status(data_dir: Path = DataDirOption, port: int = PortOption) -> None:
    """Say whether the broker runs (exit code 1 if not)."""
    status = LocalKafka(data_dir, port=port).status()
    if status["running"]:
        console.print(f"Kafka is running (pid {status['pid']}), data in {status['data_dir']}")
    else:
        console.print(f"Kafka is not running (data dir {status['data_dir']})")
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- opcua

ConnectionOption = typer.Option(..., "--connection", help="The id of an entry under connections.opcua.")


def _opcua_connection(cfg, connection_id: str):
    for connection in cfg.connections.opcua:
        if connection.id == connection_id:
            return connection
    known = ", ".join(c.id for c in cfg.connections.opcua) or "none"
    raise ConfigError(f"no OPC UA connection {connection_id!r} in the configuration (connections.opcua: {known})")


@opcua_app.command("certificate")
@user_errors
def opcua_certificate(
    config: Path = ConfigOption,
    connection: str = ConnectionOption,
    force: bool = typer.Option(False, "--force", help="Replace an existing certificate and key."),
) -> None:
    """Create this connector's application instance certificate and key, where the connection's security section says."""
    from connectors.opcua.security import create_certificate, describe_certificate, thumbprint_sha1

    cfg = load_config(config)
    conn = _opcua_connection(cfg, connection)
    security = conn.security
    if not (security.certificate and security.private_key):
        raise ConfigError(f"connection {connection} has no security.certificate / security.private_key paths: set them (and policy, mode, trust_dir) first")
    cert, key = Path(security.certificate), Path(security.private_key)
    if (cert.exists() or key.exists()) and not force:
        raise ConfigError(f"{cert} or {key} exists already; pass --force to replace them (servers that trusted the old certificate must trust the new one)")
    password = os.environ.get(security.private_key_password_env) if security.private_key_password_env else None
    create_certificate(cert, key, conn.application_uri, key_password=password)
    der = cert.read_bytes()
    console.print(f"created {cert} and {key} for {conn.application_uri}")
    console.print(f"{describe_certificate(der)}; thumbprint sha1 {thumbprint_sha1(der)}")
    console.print("next: make the server trust this certificate (copy it into the server's trusted folder), then `edgewatch opcua trust`")


@opcua_app.command("trust")
@user_errors
def opcua_trust(config: Path = ConfigOption, connection: str = ConnectionOption) -> None:
    """Fetch the server's certificate and add it to the connection's trust_dir (compare the thumbprint with the server's)."""
    import asyncio

    from connectors.opcua.security import describe_certificate, fetch_server_certificate, thumbprint_sha1, trust_server_certificate

    cfg = load_config(config)
    conn = _opcua_connection(cfg, connection)
    security = conn.security
    if security.policy == "None" or not security.trust_dir:
        raise ConfigError(f"connection {connection} uses security policy None: there is no server certificate to trust (set security.policy, mode and trust_dir)")
    try:
        der = asyncio.run(fetch_server_certificate(conn.endpoint, security.policy, security.mode, timeout_s=conn.timeout_s))
    except OSError as exc:
        raise ConfigError(f"cannot reach OPC UA server {connection} at {conn.endpoint}: {exc}") from None
    path = trust_server_certificate(der, security.trust_dir)
    console.print(f"trusted the certificate of {connection} ({conn.endpoint}): {describe_certificate(der)}")
    console.print(f"thumbprint sha1 {thumbprint_sha1(der)}; saved as {path}")


# ----------------------------------------------------------------------------- topics and config


@topics_app.command("create")
@user_errors
def topics_create(config: Path = ConfigOption) -> None:
    """Create the service's topics that do not exist yet."""
    from stream.kafka_admin import ensure_topics

    cfg = load_config(config)
    created = ensure_topics(cfg.kafka)
    console.print(f"created: {', '.join(created)}" if created else "all topics exist")


@config_app.command("check")
@user_errors
def config_check(config: Path = typer.Argument(DEFAULT_CONFIG, envvar="EDGEWATCH_CONFIG", help="The YAML file to validate.")) -> None:
    """Validate a configuration file and summarise it."""
    cfg = load_config(config)
    tags = sum(len(a.tags) for a in cfg.assets)
    console.print(f"{config}: valid; {len(cfg.assets)} assets, {tags} tags; topics under '{cfg.kafka.topic_prefix}' on {cfg.kafka.bootstrap_servers}")


from edgewatch import train_cli  # noqa: E402  (needs user_errors and ConfigOption above)

train_cli.register(app, user_errors, ConfigOption)
from edgewatch import backtest_cli, eval_sim, eval_tep  # noqa: E402  (need user_errors above)

backtest_cli.register(app, user_errors)  # edgewatch backtest
eval_sim.register(app, user_errors)  # edgewatch evaluate-sim
eval_tep.register(app, user_errors)  # edgewatch evaluate-tep


if __name__ == "__main__":
    app()
