"""Rescue stations (level 2 of Guangzhou's 96333 response: the nearest 救援站) and the lookup of one.

The stations file is a CSV like the registry (spreadsheets are where such lists live): lines
starting with ``#`` are comments, then a header of exactly :data:`COLUMNS`. Each bad row is
reported with its line number, all at once, so the file can be fixed in one pass; a file with an
unknown column is refused rather than half-read (a misspelt ``lat`` must not become "no
coordinates" silently).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sesmon.contract.problems import DocumentError

#: the shipped file: Guangzhou fire-rescue stations, one per district at least (positions approximate)
DEFAULT_STATIONS = Path(__file__).with_name("stations.csv")
COLUMNS = ("id", "name", "district", "lat", "lon", "approximate", "source")
EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)


class StationsError(DocumentError):
    """The stations file is unusable; ``problems`` lists every bad line."""

    what = "stations"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    name: str = Field(min_length=1)
    district: str = Field(min_length=1)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    approximate: bool
    source: str = ""

    @field_validator("source", mode="before")
    @classmethod
    def _none_is_blank(cls, value: object) -> object:
        return "" if value is None else value


@dataclass(frozen=True)
class Station:
    """One rescue station; ``approximate`` says its position is not surveyed (see the file's header)."""

    id: str
    name: str
    district: str
    lat: float
    lon: float
    approximate: bool = False


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a spherical Earth: well inside a city's scale of error."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Stations:
    """All stations; the first one listed for a district is that district's own (no coordinates case)."""

    stations: tuple[Station, ...]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.stations)

    def by_district(self, district: str) -> Station | None:
        return next((s for s in self.stations if s.district == district), None)

    def get(self, station_id: str) -> Station | None:
        return next((s for s in self.stations if s.id == station_id), None)

    def nearest(self, lat: float | None, lon: float | None, district: str = "") -> Station | None:
        """The station closest to (lat, lon) by great-circle distance; without coordinates the
        district's station; None when neither is known (the caller pages without a station)."""
        if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
            return self.by_district(district) if district else None
        return min(self.stations, key=lambda s: great_circle_km(lat, lon, s.lat, s.lon))

    @classmethod
    def load(cls, path: Path | str | None = None) -> Stations:
        """Read and validate the whole file; any way it can be unusable is a :class:`StationsError`."""
        path = Path(path) if path is not None else DEFAULT_STATIONS
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise StationsError(path, ["file not found"]) from None
        except UnicodeDecodeError as exc:
            raise StationsError(path, [f"not UTF-8 text: {exc}"]) from None
        except OSError as exc:
            raise StationsError(path, [f"cannot read: {exc.strerror or exc}"]) from None
        return cls(parse_stations(text, path), path)


def parse_stations(text: str, path: Path | str = "<text>") -> tuple[Station, ...]:
    """The stations of a CSV text (``#`` comment lines and blank lines allowed anywhere)."""
    # comment lines are blanked, not removed, so the reader's line numbers stay the file's
    kept = "".join("\n" if line.lstrip().startswith("#") else line for line in text.splitlines(True))
    reader = csv.reader(io.StringIO(kept, newline=""))
    header: list[str] = []
    stations: list[Station] = []
    seen: set[str] = set()
    problems: list[str] = []
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            line = reader.line_num
            if not header:
                header = [c.strip() for c in cells]
                unknown = [h for h in header if h not in COLUMNS]
                missing = [c for c in COLUMNS if c not in header and c != "source"]
                if unknown or missing:
                    problems = [
                        f"header: unknown column {h!r} (columns: {', '.join(COLUMNS)})" for h in unknown
                    ]
                    problems += [f"header: missing column {c!r}" for c in missing]
                    raise StationsError(path, problems)
                continue
            if len(cells) != len(header):
                problems.append(f"line {line}: {len(cells)} cells, the header has {len(header)}")
                continue
            try:
                row = _Row.model_validate(dict(zip(header, cells, strict=True)))
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    col = ".".join(str(p) for p in err["loc"]) or "row"
                    problems.append(f"line {line}, column {col}: {err['msg']} (got {err.get('input')!r})")
                continue
            if row.id in seen:
                problems.append(f"line {line}: duplicate station id {row.id}")
                continue
            seen.add(row.id)
            stations.append(Station(row.id, row.name, row.district, row.lat, row.lon, row.approximate))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not readable as CSV: {exc}")
    if not header and not problems:
        problems.append("no header row")
    if problems:
        raise StationsError(path, problems)
    if not stations:
        raise StationsError(path, ["no stations"])
    return tuple(stations)
