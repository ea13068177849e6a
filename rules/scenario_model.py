"""Scenario files (``simulators/scenarios/*.yaml``) as a validated document: pydantic, ``extra="forbid"``.

A scenario is evidence (an incident drill, a rule test): a typo such as ``expcet:`` or
``withn:`` must be an error, not an expectation that silently checks nothing. This model
is the format of simulators/README.md. The simulator's loader calls::

    from rules.scenario_model import validate_scenario
    doc = validate_scenario(data, path, faults=FAULT_PARAMS)   # raises ScenarioError

``faults`` (optional) maps each fault name the simulators know to the params it takes; with
it, unknown faults and params are errors too. It lives in ``rules/`` only so both the rules
tests and the simulators can use it without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|min|m|h|d)?)+")
Scalar = bool | int | float | str


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 90s, 5m, 2h, 1d, 9m10s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return value
    if isinstance(value, str) and _DURATION.fullmatch(value.replace(" ", "")):
        return value
    raise ValueError(f"bad duration {value!r} (use 30s, 5m, 2h, 1d, 9m10s)")


Duration = Annotated[int | float | str, Field(description="seconds, or 90s / 5m / 2h / 1d / 9m10s")]
DEVICE = r"^([A-Za-z0-9_-]{1,64}|(elevator|escalator|boiler|steam|hotwater)#\d+)$"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetSpec(_Doc):
    elevators: Annotated[int, Field(strict=True, ge=0)] = 0
    boilers: Annotated[int, Field(strict=True, ge=0)] = 0
    seed: int = 1


class NetworkSpec(_Doc):
    """NetworkOptions fields (simulators/network.py); all optional."""

    buffering: float | None = None
    reorder: float | None = None
    duplicates: float | None = None
    skew_fraction: float | None = None
    dropouts_per_year: float | None = None
    malformed: float | None = None
    iso_ts_fraction: float | None = None


class OptionsSpec(_Doc):
    faults: Literal["none", "background", "demo"] = "none"
    fault_rate_multiplier: float = 1.0
    traffic: float = 1.0
    periodic: bool = True
    human: bool = False
    boiler_tick_s: float = 2.0
    boiler_report_s: float | None = None
    responders: bool = True
    network: Literal["perfect", "realistic"] | NetworkSpec | None = None


class StepSpec(_Doc):
    at: Duration = 0
    device: str = Field("", pattern=r"^$|" + DEVICE[1:])
    fault: str | None = None
    action: (
        Literal["release", "recover", "offline", "online", "maintenance", "inspection", "alert"] | None
    ) = None
    params: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _at(cls, value: Any) -> Any:
        return _duration(value)

    @model_validator(mode="after")
    def _one_thing(self) -> StepSpec:
        if (self.fault is None) == (self.action is None):
            raise ValueError("a step has either fault: or action:")
        if self.action != "alert" and not self.device:
            raise ValueError("a step needs device:")
        for key in ("duration", "auto_release", "detect"):
            if key in self.params:
                _duration(self.params[key])
        return self


Compare = Scalar | None | dict[Literal["le", "lt", "ge", "gt", "eq", "ne"], Scalar | None]


class ExpectSpec(_Doc):
    """One expectation: exactly one of event, no_event, telemetry, status, topic."""

    device: str | None = Field(None, pattern=DEVICE)
    event: str | None = None
    state: Literal["occur", "recover"] = "occur"
    detail: dict[str, Compare] = Field(default_factory=dict)
    no_event: str | None = None
    telemetry: dict[str, Compare] | None = None
    status: Literal["online", "offline"] | None = None
    topic: str | None = None
    min_count: Annotated[int, Field(strict=True, ge=0)] = 1
    within: tuple[Duration, Duration] | None = None

    @field_validator("within")
    @classmethod
    def _within(cls, value: Any) -> Any:
        return value if value is None else tuple(_duration(x) for x in value)

    @model_validator(mode="after")
    def _one_kind(self) -> ExpectSpec:
        kinds = [
            k for k in ("event", "no_event", "telemetry", "status", "topic") if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError("an expectation has exactly one of event, no_event, telemetry, status, topic")
        if kinds[0] != "topic" and self.device is None:
            raise ValueError(f"{kinds[0]} expectations need device:")
        if self.detail and kinds[0] != "event":
            raise ValueError("detail: only goes with event:")
        return self


class ScenarioDoc(_Doc):
    """A scenario file (simulators/README.md)."""

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 1
    start: datetime | str | None = None
    duration: Duration = 600
    units: list[str] | None = None
    fleet: FleetSpec | None = None
    options: OptionsSpec = Field(default_factory=OptionsSpec)
    timeline: list[StepSpec] = Field(default_factory=list)
    expect: list[ExpectSpec] = Field(default_factory=list)

    @field_validator("duration")
    @classmethod
    def _duration_ok(cls, value: Any) -> Any:
        return _duration(value)

    @field_validator("start")
    @classmethod
    def _start(cls, value: Any) -> Any:
        if isinstance(value, str):
            datetime.fromisoformat(value)
        return value

    @model_validator(mode="after")
    def _fleet_or_units(self) -> ScenarioDoc:
        if self.fleet is not None and self.units is not None:
            raise ValueError("name either fleet: (a generated fleet) or units: (from a registry), not both")
        return self


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names the file, the step or expectation, and the key."""

    def __init__(self, path: Path | str | None, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid scenario {path or ''}:\n  " + "\n  ".join(problems))


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not str(item)[:1].isupper() and str(item) not in ("str", "int", "float", "bool", "dict", "list"):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "scenario"


def validate_scenario(
    data: Any, path: Path | str | None = None, faults: Mapping[str, set[str] | frozenset[str]] | None = None
) -> ScenarioDoc:
    """The validated scenario, or :class:`ScenarioError` listing every problem (file, step, key)."""
    try:
        doc = ScenarioDoc.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (a typo?)"
            problems.append(f"{path or '<scenario>'}: {_where(err['loc'])}: {msg}")
        raise ScenarioError(path, problems) from None
    if faults is not None:
        problems = []
        for i, step in enumerate(doc.timeline):
            if step.fault is None:
                continue
            if step.fault not in faults:
                problems.append(
                    f"{path}: timeline[{i}].fault: unknown fault {step.fault!r} ({sorted(faults)})"
                )
                continue
            for key in step.params:
                if key not in faults[step.fault]:
                    problems.append(
                        f"{path}: timeline[{i}].params.{key}: {step.fault} takes {sorted(faults[step.fault])}"
                    )
        if problems:
            raise ScenarioError(path, problems)
    return doc
