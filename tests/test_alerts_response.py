"""The emergency response loop end to end (issue 10): real mosquitto, real Tansu, a real HTTP receiver.

The alerts stage runs in this process (its counters and store are at hand); alert, dispatch and
watermark records are produced straight into Kafka with device times the test chooses, so the
96333 clock's 5 and 30 minutes and the 2 h accident take seconds. Device times are relative to
the wall clock (never a date or an hour of the day), and every wait is on an event: a page, a
counter, a Kafka record, with a generous deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.audit import verify
from alerts.publisher import AlertPublisher
from alerts.routing_file import DEFAULT_ROUTING
from alerts.stations import Stations
from alerts.webhooks import verify_signature
from sesmon.app.demo import Stage, wait_for_ingest
from sesmon.contract.receivers import alert_receivers
from sesmon.contract.registry import Registry, Unit
from sesmon.contract.schemas import Alert
from sesmon.runtime.kafka import ensure_topics, make_producer
from sesmon.runtime.services import free_port
from sesmon.runtime.settings import Settings
from tests.conftest import drain
from tests.pipeline_support import wait_until
from tests.test_alerts_crash import PageInbox
from tests.test_alerts_webhooks import Receiver, receiver  # noqa: F401  (the HTTP receiver fixture)

MIN = 60_000
HOUR = 60 * MIN
DEADLINE_S = 60.0
CENTRE = "sesmon/v1/alerts/centre/96333"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def make_alert(
    unit: Unit,
    rule: str,
    level: str,
    opened_at: int,
    *,
    state: str = "firing",
    regulator: bool = False,
    evidence: list[dict[str, Any]] | None = None,
) -> Alert:
    """An alert as the rules emit it: their receivers list carries the catalogue's flags."""
    receivers = alert_receivers(
        unit.kind,
        firm_id=unit.firm_id,
        user_unit_id=unit.user_unit_id,
        district=unit.district,
        centre=level == "P1",
        regulator=regulator,
        centre_id="96333",
    )
    return Alert(
        alert_id=f"{unit.device_id}.{rule}.{opened_at}",
        rule=rule,
        level=level,  # type: ignore[arg-type]
        device_id=unit.device_id,
        kind=unit.kind,
        district=unit.district,
        firm_id=unit.firm_id,
        user_unit_id=unit.user_unit_id,
        opened_at=opened_at,
        changed_at=opened_at,
        state=state,  # type: ignore[arg-type]
        receivers=receivers,
        evidence=evidence or [],
    )


class Records:
    """Produces what the rules, ingest and the worker would: alerts, dispatch actions, watermarks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = make_producer(settings)

    def _send(self, stream: str, key: str, value: bytes) -> None:
        self.producer.produce(self.settings.topic(stream), key=key.encode(), value=value)
        assert self.producer.flush(30) == 0

    def alert(self, alert: Alert) -> None:
        self._send("alerts", alert.alert_id, orjson.dumps(alert.model_dump(mode="json")))

    def dispatch(self, alert_id: str, action: str, by: str, ts: int) -> None:
        body = {"alert_id": alert_id, "action": action, "by": by, "ts": ts}
        envelope = {
            "type": "dispatch",
            "alert_id": alert_id,
            "mqtt_topic": f"sesmon/v1/dispatch/{alert_id}",
            "received_ms": ts,
            "ts": ts,
            "body": body,
        }
        self._send("dispatch", alert_id, orjson.dumps(envelope))

    def watermark(self, event_time_ms: int) -> None:
        """The worker's pipeline record: the highest device time it evaluated."""
        record = {"stage": "streams", "at": wall_ms(), "event_time_ms": event_time_ms}
        self._send("pipeline", "streams", orjson.dumps(record))

    def hazard(self, hazard: dict[str, Any]) -> None:
        self._send("hazards", hazard["hazard_id"], orjson.dumps(hazard))


@contextmanager
def running_stage(settings: Settings) -> Iterator[AlertPublisher]:
    ensure_topics(settings)
    publisher = AlertPublisher(settings).start()
    thread = threading.Thread(target=publisher.run_forever, name="alerts-stage", daemon=True)
    thread.start()
    try:
        yield publisher
    finally:
        publisher.stop()
        thread.join(20)
        assert not thread.is_alive(), "the stage did not stop"


