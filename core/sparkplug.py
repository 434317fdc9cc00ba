"""Sparkplug B (Eclipse Sparkplug 3.0) wire format: topics, datatypes, and a small protobuf
encoder and decoder for the part of the Sparkplug B ``Payload`` mieruka speaks. The simulator
(``simulators/mqtt_plc.py``) encodes with it; the collector (``collector/sources/sparkplug.py``)
decodes with it.

Why a hand-written codec rather than a generated ``sparkplug_b_pb2`` with ``protobuf``: both
the simulator and the collector are runtime code, and the PyPI packages that ship Eclipse Tahu's
generated module either pin paho-mqtt below 2 (``pysparkplug``, ``mqtt-spb-wrapper``), which
this project cannot install beside its own paho-mqtt 2, or are young single-release packages;
taking one on would add it and ``protobuf`` to every installation for ~200 lines of wire format.
The subset is small and fixed: ``Payload{timestamp=1, metrics=2, seq=3}`` and ``Metric{name=1,
alias=2, timestamp=3, datatype=4, is_null=7, int_value=10, long_value=11, float_value=12,
double_value=13, boolean_value=14, string_value=15}`` from Tahu's ``sparkplug_b.proto``. The
tests decode everything this module writes with the Tahu-generated module from PyPI (test
extra), and encode with it what the collector's tests feed the decoder, so both directions are
checked against the reference schema rather than against themselves.

The decoder skips every field it does not know (metadata, properties, datasets, templates), as
protobuf parsers do, and raises ``ValueError`` (only) on bytes that are not a protobuf message:
a collector reads it from the network.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from core.model import COUNTER_SIGNALS, PRODUCT_SIGNAL, REASON_SIGNAL, STATE_SIGNAL
from core.plant import Signal

NAMESPACE = "spBv1.0"
BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"

class DataType(IntEnum):
    """Sparkplug B basic datatypes (the values of Tahu's ``DataType`` enum)."""

    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15


Value = int | float | bool | str

_COUNTER_TYPES = {8: DataType.UInt8, 16: DataType.UInt16, 32: DataType.UInt32, 64: DataType.UInt64}
_INT32_FIELD = frozenset({DataType.Int8, DataType.Int16, DataType.Int32, DataType.UInt8, DataType.UInt16,
                          DataType.UInt32})
_INT64_FIELD = frozenset({DataType.Int64, DataType.UInt64, DataType.DateTime})
_SIGNED_BITS = {DataType.Int8: 32, DataType.Int16: 32, DataType.Int32: 32, DataType.Int64: 64}
_STRING_FIELD = frozenset({DataType.String, DataType.Text, DataType.UUID})


def datatype_of(name: str, signal: Signal) -> DataType:
    """The Sparkplug datatype a plant signal is published as: counters as the unsigned integer of
    their register width, state and reason codes as Int32, the product code as String, gauges
    as Double."""
    if name in COUNTER_SIGNALS:
        return _COUNTER_TYPES[signal.counter_bits or 32]
    if name in (STATE_SIGNAL, REASON_SIGNAL):
        return DataType.Int32
    if name == PRODUCT_SIGNAL:
        return DataType.String
    return DataType.Double


def topic(group_id: str, message_type: str, edge_node_id: str, device_id: str | None = None) -> str:
    """``spBv1.0/<group>/<message type>/<edge node>[/<device>]``; the message types are NBIRTH,
    NDEATH, NDATA, NCMD, DBIRTH, DDEATH, DDATA and DCMD."""
    base = f"{NAMESPACE}/{group_id}/{message_type}/{edge_node_id}"
    return base if device_id is None else f"{base}/{device_id}"


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric. ``value=None`` with ``is_null`` is a null value (allowed in births); with
    ``is_null=False`` the metric carries no value at all (only ever sent as a malformed message).
    ``datatype`` picks the protobuf field for the value; whether it is also written is up to
    :func:`encode` (births must carry it, data messages should not)."""

    name: str | None
    value: Value | None = None
    datatype: DataType | None = None
    timestamp: int | None = None
    alias: int | None = None
    is_null: bool = False


@dataclass(frozen=True, slots=True)
class Payload:
    metrics: tuple[Metric, ...] = ()
    timestamp: int | None = None
    seq: int | None = None


# ---- wire format -------------------------------------------------------------------------------

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_U64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(data)) + data


def _value_field(datatype: DataType, value: Value) -> bytes:
    if datatype in _INT32_FIELD:
        if isinstance(value, str | float):
            raise TypeError(f"{datatype.name} needs an integer, got {value!r}")
        return _key(10, _VARINT) + _varint(int(value) & 0xFFFF_FFFF)  # Tahu: two's complement in uint32
    if datatype in _INT64_FIELD:
        if isinstance(value, str | float):
            raise TypeError(f"{datatype.name} needs an integer, got {value!r}")
        return _key(11, _VARINT) + _varint(int(value) & _U64)
    if datatype == DataType.Float:
        return _key(12, _FIXED32) + struct.pack("<f", float(value))
    if datatype == DataType.Double:
        return _key(13, _FIXED64) + struct.pack("<d", float(value))
    if datatype == DataType.Boolean:
        return _key(14, _VARINT) + _varint(1 if value else 0)
    if datatype in _STRING_FIELD:
        return _len_field(15, str(value).encode("utf-8"))
    raise ValueError(f"datatype {datatype!r} is not supported here")


def encode_metric(m: Metric, *, datatypes: bool = True) -> bytes:
    out = bytearray()
    if m.name is not None:
        out += _len_field(1, m.name.encode("utf-8"))
    if m.alias is not None:
        out += _key(2, _VARINT) + _varint(m.alias)
    if m.timestamp is not None:
        out += _key(3, _VARINT) + _varint(m.timestamp)
    if datatypes and m.datatype is not None:
        out += _key(4, _VARINT) + _varint(int(m.datatype))
    if m.is_null:
        out += _key(7, _VARINT) + _varint(1)
    elif m.value is not None:
        if m.datatype is None:
            raise ValueError(f"metric {m.name!r}: a value needs a datatype to pick its field")
        out += _value_field(m.datatype, m.value)
    return bytes(out)


def encode(payload: Payload, *, datatypes: bool = True) -> bytes:
    """The protobuf bytes of ``payload``. ``datatypes=False`` leaves the metrics' datatypes out
    (what the specification asks of NDATA/DDATA)."""
    out = bytearray()
    if payload.timestamp is not None:
        out += _key(1, _VARINT) + _varint(payload.timestamp)
    for m in payload.metrics:
        out += _len_field(2, encode_metric(m, datatypes=datatypes))
    if payload.seq is not None:
        out += _key(3, _VARINT) + _varint(payload.seq)
    return bytes(out)


def truncated(payload: Payload) -> bytes:
    """Bytes that are certainly not a Sparkplug payload: the first metric's length prefix promises
    more bytes than follow (a message cut short on the wire)."""
    out = bytearray()
    if payload.timestamp is not None:
        out += _key(1, _VARINT) + _varint(payload.timestamp)
    first = encode_metric(payload.metrics[0]) if payload.metrics else b"\x0a\x03abc"
    return bytes(out + _key(2, _LEN) + _varint(len(first) + 1) + first[: len(first) // 2])


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        n = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated field")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def field(self) -> tuple[int, int, int | bytes]:
        key = self.varint()
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            return field, wire, self.varint()
        if wire == _FIXED64:
            return field, wire, self.take(8)
        if wire == _LEN:
            return field, wire, self.take(self.varint())
        if wire == _FIXED32:
            return field, wire, self.take(4)
        raise ValueError(f"unsupported wire type {wire}")


def _signed(n: int, bits: int) -> int:
    return n - (1 << bits) if n >= 1 << (bits - 1) else n


def decode_metric(data: bytes) -> Metric:
    r = _Reader(data)
    name: str | None = None
    alias = ts = None
    datatype: DataType | None = None
    raw_dt: int | None = None
    is_null = False
    value: Value | None = None
    while not r.done():
        field, wire, v = r.field()
        if wire == _LEN and isinstance(v, bytes):
            if field == 1:
                name = v.decode("utf-8")
            elif field == 15:
                value = v.decode("utf-8")
        elif wire == _VARINT and isinstance(v, int):
            if field == 2:
                alias = v
            elif field == 3:
                ts = v
            elif field == 4:
                raw_dt = v
            elif field == 7:
                is_null = bool(v)
            elif field in (10, 11):
                value = v
            elif field == 14:
                value = bool(v)
        elif wire == _FIXED32 and field == 12 and isinstance(v, bytes):
            value = struct.unpack("<f", v)[0]
        elif wire == _FIXED64 and field == 13 and isinstance(v, bytes):
            value = struct.unpack("<d", v)[0]
    if raw_dt is not None:
        try:
            datatype = DataType(raw_dt)
        except ValueError:
            datatype = None
    if datatype in _SIGNED_BITS and isinstance(value, int) and not isinstance(value, bool):
        value = _signed(value, _SIGNED_BITS[datatype])
    return Metric(name, value, datatype, ts, alias, is_null)


def decode(data: bytes) -> Payload:
    """A Sparkplug B payload from protobuf bytes (fields outside the subset are skipped)."""
    r = _Reader(bytes(data))
    ts = seq = None
    metrics: list[Metric] = []
    while not r.done():
        field, wire, v = r.field()
        if field == 1 and wire == _VARINT and isinstance(v, int):
            ts = v
        elif field == 2 and wire == _LEN and isinstance(v, bytes):
            metrics.append(decode_metric(v))
        elif field == 3 and wire == _VARINT and isinstance(v, int):
            seq = v
    return Payload(tuple(metrics), ts, seq)
