"""All of sesmon's settings in one typed place.

Every field can be set with an environment variable ``SESMON_<NAME>`` (for example
``SESMON_MQTT_URL=mqtt://10.0.0.5:1883``). An unset broker or database address means
"use the embedded default" that ``sesmon demo`` and the tests start on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESMON_", extra="ignore")

    # --- where the servers are (None = embedded default) ---
    mqtt_url: str | None = Field(
        None, description="mqtt[s]://[user:password@]host:port of the device broker (mqtts = TLS)"
    )
    kafka_url: str | None = Field(None, description="host:port[,host:port] of the Kafka bootstrap servers")
    influx_url: str | None = Field(None, description="http://host:port of InfluxDB")

    # --- files ---
    data_dir: Path = Field(Path(".sesmon"), description="durable local state (tables, dedup, logs)")
    registry: Path | None = Field(None, description="fleet registry CSV (DESIGN.md §3)")

    # --- MQTT credentials and TLS (credentials in the URL win over these) ---
    mqtt_username: str | None = Field(None, description="MQTT username of this stage")
    mqtt_password: str | None = Field(None, description="MQTT password of this stage")
    mqtt_tls_ca: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    mqtt_tls_cert: Path | None = Field(None, description="client certificate (mutual TLS), optional")
    mqtt_tls_key: Path | None = Field(None, description="client private key (mutual TLS), optional")
    mqtt_tls_insecure: bool = Field(False, description="skip the broker hostname check (test brokers only)")
    mqtt_require_identity: bool = Field(
        False,
        description="secure broker: reports and dispatch must come on topics that name their publisher",
    )
    mqtt_autosave_changes: int = Field(
        1,
        ge=1,
        description="embedded mosquitto saves its store after this many changes: 1 lost nothing on SIGKILL "
        "but caps the broker near 700 acked readings/s; 1000 runs faster and lost 30-406 per kill "
        "(bench/broker_kill.py, README)",
    )

    # --- Kafka topics ---
    topic_prefix: str = "sesmon"
    kafka_partitions: int = 4

    # --- ingest ---
    max_payload_bytes: int = 64 * 1024  # larger bodies are dead-lettered (truncated) as `oversize`
    max_json_depth: int = 32  # deeper JSON is dead-lettered as `too_deep` before it is parsed
    deadletter_max_bytes: int = 4 * 1024  # how much of a rejected body the dead letter keeps
    ingest_max_unacked: int = 20_000  # Kafka records not yet confirmed (bounds memory and MQTT acks owed)
    ingest_stall_exit_s: float = 180.0  # records owed and nothing delivered this long: exit 70 (0 = never)
    ingest_group_max: int = 500  # envelopes per grouped Kafka record (one partition's readings)
    ingest_group_max_bytes: int = 256 * 1024  # ... and bytes: well below Kafka's 1 MB record limit
    # a group leaves this long after its first envelope at most. 50 ms (was 20) with the 15-s checkpoint
    # (was 5), bench/e2e.py flat out: ~58 readings a record instead of ~28, CPU a reading worker 88 -> 67
    # µs, ingest 77 -> 63 µs; 10 minutes at 0.4 x raw kept up (20 ms / 5 s fell behind Tansu)
    ingest_group_linger_ms: float = 50.0
    ingest_shared_group: str = ""  # set: subscribe as $share/<group>/... (several ingest processes)
    # MQTT receive path: "session" (ingest/mqtt_session.py, ~3 µs a message) or "paho" (~90 µs)
    ingest_mqtt_client: str = Field("session", pattern="^(session|paho)$")
    mqtt_client_id: str = "sesmon-ingest"
    mqtt_keepalive_s: int = 30
    # raw archive of everything ingest received, for replay (sesmon/contract/archive.py, issue 12)
    archive: bool = True  # SESMON_ARCHIVE=false: no archive (and no replay of this data)
    archive_dir: Path | None = None  # default <data_dir>/archive
    archive_retention_days: int = 400  # days older than this (local) are deleted; 0 = keep for ever
    archive_flush_s: float = 30.0  # a new raw journal segment this often, folded into the partition files

    # --- rules / streams ---
    heartbeat_s: float = 60.0
    offline_after_heartbeats: int = 3
    deadman_check_every_s: float = 2.0  # sweep of due ticks (in-memory index: cheap)
    faust_app_id: str = "sesmon-streams"
    worker_batch_max: int = 200  # Kafka records taken per batch (a record from ingest carries many readings)
    # while input flows, units' state is written to the table (and input offsets acked) this often,
    # and when it pauses for 1 s; a crash re-evaluates at most this much input (alert ids are
    # deterministic). 15 s, not 5: a fleet's units each change between checkpoints, so every one is
    # written each time (~100 µs a unit); see ingest_group_linger_ms for what the two changes measured
    worker_checkpoint_s: float = 15.0
    worker_tick_max_lag_s: float = 10.0  # a partition's deadman ticks wait while this far behind (0: never)
    worker_checkpoint_step_units: int = Field(500, ge=1)  # units a checkpoint writes after each batch
    worker_state_max_age_s: float = 60.0  # a unit changed only in clocks or held values: written this late
    worker_state_buckets: int = Field(64, ge=1)  # table keys per partition: one write each
    worker_fetch_wait_ms: int = 20  # longest a worker fetch waits for data (Tansu always waits it out)
    worker_fetch_interval_ms: float = 20.0  # a fetch starts this long after the last, at the soonest
    worker_changelog_buffer: int = 20_000  # state writes queued before Faust pauses input (its default: 100)
    # RocksDB per table partition: Faust's defaults (3 x 64 MiB memtables, a 2 GiB block cache)
    # let a worker's memory grow for hours; a unit's state is ~2 KB, these hold a city's
    worker_rocksdb_write_buffer_mb: int = 8
    worker_rocksdb_block_cache_mb: int = 16
    # Kafka records Faust buffers per input partition (its default 4,096): a record from ingest
    # carries up to hundreds of readings, so a backlog otherwise sits in memory by the GB
    worker_stream_buffer: int = 256
    worker_cache_units: int = 500_000  # units' decoded state kept in memory (clean ones forgotten past it)
    worker_batch_within_s: float = 0.1  # a partial batch waits at most this long
    worker_stall_after_s: float = 30.0  # records waiting and no batch done this long: reported as stalled
    worker_stall_exit_s: float = 180.0  # ... this long: exit (status 70) to be restarted; 0 = never
    worker_exit_on_kafka_loss: bool = True  # every broker gone: exit, a fresh start re-reads what is left

    # --- alerts ---
    centre_id: str = "96333"
    alerts_mqtt_client_id: str = "sesmon-alerts"
    alerts_max_inflight: int = 100  # publishes awaiting PUBACK: what a crash of this stage can repeat
    # longest a Kafka fetch of the alerts stage waits for data: Tansu answers a fetch only when this
    # runs out (it does not wake it on new data), so it is the floor of record -> page latency there
    alerts_fetch_wait_ms: int = 20
    # escalation clock (domain.md §1.6, Guangzhou 96333; TSG T5002-2017): device time from opened_at
    alerts_accept_s: float = 300  # not accepted 5 min after the alert opened -> level 2 (rescue station)
    alerts_on_site_s: float = 1800  # not on site 30 min after -> level 3 (119) + SLA breach
    alerts_on_site_s_by_district: dict[str, float] = {}  # {"<district>": 3600}: 1 h outside 设区的市
    alerts_accident_s: float = 7200  # trapped >= 2 h -> 一般事故 (general accident), the regulator
    alerts_clock_levels: list[str] = ["P1"]  # alert levels that run the clock
    alerts_accident_rules: list[str] = ["elevator.trapped", "elevator.power_loss_occupied"]
    alerts_clock_max_ahead_s: float = 300  # a device time this far past the wall clock does not move it
    alerts_routing_file: Path | None = None  # routing as data (None: the shipped alerts/routing.yaml)
    alerts_stations_file: Path | None = None  # rescue stations CSV (None: the shipped alerts/stations.csv)
    alerts_webhook_timeout_s: float = 5.0  # connect and read timeout of one webhook attempt
    alerts_webhook_tries: int = 6  # attempts per webhook delivery before it is dead-lettered
    alerts_webhook_backoff_s: float = 0.5  # first retry wait (exponential with jitter from there)
    alerts_webhook_backoff_max_s: float = 30.0  # longest wait between two attempts
    alerts_webhook_queue: int = 1000  # deliveries waiting per webhook target; beyond: dead-lettered

    # --- store ---
    influx_api: str = Field("auto", pattern="^(auto|v1|v2)$")  # auto: /ping X-Influxdb-Version 1.x -> v1
    influx_db: str = "sesmon"  # v1 (/write?db=): created if missing
    influx_token: str | None = None  # v2 token; on v1 "user:password" (basic auth)
    influx_org: str = "sesmon"  # v2
    influx_bucket: str = "sesmon"  # v2
    store_batch_points: int = 5_000  # points per write request
    store_flush_interval_s: float = 1.0  # a partial batch is written after at most this long
    store_memory_max_points: int = 200_000  # points held in memory while InfluxDB lags; then spooled
    store_spool_dir: Path | None = None  # default <data_dir>/store/spool
    store_spool_max_bytes: int = 2 * 1024**3  # beyond it the stage stops reading Kafka (nothing dropped)
    store_unit_refresh_s: float = Field(300.0, gt=0)  # every registry unit's map state rewritten this often

    # --- grafana (sesmon grafana push) ---
    grafana_url: str | None = None  # http(s)://host:3000 of the Grafana to push the boards to
    grafana_token: str | None = None  # its service-account token (or user:password)
    grafana_influx_url: str = "http://influxdb:8086"  # InfluxDB as Grafana reaches it (the datasource URL)

    # --- kpi (live safety KPIs, kpi/) ---
    kpi_every_s: float = 10.0  # KPI rows are recomputed this often (processing time) and at stop
    kpi_max_ahead_s: float = 86_400.0  # an event time this far past the wall clock does not move "now"

    # --- people ---
    display_tz: str | None = Field(
        None, description="IANA time zone of times shown to operators (unset: Guangzhou, UTC+8)"
    )

    # --- pipeline health ---
    stats_every_s: float = 1.0
    # diagnostics: tracemalloc on, top memory growth logged (sesmon/runtime/memory_report.py)
    tracemalloc: bool = False
    tracemalloc_every_s: float = Field(60.0, gt=0)  # a report this often (and on SIGUSR2)
    tracemalloc_frames: int = Field(1, ge=1)  # frames kept per allocation (> 1: tracebacks, dearer)
    tracemalloc_trim: bool = False  # malloc_trim(0) before each report: shows what glibc held free

    def topic(self, name: str) -> str:
        """Kafka topic name for a logical stream (telemetry, events, status, ...)."""
        return f"{self.topic_prefix}.{name}"

    @property
    def mqtt_host_port(self) -> tuple[str, int]:
        return self.mqtt_endpoint.host, self.mqtt_endpoint.port

    @property
    def mqtt_endpoint(self) -> MqttEndpoint:
        """Where and how to reach the broker: host, port, TLS, credentials (URL first, then fields)."""
        return MqttEndpoint.from_url(
            self.mqtt_url or "mqtt://127.0.0.1:1883",
            username=self.mqtt_username,
            password=self.mqtt_password,
        )

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap list without scheme, as Kafka clients want it."""
        url = self.kafka_url or "127.0.0.1:9092"
        return ",".join(part.split("://", 1)[-1] for part in url.split(","))


@dataclass(frozen=True)
class MqttEndpoint:
    """A broker address as the URL gave it: nothing in it (TLS, user, password) is dropped."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str, username: str | None = None, password: str | None = None) -> MqttEndpoint:
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("mqtt", "mqtts", "tcp", "ssl", "tls"):
            raise ValueError(f"MQTT URL scheme {parts.scheme!r} is not mqtt:// or mqtts://")
        tls = scheme in ("mqtts", "ssl", "tls")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else username,
            password=unquote(parts.password) if parts.password is not None else password,
        )

    def url(self, with_credentials: bool = False) -> str:
        """The URL again; credentials only when asked (never print them)."""
        auth = ""
        if with_credentials and self.username:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def parse_host_port(url: str, default_port: int) -> tuple[str, int]:
    """Split ``scheme://host:port`` (scheme optional) into host and port."""
    if "://" not in url:
        url = "x://" + url
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
