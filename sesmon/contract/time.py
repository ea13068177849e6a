"""Local time: Guangzhou is UTC+8 all year (China Standard Time, no daylight saving).

The one definition of the local zone. Device timestamps are epoch milliseconds (UTC);
local time matters for calendars (inspection due dates, daily figures, year-to-date) and
for the vendor format's ``yyyyMMddHHmmss`` times, which are Beijing time.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo

#: Guangzhou local time
LOCAL_TZ = timezone(timedelta(hours=8), "UTC+08:00")
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def local_datetime(ts_ms: int, tz: tzinfo = LOCAL_TZ) -> datetime:
    """The local wall-clock time at epoch milliseconds ``ts_ms``."""
    return datetime.fromtimestamp(ts_ms / 1000, tz)


def local_date(ts_ms: int, tz: tzinfo = LOCAL_TZ) -> date:
    """The local calendar date at ``ts_ms``."""
    return local_datetime(ts_ms, tz).date()


def local_hour(ts_ms: int) -> float:
    """Hour of the local day, 0 ≤ h < 24, with its fraction (daily usage profiles)."""
    return ((ts_ms + 8 * HOUR_MS) % DAY_MS) / HOUR_MS


def start_of_day_ms(day: date, tz: tzinfo = LOCAL_TZ) -> int:
    """Epoch milliseconds of local midnight at the start of ``day``."""
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def end_of_day_ms(day: date, tz: tzinfo = LOCAL_TZ) -> int:
    """Epoch milliseconds of local midnight at the end of ``day`` (a date "due on" that day)."""
    return start_of_day_ms(day + timedelta(days=1), tz)
