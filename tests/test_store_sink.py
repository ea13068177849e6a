"""The ``sesmon store`` stage against real servers: Tansu (Kafka) and Debian influxd 1.6.7.

- every stream lands in its measurement with the DESIGN.md §7 tags and field types, the stage
  publishes its own counters, and ``sesmon store`` stops cleanly with its offsets committed;
- InfluxDB stopped while points keep coming: they go to memory, then to the spool, the stream
  keeps being read; InfluxDB started again: the sink drains and ``SELECT count(*)`` finds every
  point (zero lost);
- a stage stopped while InfluxDB is down leaves its points in the spool and its offsets
  committed; the next run writes them without reading Kafka again;
- grouped records (many envelopes in one record, as ingest's fast path writes them): every
  envelope's point reaches InfluxDB, one bad envelope costs only itself.

Everything waits on counters and durable state with generous deadlines; nothing sleeps and hopes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from sesmon.app.demo import Stage
from sesmon.contract.groups import encode_group, partition_of
from sesmon.contract.registry import Registry, write_registry
from sesmon.runtime.kafka import client_config, ensure_topics, make_producer, make_reader
from sesmon.runtime.services import ManagedProcess, start_influxdb
from sesmon.runtime.settings import Settings
from simulators.fleet import generate_fleet
from store.sink import StoreStage
from store.wire import query
from tests.pipeline_support import wait_for

T0 = 1_800_000_000_000
#: how long InfluxDB stays stopped in the outage test (the issue's requirement)
OUTAGE_S = 30.0


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[ManagedProcess]:
    (tmp_path / "influx").mkdir()
    server = start_influxdb(tmp_path / "influx")
    yield server
    server.stop()


def store_settings(tmp_path: Path, kafka: ManagedProcess, influx: ManagedProcess, **extra: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_url=f"127.0.0.1:{kafka.port}",
        influx_url=f"http://127.0.0.1:{influx.port}",
        influx_db=f"db{tag}",
        data_dir=tmp_path / "state",
        topic_prefix=f"s{tag}",
        kafka_partitions=2,
        store_flush_interval_s=0.2,
        stats_every_s=0.5,
        **extra,
    )
    ensure_topics(settings)
    return settings


def telemetry(i: int, units: int = 50, kind: str = "elevator") -> tuple[bytes, bytes]:
    """One reading: a distinct (unit, time) for every i, so N readings are N points."""
    device = f"{'E' if kind == 'elevator' else 'B'}{i % units:03d}"
    ts = T0 + (i // units) * 1000
    fields = (
        {"floor": i % 20, "speed_mps": 1.5, "door": "closed"} if kind == "elevator" else {"pressure_mpa": 1.1}
    )
    env = {
        "type": "telemetry",
        "kind": kind,
        "device_id": device,
        "mqtt_topic": f"sesmon/v1/{kind}/{device}/telemetry",
        "received_ms": ts + 100,
        "ts": ts,
        "seq": i,
        "body": {"device_id": device, "ts": ts, "seq": i, **fields},
    }
    return device.encode(), orjson.dumps(env)


def produce(settings: Settings, stream: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings)
    for key, value in records:
        while True:
            try:
                producer.produce(settings.topic(stream), key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def count(settings: Settings, measurement: str, field: str = "received_ms") -> int:
    answer = query(settings.influx_url or "", f"SELECT count({field}) FROM {measurement}", settings.influx_db)
    series = answer["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def count_all(settings: Settings, measurement: str) -> int:
    """``SELECT count(*)``: the largest per-field count (every point here carries received_ms)."""
    answer = query(settings.influx_url or "", f"SELECT count(*) FROM {measurement}", settings.influx_db)
    series = answer["results"][0].get("series")
    return max(c for c in series[0]["values"][0][1:] if c is not None) if series else 0


def committed(settings: Settings, stream: str) -> int:
    """Offsets the store's consumer group has committed on a stream, summed over partitions."""
    consumer = Consumer(client_config(settings, **{"group.id": f"{settings.topic_prefix}-store"}))
    try:
        topic = settings.topic(stream)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in got)
    finally:
        consumer.close()


