"""All of sesmon's settings in one typed place.

Every field can be set with an environment variable ``SESMON_<NAME>`` (for example
``SESMON_MQTT_URL=mqtt://10.0.0.5:1883``). An unset broker or database address means
"use the embedded default" that ``sesmon demo`` and the tests start on loopback.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESMON_", extra="ignore")

    # --- where the servers are (None = embedded default) ---
    mqtt_url: str | None = Field(None, description="mqtt://host:port of the device broker")
    kafka_url: str | None = Field(None, description="host:port[,host:port] of the Kafka bootstrap servers")
    influx_url: str | None = Field(None, description="http://host:port of InfluxDB")

    # --- files ---
    data_dir: Path = Field(Path(".sesmon"), description="durable local state (tables, dedup, logs)")
    registry: Path | None = Field(None, description="fleet registry CSV (DESIGN.md §3)")

    # --- Kafka topics ---
    topic_prefix: str = "sesmon"
    kafka_partitions: int = 4

    # --- ingest ---
    max_payload_bytes: int = 64 * 1024
    ingest_max_unacked: int = 20_000  # Kafka records not yet confirmed (bounds memory and MQTT acks owed)
    mqtt_client_id: str = "sesmon-ingest"
    mqtt_keepalive_s: int = 30

    # --- rules / streams ---
    heartbeat_s: float = 60.0
    offline_after_heartbeats: int = 3
    deadman_check_every_s: float = 2.0  # sweep of due ticks (in-memory index: cheap)
    faust_app_id: str = "sesmon-streams"
    worker_batch_max: int = 1000  # messages evaluated per batch (one state write per unit per batch)
    worker_batch_within_s: float = 0.1  # a partial batch waits at most this long

    # --- alerts ---
    centre_id: str = "96333"

    # --- people ---
    display_tz: str = Field("Asia/Shanghai", description="time zone of times shown to operators")

    # --- pipeline health ---
    stats_every_s: float = 1.0

    def topic(self, name: str) -> str:
        """Kafka topic name for a logical stream (telemetry, events, status, ...)."""
        return f"{self.topic_prefix}.{name}"

    @property
    def mqtt_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.mqtt_url or "mqtt://127.0.0.1:1883", 1883)

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap list without scheme, as Kafka clients want it."""
        url = self.kafka_url or "127.0.0.1:9092"
        return ",".join(part.split("://", 1)[-1] for part in url.split(","))


def parse_host_port(url: str, default_port: int) -> tuple[str, int]:
    """Split ``scheme://host:port`` (scheme optional) into host and port."""
    if "://" not in url:
        url = "x://" + url
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
