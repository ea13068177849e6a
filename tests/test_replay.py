"""``sesmon replay`` (issue 12): the archived stream, the rules of the time, the same decisions.

Pure parts (window selection, canonical output) without servers; a scripted trapped incident
written as an archive (by the format's own functions) for the clocks, determinism, the audit
citation and the report in headless Chromium; and a simulator scenario run through the real
pipeline (mosquitto, Tansu, ingest, worker, alerts) and then replayed from its data dir, which
must give the pages live journaled and leave the live data dir and Kafka untouched.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.audit import AuditLog, audit_dir
from replay.cli import find_registry, run_replay
from replay.output import canonical_line, canonical_lines
from replay.window import (
    SelectionError,
    default_warmup,
    incident_window,
    parse_alert_id,
    parse_hazard_id,
    parse_time,
    span_window,
)
from rules.catalogue import load_catalogue
from rules.catalogue_store import store_catalogue
from rules.testing import elevator
from sesmon.contract.archive import (
    archive_line,
    day_name,
    default_archive_dir,
    gzip_member,
    iter_archive,
    message_partition,
    partition_path,
)
from sesmon.contract.registry import Registry, write_registry
from sesmon.contract.time import LOCAL_TZ, start_of_day_ms
from sesmon.runtime.settings import Settings

T = 1_795_300_000_000  # a fixed device clock: 2026-11-22 06:26:40 Guangzhou time
MIN = 60_000
DEV = "GZE0001"
TRAPPED_ID = f"{DEV}.elevator.trapped.{T + 1000}"


# --------------------------------------------------------------------------- pure parts


def test_ids_and_times_are_parsed() -> None:
    target = parse_alert_id("44010600012019000123.elevator.trapped_2h.1795300001000")
    assert (target.device_id, target.rule, target.anchor_ms) == (
        "44010600012019000123",
        "elevator.trapped_2h",
        1795300001000,
    )
    hazard = parse_hazard_id("HZ.E1.rule-elevator_unintended_movement.1795300001000")
    assert (hazard.device_id, hazard.anchor_ms, hazard.mode) == ("E1", 1795300001000, "hazard")
    for bad in ("E1", "E1.rule", "E1.rule.notatime"):
        with pytest.raises(SelectionError):
            parse_alert_id(bad)
    with pytest.raises(SelectionError):
        parse_hazard_id("HZ.E1.x")
    assert parse_time("1795300000000") == 1795300000000
    assert parse_time("1795300000") == 1795300000000  # seconds
    assert parse_time("2026-11-22T06:26:40+08:00") == 1795300000000
    assert parse_time("2026-11-22T06:26:40") == 1795300000000  # no offset: Guangzhou local time
    assert parse_time("2026-11-21T22:26:40Z") == 1795300000000
    assert parse_time("2026-11-22") == 1795300000000 - (6 * 3600 + 26 * 60 + 40) * 1000
    with pytest.raises(SelectionError):
        parse_time("yesterday")


def test_windows_have_margins_and_a_warmup() -> None:
    window = incident_window(T)
    assert window.start_ms == T - 120_000 and window.end_ms is None
    assert window.final_end(T + 10 * MIN) == T + 10 * MIN + 120_000  # through to the end, + 120 s
    assert window.final_end(None) == window.cap_ms  # never ended: as far as the cap
    assert window.final_end(T + 100 * 3600_000) == window.cap_ms
    with pytest.raises(SelectionError):
        incident_window(T, before_s=60)  # domain.md §4.4: at least 120 s
    # the warm-up starts at local midnight of the window's day, at least an hour before it
    midnight = start_of_day_ms(__import__("datetime").date(2026, 11, 22), LOCAL_TZ)
    assert default_warmup(T) == midnight  # 06:26: midnight is more than an hour before
    assert default_warmup(midnight + 10 * MIN) == midnight - 50 * MIN
    assert incident_window(T, warmup_s=600).warmup_ms == T - 120_000 - 600_000
    span = span_window(T, T + MIN)
    assert (span.start_ms, span.end_ms, span.final_end(None)) == (T, T + MIN, T + MIN)
    with pytest.raises(SelectionError):
        span_window(T, T)


def test_canonical_lines_sort_keys_at_every_depth() -> None:
    a = {"b": 1, "a": {"d": [1, {"z": 1, "y": 2}], "c": "é"}}
    b = {"a": {"c": "é", "d": [1, {"y": 2, "z": 1}]}, "b": 1}
    assert canonical_line(a) == canonical_line(b) == '{"a":{"c":"é","d":[1,{"y":2,"z":1}]},"b":1}\n'.encode()
    assert canonical_lines([a, b]).count(b"\n") == 2


# --------------------------------------------------------------------------- a scripted incident


def scripted_trapped(data: Path, *, accepted_min: float = 7, on_site_min: float = 31) -> None:
    """An archive of a trapped passenger at a landing: the firm accepts late (after the 5-minute
    clock) and arrives late (after the 30-minute clock), frees them at 33 min, closes at 40 min."""
    write_registry([elevator(DEV)], data / "registry.csv")
    store_catalogue(data, load_catalogue(None), loaded_at_ms=T - 86_400_000)
    topic = f"sesmon/v1/elevator/{DEV}"
    msgs: list[tuple[int, str, dict[str, Any]]] = []
    for i in range(-60, 540):  # every 5 s from 5 min before to 45 min after
        ts = T + i * 5000
        inside = 0 <= i < 33 * 12  # freed at 33 min: the door opens
        body = {"device_id": DEV, "ts": ts, "seq": 1000 + i, "mode": "normal", "moving": False, "floor": 3}
        body |= {"door": "closed" if inside else "open", "door_zone": True, "occupied": inside}
        msgs.append((ts + 300, f"{topic}/telemetry", body))
    event = {"device_id": DEV, "ts": T + 1000, "seq": 5000, "code": "trapped", "state": "occur"}
    msgs.append((T + 1300, f"{topic}/event", event))
    msgs.append(
        (T + 33 * MIN + 300, f"{topic}/event", event | {"ts": T + 33 * MIN, "seq": 5001, "state": "recover"})
    )
    steps = (
        ("ack", "operator", 1),
        ("accepted", "firm-F001", accepted_min),
        ("on_site", "firm-F001", on_site_min),
        ("freed", "firm-F001", 33),
        ("closed", "firm-F001", 40),
    )
    for action, by, minute in steps:
        ts = T + int(minute * MIN)
        body = {"alert_id": TRAPPED_ID, "action": action, "by": by, "ts": ts}
        msgs.append((ts + 800, f"sesmon/v1/dispatch/{TRAPPED_ID}", body))
    msgs.append((T + 2 * MIN, f"{topic}/telemetry", {"device_id": "OTHER", "ts": T}))  # a dead letter
    write_archive(data, msgs)


def write_archive(data: Path, msgs: list[tuple[int, str, dict[str, Any]]]) -> None:
    """``(received_ms, MQTT topic, body)`` into the data dir's archive as ingest writes it, in
    receive order; a body of device ``OTHER`` is archived as a dead letter (device_mismatch)."""
    msgs.sort(key=lambda m: m[0])
    files: dict[Path, list[bytes]] = {}
    for n, (received, mqtt_topic, body) in enumerate(msgs):
        payload = orjson.dumps(body)
        dead = body.get("device_id") == "OTHER"
        line = archive_line(
            received_ms=received,
            seq=n,
            writer="test",
            topic=mqtt_topic.encode(),
            payload=payload,
            verdict="deadletter" if dead else "ok",
            reason="device_mismatch" if dead else None,
            ts=body.get("ts"),
        )
        partition = message_partition(mqtt_topic.encode(), payload, "ok")
        path = partition_path(default_archive_dir(data), day_name(received), partition)
        files.setdefault(path, []).append(line)
    for path, lines in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip_member(lines))


def replay_alert(data: Path, out: Path, alert_id: str = TRAPPED_ID, **kw: Any) -> Any:
    settings = Settings(data_dir=data)
    target = parse_alert_id(alert_id)
    assert target.anchor_ms is not None
    return run_replay(
        settings,
        target,
        incident_window(target.anchor_ms),
        data_dir=data,
        out_dir=out,
        registry=find_registry(data, None, settings),
        **kw,
    )


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    scripted_trapped(data)
    return data


def test_scripted_trapped_incident_shows_the_5_and_30_minute_clocks(scripted: Path, tmp_path: Path) -> None:
    run = replay_alert(scripted, tmp_path / "out")
    pages = jsonl(tmp_path / "out" / "alerts.jsonl")
    changes = [
        (p["change"], p["timeline"][-1]["at"] - (T + 1000), p["escalation"])
        for p in pages
        if p["alert_id"] == TRAPPED_ID
    ]
    assert changes == [
        ("opened", 0, 1),
        ("dispatch:ack", MIN - 1000, 1),
        ("escalation:2", 5 * MIN, 2),  # not accepted 5 min after it opened
        ("dispatch:accepted", 7 * MIN - 1000, 2),
        ("sla_breach", 30 * MIN, 3),  # not on site at 30 min: level 3 and the SLA breach
        ("dispatch:on_site", 31 * MIN - 1000, 3),
        ("resolved", 33 * MIN - 1000, 3),  # the door opened (received before the firm's "freed")
        ("dispatch:freed", 33 * MIN - 1000, 3),
        ("dispatch:closed", 40 * MIN - 1000, 3),
    ], changes
    level2 = next(p for p in pages if p["change"] == "escalation:2")
    assert {"rescue", "centre", "firm"} <= {r["kind"] for r in level2["receivers"]}
    breach = next(p for p in pages if p["change"] == "sla_breach")
    assert breach["sla_breach"] and {"fire", "regulator"} <= {r["kind"] for r in breach["receivers"]}
    # the window ends 120 s after the incident closed (and the alert resolved)
    assert run.result.end_ms == T + 40 * MIN + 120_000
    timeline = jsonl(tmp_path / "out" / "timeline.jsonl")
    assert {"deadletter:device_mismatch", "event:trapped:occur", "dispatch:accepted"} <= {
        t["what"] for t in timeline
    }
    assert all(T - 120_000 <= t["at"] <= run.result.end_ms for t in timeline)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "+5:00" in report and "+30:00" in report  # the clocks' deadlines, as offsets from opened
    assert "missed: escalated at +5:00" in report and "missed: sla_breach at +30:00" in report
    assert "firm-F001" in report and "valid" in report  # actors; the inspection in force
    snapshot = run.result.snapshots[DEV]
    assert snapshot["inspection_valid"] is True and snapshot["open_hazards"] == []


def test_accepted_in_time_escalates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    scripted_trapped(data, accepted_min=4, on_site_min=20)
    replay_alert(data, tmp_path / "out")
    changes = [p["change"] for p in jsonl(tmp_path / "out" / "alerts.jsonl") if p["alert_id"] == TRAPPED_ID]
    assert "escalation:2" not in changes and "sla_breach" not in changes
    assert changes[0] == "opened" and changes[-1] == "dispatch:closed"


def test_replaying_twice_gives_the_same_bytes(scripted: Path, tmp_path: Path) -> None:
    replay_alert(scripted, tmp_path / "one")
    replay_alert(scripted, tmp_path / "two")
    for name in (
        "alerts.jsonl",
        "hazards.jsonl",
        "timeline.jsonl",
        "signals.png",
        "timeline.png",
        "report.html",
    ):
        one, two = (tmp_path / "one" / name).read_bytes(), (tmp_path / "two" / name).read_bytes()
        assert one == two, f"{name} differs between two replays"
    assert (tmp_path / "one" / "alerts.jsonl").stat().st_size > 0


def test_out_inside_the_data_dir_is_refused(scripted: Path) -> None:
    with pytest.raises(SelectionError, match="inside the data dir"):
        replay_alert(scripted, scripted / "replay-out")


def _audit_of_live(data: Path, replayed: Path) -> None:
    """An audit log as the live alerts stage would have written it for the incident's changes."""
    with AuditLog(audit_dir(data)) as audit:
        for page in jsonl(replayed / "alerts.jsonl"):
            entry = page["timeline"][-1]
            data_ = {
                "change_id": page["change_id"],
                "alert_id": page["alert_id"],
                "what": page["change"],
                "entry": entry,
            }
            audit.append("alert_change", data_, event_at=entry["at"])
        audit.sync()


