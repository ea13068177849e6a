"""The telemetry fields a rule may test, with their types, per kind of unit.

Taken from the ingest schemas (``sesmon.contract.schemas.ElevatorTelemetry`` / ``BoilerTelemetry``) so a
catalogue cannot name a field the pipeline never delivers (``sped_mps`` is an error, not a rule
that silently never fires). :data:`PENDING_FIELDS` are fields the rules already use that the
schemas do not declare yet (escalators, brake): ingest keeps unknown body fields, so they reach
the rules as soon as terminals send them; each one is listed for the schema owner.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel

from sesmon.contract.schemas import BoilerTelemetry, ElevatorTelemetry

FieldKind = Literal["bool", "number", "enum", "text"]


@dataclass(frozen=True, slots=True)
class FieldType:
    kind: FieldKind
    values: tuple[str, ...] = ()  # allowed values of an enum field
    note: str = ""

    def describe(self) -> str:
        return f"one of {list(self.values)}" if self.kind == "enum" else f"a {self.kind}"


#: Fields rules use that ``sesmon/contract/schemas.py`` does not declare yet (elevator kind; escalators and
#: moving walks are elevator-kind units with type code 3310 / 3320).
PENDING_FIELDS: dict[str, dict[str, FieldType]] = {
    "elevator": {},  # brake and the escalator fields (set_direction, handrail_*, ...) are declared now
    "boiler": {},
}

_SKIP = {"device_id", "ts", "seq"}


def _field_type(annotation: Any) -> FieldType | None:
    """Map a pydantic annotation (Optional, Annotated, Literal, StrEnum, bool, int, float) to a type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _field_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _field_type(inner[0]) if len(inner) == 1 else None
    if origin is Literal:
        return FieldType("enum", tuple(str(a) for a in typing.get_args(annotation)))
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return FieldType("enum", tuple(str(m.value) for m in annotation))
        if annotation is bool:
            return FieldType("bool")
        if annotation in (int, float):
            return FieldType("number")
        if annotation is str:
            return FieldType("text")
    return None


def _from_model(model: type[BaseModel]) -> dict[str, FieldType]:
    out: dict[str, FieldType] = {}
    for name, info in model.model_fields.items():
        if name in _SKIP:
            continue
        ftype = _field_type(info.annotation)
        if ftype is not None:
            out[name] = ftype
    return out


TELEMETRY_FIELDS: dict[str, dict[str, FieldType]] = {
    "elevator": {**_from_model(ElevatorTelemetry), **PENDING_FIELDS["elevator"]},
    "boiler": {**_from_model(BoilerTelemetry), **PENDING_FIELDS["boiler"]},
}

#: Types of the values derived functions produce (``derived:`` in the catalogue).
DERIVED_TYPES: dict[str, FieldType] = {
    "rate": FieldType("number"),
    "tsat_margin": FieldType("number"),
    "efficiency": FieldType("number"),
    "handrail_deviation": FieldType("number"),
    "direction_mismatch": FieldType("bool"),
}


def fields_for(kind: str, derived: dict[str, FieldType]) -> dict[str, FieldType]:
    """Every field a rule of ``kind`` (elevator, boiler, any) may test."""
    kinds = ("elevator", "boiler") if kind == "any" else (kind,)
    out: dict[str, FieldType] = {}
    for k in kinds:
        out.update(TELEMETRY_FIELDS[k])
    out.update(derived)
    return out
