"""Line protocol exactly as influxdb-client's ``Point.to_line_protocol()`` writes it, 3-4× faster.

Why not a ``Point`` per record: building and serialising one costs 55-60 µs for an 18-field
elevator reading here (16,000-17,000 points/s on one core, ``bench/store_bench.py``), a third
of the sink's target of 50,000 points/s. :func:`encode` produces the same bytes with the same
translation tables (``influxdb_client``'s own): tags and fields sorted, empty tags and
``None``/non-finite fields dropped, ``1.0`` written ``1``, ints with ``i``, strings quoted
and escaped. The gain is in not building an object per point, in caching the escaped
series prefix (measurement + tags, the same on every reading of a unit) and, per set of
field names, their sorted order with the escaped ``key=`` (readings of one kind carry the
same names in the same order), and in dispatching on the exact value type. Values of any
other type (Decimal, numpy, str/int subclasses) are handed to ``Point`` itself.
``tests/test_store_points.py`` checks byte equality with ``Point`` on generated points
(hypothesis). Measured: 54,000 vs 16,000 points/s (18 fields), 166,000 vs 36,000 (4 fields).

(Compiling each field shape into a format template was tried: no faster on CPython 3.11.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from influxdb_client import Point, WritePrecision
from influxdb_client.client.write.point import _ESCAPE_KEY, _ESCAPE_MEASUREMENT, _ESCAPE_STRING

_CACHE_MAX = 100_000
_series: dict[tuple[Any, ...], str] = {}
_keys: dict[str, str] = {}
_orders: dict[tuple[Any, ...], tuple[tuple[Any, str], ...]] = {}  # field names -> output order
_strings: dict[str, str] = {}  # short string field values, quoted and escaped
_BOOL = {True: "true", False: "false"}


def _tag_value(value: Any) -> str:
    escaped = str(value).translate(_ESCAPE_KEY)
    return escaped + " " if escaped.endswith("\\") else escaped


def series_prefix(measurement: str, tags: Mapping[str, Any]) -> str:
    """``measurement,k=v,... `` (with the trailing space), cached per series."""
    key = (measurement, *tags.items())
    prefix = _series.get(key)
    if prefix is None:
        parts = [str(measurement).translate(_ESCAPE_MEASUREMENT)]
        for tag, value in sorted(tags.items()):
            if value is None:
                continue
            k, v = str(tag).translate(_ESCAPE_KEY), _tag_value(value)
            if k and v:
                parts.append(f"{k}={v}")
        prefix = ",".join(parts) + " "
        if len(_series) >= _CACHE_MAX:
            _series.clear()
        _series[key] = prefix
    return prefix


def _key(name: str) -> str:
    escaped = _keys.get(name)
    if escaped is None:
        escaped = str(name).translate(_ESCAPE_KEY)
        if len(_keys) >= _CACHE_MAX:
            _keys.clear()
        _keys[name] = escaped
    return escaped


def _field_order(names: tuple[Any, ...]) -> tuple[tuple[Any, str], ...]:
    """``(name, "escaped_name=")`` in ``Point``'s order (sorted), cached per field set and order."""
    order = tuple((name, f"{_key(name)}=") for name in sorted(names))
    if len(_orders) >= _CACHE_MAX:
        _orders.clear()
    _orders[names] = order
    return order


def _string(value: str) -> str:
    """A string field's value, quoted and escaped; short ones (states: "closed", "normal") cached."""
    quoted = f'"{value.translate(_ESCAPE_STRING)}"'
    if len(value) <= 32:
        if len(_strings) >= _CACHE_MAX:
            _strings.clear()
        _strings[value] = quoted
    return quoted


def encode(
    measurement: str,
    tags: Mapping[str, Any],
    fields: Mapping[str, Any],
    time_ms: int,
    prefix: str | None = None,
) -> str:
    """One point as a line (no newline); ``""`` when it has no field to write (as ``Point``).

    ``prefix``: ``series_prefix(measurement, tags)`` when the caller keeps it (per unit).
    """
    parts: list[str] = []
    append = parts.append
    names = tuple(fields)
    for name, key in _orders.get(names) or _field_order(names):
        value = fields[name]
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # NaN or ±inf: not written (as Point)
                continue
            text = repr(value)
            append(key + (text[:-2] if text.endswith(".0") else text))
        elif kind is int:
            append(f"{key}{value}i")
        elif kind is str:
            append(key + (_strings.get(value) or _string(value)))
        elif kind is bool:
            append(key + _BOOL[value])
        elif value is None:
            continue
        else:  # Decimal, numpy, int/str subclasses ...: the reference implementation decides
            return to_point(measurement, tags, fields, time_ms).to_line_protocol()
    if not parts:
        return ""
    if prefix is None:
        prefix = _series.get((measurement, *tags.items())) or series_prefix(measurement, tags)
    return f"{prefix}{','.join(parts)} {int(time_ms)}"


def to_point(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], time_ms: int) -> Point:
    """The same point as an influxdb-client ``Point`` (millisecond precision)."""
    point = Point(measurement)
    for tag, value in tags.items():
        point.tag(tag, value)
    for name, value in fields.items():
        point.field(name, value)
    return point.time(int(time_ms), WritePrecision.MS)