def test_audit_entries_are_verified_and_cited_and_a_broken_chain_leads_the_report(
    scripted: Path, tmp_path: Path
) -> None:
    replay_alert(scripted, tmp_path / "first")
    _audit_of_live(scripted, tmp_path / "first")
    replay_alert(scripted, tmp_path / "intact")
    report = (tmp_path / "intact" / "report.html").read_text()
    entries = len(jsonl(tmp_path / "first" / "alerts.jsonl"))
    assert report.splitlines()[0].startswith(f"<!-- Audit chain intact: {entries} entries verified")
    rows = re.findall(r"<tr><td>(\d+)</td><td>([0-9a-f]{64})</td>", report)
    assert [int(seq) for seq, _ in rows] == list(range(entries))  # every entry cited by seq and full hash
    assert "Changes the replay produced that the live audit log does not record" not in report
    # an edited entry: the report's first line says the chain is broken, and where
    path = next(audit_dir(scripted).glob("audit-*.jsonl"))
    lines = path.read_bytes().splitlines(keepends=True)
    edited = orjson.loads(lines[3])
    edited["data"]["what"] = "nothing happened"
    lines[3] = orjson.dumps(edited) + b"\n"
    path.write_bytes(b"".join(lines))
    replay_alert(scripted, tmp_path / "broken")
    first = (tmp_path / "broken" / "report.html").read_text().splitlines()[0]
    assert "AUDIT CHAIN BROKEN" in first and ":4 (seq 3)" in first, first


