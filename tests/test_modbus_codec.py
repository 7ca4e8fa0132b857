"""The Modbus register codec: known vectors worked out by hand, round trips of
every type in every byte order, bit fields and scale/offset."""

from __future__ import annotations

import math

import pytest

from connectors.modbus.codec import (
    BYTE_ORDERS,
    TagCodec,
    decode_bit_field,
    decode_raw,
    encode_bit_field,
    encode_raw,
    raw_from_value,
)
from stream.config import ModbusSource

# (type, value, {order: registers}) - the registers written out by hand from the
# value's big-endian bytes (A most significant): ABCD as is, DCBA all bytes
# reversed, BADC bytes swapped in each register, CDAB registers reversed.
KNOWN = [
    # float32 123.456 = 0x42F6E979
    ("float32", 123.456, {"ABCD": [0x42F6, 0xE979], "DCBA": [0x79E9, 0xF642], "BADC": [0xF642, 0x79E9], "CDAB": [0xE979, 0x42F6]}),
    # float32 -1.5 = 0xBFC00000
    ("float32", -1.5, {"ABCD": [0xBFC0, 0x0000], "DCBA": [0x0000, 0xC0BF], "BADC": [0xC0BF, 0x0000], "CDAB": [0x0000, 0xBFC0]}),
    # int32 -2 = 0xFFFFFFFE
    ("int32", -2, {"ABCD": [0xFFFF, 0xFFFE], "DCBA": [0xFEFF, 0xFFFF], "BADC": [0xFFFF, 0xFEFF], "CDAB": [0xFFFE, 0xFFFF]}),
    # int32 123456789 = 0x075BCD15
    ("int32", 123456789, {"ABCD": [0x075B, 0xCD15], "DCBA": [0x15CD, 0x5B07], "BADC": [0x5B07, 0x15CD], "CDAB": [0xCD15, 0x075B]}),
    # uint32 4000000000 = 0xEE6B2800
    ("uint32", 4000000000, {"ABCD": [0xEE6B, 0x2800], "DCBA": [0x0028, 0x6BEE], "BADC": [0x6BEE, 0x0028], "CDAB": [0x2800, 0xEE6B]}),
    # int16 -2 = 0xFFFE; 16-bit values only know the byte swap (DCBA, BADC)
    ("int16", -2, {"ABCD": [0xFFFE], "DCBA": [0xFEFF], "BADC": [0xFEFF], "CDAB": [0xFFFE]}),
    # uint16 4660 = 0x1234
    ("uint16", 4660, {"ABCD": [0x1234], "DCBA": [0x3412], "BADC": [0x3412], "CDAB": [0x1234]}),
    # int64 -1234567890123 = 0xFFFFFEE08E04FB35: ABCDEFGH, HGFEDCBA, BADCFEHG, GHEFCDAB
    (
        "int64",
        -1234567890123,
        {
            "ABCD": [0xFFFF, 0xFEE0, 0x8E04, 0xFB35],
            "DCBA": [0x35FB, 0x048E, 0xE0FE, 0xFFFF],
            "BADC": [0xFFFF, 0xE0FE, 0x048E, 0x35FB],
            "CDAB": [0xFB35, 0x8E04, 0xFEE0, 0xFFFF],
        },
    ),
    # float64 1234.5678 = 0x40934A456D5CFAAD
    (
        "float64",
        1234.5678,
        {
            "ABCD": [0x4093, 0x4A45, 0x6D5C, 0xFAAD],
            "DCBA": [0xADFA, 0x5C6D, 0x454A, 0x9340],
            "BADC": [0x9340, 0x454A, 0x5C6D, 0xADFA],
            "CDAB": [0xFAAD, 0x6D5C, 0x4A45, 0x4093],
        },
    ),
]


@pytest.mark.parametrize("type_,value,by_order", KNOWN, ids=lambda v: str(v) if not isinstance(v, dict) else "")
def test_known_vectors_decode_and_encode(type_, value, by_order):
    for order, words in by_order.items():
        assert decode_raw(words, type_, order) == pytest.approx(value, rel=1e-7), order
        encoded = encode_raw(value, type_, order)
        assert encoded == words, f"{type_} {value} {order}: {[hex(w) for w in encoded]}"


ROUND_TRIP = {
    "int16": [-32768, -1, 0, 1, 32767],
    "uint16": [0, 1, 0x8000, 65535],
    "int32": [-(2**31), -1, 0, 0x12345678, 2**31 - 1],
    "uint32": [0, 1, 0x89ABCDEF, 2**32 - 1],
    "int64": [-(2**63), -1, 0, 0x0102030405060708, 2**63 - 1],
    "float32": [0.0, -0.0, 1.0, -273.15, 3.0e38, 1.0e-38],
    "float64": [0.0, 1.0, -273.15, 1.0e308, 5e-324, math.pi],
}


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("type_", sorted(ROUND_TRIP))
def test_round_trip_every_type_and_order(type_, order):
    for value in ROUND_TRIP[type_]:
        words = encode_raw(value, type_, order)
        assert all(0 <= w <= 0xFFFF for w in words)
        decoded = decode_raw(words, type_, order)
        if type_ == "float32":
            assert decoded == pytest.approx(value, rel=1e-6), (value, order)
        else:
            assert decoded == value, (value, order)
        codec = TagCodec(ModbusSource(modbus="m", address=0, type=type_, byte_order=order))
        assert codec.encode(value) == words
        # the tag codec reads at an offset inside a longer answer
        assert codec.raw([0xDEAD, *words, 0xBEEF], 1) == decoded