class RunningStage:
    """The stage in a thread of the test (its counters readable directly)."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.stage = StoreStage(settings, registry)
        self.thread = threading.Thread(target=self.stage.run_forever, name="store-stage", daemon=True)
        self.thread.start()

    @property
    def counters(self) -> Any:
        return self.stage.counters

    def stop(self) -> None:
        self.stage.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


# --------------------------------------------------------------------------- every stream, the CLI


def test_sesmon_store_writes_every_stream_and_reports_itself(
    tmp_path: Path, kafka_server: ManagedProcess, influx: ManagedProcess
) -> None:
    settings = store_settings(tmp_path, kafka_server, influx)
    registry_path = tmp_path / "fleet.csv"
    write_registry(generate_fleet(6, 2, seed=5), registry_path)
    registry = Registry.load(registry_path)
    elevators = [u for u in registry if u.kind == "elevator"]
    e1 = elevators[0]

    readings = []
    for i, unit in enumerate(elevators * 5):
        ts = T0 + i * 1000
        env = {
            "type": "telemetry",
            "kind": "elevator",
            "device_id": unit.device_id,
            "mqtt_topic": "t",
            "received_ms": ts + 5,
            "ts": ts,
            "seq": i,
            "body": {"device_id": unit.device_id, "ts": ts, "seq": i, "floor": 2, "speed_mps": 0.0},
        }
        readings.append((unit.device_id.encode(), orjson.dumps(env)))
    produce(settings, "telemetry", [*readings, readings[0], (b"x", b"not json")])  # a repeat, a bad record
    event = {
        "type": "event",
        "kind": "elevator",
        "device_id": e1.device_id,
        "mqtt_topic": "t",
        "received_ms": T0 + 1,
        "ts": T0,
        "seq": 1,
        "body": {"device_id": e1.device_id, "ts": T0, "seq": 1, "code": "trapped", "state": "occur"},
    }
    produce(settings, "events", [(b"e", orjson.dumps(event))])
    alert_id = f"{e1.device_id}.elevator.trapped.{T0}"
    alert = {
        "alert_id": alert_id,
        "rule": "elevator.trapped",
        "level": "P1",
        "device_id": e1.device_id,
        "kind": "elevator",
        "district": e1.district,
        "firm_id": e1.firm_id,
        "opened_at": T0,
        "changed_at": T0 + 20_000,
        "state": "firing",
        "title": "trapped",
        "receivers": [],
    }
    produce(settings, "alerts", [(alert_id.encode(), orjson.dumps(alert))])
    action = {
        "type": "dispatch",
        "alert_id": alert_id,
        "mqtt_topic": "t",
        "received_ms": T0 + 600_001,
        "ts": T0 + 600_000,
        "body": {"alert_id": alert_id, "action": "on_site", "by": "firm-x", "ts": T0 + 600_000},
    }
    produce(settings, "dispatch", [(alert_id.encode(), orjson.dumps(action))])
    from rules.hazards import new_hazard

    hazard = new_hazard(
        device_id=e1.device_id, source="rule", grade="major", opened_ms=T0, deadline_days=7, unit=e1
    )
    produce(settings, "hazards", [(hazard["hazard_id"].encode(), orjson.dumps(hazard))])

    env = {
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_INFLUX_URL": settings.influx_url or "",
        "SESMON_INFLUX_DB": settings.influx_db,
        "SESMON_DATA_DIR": str(settings.data_dir),
        "SESMON_TOPIC_PREFIX": settings.topic_prefix,
        "SESMON_KAFKA_PARTITIONS": "2",
        "SESMON_REGISTRY": str(registry_path),
        "SESMON_STORE_FLUSH_INTERVAL_S": "0.2",
        "SESMON_STATS_EVERY_S": "0.5",
    }
    stage = Stage("store", ["store"], env, tmp_path / "store.log").start()
    try:
        wanted = {"elevator": len(readings), "event": 1, "alert": 1, "dispatch": 1, "hazard": 1}
        fields = {
            "elevator": "received_ms",
            "event": "seq",
            "alert": "opened_at",
            "dispatch": "actor",
            "hazard": "deadline",
        }

        def stored() -> dict[str, int]:
            return {m: count(settings, m, fields[m]) for m in wanted}

        wait_for(lambda: stored() == wanted, 90, f"points {wanted}", every=0.5)
        # its own counters: on the pipeline topic and in the pipeline measurement
        reader = make_reader(settings, ["pipeline"])
        last: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for record in reader.consume(100, 0.5):
                    if not record.error() and record.key() == b"store":
                        last = orjson.loads(record.value())
                if last.get("records_telemetry") == len(readings) + 2 and last.get("drained"):
                    break
        finally:
            reader.close()
        assert last["bad_records"] == 1 and last["influx_api"] == "v1" and last["influx_up"] is True
        assert last["health"]["ok"] is True
        wait_for(lambda: count(settings, "pipeline", "records") > 0, 30, "the stage's own pipeline points")
    finally:
        stage.stop()
    assert stage.proc is not None and stage.proc.returncode == 0, stage.log_tail()

    assert stored() == wanted  # the repeated reading overwrote itself
    url, db = settings.influx_url or "", settings.influx_db
    districts = query(url, 'SHOW TAG VALUES FROM elevator WITH KEY = "district"', db)["results"][0]["series"][
        0
    ]
    assert {v[1] for v in districts["values"]} == {u.district for u in elevators}
    types = dict(query(url, "SHOW FIELD KEYS FROM elevator", db)["results"][0]["series"][0]["values"])
    assert types == {"floor": "integer", "speed_mps": "float", "seq": "integer", "received_ms": "integer"}
    on_site = query(url, "SELECT since_alarm_s FROM dispatch WHERE action = 'on_site'", db)["results"][0]
    assert on_site["series"][0]["values"][0][1] == 600.0
    # every record was committed (the repeat and the bad record included)
    assert committed(settings, "telemetry") == len(readings) + 2
    assert committed(settings, "hazards") == 1


# --------------------------------------------------------------------------- InfluxDB away


def test_influxdb_outage_loses_nothing_and_never_stalls_the_stream(
    tmp_path: Path, kafka_server: ManagedProcess, influx: ManagedProcess
) -> None:
    """influxd stopped for OUTAGE_S (the requirement: 30 s) while readings keep coming, then
    started again: every reading is consumed and committed during the outage, and afterwards
    ``SELECT count(*)`` finds exactly as many points as readings were produced."""
    settings = store_settings(
        tmp_path, kafka_server, influx, store_batch_points=500, store_memory_max_points=2000
    )
    first, during, trickle = 100, 10_000, 500
    running = RunningStage(settings)
    sink = running.stage.sink
    try:
        produce(settings, "telemetry", [telemetry(i) for i in range(first)])
        wait_for(lambda: count(settings, "elevator") == first, 60, "the first points in InfluxDB", every=0.2)
        wait_for(lambda: sink.influx_up is True, 30, "the writer to record the write")  # set just after it

        influx.stop()
        down_since = time.monotonic()
        assert not influx.alive
        produced = first + during
        produce(settings, "telemetry", [telemetry(i) for i in range(first, produced)])
        # the stream is read on: every record taken while InfluxDB is down...
        wait_for(lambda: running.counters["records_telemetry"] == produced, 60, "all records consumed")
        wait_for(lambda: sink.influx_up is False, 30, "the sink to notice InfluxDB is down")
        # ... held in memory up to the bound, and spooled to disk once writes fail
        assert sink.memory_points <= settings.store_memory_max_points + settings.store_batch_points
        wait_for(lambda: running.counters["spooled_points"] >= during, 30, "the points spooled")
        assert sink.spool.files > 0 and sink.pending_points >= during
        # the outage lasts its full OUTAGE_S, with readings coming all along: each trickle is
        # consumed (and spooled) while InfluxDB stays away
        while time.monotonic() - down_since < OUTAGE_S:
            produce(settings, "telemetry", [telemetry(i) for i in range(produced, produced + trickle)])
            produced += trickle
            wait_for(lambda n=produced: running.counters["records_telemetry"] == n, 60, "the trickle read")
            threading.Event().wait(min(5.0, max(0.0, OUTAGE_S - (time.monotonic() - down_since))))
        assert not running.stage.paused
        # spooled points are durable: every offset is committed while InfluxDB is still down
        wait_for(
            lambda: committed(settings, "telemetry") == produced, 30, "every offset committed", every=0.5
        )
        wait_for(lambda: sink.pending_points >= produced - first, 30, "every point waiting for InfluxDB")
        assert not influx.alive and sink.influx_up is False
        assert time.monotonic() - down_since >= OUTAGE_S

        influx.start(30)  # same port, same data directory
        wait_for(
            lambda: sink.drained and sink.influx_up,
            120,
            "the sink to drain after InfluxDB came back",
            every=0.2,
        )
        assert count_all(settings, "elevator") == produced  # SELECT count(*): zero points lost
        assert running.counters["rejected_points"] == 0
        assert running.counters["written_points"] >= produced
        assert sink.spool.files == 0 and not any(sink.spool.directory.iterdir())
    finally:
        running.stop()


def test_points_spooled_by_a_stopped_stage_are_written_by_the_next_run(
    tmp_path: Path, kafka_server: ManagedProcess, influx: ManagedProcess
) -> None:
    settings = store_settings(
        tmp_path, kafka_server, influx, store_batch_points=400, store_memory_max_points=1000
    )
    n = 3000
    influx.stop()
    running = RunningStage(settings)
    try:
        produce(settings, "telemetry", [telemetry(i, kind="boiler") for i in range(n)])
        wait_for(lambda: running.counters["records_telemetry"] == n, 60, "all records consumed")
    finally:
        running.stop()  # InfluxDB is down: memory goes to the spool on the way out
    spool = running.stage.spool
    assert spool.points >= n and running.stage.sink.memory_points == 0
    assert committed(settings, "telemetry") == n  # all durable, all committed

    influx.start(30)
    again = RunningStage(settings)
    try:
        wait_for(
            lambda: again.stage.sink.drained and count(settings, "boiler") == n,
            120,
            "the spool written",
            every=0.2,
        )
        assert again.counters["records_telemetry"] == 0  # nothing was read from Kafka twice
        assert count_all(settings, "boiler") == n
    finally:
        again.stop()


# --------------------------------------------------------------------------- grouped records


def event(i: int, units: int = 50) -> bytes:
    device = f"E{i % units:03d}"
    ts = T0 + (i // units) * 1000
    body = {"device_id": device, "ts": ts, "seq": i, "code": "door_open_fault", "state": "occur"}
    env = {
        "type": "event",
        "kind": "elevator",
        "device_id": device,
        "mqtt_topic": f"sesmon/v1/elevator/{device}/event",
        "received_ms": ts + 100,
        "ts": ts,
        "seq": i,
        "body": body,
    }
    return orjson.dumps(env)


def test_every_envelope_of_a_grouped_record_reaches_influxdb(
    tmp_path: Path, kafka_server: ManagedProcess, influx: ManagedProcess
) -> None:
    settings = store_settings(tmp_path, kafka_server, influx)
    grouped = 300
    # as ingest writes them: the envelopes bound for one partition (partition_of), in groups of 40
    by_partition: dict[int, list[bytes]] = {}
    for i in range(grouped):
        key, value = telemetry(i)
        by_partition.setdefault(partition_of(key, settings.kafka_partitions), []).append(value)
    records: list[tuple[int, bytes]] = [
        (partition, encode_group(values[i : i + 40]))
        for partition, values in sorted(by_partition.items())
        for i in range(0, len(values), 40)
    ]
    assert len(by_partition) == 2 and len(records) >= 8
    no_body = orjson.loads(telemetry(grouped + 1)[1])
    del no_body["body"]
    records += [
        (partition_of(b"E000", 2), telemetry(grouped)[1]),  # a single envelope (a JSON object): one reading
        (1, encode_group([telemetry(grouped + 2)[1], orjson.dumps(no_body), telemetry(grouped + 3)[1]])),
        (0, b"[not json"),  # goes where bad records go: counted, skipped, committed
    ]
    producer = make_producer(settings)
    for partition, value in records:
        producer.produce(settings.topic("telemetry"), value, partition=partition)
    producer.produce(settings.topic("events"), encode_group([event(i) for i in range(5)]), key=b"E")
    assert producer.flush(60) == 0

    wanted_points = grouped + 3  # every good envelope, the single one included
    running = RunningStage(settings)
    try:
        wait_for(
            lambda: count(settings, "elevator") == wanted_points, 90, "every envelope's point", every=0.2
        )
        wait_for(lambda: count(settings, "event", "seq") == 5, 30, "the grouped events", every=0.2)
        counters = running.counters
        wait_for(lambda: counters["records_telemetry"] == len(records), 30, "every record read")
        assert counters["envelopes_telemetry"] == grouped + 4  # the one without a body included
        assert counters["bad_envelopes"] == 1 and counters["bad_records"] == 1
        assert counters["records_events"] == 1 and counters["envelopes_events"] == 5
        wait_for(
            lambda: committed(settings, "telemetry") == len(records), 30, "every record committed", every=0.5
        )
    finally:
        running.stop()
    assert count_all(settings, "elevator") == wanted_points
    devices = query(
        settings.influx_url or "", 'SHOW TAG VALUES FROM elevator WITH KEY = "device_id"', settings.influx_db
    )
    assert len(devices["results"][0]["series"][0]["values"]) == 50


def test_a_registry_change_moves_a_units_points_to_its_new_district() -> None:
    """The point maker keeps each unit's series prefix; ``forget()`` (a reloaded registry) drops it."""
    from store.points import PointMaker

    places = {"E000": ("天河", "F1")}
    maker = PointMaker(places.get)
    (line,) = maker.lines("telemetry", telemetry(0)[1])
    assert line.startswith("elevator,device_id=E000,district=天河,firm_id=F1 ")
    places["E000"] = ("越秀", "F2")
    (line,) = maker.lines("telemetry", telemetry(50)[1])
    assert line.startswith("elevator,device_id=E000,district=天河,")  # kept until the registry reloads
    maker.forget()
    (line,) = maker.lines("telemetry", telemetry(100)[1])
    assert line.startswith("elevator,device_id=E000,district=越秀,firm_id=F2 ")