def scripted_district(data: Path) -> list[str]:
    """A district of five lifts for the parallel replay: passengers trapped in two (one with the
    firm's dispatch actions, late: both escalate to level 3), a third that falls silent at 12 min
    (offline by the deadman tick, after its last message, while the others still send), a door
    left open on a fourth, a dead letter every 10 s from the fifth, whose clock is 40 s fast (timeline
    entries between which the clocks' decisions must land in the same places, the clocks driven by
    that unit's device time); several units' readings share a receive
    millisecond, and a backlog (device time 4:00-5:30 received in one second at 5:30) moves device
    time ahead of the wall right across the first 5-minute escalation.
    Returns the alert ids of the two trapped passengers."""
    units = [f"GZD{n}" for n in range(5)]

    def backlog(received: int, ts: int) -> int:
        if T + 4 * MIN <= ts < T + 5 * MIN + 30_000:
            return T + 5 * MIN + 30_300 + (ts - T - 4 * MIN) // 100
        return received

    write_registry([elevator(u) for u in units], data / "registry.csv")
    store_catalogue(data, load_catalogue(None), loaded_at_ms=T - 86_400_000)
    trapped = {units[0]: T + 1000, units[1]: T + 61_000}
    msgs: list[tuple[int, str, dict[str, Any]]] = []
    for n, unit in enumerate(units):
        topic = f"sesmon/v1/elevator/{unit}"
        last = 12 * 12 if n == 2 else 540  # GZD2 falls silent at 12 min
        for i in range(-60, last):
            real = T + i * 5000 + n * 7
            ts = real + 40_000 if n == 4 else real  # GZD4's clock is 40 s fast
            opened = trapped.get(unit)
            inside = opened is not None and opened - 1000 <= ts < T + 33 * MIN
            door = "closed" if inside or not (n == 3 and 20 * 12 <= i < 30 * 12) else "open"
            body = {"device_id": unit, "ts": ts, "seq": 1000 + i, "mode": "normal", "moving": False}
            body |= {"floor": 3 + n, "door": door, "door_zone": True, "occupied": inside}
            received = real + 300 - n * 7 if n < 3 else real + 250 + (i % 3) * 40  # shared milliseconds
            msgs.append((backlog(received, real), f"{topic}/telemetry", body))
            if n == 4 and i % 2 == 0:  # a dead letter (the body names another unit) every 10 s
                dead = {"device_id": "OTHER", "ts": ts}
                msgs.append((backlog(real + 900, real), f"{topic}/telemetry", dead))
        if unit in trapped:
            event = {"device_id": unit, "ts": trapped[unit], "seq": 5000, "code": "trapped", "state": "occur"}
            msgs.append((trapped[unit] + 300, f"{topic}/event", event))
    alert_id = f"{units[0]}.elevator.trapped.{T + 1000}"
    steps = (("ack", "operator", 1), ("accepted", "firm-F001", 7), ("on_site", "firm-F001", 31))
    for action, by, minute in steps:
        ts = T + minute * MIN
        body = {"alert_id": alert_id, "action": action, "by": by, "ts": ts}
        msgs.append((ts + 800, f"sesmon/v1/dispatch/{alert_id}", body))
    write_archive(data, msgs)
    return [alert_id, f"{units[1]}.elevator.trapped.{T + 61_000}"]


