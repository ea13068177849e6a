"""Line protocol and the DESIGN.md §7 schema, without servers.

``encode`` must write exactly what influxdb-client's ``Point.to_line_protocol()`` writes (it
replaces it on the hot path for speed): checked on generated points with hypothesis.
"""

from __future__ import annotations

import math
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from metrics import CITY, Scope, safety_kpi, trailing_365d
from sesmon.contract.registry import Unit
from sesmon.contract.schemas import parse_mqtt
from store.lineproto import encode, to_point
from store.points import BadRecord, PointMaker, kpi_line

# keys and values with everything line protocol escapes: , = space \ " newline tab, braces, unicode
text = st.text(alphabet=st.sampled_from(list('ab, =\\"\n\t\r{}#é天_')), max_size=8)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6).map(round),  # whole floats: "1.0" is written "1"
    text,
)


def reference(measurement: str, tags: dict, fields: dict, ts: int) -> str:
    point = Point(measurement)
    for k, v in tags.items():
        point.tag(k, v)
    for k, v in fields.items():
        point.field(k, v)
    return point.time(ts, WritePrecision.MS).to_line_protocol()


@settings(max_examples=400, deadline=None)
@given(
    measurement=text.filter(lambda m: m and not m.startswith("#")),
    tags=st.dictionaries(text, st.one_of(st.none(), text), max_size=4),
    fields=st.dictionaries(text, values, max_size=6),
    ts=st.integers(min_value=0, max_value=4_102_444_800_000),
)
def test_encode_is_byte_identical_to_point(measurement: str, tags: dict, fields: dict, ts: int) -> None:
    assert encode(measurement, tags, fields, ts) == reference(measurement, tags, fields, ts)
    # the second time comes from the caches
    assert encode(measurement, tags, fields, ts) == reference(measurement, tags, fields, ts)


def test_encode_hands_other_types_to_point() -> None:
    fields = {"d": Decimal("1.50"), "x": 2}
    assert encode("m", {"t": 1}, fields, 5) == reference("m", {"t": 1}, fields, 5) == "m,t=1 d=1.50,x=2i 5"
    assert encode("m", {}, {"a": None, "b": math.nan}, 1) == ""  # no field: no line (as Point)
    assert to_point("m", {"t": "v"}, {"f": 1.0}, 7).to_line_protocol() == "m,t=v f=1 7"


# --------------------------------------------------------------------------- records → points


def unit_place(device_id: str) -> tuple[str, str] | None:
    return ("天河", "F1") if device_id.startswith("E") else None


def envelope(topic: str, body: dict, received_ms: int = 1_800_000_000_500) -> bytes:
    env = parse_mqtt(topic, orjson.dumps(body), received_ms)
    return orjson.dumps(env.model_dump(mode="json"))


def test_telemetry_point_keeps_schema_types() -> None:
    maker = PointMaker(unit_place)
    body = {
        "device_id": "E1",
        "ts": 1_800_000_000_000,
        "seq": 7,
        "floor": 3,
        "speed_mps": 1,
        "door": "closed",
        "moving": False,
        "vendor_temp": 41,
        "vendor_blob": {"a": 1},
    }
    (line,) = maker.lines("telemetry", envelope("sesmon/v1/elevator/E1/telemetry", body))
    # floor is declared int; speed_mps float (sent as 1); an unknown numeric extra is a float;
    # structures are dropped
    assert line == (
        'elevator,device_id=E1,district=天河,firm_id=F1 door="closed",floor=3i,moving=false,'
        "received_ms=1800000000500i,seq=7i,speed_mps=1,vendor_temp=41 1800000000000"
    )
    boiler = {"device_id": "B1", "ts": 1_800_000_000_000, "seq": 1, "pressure_mpa": 1, "burner": "high_fire"}
    (line,) = maker.lines("telemetry", envelope("sesmon/v1/boiler/B1/telemetry", boiler))
    assert (
        line == 'boiler,device_id=B1 burner="high_fire",pressure_mpa=1,received_ms=1800000000500i,seq=1i '
        "1800000000000"
    )


