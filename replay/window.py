"""What to replay and over which span: pure functions (no I/O), tested without servers.

An incident (``--alert`` / ``--hazard``) is replayed from ``before`` (>= 120 s, domain.md §4.4)
before it opened through to its end (the alert resolved and the incident closed, or the hidden
danger closed) plus ``after``; a unit or district over an explicit ``--from``/``--to``. State is
built from an earlier warm-up point so that alerts and incidents opened before the window keep
their ids; nothing before the window's start is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from sesmon.contract.time import HOUR_MS, LOCAL_TZ, local_date, start_of_day_ms

Mode = Literal["alert", "hazard", "unit", "district"]

MIN_MARGIN_S = 120  # domain.md §4.4: at least 60-120 s before the event, through to recovery
#: an incident that never ends is replayed this long (the accident clock is 2 h)
DEFAULT_MAX_AFTER_S = 3 * 3600
MIN_WARMUP_MS = HOUR_MS  # the default warm-up reaches at least this far back
PLOTTED_UNITS = 3  # the report plots the signals of at most this many units
_EPOCH_MS = re.compile(r"-?\d{10,16}")


class SelectionError(ValueError):
    """A replay request that cannot be answered (bad id, bad time, empty span): said plainly."""


@dataclass(frozen=True)
class Target:
    """What the inspector asked for."""

    mode: Mode
    ident: str  # alert id, hazard id, device id or district name
    device_id: str | None = None  # the unit (alert, hazard, unit modes)
    anchor_ms: int | None = None  # when the incident began (alert and hazard modes)
    rule: str = ""  # alert mode: the rule; hazard mode: the source


@dataclass(frozen=True)
class Window:
    """The span written (``start_ms`` .. ``end_ms``; None: until the incident's end + ``after_ms``,
    at most ``cap_ms``) and the earlier point state is built from (``warmup_ms``)."""

    start_ms: int
    end_ms: int | None
    cap_ms: int
    after_ms: int
    warmup_ms: int

    def final_end(self, incident_end_ms: int | None) -> int:
        """The last instant written, once the incident's end is known (None: never ended)."""
        if self.end_ms is not None:
            return self.end_ms
        if incident_end_ms is None:
            return self.cap_ms
        return min(self.cap_ms, incident_end_ms + self.after_ms)

    def contains(self, at_ms: int, end_ms: int) -> bool:
        return self.start_ms <= at_ms <= end_ms


def parse_alert_id(alert_id: str) -> Target:
    """``{device_id}.{rule}.{opened_ms}`` (rule ids contain dots) -> a Target."""
    head, _, opened = alert_id.rpartition(".")
    device_id, _, rule = head.partition(".")
    if not device_id or not rule or not re.fullmatch(r"\d{1,16}", opened):
        raise SelectionError(f"{alert_id!r} is not an alert id {{device_id}}.{{rule}}.{{opened_ms}}")
    return Target("alert", alert_id, device_id, int(opened), rule)


def parse_hazard_id(hazard_id: str) -> Target:
    """``HZ.{device_id}.{source}.{opened_ms}`` -> a Target."""
    parts = hazard_id.split(".")
    if len(parts) != 4 or parts[0] != "HZ" or not parts[1] or not re.fullmatch(r"\d{1,16}", parts[3]):
        raise SelectionError(f"{hazard_id!r} is not a hazard id HZ.{{device_id}}.{{source}}.{{opened_ms}}")
    return Target("hazard", hazard_id, parts[1], int(parts[3]), parts[2])


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch ms (or s), an ISO 8601 time (no offset: Guangzhou local time)
    or a date (local midnight)."""
    value = text.strip()
    if _EPOCH_MS.fullmatch(value):
        number = int(value)
        return number if abs(number) >= 10**12 else number * 1000
    try:
        if len(value) == 10 and value[4] == "-":
            return start_of_day_ms(date.fromisoformat(value), LOCAL_TZ)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SelectionError(f"{text!r} is not a time (epoch ms, ISO 8601 or YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    return int(moment.timestamp() * 1000)


def default_warmup(start_ms: int) -> int:
    """Build state from local midnight of the window's day (at least an hour before its start):
    a unit's day holds the incidents a window may meet half-way and their dispatch actions."""
    midnight = start_of_day_ms(local_date(start_ms), LOCAL_TZ)
    return min(midnight, start_ms - MIN_WARMUP_MS)


def incident_window(
    anchor_ms: int,
    *,
    before_s: float = MIN_MARGIN_S,
    after_s: float = MIN_MARGIN_S,
    max_after_s: float = DEFAULT_MAX_AFTER_S,
    warmup_s: float | None = None,
) -> Window:
    """Around an incident that began at ``anchor_ms``: margins of at least 120 s."""
    if before_s < MIN_MARGIN_S or after_s < MIN_MARGIN_S:
        raise SelectionError(f"the margins before and after an incident are at least {MIN_MARGIN_S} s")
    start = anchor_ms - int(before_s * 1000)
    after = int(after_s * 1000)
    cap = anchor_ms + int(max_after_s * 1000) + after
    warm = default_warmup(start) if warmup_s is None else start - int(warmup_s * 1000)
    return Window(start, None, cap, after, min(warm, start))


def span_window(from_ms: int, to_ms: int, *, warmup_s: float | None = None) -> Window:
    """An explicit span (unit and district modes)."""
    if to_ms <= from_ms:
        raise SelectionError("--to must be after --from")
    warm = default_warmup(from_ms) if warmup_s is None else from_ms - int(warmup_s * 1000)
    return Window(from_ms, to_ms, to_ms, 0, min(warm, from_ms))


__all__ = [
    "MIN_MARGIN_S",
    "SelectionError",
    "Target",
    "Window",
    "default_warmup",
    "incident_window",
    "parse_alert_id",
    "parse_hazard_id",
    "parse_time",
    "span_window",
]
