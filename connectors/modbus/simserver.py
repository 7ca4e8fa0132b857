"""A simulated Modbus device or gateway: a real pymodbus TCP server whose memory
is laid out by an edgewatch configuration.

It serves every unit id the tags of one ``ModbusConnection`` name, with the
framer of that connection (``rtu``: RTU frames over TCP, as a serial gateway
speaks), and holds each table (holding, input, coil, discrete) large enough for
the addresses the tags use. Reads outside that range are answered with the
Modbus exception "illegal data address", as a real device does.

The plant simulator writes engineering values with :meth:`SimModbusServer.set`
(encoded exactly as the connector decodes them: scale/offset, type, byte order,
bit field); golden tests load raw words with :meth:`~SimModbusServer.set_registers`.
Faults of the data path are simulated too: :meth:`~SimModbusServer.set_online`
makes one unit or the whole server stop answering (requests time out, the TCP
connection stays open, as with a hung device or a dead serial line behind a
gateway), :meth:`~SimModbusServer.stop` closes the port (connection refused),
and :meth:`~SimModbusServer.refuse_addresses` makes addresses answer "illegal
data address". ``requests`` counts the read requests each unit received, so
tests can check how reads are coalesced.

``set`` and ``set_registers`` may be called from another thread: each replaces
a tag's registers in one list slice assignment.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Iterable, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice

from connectors.modbus.client import FRAMERS
from connectors.modbus.codec import TagCodec
from connectors.modbus.plan import FUNCTION_CODES
from stream.config import AssetConfig, ModbusConnection, ModbusSource, TagConfig

TABLES = ("holding", "input", "coil", "discrete")
_TABLE_OF_FUNCTION = {
    1: "coil", 5: "coil", 15: "coil",
    2: "discrete",
    3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding",
    4: "input",
}  # fmt: skip
_READ_FUNCTIONS = set(FUNCTION_CODES.values())


class _Unit:
    """The memory of one unit id: a list per table (registers, or 0/1 per coil)."""

    def __init__(self, sizes: dict[str, int]):
        self.tables: dict[str, list[int]] = {table: [0] * sizes.get(table, 0) for table in TABLES}
        self.refused: dict[str, set[int]] = {table: set() for table in TABLES}
        self.online = True

    def ensure(self, table: str, end: int) -> None:
        memory = self.tables[table]
        if end > len(memory):
            memory.extend([0] * (end - len(memory)))


class _Datastore:
    """What the pymodbus server reads and writes through (its ``context``)."""

    def __init__(self, owner: "SimModbusServer"):
        self.owner = owner

    def _unit(self, device_id: int) -> _Unit | None:
        if not self.owner.online:
            raise NoSuchIdException("simulated: the server does not answer")
        unit = self.owner.units.get(device_id)
        if unit is not None and not unit.online:
            raise NoSuchIdException(f"simulated: unit {device_id} does not answer")
        return unit

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1):
        if func_code in _READ_FUNCTIONS:
            self.owner.requests[device_id] += 1
        unit = self._unit(device_id)
        if unit is None:  # a gateway asked for a unit it does not know
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        memory = unit.tables[table]
        if address + count > len(memory) or unit.refused[table].intersection(range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        values = memory[address : address + count]
        return [bool(v) for v in values] if table in ("coil", "discrete") else values

    async def async_setValues(self, device_id: int, func_code: int, address: int, values) -> ExcCodes | None:
        unit = self._unit(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _TABLE_OF_FUNCTION.get(func_code)
        if table not in ("holding", "coil"):
            return ExcCodes.ILLEGAL_FUNCTION
        memory = unit.tables[table]
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if address + len(values) > len(memory):
            return ExcCodes.ILLEGAL_ADDRESS
        memory[address : address + len(values)] = [int(v) for v in values]
        return None

    def device_ids(self) -> list[int]:
        return sorted(self.owner.units)


class SimModbusServer:
    """A Modbus TCP server that serves the tags of ``connection``.

    ``host`` / ``port`` default to the connection's; ``port=0`` picks a free port
    (read it from :attr:`port` after :meth:`start`).
    """

    def __init__(
        self,
        connection: ModbusConnection,
        tags: list[tuple[AssetConfig, TagConfig]],
        host: str | None = None,
        port: int | None = None,
    ):
        self.connection = connection
        self.host = host if host is not None else connection.host
        self.port = port if port is not None else connection.port
        #: read requests received per unit id (answered or not).
        self.requests: Counter[int] = Counter()
        #: False: no unit answers (requests time out).
        self.online = True
        self._codecs: dict[tuple[str, str], TagCodec] = {}
        sizes: dict[int, dict[str, int]] = {}
        for asset, tag in tags:
            source = tag.source
            if not isinstance(source, ModbusSource) or source.modbus != connection.id:
                raise ValueError(f'tag {asset.id}/{tag.id} is not read through Modbus connection "{connection.id}"')
            self._codecs[(asset.id, tag.id)] = TagCodec(source, connection.byte_order)
            unit_sizes = sizes.setdefault(source.unit_id, {})
            unit_sizes[source.table] = max(unit_sizes.get(source.table, 0), source.address + source.words)
        self.units: dict[int, _Unit] = {unit_id: _Unit(unit_sizes) for unit_id, unit_sizes in sizes.items()}
        self._server: ModbusTcpServer | None = None

    @property
    def unit_ids(self) -> list[int]:
        return sorted(self.units)

    async def start(self) -> None:
        """Listen; returns once the port accepts connections."""
        if self._server is not None:
            return
        # pymodbus wants a datastore at construction; ours replaces it below.
        server = ModbusTcpServer(
            SimDevice(id=0, simdata=SimData(0)),
            framer=FRAMERS[self.connection.framer],
            address=(self.host, self.port),
            # a unit that is switched off must stay silent, not answer "no such device"
            ignore_missing_devices=True,
        )
        server.context = _Datastore(self)  # type: ignore[assignment]
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"simulated Modbus server {self.connection.id} cannot listen on {self.host}:{self.port} (port in use?)") from exc
        if self.port == 0:
            self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        """Close the port and every client connection (clients see the connection drop)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports finish closing

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> "SimModbusServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- contents -------------------------------------------------------------

    def _memory(self, unit_id: int, table: str) -> _Unit:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}: one of {', '.join(TABLES)}")
        unit = self.units.get(unit_id)
        if unit is None:
            raise KeyError(f"simulated server {self.connection.id} serves no unit {unit_id} (its units: {self.unit_ids})")
        return unit

    def set(self, asset_id: str, tag_id: str, value: float) -> None:
        """Store engineering ``value`` of a tag, encoded as the device would hold it."""
        codec = self._codecs.get((asset_id, tag_id))
        if codec is None:
            raise KeyError(f"tag {asset_id}/{tag_id} is not served by simulated server {self.connection.id}")
        source = codec.source
        memory = self.units[source.unit_id].tables[source.table]
        start, end = source.address, source.address + codec.words
        memory[start:end] = codec.encode(value, memory[start:end])

    def set_registers(self, unit_id: int, table: str, address: int, words: Sequence[int]) -> None:
        """Store raw contents from ``address`` on: 16-bit words, or 0/1 per coil or
        discrete input. The table grows if needed."""
        unit = self._memory(unit_id, table)
        limit = 1 if table in ("coil", "discrete") else 0xFFFF
        for word in words:
            if not 0 <= int(word) <= limit:
                raise ValueError(f"{word} does not fit one {table} {'bit' if limit == 1 else 'register'} (0..{limit})")
        unit.ensure(table, address + len(words))
        unit.tables[table][address : address + len(words)] = [int(w) for w in words]

    def registers(self, unit_id: int, table: str, address: int, count: int = 1) -> list[int]:
        """Raw contents, as :meth:`set_registers` takes them."""
        return list(self._memory(unit_id, table).tables[table][address : address + count])

    def set_online(self, online: bool, unit_id: int | None = None) -> None:
        """Make one unit (or, with no ``unit_id``, the whole server) stop answering or
        answer again. The TCP connection stays open: requests simply time out."""
        if unit_id is None:
            self.online = online
        else:
            self._memory(unit_id, "holding").online = online

    def refuse_addresses(self, unit_id: int, table: str, addresses: Iterable[int]) -> None:
        """Answer "illegal data address" (exception 02) to any read touching ``addresses``."""
        self._memory(unit_id, table).refused[table].update(addresses)

    def reset_counters(self) -> None:
        self.requests.clear()