def test_float_specials_round_trip():
    for order in BYTE_ORDERS:
        assert math.isnan(decode_raw(encode_raw(math.nan, "float32", order), "float32", order))
        assert decode_raw(encode_raw(-math.inf, "float64", order), "float64", order) == -math.inf


def test_integer_out_of_range_is_refused_by_the_raw_encoder():
    with pytest.raises(ValueError, match="does not fit a int16"):
        encode_raw(40000, "int16")
    with pytest.raises(ValueError, match="uint32"):
        encode_raw(-1, "uint32")


def test_bit_fields():
    status = 0xA5C8  # 1010 0101 1100 1000
    assert decode_bit_field(status, 3, 1, "bool") == 1
    assert decode_bit_field(status, 0, 1, "bool") == 0
    assert decode_bit_field(status, 15, 1, "uint16") == 1
    assert decode_bit_field(status, 8, 4, "uint16") == 0x5
    assert decode_bit_field(status, 12, 4, "uint16") == 0xA
    assert decode_bit_field(status, 12, 4, "int16") == -6  # 0b1010 two's complement over 4 bits
    assert decode_bit_field(status, 4, 2, "bool") == 0  # bits 4..5 are 00
    assert decode_bit_field(status, 6, 2, "bool") == 1  # bits 6..7 are 11
    assert decode_bit_field(status, 0, 16, "uint16") == 0xA5C8
    assert decode_bit_field(status, 0, 16, "int16") == 0xA5C8 - 0x10000


def test_bit_field_encoding_keeps_the_other_bits():
    assert encode_bit_field(0xA5C8, 0x3, 8, 4) == 0xA3C8
    assert encode_bit_field(0xFFFF, 0, 3, 1) == 0xFFF7
    assert encode_bit_field(0x0000, 1, 15, 1) == 0x8000
    codec = TagCodec(ModbusSource(modbus="m", address=0, type="uint16", bit=8, bits=4))
    assert codec.encode(3, [0xA5C8]) == [0xA3C8]
    assert codec.encode(99, [0xA5C8]) == [0xAFC8]  # saturates at the field's 15
    signed = TagCodec(ModbusSource(modbus="m", address=0, type="int16", bit=12, bits=4))
    assert signed.encode(-6, [0x05C8]) == [0xA5C8]
    assert signed.decode([0xA5C8]) == -6
    flag = TagCodec(ModbusSource(modbus="m", address=0, type="bool", bit=3))
    assert flag.encode(1, [0xA5C0]) == [0xA5C8]
    assert flag.encode(0, [0xA5C8]) == [0xA5C0]


def test_bit_fields_ignore_byte_order():
    """Bits are numbered on the register value as transmitted, whatever byte_order says."""
    for order in BYTE_ORDERS:
        codec = TagCodec(ModbusSource(modbus="m", address=0, type="uint16", bit=8, bits=4, byte_order=order))
        assert codec.decode([0xA5C8]) == 5


def test_scale_and_offset():
    source = ModbusSource(modbus="m", address=0, type="int16", scale=0.1, offset=-20)
    codec = TagCodec(source)
    assert codec.decode([0x01F4]) == pytest.approx(30.0)  # 500 * 0.1 - 20
    assert codec.decode([0xFF38]) == pytest.approx(-40.0)  # -200 * 0.1 - 20
    assert codec.encode(30.0) == [0x01F4]
    assert codec.encode(30.04) == [0x01F4]  # rounds to the nearest raw step
    assert codec.encode(1e9) == [0x7FFF]  # saturates like the device would
    assert codec.encode(-1e9) == [0x8000]
    float_codec = TagCodec(ModbusSource(modbus="m", address=0, type="float32", scale=2, offset=-1))
    assert float_codec.decode([0x4120, 0x0000]) == 19.0  # 10.0 * 2 - 1
    assert float_codec.encode(19.0) == [0x4120, 0x0000]


def test_coils_and_discrete_inputs_read_zero_or_one():
    coil = TagCodec(ModbusSource(modbus="m", table="coil", address=0, type="bool"))
    assert coil.words == 1
    assert [coil.decode([True, False, True], i) for i in range(3)] == [1.0, 0.0, 1.0]
    assert coil.encode(1.0) == [1] and coil.encode(0.0) == [0]
    scaled = TagCodec(ModbusSource(modbus="m", table="discrete", address=0, type="bool", scale=100, offset=5))
    assert scaled.decode([True]) == 105.0
    assert scaled.decode([False]) == 5.0
    assert scaled.encode(105.0) == [1]


def test_connection_default_byte_order_and_tag_override():
    assert TagCodec(ModbusSource(modbus="m", address=0, type="float32"), "CDAB").decode([0xE979, 0x42F6]) == pytest.approx(123.456, rel=1e-6)
    override = TagCodec(ModbusSource(modbus="m", address=0, type="float32", byte_order="ABCD"), "CDAB")
    assert override.byte_order == "ABCD"


def test_raw_from_value_refuses_nan_for_integers():
    with pytest.raises(ValueError, match="no NaN"):
        raw_from_value(math.nan, ModbusSource(modbus="m", address=0, type="uint16"))
    assert math.isinf(raw_from_value(1e300, ModbusSource(modbus="m", address=0, type="float32")))
