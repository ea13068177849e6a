"""The rule catalogue as a validated document: pydantic models with ``extra="forbid"``.

A typo must not silently disable a rule (``clear_whn``, ``supress``, ``for``): every key of the
catalogue is declared here, so an unknown one is an error naming the rule and the key. These
models check the *shape* (keys, types, operators, one source per rule); ``rules.validate``
adds what needs the whole document (fields the engine knows, thresholds of the right type,
references between rules). ``CatalogueDoc.model_json_schema()`` is the JSON Schema shipped for
inspectors and editors (``sesmon rules schema``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from . import expr as expr_mod

Number = Annotated[float, Field(strict=True)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]

OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in")
LEVELS = ("P1", "P2", "P3")
GRADES = ("general", "suspected_major", "major")
SUPERVISION = ("none", "district", "city", "province")
SUPPRESS_REASONS = ("maintenance", "inspection_mode", "out_of_service", "not_in_use", "offline")
RULE_TYPES = ("state", "count", "followup", "deadman", "calendar", "report")
#: ``via`` of a citation: where the reference was taken from. ``memory``: cited from the
#: engineer's memory, not checked against the text — verify before relying on the clause.
VIA_PATTERN = r"^(domain\.md §\d+(\.\d+)*( \[[SMD]\])?|issue 8|memory)$"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- sources


class Reference(_Doc):
    """A standard, regulation, plan or notice the catalogue cites (``references:``)."""

    title: str = Field(min_length=1)
    url: str | None = None
    note: str = ""


class Citation(_Doc):
    """Where a rule, threshold or setting comes from."""

    ref: str = Field(min_length=1, description="key of the catalogue's references:")
    clause: str | None = Field(None, description="clause, table or section, e.g. '14.2.5.2'")
    via: str = Field(
        pattern=VIA_PATTERN,
        description="where the citation was taken from: 'domain.md §x [S|M|D]', 'issue 8', or 'memory' "
        "(not checked against the text: verify the clause)",
    )
    note: str = ""


class Basis(_Doc):
    """Every rule, threshold and setting cites a source, or says it is an assumption and why."""

    source: list[Citation] = Field(default_factory=list)
    assumption: bool = False
    why: str | None = Field(None, min_length=10, description="why the assumed value was chosen")

    @model_validator(mode="after")
    def _sourced_or_assumed(self) -> Basis:
        if self.assumption and not self.why:
            raise ValueError("assumption: true needs why: (a sentence saying why the value was chosen)")
        if self.why and not self.assumption:
            raise ValueError("why: explains an assumption; set assumption: true (or drop why:)")
        if not self.source and not self.assumption:
            raise ValueError(
                "cite a source: (standard and clause, plan or notice) or set assumption: true with why:"
            )
        return self


# --------------------------------------------------------------------------- conditions


def _check_condition(spec: Any, where: str = "") -> Any:
    """Shape of a condition: ``[field, op, value]``, a list (all), ``{any|all: [...]}``, ``{not: c}``."""
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        if len(spec) != 3:
            raise ValueError(f"{where or 'clause'} {spec!r}: a clause is [field, op, value]")
        field, op, value = spec
        if op not in OPS:
            raise ValueError(f"{where or 'clause'} {spec!r}: operator {op!r} is not one of {list(OPS)}")
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where or 'clause'} {spec!r}: {op} needs a non-empty list")
            bad = [x for x in value if not isinstance(x, bool | int | float | str)]
        else:
            bad = [] if isinstance(value, bool | int | float | str) else [value]
        if bad:
            raise ValueError(f"{where or 'clause'} {spec!r}: value {bad[0]!r} is not a number, bool or word")
        if not field or field.startswith("$"):
            raise ValueError(f"{where or 'clause'} {spec!r}: the first item is a field name")
        return spec
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where or 'condition'}: empty condition")
        for i, item in enumerate(spec):
            _check_condition(item, f"{where}[{i}]")
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        ((key, body),) = spec.items()
        if key in ("any", "all"):
            if not isinstance(body, list) or not body:
                raise ValueError(f"{where}{key}: needs a non-empty list of conditions")
            for i, item in enumerate(body):
                _check_condition(item, f"{where}{key}[{i}]")
            return spec
        if key == "not":
            _check_condition(body, f"{where}not")
            return spec
    raise ValueError(
        f"cannot read condition {spec!r}: use [field, op, value], a list, {{any: [...]}}, {{not: ...}}"
    )


_VALUE_SCHEMA: dict[str, Any] = {"type": ["number", "boolean", "string"]}
CONDITION_SCHEMA: dict[str, Any] = {
    "description": "[field, op, value] | list of conditions (all) | {any: [...]} | {all: [...]} | "
    "{not: ...}; "
    "field may be 'prev.<field>'; value may be '$param'",
    "anyOf": [
        {
            "type": "array",
            "prefixItems": [
                {"type": "string"},
                {"enum": list(OPS)},
                {"anyOf": [_VALUE_SCHEMA, {"type": "array", "items": _VALUE_SCHEMA}]},
            ],
            "minItems": 3,
            "maxItems": 3,
        },
        {"type": "array", "items": {"$ref": "#/$defs/Condition"}, "minItems": 1},
        {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "any": {"type": "array", "items": {"$ref": "#/$defs/Condition"}},
                "all": {"type": "array", "items": {"$ref": "#/$defs/Condition"}},
                "not": {"$ref": "#/$defs/Condition"},
            },
            "additionalProperties": False,
        },
    ],
}
_CONDITION_MARK = {"x-sesmon": "condition"}  # replaced by a $ref to the recursive schema in json_schema()
Condition = Annotated[Any, AfterValidator(_check_condition), WithJsonSchema(dict(_CONDITION_MARK))]


# --------------------------------------------------------------------------- thresholds


class ParamExpr(_Doc):
    """A threshold from the unit's registry values; ``default`` when a value it needs is blank."""

    expr: str = Field(
        description="arithmetic over registry columns, e.g. 'max(110, 100 + 7500 / rated_load_kg)'"
    )
    default: Number

    @field_validator("expr")
    @classmethod
    def _parses(cls, value: str) -> str:
        expr_mod.parse(value)
        return value


