"""`edgewatch backtest`: labelled historian exports replayed offline through the
worker's own objects, and scored (the work is in stream.backtest and
stream.evaluation). Registers itself on the `edgewatch` app when imported by
edgewatch.cli."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console()

#: a file's warm-up or replay of this many rows or more gets a progress bar
PROGRESS_ROWS = 10_000


def _split(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _warmup(text: str) -> tuple[Optional[float], Optional[float]]:
    """'8h' -> (seconds, None); '30%' -> (None, 0.3)."""
    from stream.backtest import parse_duration_s

    share = re.match(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$", text)
    if share:
        value = float(share.group(1)) / 100
        if not 0 < value < 1:
            raise typer.BadParameter(f"{text!r}: a share of the rows must be above 0 % and below 100 %", param_hint="--warmup")
        return None, value
    try:
        return parse_duration_s(text), None
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}, or a share of the rows such as 50%", param_hint="--warmup") from None


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _seconds(x) -> str:
    return "-" if x is None else f"{x:.0f} s"


def print_metrics(results, totals) -> None:
    table = Table(title="backtest: anomalous = label, predicted = fault alarm open")
    for column in ("file", "rows", "anomalous", "alarm", "precision", "recall", "F1", "false-alarm rate", "missed-alarm rate",
                   "episodes detected", "event recall", "mean delay"):
        table.add_column(column, justify="left" if column == "file" else "right")

    def row(name, m, style=None):
        table.add_row(
            name, str(m["rows"]), str(m["anomalous_rows"]), str(m["alarm_rows"]), _ratio(m["precision"]), _ratio(m["recall"]),
            _ratio(m["f1"]), _ratio(m["false_alarm_rate"]), _ratio(m["missed_alarm_rate"]),
            f"{m['episodes_detected']} / {m['episodes']}", _ratio(m["event_recall"]), _seconds(m["mean_detection_delay_s"]), style=style,
        )

    for result in results:
        row(result.name, result.metrics)
    if len(results) > 1:
        row("all files", totals, style="bold")
    console.print(table)


def register(app: typer.Typer, user_errors) -> None:
    @app.command()
    @user_errors
    def backtest(
        inputs: list[Path] = typer.Argument(..., help="CSV files, or folders of them (*.csv): each the recording of ONE asset."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="A plant file: replay as its asset --asset (its tags must be the columns)."),
        asset: Optional[str] = typer.Option(None, "--asset", help="With --config: the configured asset the files record."),
        separator: str = typer.Option(",", "--separator", help="The CSV field separator."),
        time_column: Optional[str] = typer.Option(None, "--time-column", help="The time column (default: time; none with --sample-period)."),
        time_format: str = typer.Option("iso", "--time-format", help="iso, epoch_s, epoch_ms, epoch_us or a strptime pattern (no offset = UTC)."),
        sample_period: Optional[str] = typer.Option(None, "--sample-period", help="No time column: rows are this far apart (e.g. 1s, 3m)."),
        start: Optional[str] = typer.Option(None, "--start", help="With --sample-period: the first row's time, ISO 8601 (default 2000-01-01T00:00Z)."),
        label_columns: Optional[str] = typer.Option(
            None, "--label-columns",
            help="Comma list of label columns: not features, used for scoring; non-empty and non-zero = anomalous, a text names the fault. "
            "Default: columns named label, labels, anomaly, anomalous, is_anomaly or fault.",
        ),
        tags: Optional[str] = typer.Option(None, "--tags", help="Comma list of the tag columns (default: every column of numbers but time and labels)."),
        windows: Optional[str] = typer.Option(
            None, "--windows",
            help="Window scales, comma separated, each a length or length/hop (e.g. 30m/3m,1h). Default: the configured scales (1s, 10s, 1m without --config) "
            "whose windows hold at least 5 samples at the median sample period; if none does, the shortest of 1s, 2s, 5s, 10s, 15s, 30s, 1m, 2m, 5m, 10m, "
            "15m, 30m, 1h, 2h, 3h, 6h, 12h, 24h... that holds 5 samples, plus the shortest at least 10 times as long.",
        ),
        warmup: Optional[str] = typer.Option(None, "--warmup", help="Warm-up (fits the detectors): a duration (8h) or a share of the rows (50%); default 50%."),
        warmup_rows: Optional[int] = typer.Option(None, "--warmup-rows", min=1, help="Warm-up: the first N rows of each file."),
        detector: list[str] = typer.Option([], "--detector", help="isolation_forest or lstm_autoencoder (repeatable); default: every enabled one."),
        registry: Optional[Path] = typer.Option(None, "--registry", help="Keep the trained models in this registry (default: a temporary one under --out)."),
        out: Path = typer.Option(Path("backtest-out"), "--out", "-o", help="Output folder: <stem>.csv, <stem>.summary.json, summary.json."),
        seed: int = typer.Option(0, "--seed", help="Model seed."),
    ) -> None:
        """Replay labelled CSV exports through the worker's pipeline and score its alarms against the labels.

        Per file: the warm-up fits the detectors (as `edgewatch train`); the rest is replayed in event time through windows, rules, detectors, fusion and alarms. Out: one row per replayed input row (time, probability, alarm, top_fault, labels) and the metrics."""
        from stream.backtest import BacktestOptions, parse_duration_s, parse_windows, run_backtest, write_outputs
        from stream.config import load_config
        from stream.history import iso_to_us

        options = BacktestOptions(separator=separator, time_format=time_format, seed=seed, out_dir=out)
        if config is not None or asset is not None:
            if config is None or asset is None:
                raise typer.BadParameter("--config and --asset go together (without both, a generic asset is built from the columns)")
            options.config = load_config(config)
            options.asset_id = asset
        if sample_period is not None:
            if time_column is not None:
                raise typer.BadParameter("give --time-column or --sample-period, not both", param_hint="--sample-period")
            try:
                options.sample_period_s = parse_duration_s(sample_period)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--sample-period") from None
            options.time_column = None
            if start is not None:
                try:
                    options.start_us = iso_to_us(start)
                except ValueError:
                    raise typer.BadParameter(f"{start!r} is not an ISO 8601 time (e.g. 2026-01-01T00:00Z)", param_hint="--start") from None
        else:
            if start is not None:
                raise typer.BadParameter("--start is for files without a time column (with --sample-period)", param_hint="--start")
            options.time_column = time_column or "time"
        options.label_columns = _split(label_columns)
        options.tags = _split(tags)
        if options.tags == []:
            raise typer.BadParameter("names no column", param_hint="--tags")
        if windows is not None:
            try:
                options.windows = parse_windows(windows)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--windows") from None
        if warmup is not None and warmup_rows is not None:
            raise typer.BadParameter("give --warmup or --warmup-rows, not both", param_hint="--warmup")
        if warmup is not None:
            options.warmup_s, options.warmup_share = _warmup(warmup)
        options.warmup_rows = warmup_rows
        options.detectors = list(detector) or None
        options.registry_dir = str(registry) if registry is not None else None

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeRemainingColumn(),
            console=console, transient=True,
        ) as progress:
            tasks: dict[str, int] = {}

            def on_progress(what: str, done: int, total: int) -> None:
                if total < PROGRESS_ROWS:
                    return
                phase = what.split(":")[0]  # "training a: fitting ..." stays on the bar of "training a"
                if phase not in tasks:
                    tasks[phase] = progress.add_task(what, total=total)
                progress.update(tasks[phase], completed=min(done, total), description=what)

            results, totals = run_backtest(inputs, options, on_progress=on_progress)

        for result in results:
            for note in result.info.get("notes", []):
                console.print(f"[dim]{result.name}:[/] {note}", highlight=False, soft_wrap=True)
        written = write_outputs(results, totals, out, options=_options_record(options, inputs))
        print_metrics(results, totals)
        console.print(f"wrote {len(written)} files to {out}", highlight=False)
        try:
            from edgewatch.report import write_report
        except ImportError as exc:
            console.print(f"[dim]no report: edgewatch.report is not available ({exc})[/]", highlight=False)
        else:
            report = write_report(results, totals, out)
            if report is not None:
                console.print(f"report: {report}", highlight=False)


def _options_record(options, inputs) -> dict:
    """What summary.json says the backtest ran with."""
    return {
        "inputs": [str(p) for p in inputs],
        "asset": options.asset_id,
        "time_column": options.time_column,
        "time_format": options.time_format if options.time_column else None,
        "sample_period_s": options.sample_period_s,
        "label_columns": options.label_columns,
        "tags": options.tags,
        "windows": [s.name for s in options.windows] if options.windows else None,
        "warmup_rows": options.warmup_rows,
        "warmup_s": options.warmup_s,
        "warmup_share": options.warmup_share,
        "detectors": options.detectors,
        "registry": options.registry_dir,
        "seed": options.seed,
    }
