"""Time windows of the KPIs, in event time: a trailing 365 days and the calendar year (year to date).

Calendar boundaries are Guangzhou local time (UTC+8, no daylight saving since 1991), so a
trapped incident at 2025-01-01 00:30 local time (2024-12-31 16:30 UTC) belongs to 2025 as
the regulator's yearly bulletin counts it. Windows are half-open ``[start_ms, end_ms)``:
``end_ms`` is the "as of" instant, and the same instant never falls in two adjacent windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from sesmon.contract.time import LOCAL_TZ, local_date

DAY_MS = 86_400_000
MINUTE_MS = 60_000
#: Guangzhou local time for calendar boundaries (a fixed offset: needs no tz database)
GUANGZHOU = LOCAL_TZ  # sesmon.contract.time: the one definition


@dataclass(frozen=True, slots=True)
class Window:
    """``[start_ms, end_ms)`` in epoch milliseconds; ``label`` is the ``window`` tag (``365d``, ``ytd``)."""

    start_ms: int
    end_ms: int
    label: str = ""

    def __post_init__(self) -> None:
        if self.end_ms < self.start_ms:
            raise ValueError(f"window ends ({self.end_ms}) before it starts ({self.start_ms})")

    def __contains__(self, ts_ms: object) -> bool:
        return isinstance(ts_ms, int | float) and self.start_ms <= ts_ms < self.end_ms

    @property
    def days(self) -> float:
        """Length in days (what an annualised rate scales by)."""
        return (self.end_ms - self.start_ms) / DAY_MS


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (naive ones are refused: their zone is a guess)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give it a time zone")
    return int(moment.timestamp() * 1000)


def trailing_365d(as_of_ms: int) -> Window:
    """The 365 days up to ``as_of_ms`` (the live view against yearly targets)."""
    return Window(as_of_ms - 365 * DAY_MS, as_of_ms, "365d")


def year_to_date(as_of_ms: int, tz: tzinfo = GUANGZHOU) -> Window:
    """From local 1 January of ``as_of_ms``'s year up to ``as_of_ms``."""
    year = local_date(as_of_ms, tz).year
    return Window(to_ms(datetime(year, 1, 1, tzinfo=tz)), as_of_ms, "ytd")


def calendar_year(year: int, tz: tzinfo = GUANGZHOU) -> Window:
    """A whole local calendar year, as the yearly bulletins count."""
    return Window(
        to_ms(datetime(year, 1, 1, tzinfo=tz)), to_ms(datetime(year + 1, 1, 1, tzinfo=tz)), str(year)
    )


def kpi_windows(as_of_ms: int, tz: tzinfo = GUANGZHOU) -> tuple[Window, Window]:
    """The two windows every KPI is published for: trailing 365 days and year to date."""
    return trailing_365d(as_of_ms), year_to_date(as_of_ms, tz)
