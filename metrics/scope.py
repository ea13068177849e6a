"""Who a KPI is about: the city, a district or a maintenance firm, for elevators, boilers or all.

A unit belongs to six scopes (city, its district, its firm × its kind and ``all``), which is
how :func:`scopes_of` lets a live computation fold each record into every KPI it moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Level = Literal["city", "district", "firm"]
KindFilter = Literal["elevator", "boiler", "all"]
LEVELS: tuple[Level, ...] = ("city", "district", "firm")
KINDS: tuple[KindFilter, ...] = ("elevator", "boiler", "all")
#: ``scope_id`` of the city scope (a tag value cannot be empty in line protocol)
CITY_ID = "city"


class UnitLike(Protocol):
    """What the metrics read of a registry unit (``sesmon.contract.registry.Unit`` has all of it)."""

    device_id: str
    kind: Any  # "elevator" | "boiler" (a str enum in the registry)
    district: str
    firm_id: str
    status: str


def kind_of(value: Any) -> str:
    """``Kind.elevator`` or ``"elevator"`` → ``"elevator"`` (fast for str and str enums: no ``.value``)."""
    if isinstance(value, str):
        return str.__str__(value)
    return str(getattr(value, "value", value) or "")


@dataclass(frozen=True, slots=True)
class Scope:
    level: Level = "city"
    scope_id: str = CITY_ID
    kind: KindFilter = "all"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"scope level {self.level!r} is not one of {LEVELS}")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")

    @classmethod
    def city(cls, kind: KindFilter = "all") -> Scope:
        return cls("city", CITY_ID, kind)

    @classmethod
    def district(cls, district: str, kind: KindFilter = "all") -> Scope:
        return cls("district", district, kind)

    @classmethod
    def firm(cls, firm_id: str, kind: KindFilter = "all") -> Scope:
        return cls("firm", firm_id, kind)

    def matches(self, kind: Any, district: str, firm_id: str) -> bool:
        """Does a unit of this kind, district and firm fall in the scope?"""
        if self.kind != "all" and kind != self.kind:  # a str enum compares equal to its text
            return False
        if self.level == "district":
            return district == self.scope_id
        if self.level == "firm":
            return firm_id == self.scope_id
        return True

    def holds(self, unit: UnitLike) -> bool:
        return self.matches(unit.kind, unit.district, unit.firm_id)

    def with_kind(self, kind: KindFilter) -> Scope:
        return Scope(self.level, self.scope_id, kind)

    @property
    def tags(self) -> dict[str, str]:
        return {"scope": self.level, "scope_id": self.scope_id, "kind": self.kind}


CITY = Scope.city()


def scopes_of(kind: Any, district: str, firm_id: str) -> list[Scope]:
    """Every scope a unit counts in (six when district and firm are known)."""
    kinds: list[KindFilter] = ["all"]
    k = kind_of(kind)
    if k in ("elevator", "boiler"):
        kinds.insert(0, k)  # type: ignore[arg-type]
    out = [Scope("city", CITY_ID, x) for x in kinds]
    if district:
        out += [Scope("district", district, x) for x in kinds]
    if firm_id:
        out += [Scope("firm", firm_id, x) for x in kinds]
    return out


def all_scopes(units: Iterable[UnitLike]) -> list[Scope]:
    """City, every district and every firm of the registry, each for elevator, boiler and all."""
    districts = sorted({u.district for u in units_of(units).values() if u.district})
    firms = sorted({u.firm_id for u in units_of(units).values() if u.firm_id})
    out = [Scope.city(k) for k in KINDS]
    out += [Scope.district(d, k) for d in districts for k in KINDS]
    out += [Scope.firm(f, k) for f in firms for k in KINDS]
    return out


def units_of(units: Any) -> Mapping[str, UnitLike]:
    """A ``sesmon.contract.registry.Registry``, a ``{device_id: unit}`` mapping or an iterable of units,
    as a mapping by device_id."""
    inner = getattr(units, "units", None)
    if isinstance(inner, Mapping):
        return inner
    if isinstance(units, Mapping):
        return units
    return {u.device_id: u for u in units}


def in_use(units: Any, scope: Scope = CITY, kind: KindFilter | None = None) -> Iterator[UnitLike]:
    """Units in use (registry status ``in_use``) inside ``scope`` (and of ``kind`` when given)."""
    for unit in units_of(units).values():
        if unit.status != "in_use" or not scope.holds(unit):
            continue
        if kind is not None and kind != "all" and unit.kind != kind:
            continue
        yield unit


def count_in_use(units: Any, scope: Scope = CITY, kind: KindFilter | None = None) -> int:
    """The denominator of every per-10k rate: registered units in use in the scope."""
    return sum(1 for _ in in_use(units, scope, kind))
