"""The `edgewatch` command line. Each command wires connectors, stream and
detectors together; the logic lives in those packages."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

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
app.add_typer(kafka_app, name="kafka")
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(DEFAULT_CONFIG, "--config", "-c", envvar="EDGEWATCH_CONFIG", help="Service configuration (YAML).")


def user_errors(command):
    """Turn errors a user can cause into a clear message and exit code 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, KafkaSetupError, ValueError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def worker(config: Path = ConfigOption) -> None:
    """Run a stream worker: consume readings, raise alerts (faust-streaming)."""
    cfg = load_config(config)
    logging.basicConfig(level=cfg.worker.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stream.worker import run_worker  # faust is heavy; only this command needs it

    run_worker(cfg)


@app.command()
@user_errors
def connect(
    config: Path = ConfigOption,
    only: list[str] = typer.Option([], "--only", help="Run only this connection id (repeatable); default: all of the file."),
) -> None:
    """Read the plant's OPC UA servers and Modbus devices and publish to Kafka (through the durable spool)."""
    from connectors.runner import run_connect

    cfg = load_config(config)
    logging.basicConfig(level=cfg.worker.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_connect(cfg, str(config), only)


@app.command()
@user_errors
def simulate(
    config: Path = ConfigOption,
    rate_hz: float = typer.Option(10.0, min=0.1, max=10_000, help="Samples per second per tag."),
    fault: list[str] = typer.Option([], help="Inject a fault: ASSET:TAG@START_S[+DURATION_S] (repeatable)."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
) -> None:
    """Publish a simulated plant's readings (all configured assets and tags) to Kafka."""
    from connectors.generator import Fault
    from connectors.plant_stream import PlantStream

    cfg = load_config(config)
    plant = PlantStream(cfg, rate_hz, [Fault.parse(f) for f in fault])
    publisher = plant.publisher
    console.print(f"publishing {len(cfg.assets)} assets at {rate_hz:g} Hz per tag to {cfg.kafka.topics.readings} on {cfg.kafka.bootstrap_servers}")
    end = time.monotonic() + duration if duration is not None else None
    plant.start()
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        pending = plant.stop()
    console.print(
        f"delivered {publisher.delivered_samples:,} samples in {publisher.delivered} batches; "
        f"{publisher.failed} failed, {pending} still undelivered"
    )
    if publisher.failed or pending:
        err_console.print(
            f"[bold red]error:[/] not every batch reached Kafka at {cfg.kafka.bootstrap_servers}"
            + (f" (last error: {publisher.last_error})" if publisher.last_error else "")
            + "; is the broker running and the address right?",
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command()
@user_errors
def demo(
    config: Path = ConfigOption,
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
    rate_hz: float = typer.Option(10.0, min=0.1, max=10_000, help="Samples per second per tag."),
    fault: list[str] = typer.Option(
        ["pump-1:bearing_temp@20+40"], help="Fault schedule: ASSET:TAG@START_S[+DURATION_S] (repeatable)."
    ),
) -> None:
    """Local Kafka + simulated plant + worker, with a live view of readings and alerts."""
    from connectors.generator import Fault
    from edgewatch.demo import run_demo

    raise typer.Exit(run_demo(config, duration, rate_hz, [Fault.parse(f) for f in fault], console))


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


if __name__ == "__main__":
    app()