def test_a_parallel_replay_gives_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    from replay.window import Target

    data = tmp_path / "data"
    trapped = scripted_district(data)
    settings = Settings(data_dir=data)
    runs = {}
    for jobs in (1, 2):
        runs[jobs] = run_replay(
            settings,
            Target("district", "天河"),
            span_window(T - 2 * MIN, T + 45 * MIN, warmup_s=180),
            data_dir=data,
            out_dir=tmp_path / f"jobs{jobs}",
            registry=find_registry(data, None, settings),
            jobs=jobs,
        )
    for name in ("alerts.jsonl", "hazards.jsonl", "timeline.jsonl"):
        one, two = (tmp_path / "jobs1" / name).read_bytes(), (tmp_path / "jobs2" / name).read_bytes()
        assert one == two, f"{name} differs between --jobs 1 and --jobs 2"
    # the scenario is worth comparing: alerts on several units, escalations, a dispatch, offline
    pages = jsonl(tmp_path / "jobs1" / "alerts.jsonl")
    assert len({p["device_id"] for p in pages}) >= 3
    changes = {(p["alert_id"], p["change"]) for p in pages}
    for alert_id in trapped:
        assert {(alert_id, "escalation:2"), (alert_id, "sla_breach")} <= changes, alert_id
    assert (trapped[0], "dispatch:accepted") in changes
    assert any(p["rule"] == "offline" and p["device_id"] == "GZD2" for p in pages)
    one, two = runs[1].result, runs[2].result
    assert one.readings == two.readings and one.snapshots == two.snapshots and one.stats == two.stats
    assert list(one.signals) == list(two.signals) and one.rule_alerts == two.rule_alerts


