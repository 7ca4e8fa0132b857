"""Which read requests poll a connection's tags.

A Modbus device answers one request at a time and each answer costs a round
trip (often tens of milliseconds through a serial gateway), so the plan reads
as many tags per request as it can: tags of the same unit id, table and poll
interval whose addresses are contiguous, or nearly so, go into one request.
"Nearly" is ``max_read_gap``: up to that many unused registers between two tags
are read and thrown away rather than paying for a second request. Set it to 0
for a device that answers "illegal data address" for the holes in its map.

A request never exceeds ``max_registers_per_read`` registers (the protocol
allows 125) or 2000 coils / discrete inputs. Each request lists the tags it
serves and where each one starts in the answer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from connectors.modbus.codec import TagCodec
from stream.config import AssetConfig, ModbusConnection, ModbusSource, TagConfig

BIT_TABLES = ("coil", "discrete")
#: the most coils or discrete inputs one request may read (Modbus application protocol, 6.1 / 6.2).
MAX_BITS_PER_READ = 2000
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


@dataclass(frozen=True)
class TagSlot:
    """One tag inside a request's answer."""

    asset_id: str
    tag_id: str
    #: registers (coils, inputs) from the request's first address to the tag's.
    offset: int
    codec: TagCodec

    @property
    def source(self) -> ModbusSource:
        return self.codec.source


@dataclass(frozen=True)
class AssetSlots:
    """The tags of one asset in a request: what one ``put_samples`` call carries."""

    asset_id: str
    tag_ids: tuple[str, ...]
    slots: tuple[TagSlot, ...]


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read: ``count`` registers (or bits) of ``table`` from ``address``
    of unit ``unit_id``, every ``interval_s`` seconds."""

    unit_id: int
    table: str
    address: int
    count: int
    interval_s: float
    slots: tuple[TagSlot, ...]
    by_asset: tuple[AssetSlots, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[TagSlot]] = defaultdict(list)
        for slot in self.slots:
            grouped[slot.asset_id].append(slot)
        object.__setattr__(
            self,
            "by_asset",
            tuple(AssetSlots(asset, tuple(s.tag_id for s in slots), tuple(slots)) for asset, slots in grouped.items()),
        )

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.table]

    @property
    def end(self) -> int:
        """The first address after the request."""
        return self.address + self.count

    def describe(self) -> str:
        last = self.end - 1
        span = f"address {self.address}" if last == self.address else f"addresses {self.address}..{last}"
        return f"unit {self.unit_id} {self.table} {span}"

    def tag_names(self) -> str:
        return ", ".join(f"{s.asset_id}/{s.tag_id}" for s in self.slots)

    def split(self) -> list["ReadRequest"]:
        """One request per distinct tag span, to find which address a device refuses
        (tags sharing a register, such as bit fields, stay together)."""
        spans: dict[tuple[int, int], list[TagSlot]] = defaultdict(list)
        for slot in self.slots:
            spans[(self.address + slot.offset, slot.codec.words)].append(slot)
        return [
            ReadRequest(
                self.unit_id,
                self.table,
                address,
                words,
                self.interval_s,
                tuple(TagSlot(s.asset_id, s.tag_id, 0, s.codec) for s in slots),
            )
            for (address, words), slots in sorted(spans.items())
        ]


def poll_interval(connection: ModbusConnection, source: ModbusSource) -> float:
    """The tag's poll interval: its poll group's, else the connection's."""
    if source.poll_group is None:
        return connection.poll_interval_s
    try:
        return connection.poll_groups[source.poll_group]
    except KeyError:
        known = ", ".join(sorted(connection.poll_groups)) or "none defined"
        raise ValueError(f'connection "{connection.id}" has no poll group "{source.poll_group}" (its poll_groups: {known})') from None


def max_span(connection: ModbusConnection, table: str) -> int:
    return MAX_BITS_PER_READ if table in BIT_TABLES else connection.max_registers_per_read


def plan_reads(connection: ModbusConnection, tags: Iterable[tuple[AssetConfig, TagConfig]]) -> list[ReadRequest]:
    """The read requests that poll ``tags`` (pairs whose source is a ModbusSource
    naming ``connection``), ordered by poll interval, unit id, table and address.

    Raises ValueError for a tag this connection cannot read as configured.
    """
    groups: dict[tuple[float, int, str], list[TagSlot]] = defaultdict(list)
    for asset, tag in tags:
        source = tag.source
        if not isinstance(source, ModbusSource) or source.modbus != connection.id:
            raise ValueError(f'tag {asset.id}/{tag.id} is not read through Modbus connection "{connection.id}"')
        codec = TagCodec(source, connection.byte_order)
        limit = max_span(connection, source.table)
        if codec.words > limit:
            raise ValueError(
                f"tag {asset.id}/{tag.id}: a {source.type} spans {codec.words} registers but connection "
                f'"{connection.id}" reads at most max_registers_per_read={limit}: raise max_registers_per_read'
            )
        # offset holds the tag's absolute address until the request's start is known
        groups[(poll_interval(connection, source), source.unit_id, source.table)].append(TagSlot(asset.id, tag.id, source.address, codec))

    requests: list[ReadRequest] = []
    for (interval_s, unit_id, table), slots in sorted(groups.items()):
        limit = max_span(connection, table)
        pending: list[TagSlot] = []
        start = end = 0

        def close() -> None:
            requests.append(
                ReadRequest(unit_id, table, start, end - start, interval_s, tuple(TagSlot(s.asset_id, s.tag_id, s.offset - start, s.codec) for s in pending))
            )

        for slot in sorted(slots, key=lambda s: (s.offset, -s.codec.words)):
            address, tag_end = slot.offset, slot.offset + slot.codec.words
            if pending and address - end <= connection.max_read_gap and max(end, tag_end) - start <= limit:
                pending.append(slot)
                end = max(end, tag_end)
                continue
            if pending:
                close()
            pending, start, end = [slot], address, tag_end
        if pending:
            close()
    return requests
