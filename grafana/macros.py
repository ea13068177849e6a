"""Grafana's InfluxQL substitutions, for running a board's queries outside Grafana (tests, checks).

Grafana's InfluxDB datasource replaces ``$timeFilter`` with ``time >= <from>ms and time <=
<to>ms``, ``$__interval`` / ``$__interval_ms`` with the panel's interval, and ``$name`` /
``${name}`` with a template variable's value (regex-escaped inside ``/…/``). A panel with a
relative time override (``timeFrom``) runs over its own range ending at the dashboard's end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_REGEX = re.compile(r"/\^?([^/]*)\$?/")


def duration_ms(text: str) -> int:
    """``"365d"`` / ``"now-30d"`` → milliseconds."""
    match = re.fullmatch(r"(?:now-)?(\d+)([smhdw])", text.strip())
    if match is None:
        raise ValueError(f"not a Grafana relative time: {text!r}")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def expand(
    query: str,
    start_ms: int,
    end_ms: int,
    variables: Mapping[str, str] | None = None,
    interval: str = "1s",
    time_from: str = "",
) -> str:
    """The query as Grafana would send it to InfluxDB; a ``$name`` left unknown raises ``KeyError``."""
    if time_from:
        start_ms = end_ms - duration_ms(time_from)
    values = dict(variables or {})
    values |= {
        "timeFilter": f"time >= {start_ms}ms and time <= {end_ms}ms",
        "__interval": interval,
        "__interval_ms": str(duration_ms(interval)),
    }

    def inside_regex(position: int) -> bool:
        return any(m.start() < position < m.end() for m in _REGEX.finditer(query))

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        text = values[name]
        if name.startswith("__") or name == "timeFilter" or not inside_regex(match.start()):
            return text
        return re.escape(text) if text != ".*" else text

    return _VARIABLE.sub(value, query)
