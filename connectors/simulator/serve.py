"""`edgewatch simulate`: the simulated plant behind real OPC UA and Modbus servers.

Every connection of the plant file gets a server at its address: an asyncua
server for each ``connections.opcua`` entry, a pymodbus TCP server (with all
its unit ids) for each ``connections.modbus`` entry. Each tag with a source is
served at exactly the node or register its source names, so `edgewatch
connect` reads the simulator with the very configuration it would use on the
plant floor. The values come from :class:`PlantSimulation` (physics, load
cycle, setpoint changes, scheduled faults); the fault schedule's ground truth
is written to a JSON Lines file when the simulation starts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from connectors.simulator.faults import FaultSpec, parse_faults
from connectors.simulator.plant import PlantSimulation
from stream.config import ModbusSource, OpcUaSource, ServiceConfig

log = logging.getLogger(__name__)

#: config asset type -> simulated model type.
SIMULATED_TYPES = {"pump": "pump", "motor": "motor", "fan": "fan", "compressor": "compressor", "generic": "generic"}


def simulated_assets(config: ServiceConfig) -> list[tuple[str, str]]:
    """The assets that have at least one tag with a source, checked against the model catalogues."""
    served = [a for a in config.assets if any(t.source is not None for t in a.tags)]
    for a in served:
        if a.type not in SIMULATED_TYPES:
            raise ValueError(
                f'device "{a.id}": the simulator has no model of a {a.type} (a type declared under fusion.asset_types); '
                f"it simulates {', '.join(SIMULATED_TYPES)}: give the asset's tags no source, or serve it from another plant"
            )
    assets = [(a.id, SIMULATED_TYPES[a.type]) for a in served]
    if not assets:
        raise ValueError("no tag of the configuration has a source (OPC UA node or Modbus register): nothing to serve")
    return assets


def check_tags(config: ServiceConfig, simulation: PlantSimulation) -> None:
    """Every tag with a source must be a signal the asset's model produces."""
    problems = []
    for asset in config.assets:
        if asset.id not in simulation.asset_ids:
            continue
        signals = simulation.signals(asset.id)
        for tag in asset.tags:
            if tag.source is not None and tag.id not in signals:
                problems.append(f'device "{asset.id}" tag "{tag.id}": a simulated {asset.type} has no such signal; it has {", ".join(signals)}')
    if problems:
        raise ValueError("cannot simulate this plant file:\n  " + "\n  ".join(problems))


class SimulatedPlant:
    """The simulation plus its servers. ``listen_host`` overrides the host of every
    connection (``0.0.0.0`` in a container whose clients use a service name)."""

    def __init__(
        self,
        config: ServiceConfig,
        extra_faults: list[FaultSpec | str] = (),
        *,
        start_us: int | None = None,
        listen_host: str | None = None,
        rate_hz: float | None = None,
    ):
        settings = config.simulator
        self.config = config
        self.rate_hz = rate_hz or settings.rate_hz
        self.start_us = start_us if start_us is not None else time.time_ns() // 1000
        faults = parse_faults([*settings.faults, *extra_faults])
        self.simulation = PlantSimulation(
            simulated_assets(config), faults, seed=settings.seed, start_us=self.start_us, load_cycle_period_s=settings.load_cycle_period_s
        )
        check_tags(config, self.simulation)
        self.listen_host = listen_host
        self.opcua_servers = []
        self.modbus_servers = []
        self.updates = 0
        self.late_updates = 0
        self._build_servers()

    def _build_servers(self) -> None:
        from connectors.modbus.simserver import SimModbusServer
        from connectors.opcua.simserver import SimOpcUaServer

        for connection in self.config.connections.opcua:
            tags = [(a, t) for a, t in self.config.sources(connection.id) if isinstance(t.source, OpcUaSource)]
            if not tags:
                continue
            endpoint = connection.endpoint
            if self.listen_host:
                url = urlparse(endpoint)
                endpoint = url._replace(netloc=f"{self.listen_host}:{url.port or 4840}").geturl()
            kwargs = {}
            if connection.security.policy != "None":
                kwargs = self._secured_endpoint(connection)
            if connection.username:
                password = connection.password if connection.password is not None else os.environ.get(connection.password_env or "", "")
                kwargs["users"] = {connection.username: password}
            self.opcua_servers.append((SimOpcUaServer(connection, tags, endpoint=endpoint, **kwargs), tags))
        for connection in self.config.connections.modbus:
            tags = [(a, t) for a, t in self.config.sources(connection.id) if isinstance(t.source, ModbusSource)]
            if tags:
                self.modbus_servers.append((SimModbusServer(connection, tags, host=self.listen_host), tags))

    def _secured_endpoint(self, connection) -> dict:
        """A server certificate for a secured connection, created once under simulator.pki_dir.

        The connector refuses an untrusted server: trust this certificate with
        `edgewatch opcua trust` (or copy it into the connection's trust_dir)."""
        from connectors.opcua.security import create_certificate

        pki = Path(self.config.simulator.pki_dir)
        cert, key = pki / f"{connection.id}-server-cert.der", pki / f"{connection.id}-server-key.pem"
        if not (cert.exists() and key.exists()):
            host = urlparse(connection.endpoint).hostname or "localhost"
            create_certificate(cert, key, "urn:edgewatch:simulator", hostname=host)
        policy = f"{connection.security.policy}_{connection.security.mode}"
        log.info("simulated OPC UA server %s offers %s with the certificate %s", connection.id, policy, cert)
        return {"security_policies": ["None", policy], "server_certificate": cert, "server_private_key": key}

    def write_ground_truth(self) -> Path:
        path = Path(self.config.simulator.ground_truth_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.simulation.write_ground_truth(path)
        return path

    @property
    def servers(self) -> list:
        return [server for server, _ in (*self.opcua_servers, *self.modbus_servers)]

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self) -> None:
        for server in self.servers:
            try:
                await server.stop()
            except Exception:  # one server failing to stop must not keep the others running
                log.exception("stopping a simulated server failed")

    async def update(self, t_us: int) -> None:
        """Publish every tag's value at event time ``t_us`` on its server."""
        values = self.simulation.values_at(t_us)
        for server, tags in self.opcua_servers:
            await server.write_many([(a.id, t.id, values[a.id][t.id][0], t_us, values[a.id][t.id][1]) for a, t in tags])
        for server, tags in self.modbus_servers:
            for a, t in tags:
                value, quality = values[a.id][t.id]
                # Modbus has no quality: a dropped-out sensor leaves its register at
                # the last value, as a real transmitter behind a PLC often does.
                if quality == 0 and math.isfinite(value):
                    server.set(a.id, t.id, value)
        self.updates += 1

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        """Serve and update on a fixed grid of 1/rate_hz (event times are grid points,
        so every update of every tag has a distinct, evenly spaced source timestamp)."""
        step_us = int(round(1e6 / self.rate_hz))
        await self.start()
        try:
            next_us = (time.time_ns() // 1000 // step_us + 1) * step_us
            end = None if duration_s is None else time.monotonic() + duration_s
            while not stop.is_set() and (end is None or time.monotonic() < end):
                delay = (next_us - time.time_ns() // 1000) / 1e6
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                        break
                    except asyncio.TimeoutError:
                        pass
                await self.update(next_us)
                next_us += step_us
                behind = time.time_ns() // 1000 - next_us
                if behind > step_us:  # overloaded: skip ahead rather than pile up, and count it
                    skipped = behind // step_us
                    self.late_updates += skipped
                    next_us += skipped * step_us
        finally:
            await self.stop()

