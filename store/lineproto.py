"""Line protocol exactly as influxdb-client's ``Point.to_line_protocol()`` writes it, 2-3× faster.

Why not a ``Point`` per record: building and serialising one costs about 45 µs for a
12-field elevator reading here (≈ 21,000 points/s on one core, measured), under half the
sink's target of 50,000 points/s. :func:`encode` produces the same bytes with the same
translation tables (``influxdb_client``'s own): tags and fields sorted, empty tags and
``None``/non-finite fields dropped, ``1.0`` written ``1``, ints with ``i``, strings quoted
and escaped. The gain is in not building an object per point, in caching the escaped
series prefix (measurement + tags, the same on every reading of a unit) and field keys, and
in dispatching on the exact value type. Values of any other type (Decimal, numpy, str/int
subclasses) are handed to ``Point`` itself. ``tests/test_store_lineproto.py`` checks byte
equality with ``Point`` on generated points (hypothesis).

(Compiling each field shape into a format template was tried: no faster on CPython 3.11.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from influxdb_client import Point, WritePrecision
from influxdb_client.client.write.point import _ESCAPE_KEY, _ESCAPE_MEASUREMENT, _ESCAPE_STRING

_CACHE_MAX = 100_000
_series: dict[tuple[Any, ...], str] = {}
_keys: dict[str, str] = {}
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


def encode(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], time_ms: int) -> str:
    """One point as a line (no newline); ``""`` when it has no field to write (as ``Point``)."""
    parts = []
    for name in sorted(fields):
        value = fields[name]
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                continue
            text = repr(value)
            if text.endswith(".0"):
                text = text[:-2]
        elif kind is int:
            text = f"{value}i"
        elif kind is str:
            text = '"' + value.translate(_ESCAPE_STRING) + '"'
        elif kind is bool:
            text = _BOOL[value]
        elif value is None:
            continue
        else:  # Decimal, numpy, int/str subclasses ...: the reference implementation decides
            return to_point(measurement, tags, fields, time_ms).to_line_protocol()
        parts.append(f"{_keys.get(name) or _key(name)}={text}")
    if not parts:
        return ""
    return f"{series_prefix(measurement, tags)}{','.join(parts)} {int(time_ms)}"


def to_point(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], time_ms: int) -> Point:
    """The same point as an influxdb-client ``Point`` (millisecond precision)."""
    point = Point(measurement)
    for tag, value in tags.items():
        point.tag(tag, value)
    for name, value in fields.items():
        point.field(name, value)
    return point.time(int(time_ms), WritePrecision.MS)