def test_event_dispatch_alert_hazard_pipeline_points() -> None:
    maker = PointMaker(unit_place)
    event = {
        "device_id": "E1",
        "ts": 1_800_000_000_000,
        "seq": 9,
        "code": "trapped",
        "state": "occur",
        "detail": {"floor": 3},
    }
    (line,) = maker.lines("events", envelope("sesmon/v1/elevator/E1/event", event))
    assert line == (
        "event,code=trapped,device_id=E1,district=天河,firm_id=F1,kind=elevator,state=occur "
        'detail="{\\"floor\\":3}",received_ms=1800000000500i,seq=9i 1800000000000'
    )
    alert_id = "E1.elevator.trapped.1800000000000"
    action = {"alert_id": alert_id, "action": "on_site", "by": "firm-F1", "ts": 1_800_000_720_000}
    (line,) = maker.lines("dispatch", envelope(f"sesmon/v1/dispatch/{alert_id}/firm-F1", action))
    assert line == (
        "dispatch,action=on_site,device_id=E1,district=天河,firm_id=F1,rule=elevator.trapped "
        f'actor="firm-F1",alert_id="{alert_id}",publisher="firm-F1",received_ms=1800000000500i,'
        "since_alarm_s=720 1800000720000"
    )
    alert = {
        "alert_id": alert_id,
        "rule": "elevator.trapped",
        "rule_version": "v1",
        "level": "P1",
        "device_id": "E1",
        "kind": "elevator",
        "district": "越秀",
        "firm_id": "F9",
        "user_unit_id": "",
        "opened_at": 1_800_000_000_000,
        "changed_at": 1_800_000_030_000,
        "state": "firing",
        "escalation": 0,
        "title": "困人 trapped",
        "receivers": [{"kind": "firm", "id": "F9"}],
        "evidence": [],
    }
    (line,) = maker.lines("alerts", orjson.dumps(alert))
    assert line.startswith(
        "alert,device_id=E1,district=越秀,firm_id=F9,kind=elevator,level=P1,rule=elevator.trapped,"
        "state=firing "
    )
    assert "open_s=30," in line and "receivers=1i" in line and line.endswith(" 1800000030000")
    from rules.hazards import new_hazard

    hazard = new_hazard(
        device_id="E1",
        source="rule",
        grade="major",
        opened_ms=1_800_000_000_000,
        deadline_days=7,
        unit=Unit(device_id="E1", kind="elevator", district="越秀", firm_id="F9"),
    )
    (line,) = maker.lines("hazards", orjson.dumps(hazard))
    assert line.startswith(
        "hazard,device_id=E1,district=越秀,firm_id=F9,grade=major,kind=elevator,source=rule,"
        "status=reported,supervision=district "
    )
    assert "open=true" in line and "overdue=false" in line and "closed_on_time" not in line
    stats = {
        "stage": "ingest",
        "at": 1_800_000_000_000,
        "accepted": 5,
        "lag_ms": 2.5,
        "mqtt_connected": True,
        "input_pending": None,
        "health": {"ok": True, "dead": ["a", "b"], "pid": 7},
    }
    (line,) = maker.lines("pipeline", orjson.dumps(stats))
    assert line == (
        'pipeline,stage=ingest accepted=5,health_dead="a,b",health_ok=true,health_pid=7,lag_ms=2.5,'
        "mqtt_connected=true 1800000000000"
    )


def test_a_record_that_is_not_what_its_topic_holds_is_refused() -> None:
    maker = PointMaker()
    for stream, value in (("telemetry", b"not json"), ("alerts", b"[1]"), ("hazards", b'{"hazard_id": "x"}')):
        try:
            maker.lines(stream, value)
        except BadRecord:
            continue
        raise AssertionError(f"{stream} {value!r} accepted")


def test_safety_kpi_point() -> None:
    units = [Unit(device_id=f"E{i}", kind="elevator", district="天河", firm_id="F1") for i in range(4)]
    window = trailing_365d(1_800_000_000_000)
    line = kpi_line(safety_kpi(Scope.district("天河", "elevator"), window, units))
    assert line.startswith("safety_kpi,kind=elevator,scope=district,scope_id=天河,window=365d ")
    assert "accidents=0i" in line and "units_in_use=4i" in line and "accidents_per_10k=0" in line
    assert "major_rectification_rate" not in line  # no major hazard identified: no ratio
    assert line.endswith(" 1800000000000")
    assert kpi_line(safety_kpi(CITY, window, [])).count("units_in_use=0i") == 1
