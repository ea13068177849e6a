"""Who is paged: one definition (sesmon.contract.receivers) for the rules and the alerts stage."""

from __future__ import annotations

import pytest

from alerts.routing import hazard_receivers_of, receivers_for
from sesmon.contract.receivers import alert_receivers
from sesmon.contract.schemas import Alert, Kind, Level

UNIT = {"firm_id": "F001", "user_unit_id": "U01", "district": "天河", "centre_id": "96333"}


def alert(kind: str, level: Level) -> Alert:
    return Alert(
        alert_id="A",
        rule="x",
        level=level,
        device_id="D1",
        kind=kind,  # type: ignore[arg-type]
        district="天河",
        firm_id="F001",
        user_unit_id="U01",
        opened_at=1,
        changed_at=1,
        state="firing",
    )


@pytest.mark.parametrize(
    ("kind", "centre", "regulator", "expected"),
    [
        (Kind.elevator, True, False, {"firm:F001", "user_unit:U01", "centre:96333"}),
        (Kind.boiler, True, False, {"firm:F001", "user_unit:U01"}),  # 96333 is the elevator platform
        (Kind.boiler, True, True, {"firm:F001", "user_unit:U01", "regulator:district:天河"}),
        (Kind.elevator, False, False, {"firm:F001", "user_unit:U01"}),
    ],
)
def test_alert_receivers(kind: Kind, centre: bool, regulator: bool, expected: set[str]) -> None:
    got = alert_receivers(kind, centre=centre, regulator=regulator, **UNIT)
    assert {f"{r.kind}:{r.id}" for r in got} == expected


def test_the_alerts_stage_falls_back_to_the_same_definition() -> None:
    boiler_p1 = {f"{r.kind}:{r.id}" for r in receivers_for(alert("boiler", Level.P1), "96333")}
    lift_p1 = {f"{r.kind}:{r.id}" for r in receivers_for(alert("elevator", Level.P1), "96333")}
    lift_p2 = {f"{r.kind}:{r.id}" for r in receivers_for(alert("elevator", Level.P2), "96333")}
    assert boiler_p1 == {"firm:F001", "user_unit:U01"}
    assert lift_p1 == {"firm:F001", "user_unit:U01", "centre:96333"}
    assert lift_p2 == {"firm:F001", "user_unit:U01"}


@pytest.mark.parametrize(
    ("grade", "regulator"), [("general", False), ("suspected_major", True), ("major", True)]
)
def test_a_suspected_major_hazard_reaches_the_regulator_to_be_confirmed(grade: str, regulator: bool) -> None:
    got = hazard_receivers_of({"firm_id": "F001", "district": "天河", "grade": grade})
    kinds = {f"{r.kind}:{r.id}" for r in got}
    assert "firm:F001" in kinds
    assert ("regulator:district:天河" in kinds) is regulator
