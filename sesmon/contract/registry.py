"""The fleet registry (DESIGN.md §3): one CSV row per unit, loaded at start, reloaded on change.

Registries live in spreadsheets, so loading is forgiving about blank optional cells and
strict about everything else: each bad row is reported with its line number and column,
all of them at once, so a registry clerk can fix the file in one pass.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from sesmon.contract.problems import DocumentError
from sesmon.contract.schemas import DEVICE_ID_RE, Kind

DISTRICTS = ("越秀", "海珠", "荔湾", "天河", "白云", "黄埔", "番禺", "花都", "南沙", "从化", "增城")

COLUMNS = (
    "device_id",
    "kind",
    "type_code",
    "district",
    "address",
    "lat",
    "lon",
    "user_unit_id",
    "firm_id",
    "key_site",
    "rated_speed_mps",
    "rated_load_kg",
    "floors",
    "rated_pressure_mpa",
    "capacity_tph",
    "capacity_mw",
    "safety_valve_set_mpa",
    "lowest_safe_water_level_mm",
    "rated_outlet_temp_c",
    "registered_on",
    "last_inspection",
    "next_inspection_due",
    "status",
)
REQUIRED = ("device_id", "kind", "district", "firm_id", "status")
#: rated parameters (DESIGN.md §3): the columns a rule threshold may depend on
RATED_PARAMETERS = COLUMNS[COLUMNS.index("rated_speed_mps") : COLUMNS.index("rated_outlet_temp_c") + 1]


class Unit(BaseModel):
    """One registered unit. Rated parameters are None where they do not apply."""

    device_id: str = Field(pattern=DEVICE_ID_RE.pattern)
    kind: Kind
    type_code: str = ""
    district: str = Field(min_length=1)
    address: str = ""
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    user_unit_id: str = ""
    firm_id: str = Field(min_length=1)
    key_site: str = ""
    rated_speed_mps: float | None = Field(None, gt=0, le=25)
    rated_load_kg: float | None = Field(None, gt=0)
    floors: int | None = Field(None, gt=0)
    rated_pressure_mpa: float | None = Field(None, gt=0, le=30)
    capacity_tph: float | None = Field(None, gt=0)
    capacity_mw: float | None = Field(None, gt=0)
    safety_valve_set_mpa: float | None = Field(None, gt=0)
    # optional per-boiler limits (rules use a catalogue default when blank, and say so in the alert)
    lowest_safe_water_level_mm: float | None = Field(None, ge=-2000, le=0)  # vs normal water level
    rated_outlet_temp_c: float | None = Field(None, gt=0, le=400)  # hot-water design outlet temperature
    registered_on: date | None = None
    last_inspection: date | None = None
    next_inspection_due: date | None = None
    status: Literal["in_use", "suspended", "scrapped"] = "in_use"

    @field_validator("type_code", "address", "user_unit_id", "key_site", mode="before")
    @classmethod
    def _none_is_blank(cls, value: object) -> object:
        return "" if value is None else value

    @field_validator(
        "lat",
        "lon",
        "rated_speed_mps",
        "rated_load_kg",
        "floors",
        "rated_pressure_mpa",
        "capacity_tph",
        "capacity_mw",
        "safety_valve_set_mpa",
        "lowest_safe_water_level_mm",
        "rated_outlet_temp_c",
        "registered_on",
        "last_inspection",
        "next_inspection_due",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip() == "" else value

    @property
    def in_use(self) -> bool:
        return self.status == "in_use"

    @property
    def steam(self) -> bool:
        """Steam boiler (water level applies) rather than hot-water."""
        return self.kind == Kind.boiler and (self.capacity_tph is not None or self.type_code == "1100")

    def to_row(self) -> dict[str, str]:
        row: dict[str, str] = {}
        for col in COLUMNS:
            value = getattr(self, col)
            row[col] = "" if value is None else (value.isoformat() if isinstance(value, date) else str(value))
        return row


class RegistryError(DocumentError):
    """The registry file is unusable; ``problems`` lists every bad line."""

    what = "registry"


@dataclass
class Registry:
    """Units by device_id, with the counts that are the denominators of every per-10k rate."""

    units: dict[str, Unit]
    path: Path | None = None
    mtime_ns: int = 0
    #: modification time of a version of the file that was rejected (not retried until it changes)
    rejected_mtime_ns: int = 0

    # ---- lookups
    def get(self, device_id: str) -> Unit | None:
        return self.units.get(device_id)

    def kind_of(self, device_id: str) -> Kind | None:
        unit = self.units.get(device_id)
        return unit.kind if unit else None

    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units.values())

    def in_use_counts(self) -> Counter[tuple[str, str]]:
        """(kind, district) -> units in use."""
        return Counter((u.kind.value, u.district) for u in self.units.values() if u.in_use)

    # ---- files
    @classmethod
    def load(cls, path: Path | str) -> Registry:
        """Read and validate the whole file; any way it can be unusable is a :class:`RegistryError`.

        Why every kind: the stages reload this file while they run, and a reload that raised
        anything else (``csv.Error`` for a field over the CSV limit, an ``OSError``) used to end
        the worker instead of keeping the registry in force.
        """
        path = Path(path)
        try:
            stat = path.stat()
            with path.open(encoding="utf-8-sig", newline="") as fh:
                units = parse_rows(csv.DictReader(fh), path)
        except FileNotFoundError:
            raise RegistryError(path, ["file not found"]) from None
        except UnicodeDecodeError as exc:
            raise RegistryError(path, [f"not UTF-8 text: {exc}"]) from None
        except OSError as exc:
            raise RegistryError(path, [f"cannot read: {exc.strerror or exc}"]) from None
        return cls(units=units, path=path, mtime_ns=stat.st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; keep the old registry if the new one is broken.

        Raises :class:`RegistryError` once per bad version of the file (the registry in force
        is untouched); the same bad version is not read, reported or counted again until the
        file changes once more.
        """
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return False  # being replaced, or gone: keep what is in force
        except OSError as exc:
            raise RegistryError(self.path, [f"cannot read: {exc.strerror or exc}"]) from None
        if mtime in (self.mtime_ns, self.rejected_mtime_ns):
            return False
        try:
            fresh = Registry.load(self.path)
        except RegistryError:
            self.rejected_mtime_ns = mtime
            raise
        self.units, self.mtime_ns, self.rejected_mtime_ns = fresh.units, fresh.mtime_ns, 0
        return True

    def write(self, path: Path | str) -> None:
        write_registry(self.units.values(), path)