def test_a_district_report_plots_the_samples_a_run_keeping_every_unit_would(tmp_path: Path) -> None:
    """A district replay keeps no unit's samples through the run (millions of readings a day); the
    report's three units are read again at the end: the same units, the same samples."""
    from replay.engine import CatalogueSchedule, Replayer
    from replay.report import plot_devices
    from replay.window import Target

    data = tmp_path / "data"
    scripted_district(data)
    settings = Settings(data_dir=data)
    registry = find_registry(data, None, settings)
    assert registry is not None
    target, window = Target("district", "天河"), span_window(T - 2 * MIN, T + 45 * MIN, warmup_s=180)
    devices = frozenset(u.device_id for u in registry if u.district == "天河")
    assert len(devices) > 3  # more than the report plots: the run keeps none
    kept = Replayer(
        settings,
        target=target,
        window=window,
        registry=registry,
        catalogues=CatalogueSchedule.load(data),
        devices=devices,
    ).run(
        iter_archive(data / "archive", start_ms=window.warmup_ms, end_ms=window.cap_ms, devices=set(devices))
    )
    assert len(kept.signals) == len(devices)
    for jobs in (1, 2):
        run = run_replay(
            settings,
            target,
            window,
            data_dir=data,
            out_dir=tmp_path / f"out{jobs}",
            registry=registry,
            jobs=jobs,
        )
        plotted = plot_devices(kept)
        assert len(plotted) == 3 and plot_devices(run.result) == plotted
        assert run.result.signals == {device: kept.signals[device] for device in plotted}
        assert (tmp_path / f"out{jobs}" / "signals.png").stat().st_size > 10_000


def test_a_replay_worker_gone_before_its_first_word_is_named_not_an_eof() -> None:
    """The parent waits for each worker's first message; a worker that could not start (or was
    killed) closes its pipe: that is said in words, not a bare EOFError from deep in the merge."""
    import multiprocessing

    from replay.parallel import _receive

    ours, theirs = multiprocessing.Pipe()
    theirs.close()
    with pytest.raises(RuntimeError, match="ended without a word"):
        _receive(ours, "read")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_the_report_renders_in_headless_chromium(scripted: Path, tmp_path: Path) -> None:
    replay_alert(scripted, tmp_path / "out")
    report = tmp_path / "out" / "report.html"
    chromium = _chromium()
    assert chromium is not None
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--user-data-dir=" + str(tmp_path / "profile"),
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout.decode()
    assert re.search(r'<img id="signals-plot"[^>]*src="data:image/png;base64,iVBORw0KGgo', dom)
    assert re.search(r'<img id="timeline-plot"[^>]*src="data:image/png;base64,iVBORw0KGgo', dom)
    timeline = re.search(r'<table class="timeline">.*?</table>', dom, re.S)
    assert timeline is not None
    for step in ("opened", "escalated", "accepted", "on_site", "sla_breach", "freed", "closed"):
        assert f"<td>{step}</td>" in timeline.group(0), step
    assert "data:image/png;base64," in dom and "http://" not in dom.split("<body", 1)[1]  # self-contained
    # and the browser decodes the plot: a screenshot of the page is a real image
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--user-data-dir=" + str(tmp_path / "profile2"),
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# --------------------------------------------------------------------------- live, then replayed


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _live_pages(data: Path) -> list[dict[str, Any]]:
    path = data / "alerts" / "alerts.jsonl"
    if not path.exists():
        return []
    return [p for p in jsonl(path) if "alert_id" in p and "change" in p]