def pages_by_change(inbox: PageInbox) -> dict[str, set[str]]:
    """change id -> the receiver topics it was paged to (a repeat would show in ``repeats``)."""
    out: dict[str, set[str]] = defaultdict(set)
    with inbox.changed:
        for topic, page in inbox.pages:
            out[page["idempotency_key"]].add(topic)
    return dict(out)


def page_of(inbox: PageInbox, change_id: str, topic: str = CENTRE) -> dict[str, Any]:
    with inbox.changed:
        return next(p for t, p in inbox.pages if p["idempotency_key"] == change_id and t == topic)


def wait_pages(inbox: PageInbox, expected: dict[str, set[str]], timeout: float = DEADLINE_S) -> None:
    """Until every expected (change, topic) page is in; the message says what is missing."""

    def arrived(box: PageInbox) -> bool:
        got = pages_by_change(box)
        return all(topics <= got.get(change, set()) for change, topics in expected.items())

    assert inbox.wait(arrived, timeout), f"missing pages: expected {expected}, got {pages_by_change(inbox)}"


def settle(publisher: AlertPublisher, inbox: PageInbox, elsewhere: int = 0) -> None:
    """Until the stage has nothing queued or in flight and the inbox has every page it published
    (but the ``elsewhere`` pages another inbox has)."""
    assert wait_until(
        lambda: publisher.idle() and len(inbox.pages) + elsewhere == publisher.counters["mqtt_publishes"]
    ), f"not settled: idle {publisher.idle()}, {len(inbox.pages)} pages, {dict(publisher.counters)}"
    assert len(inbox.pages) == sum(len(t) for t in pages_by_change(inbox).values()), "a page was repeated"


def topics(unit: Unit, *kinds: str, station: str = "") -> set[str]:
    ids = {
        "firm": unit.firm_id,
        "user_unit": unit.user_unit_id,
        "centre": "96333",
        "rescue": station,
        "fire": "119",
        "regulator": f"district:{unit.district}",
    }
    return {f"sesmon/v1/alerts/{kind}/{ids[kind]}" for kind in kinds}


def nearest_station(unit: Unit) -> str:
    station = Stations.load().nearest(unit.lat, unit.lon, unit.district)
    assert station is not None
    return station.id


@pytest.fixture
def units(fleet_registry: Registry) -> dict[str, Unit]:
    lifts = [u for u in fleet_registry if u.kind == "elevator" and u.in_use and u.lat is not None]
    boilers = [u for u in fleet_registry if u.kind == "boiler" and u.in_use]
    return {"e1": lifts[0], "e2": lifts[1], "e3": lifts[2], "b1": boilers[0]}


@pytest.fixture
def stage_settings(settings: Settings, fleet_registry: Registry, tmp_path: Path) -> Settings:
    routing = tmp_path / "routing.yaml"
    routing.write_text(DEFAULT_ROUTING.read_text(encoding="utf-8"), encoding="utf-8")
    return settings.model_copy(
        update={
            "registry": fleet_registry.path,
            "alerts_routing_file": routing,
            "alerts_mqtt_client_id": f"alerts-{settings.topic_prefix}",
        }
    )