Param = Number | ParamExpr


class ForCase(_Doc):
    """A duration that depends on the reading the condition began with (first match wins)."""

    when: Condition
    for_s: NonNegative


class ClearAfter(_Doc):
    """A clear that must hold for a while (one reading is not enough: a sensor may miss a person)."""

    when: Condition
    for_s: NonNegative


class EventSpec(_Doc):
    code: str
    detail: dict[str, bool | int | float | str] = Field(default_factory=dict)


class HazardSpec(Basis):
    """The hidden danger a rule opens; its grade follows GB 45067-2024 (cite it, or say why not)."""

    source: list[Citation] = Field(default_factory=list)
    id: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$", description="hazard source id (no dots: part of hazard ids)"
    )
    grade: Literal["general", "suspected_major", "major"]
    deadline_days: PositiveInt
    title: str = Field(min_length=1)


class CountSpec(_Doc):
    of: list[str] = Field(min_length=1)
    n: Annotated[int, Field(strict=True, ge=2)]
    window_s: Annotated[float, Field(strict=True, gt=0)]


# --------------------------------------------------------------------------- rules


class RuleSpec(Basis):
    """One rule of the catalogue (see rules/README.md for what each key does)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
    kind: Literal["elevator", "boiler", "any"]
    applies: Literal["lift", "escalator", "steam", "hot_water"] | None = Field(
        None,
        description="elevator: lift (traction, hydraulic) or escalator (3310/3320); boiler: steam, hot_water",
    )
    level: Literal["P1", "P2", "P3"]
    type: Literal["state", "count", "followup", "deadman", "calendar", "report"] = "state"
    title: str = Field(min_length=1)
    titles: dict[str, str] = Field(default_factory=dict, description="title by 'field=value' of the reading")
    description: str = ""
    when: Condition | None = None
    clear_when: Condition | None = None
    clear_after: ClearAfter | None = None
    for_s: NonNegative | ParamExpr = 0.0
    for_s_cases: list[ForCase] = Field(default_factory=list)
    confirm_readings: Annotated[int, Field(strict=True, ge=1)] = 1
    events: list[str | EventSpec] = Field(default_factory=list)
    event_auto_resolve_s: NonNegative = 0.0
    params: dict[str, Param] = Field(default_factory=dict)
    suppress: list[Literal["maintenance", "inspection_mode", "out_of_service", "not_in_use", "offline"]] = (
        Field(default_factory=list)
    )
    suppress_events: bool = False
    inhibited_by: list[str] = Field(default_factory=list)
    hazard: HazardSpec | None = None
    centre: bool | None = Field(
        None, description="page the 96333 centre (elevators only); default: elevator P1"
    )
    regulator: bool | None = Field(
        None, description="tell the district regulator; default: major hazard rules"
    )
    open_for: list[str] = Field(
        default_factory=list, description="followup: alerts whose open time is measured"
    )
    check: Literal["maintenance_gap", "inspection_due_soon", "inspection_overdue"] | None = None
    days: PositiveInt | None = None
    report: Literal["inspection_failed", "accident"] | None = None
    count: CountSpec | None = None

    @model_validator(mode="after")
    def _keys_fit_the_type(self) -> RuleSpec:
        if self.applies in ("lift", "escalator") and self.kind != "elevator":
            raise ValueError(f"applies: {self.applies} is for kind elevator")
        if self.applies in ("steam", "hot_water") and self.kind != "boiler":
            raise ValueError(f"applies: {self.applies} is for kind boiler")
        condition_keys = ("when", "clear_when", "clear_after", "for_s_cases", "confirm_readings", "params")
        only: dict[str, tuple[str, ...]] = {
            "count": ("count",),
            "followup": ("open_for",),
            "calendar": ("check", "days"),
            "report": ("report",),
            "state": (*condition_keys, "events", "event_auto_resolve_s", "suppress_events"),
        }
        for typ, keys in only.items():
            if typ == self.type:
                continue
            for key in keys:
                if key in self.model_fields_set:
                    raise ValueError(f"{key}: only rules of type {typ} use it (this one is type {self.type})")
        if self.type == "state" and self.when is None and not self.events:
            raise ValueError("a state rule needs when: or events:")
        if self.type == "count" and self.count is None:
            raise ValueError("a count rule needs count: {of, n, window_s}")
        if self.type == "followup" and (not self.open_for or "for_s" not in self.model_fields_set):
            raise ValueError("a followup rule needs open_for: [rule ids] and for_s:")
        if self.type == "calendar" and self.check is None:
            raise ValueError("a calendar rule needs check:")
        if self.type == "report" and self.report is None:
            raise ValueError("a report rule needs report:")
        if self.clear_when is not None and self.when is None:
            raise ValueError("clear_when: needs when:")
        return self


# --------------------------------------------------------------------------- settings, derived


class FlapSettings(_Doc):
    window_s: Annotated[float, Field(strict=True, gt=0)]
    max_opens: Annotated[int, Field(strict=True, ge=2)]
    hold_s: NonNegative


class SettingsSpec(_Doc):
    """Engine settings (each one needs a settings_basis: entry)."""

    lateness_s: NonNegative = Field(
        description="reorder bound: readings later than this are recorded, not evaluated"
    )
    heartbeat_s: Annotated[float, Field(strict=True, gt=0)]
    offline_after_heartbeats: PositiveInt
    record_gaps: bool = True
    maintenance_default_s: Annotated[float, Field(strict=True, gt=0)]
    flap: FlapSettings
    calendar_every_s: Annotated[float, Field(strict=True, gt=0)]
    closed_hazard_retention_days: PositiveInt
    supervision_at_grading: dict[
        Literal["general", "suspected_major", "major"], Literal["none", "district", "city", "province"]
    ] = Field(description="挂牌督办 level a hazard gets when it is graded (never raised by a calendar)")
    centre_id: str = Field(min_length=1)


class DerivedSpec(Basis):
    """A value computed from telemetry before rules run."""

    func: Literal["rate", "tsat_margin", "efficiency", "handrail_deviation", "direction_mismatch"]
    kind: Literal["elevator", "boiler"] = "boiler"
    source: list[Citation] = Field(default_factory=list)
    field: str | None = Field(None, description="the telemetry field it is computed from (rate, tsat_margin)")
    window_s: Annotated[float, Field(strict=True, gt=0)] = 30.0
    per_s: Annotated[float, Field(strict=True, gt=0)] = 60.0


class CatalogueDoc(_Doc):
    """The whole catalogue file (rules/catalogue.yaml)."""

    version: str = Field(min_length=1, description="bump on any change; recorded in every alert and hazard")
    references: dict[str, Reference]
    settings: SettingsSpec
    settings_basis: dict[str, Basis] = Field(description="source or assumption for each setting")
    derived: dict[str, DerivedSpec] = Field(default_factory=dict)
    rules: list[RuleSpec]


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the catalogue file, with the recursive condition type."""

    def link(node: Any) -> Any:
        if isinstance(node, dict):
            if node == _CONDITION_MARK:
                return {"$ref": "#/$defs/Condition"}
            return {k: link(v) for k, v in node.items()}
        if isinstance(node, list):
            return [link(v) for v in node]
        return node

    schema = link(CatalogueDoc.model_json_schema())
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sesmon.example/schemas/rules-catalogue.schema.json",
        **schema,
    }
    schema.setdefault("$defs", {})["Condition"] = CONDITION_SCHEMA
    return schema