def _wait_evaluated(settings: Settings, count: int, timeout: float = 60) -> None:
    """Until the worker's pipeline record says it evaluated ``count`` device messages."""
    from tests.conftest import drain

    def done(records: list[Any]) -> bool:
        stats = (orjson.loads(r.value()) for r in records)
        return any(s.get("stage") == "streams" and s.get("processed", 0) >= count for s in stats)

    assert done(drain(settings, ["pipeline"], done, timeout=timeout)), f"the worker did not evaluate {count}"


@pytest.fixture
def scenario_pipeline(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Registry, Any, Any]]:
    """The trapped_landing scenario's fleet as the registry, and the stages running on it."""
    from simulators.scenario import load_scenario
    from tests.pipeline_support import start_stages, stop_stages

    scenario = load_scenario("trapped_landing")
    units = scenario.select_units(None)
    path = tmp_path / "registry.csv"
    write_registry(units, path)
    registry = Registry.load(path)
    stages = start_stages(settings, registry, tmp_path / "logs")
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            stop_stages(stages)

    try:
        yield settings, registry, scenario, stop
    finally:
        stop()


def test_a_scenario_run_live_then_replayed_gives_the_same_pages_and_touches_nothing_live(
    scenario_pipeline: tuple[Settings, Registry, Any, Any], tmp_path: Path
) -> None:
    from tests.conftest import mqtt_client, publish_all
    from tests.pipeline_support import end_offsets, wait_caught_up, wait_for, wait_ingested

    settings, registry, scenario, stop_stages = scenario_pipeline
    units = scenario.select_units(None)
    start = int(time.time() * 1000) - 25 * MIN  # device time in the past: nothing ahead of the wall clock
    sim = scenario.build(units, start_ms=start)
    msgs = sim.run_for(scenario.duration_s, step_s=30.0)
    trapped_unit = scenario.resolve("elevator#0", units)
    msgs = [m for m in msgs if m.topic.split("/")[3] == trapped_unit]
    # The worker reads telemetry, events and status as separate Kafka topics, so in a burst it may
    # evaluate a unit's event before telemetry received earlier (replay goes by receive order; see
    # replay/__init__.py). Published as a live terminal sends them: each event once the worker has
    # evaluated what came before it. And once live sesmon's clock has escalated (5 minutes without
    # an acceptance) the rest follows: time passes, as it would.
    split = start + 7 * MIN
    chunks: list[list[Any]] = []
    for m in msgs:
        previous = chunks[-1][-1] if chunks else None
        if (
            previous is None
            or m.topic.endswith("/event")
            or previous.topic.endswith("/event")
            or (previous.t < split <= m.t)
        ):
            chunks.append([])
        chunks[-1].append(m)
    client = mqtt_client(settings, "replay-test-publisher")
    published, escalated = 0, False
    try:
        for chunk in chunks:
            if not escalated and chunk[0].t >= split:
                wait_for(
                    lambda: any(p["change"] == "escalation:2" for p in _live_pages(settings.data_dir)),
                    120,
                    "live escalated the trapped passenger to level 2",
                )
                escalated = True
            publish_all(client, [(m.topic, m.payload()) for m in chunk])
            published += len(chunk)
            _wait_evaluated(settings, published)
        wait_ingested(settings, published, timeout=120)
        wait_caught_up(
            settings, settings.faust_app_id, ["telemetry", "events", "status", "reports"], timeout=120
        )
        wait_caught_up(settings, f"{settings.topic_prefix}-alerts", ["alerts", "hazards"], timeout=120)
    finally:
        client.loop_stop()
        client.disconnect()
    last_ts = max(m.t for m in msgs)
    settled = last_ts - 30_000  # the last readings wait in the reorder buffer for a quiet-unit tick
    live = [p for p in _live_pages(settings.data_dir) if p["timeline"][-1]["at"] <= settled]
    live_trapped = [p for p in live if p["device_id"] == trapped_unit and p["rule"] == "elevator.trapped"]
    assert [p["change"] for p in live_trapped][:2] == ["opened", "escalation:2"], [
        p["change"] for p in live_trapped
    ]

    stop_stages()  # ingest folds its archive journal in; nothing live writes from here on
    # the live figures before the replay: every file of the data dir, every Kafka topic's end
    streams = [
        "telemetry",
        "events",
        "status",
        "reports",
        "dispatch",
        "alerts",
        "hazards",
        "deadletter",
        "late",
    ]
    digest_before = _tree_digest(settings.data_dir)
    offsets_before = end_offsets(settings, streams)

    out = tmp_path / "replay-unit"
    replay_settings = Settings(data_dir=settings.data_dir)
    from replay.window import Target

    run = run_replay(
        replay_settings,
        Target("unit", trapped_unit, trapped_unit),
        span_window(start - MIN, last_ts, warmup_s=0),
        data_dir=settings.data_dir,
        out_dir=out,
        registry=registry,
    )
    replayed = [p for p in jsonl(out / "alerts.jsonl") if p["timeline"][-1]["at"] <= settled]
    live_unit = [p for p in live if p["device_id"] == trapped_unit]
    assert live_unit, "live paged nothing for the trapped unit"
    # the same pages, field for field: ids, opened_at, levels, escalations, receivers, timelines
    by_id = lambda pages: {p["change_id"]: p for p in pages}  # noqa: E731
    assert sorted(by_id(replayed)) == sorted(by_id(live_unit))
    for change_id, page in by_id(live_unit).items():
        assert by_id(replayed)[change_id] == page, change_id
    assert run.result.catalogues and not run.result.catalogue_fallback  # the catalogue live recorded

    # the incident itself, by its alert id (the same pages again, from its own window)
    trapped_id = live_trapped[0]["alert_id"]
    replay_alert(settings.data_dir, tmp_path / "replay-alert", alert_id=trapped_id)
    incident = [p for p in jsonl(tmp_path / "replay-alert" / "alerts.jsonl") if p["alert_id"] == trapped_id]
    assert [p["change_id"] for p in incident if p["timeline"][-1]["at"] <= settled] == [
        p["change_id"] for p in live_trapped
    ]
    report = (tmp_path / "replay-alert" / "report.html").read_text()
    assert report.splitlines()[0].startswith("<!-- Audit chain intact")  # the live stage's own audit log

    # nothing live moved: the data dir's files and every topic's end are as they were
    assert _tree_digest(settings.data_dir) == digest_before
    assert end_offsets(settings, streams) == offsets_before