def latest_alerts_stats(settings: Settings, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The alerts stage's newest pipeline record that satisfies ``until`` (read from Kafka)."""

    def found(records: list[Any]) -> bool:
        return any(pick(r) for r in records)

    def pick(record: Any) -> bool:
        stats = orjson.loads(record.value())
        return stats.get("stage") == "alerts" and until(stats)

    records = drain(settings, ["pipeline"], found, timeout=DEADLINE_S)
    matching = [orjson.loads(r.value()) for r in records if pick(r)]
    assert matching, "no pipeline record of the alerts stage says so"
    return matching[-1]


# ---------------------------------------------------------------------------- routing


def test_routing_cases_end_to_end_and_a_bad_routing_file_keeps_the_table(
    stage_settings: Settings, units: dict[str, Unit]
) -> None:
    e1, e2, e3, b1 = units["e1"], units["e2"], units["e3"], units["b1"]
    t = wall_ms() - MIN
    cases = [  # the alert (as the rules mark it), whom the shipped routing file pages
        # elevator P1: the firm, the user unit and 96333
        (make_alert(e1, "elevator.trapped", "P1", t), e1, ("firm", "user_unit", "centre")),
        # boiler P1: its own responders, never 96333
        (make_alert(b1, "boiler.overpressure", "P1", t), b1, ("firm", "user_unit")),
        # elevator P2: the firm and the user unit
        (make_alert(e2, "elevator.door_close_fault", "P2", t), e2, ("firm", "user_unit")),
        # an accident report (the rule marks the regulator): and the district regulator
        (
            make_alert(e3, "accident", "P1", t, regulator=True),
            e3,
            ("firm", "user_unit", "centre", "regulator"),
        ),
    ]
    expected = {f"{a.alert_id}|opened": topics(u, *kinds) for a, u, kinds in cases}
    trapped = cases[0][0].alert_id
    station = nearest_station(e1)
    inbox = PageInbox(stage_settings)
    hazards = PageInbox(stage_settings, "sesmon/v1/hazards/#")
    records = Records(stage_settings)
    try:
        with running_stage(stage_settings) as publisher:
            for alert, _, _ in cases:
                records.alert(alert)
            wait_pages(inbox, expected)
            # level 2 adds the rescue station nearest the unit, level 3 the fire service (here by hand)
            records.dispatch(trapped, "escalate", "96333", t + 10_000)
            records.dispatch(trapped, "escalate", "96333", t + 20_000)
            expected[f"{trapped}|escalation:2"] = topics(
                e1, "firm", "user_unit", "centre", "rescue", station=station
            )
            expected[f"{trapped}|escalation:3"] = expected[f"{trapped}|escalation:2"] | topics(e1, "fire")
            # hidden dangers are paged as before: the firm, and the regulator when major
            hazard = {"hazard_id": f"HZ.{e2.device_id}.rule.{t}", "status": "open", "grade": "major"}
            hazard |= {
                "firm_id": e2.firm_id,
                "district": e2.district,
                "supervision": "district",
                "updated_at": t,
            }
            records.hazard(hazard)
            wait_pages(inbox, expected)
            assert hazards.wait(lambda box: len(box.pages) == 2, DEADLINE_S)
            assert {t for t, _ in hazards.pages} == {
                f"sesmon/v1/hazards/firm/{e2.firm_id}",
                f"sesmon/v1/hazards/regulator/district:{e2.district}",
            }

            # a broken routing file: logged, counted in the pipeline record, the old table stays
            path = stage_settings.alerts_routing_file
            assert path is not None
            good = path.read_text(encoding="utf-8")
            path.write_text(good.replace("version: 1", "version: 1\nroutes: [oops"), encoding="utf-8")
            assert wait_until(lambda: publisher.routing.rejected == 1)
            stats = latest_alerts_stats(stage_settings, lambda s: s.get("routing_rejected") == 1)
            assert "not valid YAML" in stats["routing_last_error"]
            still = make_alert(e2, "elevator.door_close_fault", "P3", t + 1)
            records.alert(still)
            expected[f"{still.alert_id}|opened"] = topics(e2, "firm", "user_unit")
            wait_pages(inbox, expected)
            # a good new version is put in force: P3s now go to the regulator too
            extra = "\n  - name: p3-too\n    match: {level: P3}\n    receivers: {regulator: always}\n"
            path.write_text(good.replace("\nwebhooks: []", extra + "\nwebhooks: []"), encoding="utf-8")
            assert wait_until(lambda: publisher.routing.reloads == 1)
            now_too = make_alert(e2, "elevator.door_close_fault", "P3", t + 2)
            records.alert(now_too)
            expected[f"{now_too.alert_id}|opened"] = topics(e2, "firm", "user_unit", "regulator")
            wait_pages(inbox, expected)
            settle(publisher, inbox, elsewhere=len(hazards.pages))
            assert pages_by_change(inbox) == expected  # exactly these, nobody else
    finally:
        inbox.close()
        hazards.close()


# ---------------------------------------------------------------------------- a trapped incident's walk


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SESMON_MQTT_URL": settings.mqtt_url or "",
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_TOPIC_PREFIX": settings.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "sesmon.app.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_trapped_incident_walks_from_ack_to_closed_with_the_operators_commands(
    stage_settings: Settings, units: dict[str, Unit], tmp_path: Path
) -> None:
    e1 = units["e1"]
    data = str(stage_settings.data_dir)
    env = {
        "SESMON_MQTT_URL": stage_settings.mqtt_url or "",
        "SESMON_KAFKA_URL": stage_settings.kafka_url or "",
        "SESMON_DATA_DIR": str(tmp_path / "ingest-state"),
        "SESMON_TOPIC_PREFIX": stage_settings.topic_prefix,
        "SESMON_MQTT_CLIENT_ID": stage_settings.mqtt_client_id,
        "SESMON_KAFKA_PARTITIONS": str(stage_settings.kafka_partitions),
    }
    ensure_topics(stage_settings)
    ingest = Stage(
        "ingest", ["ingest"], env, tmp_path / "ingest.log"
    ).start()  # operators' actions: MQTT -> Kafka
    inbox = PageInbox(stage_settings)
    records = Records(stage_settings)
    trapped = make_alert(e1, "elevator.trapped", "P1", wall_ms() - 20_000)  # live device time
    key = trapped.alert_id
    try:
        assert wait_for_ingest(stage_settings), ingest.log_tail()
        with running_stage(stage_settings) as publisher:
            records.alert(trapped)
            wait_pages(inbox, {f"{key}|opened": topics(e1, "firm", "user_unit", "centre")})

            listed = cli(stage_settings, "alerts", "list", "--json", "--data-dir", data)
            assert listed.returncode == 0, listed.stderr
            (row,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
            assert (row["alert_id"], row["level"], row["unit"], row["firm"]) == (
                key,
                "P1",
                e1.device_id,
                e1.firm_id,
            )
            assert (
                row["escalation"] == 1 and 0 < row["accept_in_s"] <= 300 and 0 < row["on_site_in_s"] <= 1800
            )
            assert 0 < row["accident_in_s"] <= 7200

            ack = cli(stage_settings, "alerts", "ack", key, "--data-dir", data)
            assert ack.returncode == 0 and "applied" in ack.stdout, ack.stdout + ack.stderr
            accepted = cli(
                stage_settings, "alerts", "dispatch", key, "accepted", "--by", e1.firm_id, "--data-dir", data
            )
            assert accepted.returncode == 0 and "applied" in accepted.stdout, (
                accepted.stdout + accepted.stderr
            )
            late_ack = cli(stage_settings, "alerts", "dispatch", key, "ack", "--data-dir", data)
            assert late_ack.returncode == 3 and "refused (out_of_order)" in late_ack.stdout, late_ack.stdout

            now = wall_ms()
            for step, action in enumerate(("on_site", "freed", "closed")):
                records.dispatch(key, action, e1.firm_id, now + step)
            walk = (
                "opened",
                "dispatch:ack",
                "dispatch:accepted",
                "dispatch:on_site",
                "dispatch:freed",
                "dispatch:closed",
            )
            expected = {f"{key}|{what}": topics(e1, "firm", "user_unit", "centre") for what in walk}
            wait_pages(inbox, expected)
            settle(publisher, inbox)
            assert pages_by_change(inbox) == expected
            # each page carries the timeline so far; the clock never escalated nor breached
            for n, what in enumerate(walk, start=1):
                page = page_of(inbox, f"{key}|{what}")
                assert [e["what"] for e in page["timeline"]] == [
                    "opened",
                    "ack",
                    "accepted",
                    "on_site",
                    "freed",
                    "closed",
                ][:n]
                assert page["escalation"] == 1 and page["sla_breach"] is False and page["change"] == what
            final = page_of(inbox, f"{key}|dispatch:closed")
            assert final["incident_state"] == "closed" and final["timeline"][1]["by"] == "operator"
            assert publisher.counters["dispatch_refused_out_of_order"] == 1
            assert (
                cli(stage_settings, "alerts", "list", "--json", "--data-dir", data).stdout == ""
            )  # none open
    finally:
        inbox.close()
        ingest.stop()


# ---------------------------------------------------------------------------- the 96333 clock


def test_a_firm_that_never_accepts_escalates_at_5_and_30_minutes_and_2_h_is_one_accident(
    stage_settings: Settings, units: dict[str, Unit]
) -> None:
    e1, e2 = units["e1"], units["e2"]
    t0 = wall_ms() - 3 * HOUR  # device time; the watermark walks it forward
    trapped = make_alert(e1, "elevator.trapped", "P1", t0)
    key = trapped.alert_id
    station = nearest_station(e1)
    level1 = topics(e1, "firm", "user_unit", "centre")
    level2 = level1 | topics(e1, "rescue", station=station)
    level3 = level2 | topics(e1, "fire")
    inbox = PageInbox(stage_settings)
    records = Records(stage_settings)
    try:
        with running_stage(stage_settings) as publisher:
            records.alert(trapped)
            expected = {f"{key}|opened": level1}
            wait_pages(inbox, expected)
            settle(publisher, inbox)
            assert pages_by_change(inbox) == expected  # nothing due yet: device time is still t0

            records.watermark(t0 + 5 * MIN + 1000)  # the worker evaluated readings 5:01 after
            expected[f"{key}|escalation:2"] = level2
            wait_pages(inbox, expected)
            records.watermark(t0 + 30 * MIN + 1000)
            expected[f"{key}|sla_breach"] = level3 | topics(e1, "regulator")  # the breach, to the regulator
            wait_pages(inbox, expected)
            records.watermark(t0 + 2 * HOUR + 1000)
            expected[f"{key}|accident"] = level3 | topics(e1, "regulator")  # 一般事故, to the regulator
            wait_pages(inbox, expected)
            # the rules' own trapped >= 2 h alert: the same accident, already reported: no second page
            followup = make_alert(
                e1,
                "elevator.trapped_2h",
                "P1",
                t0 + 2 * HOUR,
                regulator=True,
                evidence=[{"ts": t0 + 2 * HOUR, "open_since": t0, "of": key}],
            )
            records.alert(followup)
            expected[f"{followup.alert_id}|opened"] = level1
            # a trapped event that reaches sesmon 6 minutes late (device time) escalates at once
            late = make_alert(e2, "elevator.trapped", "P1", t0 + 2 * HOUR - 6 * MIN)
            records.alert(late)
            expected[f"{late.alert_id}|opened"] = topics(e2, "firm", "user_unit", "centre")
            expected[f"{late.alert_id}|escalation:2"] = topics(
                e2, "firm", "user_unit", "centre", "rescue", station=nearest_station(e2)
            )
            wait_pages(inbox, expected)
            settle(publisher, inbox)
            assert pages_by_change(inbox) == expected

            regulator = f"sesmon/v1/alerts/regulator/district:{e1.district}"
            assert sorted(c for c, t in pages_by_change(inbox).items() if regulator in t) == [
                f"{key}|accident",
                f"{key}|sla_breach",
            ]  # exactly one accident report, though the rules' trapped_2h fired too
            assert publisher.loop.counters["regulator_pages_suppressed"] == 1
            # the clock stamps its entries with the deadline, not with when it noticed
            timeline = [
                (e["at"] - t0, e["what"], e["level"]) for e in page_of(inbox, f"{key}|accident")["timeline"]
            ]
            assert timeline == [
                (0, "opened", 1),
                (5 * MIN, "escalated", 2),
                (30 * MIN, "escalated", 3),
                (30 * MIN, "sla_breach", 3),
                (2 * HOUR, "accident", 3),
            ]
            breach = page_of(inbox, f"{key}|sla_breach")
            assert breach["escalation"] == 3 and breach["sla_breach"] is True and breach["accident"] is False
            assert (
                page_of(inbox, f"{late.alert_id}|escalation:2")["timeline"][-1]["at"]
                == late.opened_at + 5 * MIN
            )
    finally:
        inbox.close()


# ---------------------------------------------------------------------------- dispatch dead letters, audit


def test_refused_dispatch_actions_are_dead_lettered_and_the_audit_trail_detects_tampering(
    stage_settings: Settings, units: dict[str, Unit]
) -> None:
    e1 = units["e1"]
    t = wall_ms() - MIN
    trapped = make_alert(e1, "elevator.trapped", "P1", t)
    key = trapped.alert_id
    unknown = f"{e1.device_id}.elevator.trapped.{t - 1}"
    inbox = PageInbox(stage_settings)
    records = Records(stage_settings)
    try:
        with running_stage(stage_settings) as publisher:
            records.alert(trapped)
            wait_pages(inbox, {f"{key}|opened": topics(e1, "firm", "user_unit", "centre")})
            records.dispatch(unknown, "ack", "96333", t + 1000)  # no such alert
            records.dispatch(key, "accepted", e1.firm_id, t + 2000)
            records.dispatch(key, "ack", "96333", t + 3000)  # after accepted: out of order
            records.dispatch(key, "accepted", e1.firm_id, t + 2000)  # the same action again: a duplicate
            records.dispatch(key, "closed", e1.firm_id, t + 4000)
            records.dispatch(key, "on_site", e1.firm_id, t + 5000)  # after closed
            dead = drain(stage_settings, ["deadletter"], lambda found: len(found) >= 3, timeout=DEADLINE_S)
            reasons = sorted(dict(r.headers())["reason"].decode() for r in dead)
            assert reasons == ["after_close", "out_of_order", "unknown_alert"]
            for record in dead:
                headers = dict(record.headers())
                body = orjson.loads(record.value())
                assert headers["stage"] == b"alerts" and headers["detail"]
                assert headers["mqtt_topic"] == f"sesmon/v1/dispatch/{body['alert_id']}".encode()
            assert wait_until(lambda: publisher.counters["dispatch_duplicate"] == 1)
            wait_pages(
                inbox,
                {
                    f"{key}|dispatch:{a}": topics(e1, "firm", "user_unit", "centre")
                    for a in ("accepted", "closed")
                },
            )
            settle(publisher, inbox)
            assert wait_until(lambda: publisher.counters["dead_lettered"] == 3)
            assert (publisher.counters["dispatch_applied"], publisher.counters["dispatch_refused"]) == (2, 3)
            stats = latest_alerts_stats(stage_settings, lambda s: s.get("dispatch_refused") == 3)
            assert stats["dispatch_refused_unknown_alert"] == 1 and stats["health"]["ok"]
        assert set(pages_by_change(inbox)) == {
            f"{key}|opened",
            f"{key}|dispatch:accepted",
            f"{key}|dispatch:closed",
        }
    finally:
        inbox.close()

    # the audit trail of the run: every change, refusal, duplicate and MQTT acknowledgement
    audit = stage_settings.data_dir / "audit"
    entries = [
        orjson.loads(line)
        for f in sorted(audit.glob("audit-*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]
    kinds = [e["kind"] for e in entries]
    assert kinds.count("dispatch_refused") == 3 and kinds.count("dispatch_duplicate") == 1
    assert kinds.count("alert_change") == 1 and kinds.count("dispatch") == 2
    assert kinds.count("delivery") == 9  # 3 changes x 3 receivers, each PUBACK recorded
    verified = cli(stage_settings, "audit", "verify", "--data-dir", str(stage_settings.data_dir))
    assert verified.returncode == 0 and f"{len(entries)} entries" in verified.stdout, verified.stdout
    # one edited entry: the chain says which
    path = sorted(audit.glob("audit-*.jsonl"))[-1]
    lines = path.read_bytes().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines) if b'"dispatch_refused"' in line)
    lines[victim] = (
        lines[victim].replace(b'"out_of_order"', b'"accepted"').replace(b'"unknown_alert"', b'"accepted"')
    )
    lines[victim] = lines[victim].replace(b'"after_close"', b'"accepted"')
    path.write_bytes(b"".join(lines))
    broken = cli(stage_settings, "audit", "verify", "--data-dir", str(stage_settings.data_dir))
    seq = orjson.loads(lines[victim])["seq"]
    assert broken.returncode == 1, broken.stdout
    assert f"{path.name}:{victim + 1} (seq {seq})" in broken.stdout and "edited" in broken.stdout
    assert not verify(audit).ok


# ---------------------------------------------------------------------------- webhooks


def test_webhooks_retry_and_dead_letter_while_mqtt_pages_go_on(
    stage_settings: Settings,
    units: dict[str, Unit],
    receiver: Receiver,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e1 = units["e1"]
    secret = "per-receiver-secret"
    monkeypatch.setenv("SESMON_TEST_WEBHOOK_SECRET", secret)
    closed_port = free_port()  # nobody listens there: a dead receiver
    routing = stage_settings.alerts_routing_file
    assert routing is not None
    hooks = f"""webhooks:
  - kind: firm
    url: "http://127.0.0.1:{receiver.port}/hang/{{id}}"
    secret_env: SESMON_TEST_WEBHOOK_SECRET
  - kind: user_unit
    url: "http://127.0.0.1:{receiver.port}/fail/{{id}}"
    secret_env: SESMON_TEST_WEBHOOK_SECRET
  - kind: centre
    url: "http://127.0.0.1:{closed_port}/centre"
    secret_env: SESMON_TEST_WEBHOOK_SECRET
"""
    routing.write_text(routing.read_text(encoding="utf-8").replace("webhooks: []\n", hooks), encoding="utf-8")
    hang, fail = f"/hang/{e1.firm_id}", f"/fail/{e1.user_unit_id}"
    receiver.plans = {hang: ["hang", 200], fail: [500]}  # the firm's receiver hangs on the first page
    settings = stage_settings.model_copy(
        update={
            "alerts_webhook_tries": 3,
            "alerts_webhook_backoff_s": 0.05,
            "alerts_webhook_backoff_max_s": 0.2,
            "alerts_webhook_timeout_s": 30.0,  # the hang is released by the test, not timed out
        }
    )
    t = wall_ms() - MIN
    alerts = [make_alert(e1, "elevator.trapped", "P1", t + i) for i in range(5)]
    expected = {f"{a.alert_id}|opened": topics(e1, "firm", "user_unit", "centre") for a in alerts}
    inbox = PageInbox(settings)
    records = Records(settings)
    try:
        with running_stage(settings) as publisher:
            for alert in alerts:
                records.alert(alert)
            wait_pages(inbox, expected)
            # every MQTT page is in while the firm's receiver still holds the first POST
            assert receiver.entered[hang].is_set() and not receiver.finished[hang].is_set()
            assert not receiver.release.is_set()
            receiver.release.set()
            assert wait_until(
                lambda: publisher.store.pending_changes() == [] and publisher.webhooks.pending() == 0
            )
            settle(publisher, inbox)
            assert pages_by_change(inbox) == expected
            dead = drain(settings, ["deadletter"], lambda found: len(found) >= 10, timeout=DEADLINE_S)
            by_reason = defaultdict(list)
            for record in dead:
                headers = dict(record.headers())
                by_reason[headers["reason"].decode()].append(headers["receiver"].decode())
                assert orjson.loads(record.value())["idempotency_key"] == headers["idempotency_key"].decode()
            assert {r: sorted(v) for r, v in by_reason.items()} == {
                "webhook_gave_up": sorted([f"user_unit/{e1.user_unit_id}"] * 5 + ["centre/96333"] * 5)
            }
            assert publisher.counters["webhooks_delivered"] == 5
        with receiver.lock:
            seen = list(receiver.seen)
        keys = sorted(expected)
        delivered = [s for s in seen if s.path == hang]
        assert sorted(s.headers["Idempotency-Key"] for s in delivered) == keys  # once each
        failing = [s for s in seen if s.path == fail]
        assert sorted(s.headers["Idempotency-Key"] for s in failing) == sorted(keys * 3)  # 3 tries each
        assert all(verify_signature(secret.encode(), s.body, s.headers["X-Sesmon-Signature"]) for s in seen)
        assert all(orjson.loads(s.body)["idempotency_key"] == s.headers["Idempotency-Key"] for s in seen)
    finally:
        inbox.close()
    audit = [
        orjson.loads(line)
        for f in sorted((settings.data_dir / "audit").glob("*.jsonl"))
        for line in f.read_bytes().splitlines()
    ]
    outcomes = defaultdict(int)
    for entry in audit:
        if entry["kind"] == "delivery" and entry["data"]["channel"] == "webhook":
            outcomes[entry["data"]["outcome"]] += 1
    assert outcomes == {"ok": 5, "failed": 30, "dead_letter": 10}
    assert verify(settings.data_dir / "audit").ok