def parse_rows(reader: csv.DictReader, path: Path | str = "<rows>") -> dict[str, Unit]:
    """Every row validated; all bad rows reported at once (a CSV syntax error ends the reading)."""
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise RegistryError(path, [f"line {reader.reader.line_num}: not readable as CSV: {exc}"]) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise RegistryError(path, [f"header lacks required column(s): {', '.join(missing)}"])
    units: dict[str, Unit] = {}
    problems: list[str] = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. "field larger than field limit (131072)": the rest is unreadable
            problems.append(f"line {reader.reader.line_num}: not readable as CSV: {exc}")
            break
        line_no = reader.line_num
        clean = {k: v for k, v in row.items() if k in COLUMNS}
        try:
            unit = Unit.model_validate(clean)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                col = ".".join(str(p) for p in err["loc"])
                got = _short(err.get("input"))
                problems.append(f"line {line_no}, column {col}: {err['msg']} (got {got})")
            continue
        if unit.device_id in units:
            problems.append(f"line {line_no}: duplicate device_id {unit.device_id}")
            continue
        units[unit.device_id] = unit
    if problems:
        raise RegistryError(path, problems)
    if not units:
        raise RegistryError(path, ["no units"])
    return units


def _short(value: object, limit: int = 80) -> str:
    """A bad cell as shown in a problem line: a 100 kB cell must not become a 100 kB log line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def write_registry(units: Iterable[Unit], path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for unit in units:
            writer.writerow(unit.to_row())
    tmp.replace(path)