def test_replay_points_go_to_influxdb_with_the_run_tag(scripted: Path, tmp_path: Path) -> None:
    from sesmon.runtime.services import influxd_path, start_influxdb
    from store.wire import query

    if influxd_path() is None:
        pytest.skip("influxd is not installed (scripts/setup.sh installs it)")
    (tmp_path / "influx").mkdir()
    server = start_influxdb(tmp_path / "influx")
    try:
        url = f"http://127.0.0.1:{server.port}"
        settings = Settings(data_dir=scripted, influx_db="replaytest", influx_api="v1")
        target = parse_alert_id(TRAPPED_ID)
        assert target.anchor_ms is not None
        run = run_replay(
            settings,
            target,
            incident_window(target.anchor_ms),
            data_dir=scripted,
            out_dir=tmp_path / "out",
            registry=find_registry(scripted, None, settings),
            influx_url=url,
            run_id="case-12",
        )
        assert run.influx_points > 0
        pages = jsonl(tmp_path / "out" / "alerts.jsonl")

        def count(q: str) -> int:
            answer = query(url, q, "replaytest")
            series = answer["results"][0].get("series") or [{"values": [[0, 0]]}]
            return int(series[0]["values"][0][1])

        assert count("SELECT count(escalation) FROM replay_alert WHERE run = 'case-12'") == len(pages)
        timeline = jsonl(tmp_path / "out" / "timeline.jsonl")
        assert count("SELECT count(alert_id) FROM replay_timeline WHERE run = 'case-12'") == len(timeline)
        assert (
            count("SELECT count(value) FROM replay_signal WHERE run = 'case-12' AND signal = 'occupied'") > 0
        )
        assert count("SELECT count(escalation) FROM replay_alert WHERE run = 'other'") == 0
    finally:
        server.stop()
