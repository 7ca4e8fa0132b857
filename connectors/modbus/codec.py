"""Modbus register contents <-> engineering values.

Modbus moves 16-bit registers, each sent most significant byte first. A value
wider than one register is spread over several, and devices disagree on the
order: the ``byte_order`` of a tag (default: its connection's) says how. Name
the bytes of the value in big-endian order A, B, C, D (A the most significant);
the order names the bytes as they appear in the registers, first register
first:

=========  ==========================  ===================  ==================
order      32-bit registers            64-bit registers     16-bit register
=========  ==========================  ===================  ==================
ABCD       [AB] [CD]  (Modbus default) [AB][CD][EF][GH]     [AB]
DCBA       [DC] [BA]  (little-endian)  [HG][FE][DC][BA]     [BA] (bytes swapped)
BADC       [BA] [DC]  (bytes swapped)  [BA][DC][FE][HG]     [BA] (bytes swapped)
CDAB       [CD] [AB]  (words swapped)  [GH][EF][CD][AB]     [AB]
=========  ==========================  ===================  ==================

So an order is two independent switches: *word swap* (DCBA, CDAB: the last
register holds the most significant word) and *byte swap* (DCBA, BADC: each
register holds its two bytes low byte first). 64-bit values extend this
naturally: ABCDEFGH, HGFEDCBA, BADCFEHG, GHEFCDAB. A 16-bit value has no word
order, only the byte swap. Example: float32 123.456 is 0x42F6E979, read from
registers [0x42F6, 0xE979] (ABCD), [0x79E9, 0xF642] (DCBA), [0xF642, 0x79E9]
(BADC), [0xE979, 0x42F6] (CDAB).

Bit fields (``bit``, ``bits``) are cut from one register's value as the
protocol transmits it (bit 0 = least significant bit of the 16-bit register);
``byte_order`` does not apply to them, as device manuals number bits of the
register value. A ``uint16`` field is unsigned, an ``int16`` field is two's
complement over its ``bits`` width (so a 1-bit int16 field reads 0 or -1: use
uint16 or bool for flags), a ``bool`` field reads 1 when any of its bits is set.
Coils and discrete inputs read 0 or 1.

The engineering value is ``raw * scale + offset`` in every case.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

from stream.config import MODBUS_TYPE_WORDS, ByteOrder, ModbusSource, ModbusType

BYTE_ORDERS: tuple[ByteOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
TYPES: tuple[ModbusType, ...] = ("int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "bool")

# struct codes of the value, big-endian ("bool" is a bit field, handled apart).
_VALUE_FORMAT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "float32": "f", "float64": "d"}
_INT_RANGE = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
}
_FLOAT32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


def word_swapped(byte_order: ByteOrder) -> bool:
    """The last register holds the most significant word."""
    return byte_order in ("DCBA", "CDAB")


def byte_swapped(byte_order: ByteOrder) -> bool:
    """Each register holds its low byte first."""
    return byte_order in ("DCBA", "BADC")


def decode_raw(words: Sequence[int], type_: ModbusType, byte_order: ByteOrder = "ABCD") -> int | float:
    """The raw number held by ``words`` (registers in address order) as ``type_``.

    ``bool`` reads the whole register as a flag (non-zero -> 1).
    """
    if type_ == "bool":
        return 1 if words[0] else 0
    n = MODBUS_TYPE_WORDS[type_]
    if len(words) < n:
        raise ValueError(f"a {type_} needs {n} registers, got {len(words)}")
    ordered = words[n - 1 :: -1] if word_swapped(byte_order) else words[:n]
    data = struct.pack(("<" if byte_swapped(byte_order) else ">") + "H" * n, *ordered)
    return struct.unpack(">" + _VALUE_FORMAT[type_], data)[0]


def encode_raw(raw: int | float, type_: ModbusType, byte_order: ByteOrder = "ABCD") -> list[int]:
    """The registers that hold ``raw`` as ``type_``: the inverse of :func:`decode_raw`.

    Integers out of the type's range raise ValueError; use :func:`raw_from_value`
    first to round and saturate an engineering value.
    """
    if type_ == "bool":
        return [1 if raw else 0]
    n = MODBUS_TYPE_WORDS[type_]
    if type_ in _INT_RANGE:
        low, high = _INT_RANGE[type_]
        if not low <= raw <= high:
            raise ValueError(f"{raw} does not fit a {type_} ({low}..{high})")
        raw = int(raw)
    data = struct.pack(">" + _VALUE_FORMAT[type_], raw)
    words = list(struct.unpack(("<" if byte_swapped(byte_order) else ">") + "H" * n, data))
    if word_swapped(byte_order):
        words.reverse()
    return words


def field_mask(bits: int) -> int:
    return (1 << bits) - 1


def decode_bit_field(register: int, bit: int, bits: int, type_: ModbusType) -> int:
    """Bits ``bit`` .. ``bit + bits - 1`` of one register value (see the module docstring)."""
    field = (register >> bit) & field_mask(bits)
    if type_ == "bool":
        return 1 if field else 0
    if type_ == "int16" and field >> (bits - 1):
        field -= 1 << bits
    return field


def encode_bit_field(register: int, field: int, bit: int, bits: int) -> int:
    """``register`` with bits ``bit`` .. ``bit + bits - 1`` replaced by ``field``; the
    other bits stay as they are (a bit field shares its register with others)."""
    mask = field_mask(bits) << bit
    return (register & ~mask & 0xFFFF) | ((field << bit) & mask)


def bit_field_range(bits: int, type_: ModbusType) -> tuple[int, int]:
    if type_ == "bool":
        return 0, 1
    if type_ == "int16":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, field_mask(bits)


def raw_from_value(value: float, source: ModbusSource) -> int | float:
    """The raw number a device would hold for engineering ``value``: the inverse of
    ``raw * scale + offset``, rounded to the nearest integer and saturated at the
    range of an integer type or bit field (what a device's own conversion does).

    Raises ValueError for NaN or an infinite value on an integer type, which no
    register can hold.
    """
    if isinstance(value, int) and source.scale == 1 and source.offset == 0:
        raw = value  # exact, also for int64 beyond float64's 53-bit mantissa
    else:
        raw = (value - source.offset) / source.scale if source.scale else 0.0
    if source.type in ("float32", "float64") and source.bit is None:
        raw = float(raw)
        if source.type == "float32" and math.isfinite(raw) and abs(raw) > _FLOAT32_MAX:
            return math.copysign(math.inf, raw)
        return raw
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ValueError(f"{value} cannot be held by a {source.type} register (integers have no NaN or infinity)")
    if source.table in ("coil", "discrete") or (source.type == "bool"):
        return 1 if round(raw) else 0
    if source.bit is not None:
        low, high = bit_field_range(source.bits, source.type)
    else:
        low, high = _INT_RANGE[source.type]
    return min(max(int(round(raw)), low), high)


class TagCodec:
    """Decodes and encodes one tag, with its byte order, bit field and scaling fixed
    up front (the poll loop calls :meth:`decode` for every tag of every poll)."""

    __slots__ = ("source", "byte_order", "words", "is_bit_table", "_bit", "_bits", "_type", "_scale", "_offset", "_unpack", "_reverse", "_pack_format")

    def __init__(self, source: ModbusSource, default_byte_order: ByteOrder = "ABCD"):
        self.source = source
        self.byte_order: ByteOrder = source.byte_order or default_byte_order
        self.words = source.words
        self.is_bit_table = source.table in ("coil", "discrete")
        self._type = source.type
        self._bit = source.bit
        self._bits = source.bits
        self._scale = source.scale
        self._offset = source.offset
        n = MODBUS_TYPE_WORDS[source.type]
        self._reverse = word_swapped(self.byte_order) and n > 1
        self._pack_format = ("<" if byte_swapped(self.byte_order) else ">") + "H" * n
        self._unpack = struct.Struct(">" + _VALUE_FORMAT[source.type]).unpack if source.type in _VALUE_FORMAT else None

    def raw(self, data: Sequence, offset: int = 0) -> int | float:
        """The raw number at ``offset`` of a read response: registers, or bits for
        coils and discrete inputs."""
        if self.is_bit_table:
            return 1 if data[offset] else 0
        if self._bit is not None:
            return decode_bit_field(data[offset], self._bit, self._bits, self._type)
        if self._unpack is None:  # bool without a bit: validation forbids it, but be total
            return 1 if data[offset] else 0
        words = data[offset : offset + self.words]
        if self._reverse:
            words = words[::-1]
        return self._unpack(struct.pack(self._pack_format, *words))[0]

    def decode(self, data: Sequence, offset: int = 0) -> float:
        """The engineering value: ``raw * scale + offset``."""
        return float(self.raw(data, offset)) * self._scale + self._offset

    def encode(self, value: float, current: Sequence[int] | None = None) -> list[int]:
        """The registers (or the one coil bit, as [0] / [1]) that hold engineering
        ``value``. A bit field needs the register's ``current`` contents, whose
        other bits it keeps."""
        raw = raw_from_value(value, self.source)
        if self.is_bit_table:
            return [int(raw)]
        if self._bit is not None:
            register = current[0] if current else 0
            return [encode_bit_field(register, int(raw) & field_mask(self._bits), self._bit, self._bits)]
        return encode_raw(raw, self._type, self.byte_order)
