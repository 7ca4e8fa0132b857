"""`edgewatch train` and `edgewatch models`: the command-line side of training
and the model registry (the work is in stream.training and detectors.registry)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stream.config import load_config

console = Console()

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


def parse_duration_s(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: write e.g. 90s, 30m, 2h or 1d")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def register(app: typer.Typer, user_errors, config_option) -> None:
    models_app = typer.Typer(help="The model registry: trained detector versions.", no_args_is_help=True)
    app.add_typer(models_app, name="models")

    @app.command()
    @user_errors
    def train(
        config: Path = config_option,
        asset: Optional[str] = typer.Option(None, "--asset", help="Train for this asset id."),
        asset_type: Optional[str] = typer.Option(None, "--type", help="Train one model for every asset of this type (pump, fan, ...)."),
        simulate: Optional[str] = typer.Option(None, "--simulate", help="History from the plant simulator: this long, e.g. 2h."),
        seed: int = typer.Option(1, "--seed", help="Simulator seed (with --simulate) and model seed."),
        csv_file: Optional[Path] = typer.Option(None, "--csv", help="History from a historian CSV export (one time column, one column per tag)."),
        parquet_file: Optional[Path] = typer.Option(
            None, "--parquet",
            help="History from a Parquet export (one time column, one column per tag). Time column: a timestamp (any unit; "
            "no time zone = UTC), numbers since the epoch (with --time-format epoch_s, epoch_ms or epoch_us) or text (as in CSV). "
            "Tag columns: integer, float, decimal, boolean or numeric text; nulls are gaps (Bad quality).",
        ),
        time_column: str = typer.Option("time", "--time-column", help="CSV and Parquet: the time column."),
        time_format: str = typer.Option(
            "iso", "--time-format",
            help="CSV and Parquet: iso, epoch_s, epoch_ms, epoch_us or a strptime pattern (no offset = UTC); "
            "not used for a Parquet timestamp column.",
        ),
        separator: Optional[str] = typer.Option(None, "--separator", help="CSV only: the field separator (default ,)."),
        from_kafka: bool = typer.Option(False, "--from-kafka", help="History from the readings topic (needs --start and --end)."),
        start: Optional[str] = typer.Option(None, "--start", help="--from-kafka: first event time, ISO 8601 (UTC if no offset)."),
        end: Optional[str] = typer.Option(None, "--end", help="--from-kafka: end event time (exclusive), ISO 8601."),
        detector: list[str] = typer.Option([], "--detector", help="isolation_forest or lstm_autoencoder (repeatable); default: every enabled one."),
        device: Optional[str] = typer.Option(None, "--device", help="LSTM autoencoder: auto, cpu or cuda (default: the configuration's)."),
        no_activate: bool = typer.Option(False, "--no-activate", help="Register the new versions without making them active."),
        announce: bool = typer.Option(False, "--announce", help="Also publish the new versions on the models topic."),
    ) -> None:
        """Fit the detectors of an asset or asset type from history; register new model versions.

        History: --simulate, --csv, --parquet or --from-kafka (exactly one)."""
        from stream.history import csv_history, iso_to_us, kafka_history, parquet_history
        from stream.training import train as run_training

        cfg = load_config(config)
        if (asset is None) == (asset_type is None):
            raise ValueError("give --asset ASSET_ID or --type ASSET_TYPE")
        target = asset if asset is not None else f"type:{asset_type}"
        sources = [simulate is not None, csv_file is not None, parquet_file is not None, from_kafka]
        if sum(sources) != 1:
            raise ValueError("give exactly one history: --simulate 2h, --csv FILE, --parquet FILE or --from-kafka --start ... --end ...")
        if separator is not None and parquet_file is not None:
            raise ValueError("--separator is for a CSV export (--csv); a Parquet file has typed columns and no separator: leave it out")
        from stream.training import target_assets

        assets = target_assets(cfg, target)
        if device is not None:
            lstm = cfg.detectors.lstm_autoencoder.model_copy(update={"device": device})
            cfg = cfg.model_copy(update={"detectors": cfg.detectors.model_copy(update={"lstm_autoencoder": lstm})})
        total_us = None
        if simulate is not None:
            from connectors.simulator.history import simulated_history

            duration_s = parse_duration_s(simulate)
            # History ends now, as a historian export would.
            start_us = (int(time.time()) - int(duration_s)) * 1_000_000
            batches = simulated_history(cfg, [a.id for a in assets], start_us, duration_s, seed=seed)
            source = f"simulator, {simulate}, seed {seed}"
            total_us = int(duration_s * 1e6)
            first_us = start_us
        elif csv_file is not None:
            if len(assets) != 1:
                raise ValueError("a CSV export holds one asset: use --asset with --csv")
            batches = csv_history(csv_file, assets[0], time_column=time_column, time_format=time_format, separator="," if separator is None else separator)
            source = f"csv {csv_file}"
        elif parquet_file is not None:
            if len(assets) != 1:
                raise ValueError("a Parquet export holds one asset: use --asset with --parquet")
            batches = parquet_history(parquet_file, assets[0], time_column=time_column, time_format=time_format)
            source = f"parquet {parquet_file}"
        else:
            if start is None or end is None:
                raise ValueError("--from-kafka needs --start and --end (ISO 8601 event times)")
            first_us, end_us = iso_to_us(start), iso_to_us(end)
            if end_us <= first_us:
                raise ValueError("--end must be after --start")
            batches = kafka_history(cfg, [a.id for a in assets], first_us, end_us)
            source = f"kafka {cfg.kafka.topics.readings} {start}..{end}"
            total_us = end_us - first_us

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(), console=console, transient=True) as progress:
            task = progress.add_task("replaying history", total=total_us or None)

            def on_batch(batch) -> None:
                if total_us:
                    progress.update(task, completed=max(0, int(batch.ts_us.max()) - first_us))

            def on_stage(text: str) -> None:
                progress.update(task, description=text, completed=total_us or 0)

            summary = run_training(
                cfg, target, batches, detectors=detector or None, activate=not no_activate, seed=seed, source=source,
                on_batch=on_batch, on_stage=on_stage,
            )
        print_summary(summary, cfg)
        if announce:
            publish_announcements(cfg, [d.announcement for d in summary.detectors])

    @models_app.command("list")
    @user_errors
    def models_list(config: Path = config_option) -> None:
        """Every model version in the registry, and which is active."""
        from detectors.registry import ModelRegistry

        cfg = load_config(config)
        registry = ModelRegistry(cfg.detectors.registry_dir)
        table = Table(title=f"models in {registry.root}")
        for column in ("target", "detector", "version", "active", "scales", "trained on", "created"):
            table.add_column(column)
        rows = 0
        root = registry.root
        if root.is_dir():
            from urllib.parse import unquote

            for target_dir in sorted(p for p in root.iterdir() if p.is_dir()):
                target = unquote(target_dir.name)
                for detector_dir in sorted(p for p in target_dir.iterdir() if p.is_dir()):
                    active = registry.active_version(target, detector_dir.name)
                    for version in registry.versions(target, detector_dir.name):
                        manifest = registry.get(target, detector_dir.name, version).manifest
                        training = manifest.get("training", {})
                        table.add_row(
                            target, detector_dir.name, str(version), "yes" if version == active else "",
                            ", ".join(manifest.get("scales", [])), f"{training.get('from', '?')} .. {training.get('to', '?')}",
                            manifest.get("created_at", "?"),
                        )
                        rows += 1
        if rows:
            console.print(table)
        else:
            console.print(f"no models in {root}: train some with `edgewatch train`")

    @models_app.command("activate")
    @user_errors
    def models_activate(
        target: str = typer.Argument(..., help="Asset id, or type:<asset type>."),
        detector_name: str = typer.Argument(..., metavar="DETECTOR"),
        version: int = typer.Argument(...),
        config: Path = config_option,
        announce: bool = typer.Option(False, "--announce", help="Also publish it on the models topic."),
    ) -> None:
        """Make a version the one workers load (verifies its checksums first)."""
        from detectors.registry import ModelRegistry

        cfg = load_config(config)
        registry = ModelRegistry(cfg.detectors.registry_dir)
        found = registry.get(target, detector_name, version)
        registry.verify(found)
        registry.activate(target, detector_name, version)
        console.print(f"{detector_name} v{version} is now active for {target}; workers load it at start")
        if announce:
            publish_announcements(cfg, [registry.announcement(registry.get(target, detector_name, version))])


def print_summary(summary, cfg) -> None:
    console.print(
        f"[bold]trained for {summary.target}[/] ({', '.join(summary.assets)}) on {sum(summary.windows.values())} windows "
        f"({', '.join(f'{n} of {s}' for s, n in summary.windows.items())}) in {summary.seconds:.1f} s"
    )
    for asset_id, ranges in summary.normal_ranges.items():
        table = Table(title=f"normal ranges learned for {asset_id} (window means, 0.5 %..99.5 %)")
        table.add_column("tag")
        table.add_column("unit")
        table.add_column("low", justify="right")
        table.add_column("high", justify="right")
        asset = cfg.asset(asset_id)
        units = {t.id: t.unit for t in asset.tags}
        for tag, (low, high) in ranges.items():
            table.add_row(tag, units.get(tag, ""), f"{low:.4g}", f"{high:.4g}")
        console.print(table)
    table = Table(title=f"detectors (false-alarm rate asked: {cfg.detectors.false_alarm_rate:g} per window)")
    for column in ("detector", "version", "scale", "fit / calibrate / validate windows", "validation false-alarm rate", "stored at"):
        table.add_column(column)
    for trained in summary.detectors:
        for scale, metrics in trained.metrics.items():
            if "skipped" in metrics:
                table.add_row(trained.detector, "-", scale, metrics["skipped"], "-", "-")
                continue
            windows = f"{metrics.get('fit_windows')} / {metrics.get('calibration_windows')} / {metrics.get('validation_windows')}"
            rate = metrics.get("validation_false_alarm_rate")
            table.add_row(trained.detector, str(trained.version), scale, windows, "-" if rate is None else f"{rate:.4f}", trained.path)
    console.print(table)


def publish_announcements(cfg, announcements: list[dict]) -> None:
    """Send model announcements to the compacted models topic (key <target>/<detector>)."""
    from confluent_kafka import Producer

    from stream.kafka_admin import ensure_topics
    from stream.wire import encode_message

    ensure_topics(cfg.kafka)
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "enable.idempotence": True, "acks": "all"})
    errors = []
    for message in announcements:
        target = message.get("asset_id") or f"type:{message['asset_type']}"
        key = f"{target}/{message['detector']}"
        producer.produce(cfg.kafka.topics.models, key=key.encode(), value=encode_message(message), on_delivery=lambda err, msg: errors.append(err) if err else None)
    remaining = producer.flush(30)
    if remaining or errors:
        raise ValueError(f"announcing on {cfg.kafka.topics.models} failed: {errors or f'{remaining} messages not delivered in 30 s'}")
    console.print(f"announced {len(announcements)} model version(s) on {cfg.kafka.topics.models}")
