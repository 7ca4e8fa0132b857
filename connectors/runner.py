"""`edgewatch connect`: every connector of a plant file in one process.

    OPC UA servers ─┐                                    ┌──────────────┐
                    ├─ samples ─> SpoolingSink ─> Spool ─┤ forwarder    ├─> Kafka
    Modbus devices ─┘   events                (on disk)  │ (own thread) │
                                                         └──────────────┘

The configuration is validated before any connection opens. Each connection
runs as its own asyncio task that retries with backoff, so a device that is
down never stops the others. Everything read goes to the durable spool first;
the forwarder sends it on when the broker is reachable, in order, marking late
data as replayed. A health file (JSON) says per device whether it is
connected, when it last answered, and how far behind the spool is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import orjson

from connectors.base import ConnectorEvent, DeviceHealth, now_us
from connectors.batcher import SpoolingSink
from stream.config import ConfigError, ServiceConfig

log = logging.getLogger(__name__)


def producer_config(config: ServiceConfig) -> dict:
    return {"bootstrap.servers": config.kafka.bootstrap_servers}


class ConnectorService:
    """Builds the connectors, the sink, the spool and its forwarder from one config."""

    def __init__(self, config: ServiceConfig, source: str = "the configuration", only: list[str] | None = None):
        self.config = config
        self.source = source
        self.connectors: list = []
        self._build_connectors(only or [])
        self.spool = None
        self.forwarder = None
        self.sink: SpoolingSink | None = None
        self.started_us = now_us()

    def _build_connectors(self, only: list[str]) -> None:
        from connectors.modbus.client import ModbusConnector
        from connectors.opcua.client import OpcUaConnector

        known = {c.id for c in (*self.config.connections.opcua, *self.config.connections.modbus)}
        unknown = [c for c in only if c not in known]
        if unknown:
            raise ConfigError(f"{self.source} has no connection {', '.join(unknown)} (its connections: {', '.join(sorted(known)) or 'none'})")
        self._pending_connectors = []
        for kind, connections, factory in (
            ("opcua", self.config.connections.opcua, OpcUaConnector),
            ("modbus", self.config.connections.modbus, ModbusConnector),
        ):
            for connection in connections:
                if only and connection.id not in only:
                    continue
                tags = self.config.sources(connection.id)
                if not tags:
                    log.warning("%s connection %s: no tag names it as its source; not connecting", kind, connection.id)
                    continue
                self._pending_connectors.append((kind, factory, connection, tags))
        if not self._pending_connectors:
            raise ConfigError(
                f"no tag in {self.source} has a source to read: give tags a source "
                "(source: {opcua: <connection>, node_id: ...} or {modbus: <connection>, address: ...}); "
                "see connectors/opcua/README.md and connectors/modbus/README.md"
            )

    def healths(self) -> list[DeviceHealth]:
        out = []
        for connector in self.connectors:
            out.extend(getattr(connector, "healths", None) or [connector.health])
        return out

    def status(self) -> dict:
        spool = self.spool
        return {
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
            "devices": [h.to_dict() for h in self.healths()],
            "spool": {
                "dir": str(spool.directory) if spool is not None else None,
                "pending_records": spool.pending_records if spool is not None else 0,
                "pending_bytes": spool.pending_bytes if spool is not None else 0,
                "dropped_records": spool.dropped_records if spool is not None else 0,
            },
            "forwarder": self.forwarder.stats() if self.forwarder is not None else {},
            "samples_in": self.sink.samples_in if self.sink is not None else 0,
            "batches_out": self.sink.batches_out if self.sink is not None else 0,
        }

    async def run(self, stop: asyncio.Event) -> None:
        from connectors.forwarder import SpoolForwarder
        from connectors.spool import Spool

        settings = self.config.connect
        self.spool = Spool(
            Path(settings.spool_dir),
            max_bytes=int(settings.spool_max_mb * 1024 * 1024),
            fsync_interval_s=settings.spool_fsync_interval_s,
        )
        self.sink = SpoolingSink(self.spool, self.config.kafka.topics, settings.batch_interval_s, settings.max_batch_samples)
        self.forwarder = SpoolForwarder(self.spool, producer_config(self.config), replay_after_s=settings.replay_after_s)
        self.connectors = [
            factory(connection, tags, self.sink, **({"config_path": self.source} if kind == "opcua" else {}))
            for kind, factory, connection, tags in self._pending_connectors
        ]
        if self.spool.pending_records:
            log.info("spool %s holds %d records from before; they go out first, marked replayed", settings.spool_dir, self.spool.pending_records)
        self.forwarder.start()
        tasks = [asyncio.create_task(c.run(), name=f"connector-{type(c).__name__}") for c in self.connectors]
        helpers = [asyncio.create_task(self.sink.run(), name="batcher"), asyncio.create_task(self._report(), name="health")]
        log.info(
            "edgewatch connect: %d connections (%s), spool %s, Kafka %s",
            len(self.connectors),
            ", ".join(h.device for h in self.healths()),
            settings.spool_dir,
            self.config.kafka.bootstrap_servers,
        )
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)  # the batcher flushes on its way out
            pending = await asyncio.to_thread(self.forwarder.stop, 10.0)
            self._write_health()  # the last word: what was sent and what stays in the spool
            if pending:
                log.warning("%d records not yet in Kafka stay in the spool %s; the next start sends them", pending, settings.spool_dir)
            self.spool.close()

    async def _report(self) -> None:
        """Health file, spool-drop events and a log line, every health_interval_s."""
        settings = self.config.connect
        while True:
            await asyncio.sleep(settings.health_interval_s)
            records, _bytes = self.spool.take_drop_report()
            if records:
                detail = "spool full: the oldest records were dropped (or damaged records skipped; see the connector log)"
                self.sink.put_event(ConnectorEvent("spool_dropped", "spool", settings.spool_dir, now_us(), detail=detail, count=records))
            self._write_health()

    def _write_health(self) -> None:
        path = self.config.connect.health_file
        if not path:
            return
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
            tmp.replace(path)  # readers never see half a file
        except OSError as exc:
            log.warning("cannot write the health file %s: %s", path, exc)


def run_connect(config: ServiceConfig, source: str, only: list[str] | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly (spool flushed, producer drained)."""
    service = ConnectorService(config, source, only)  # validation errors before anything opens

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    asyncio.run(main())
