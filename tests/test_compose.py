"""``docker-compose.yml`` is a valid Compose file that runs what the project ships, with health checks.

- ``docker-compose config -q``: Debian bookworm's Compose (1.29, installed by
  ``scripts/setup.sh``; the v2 plugin is not packaged) parses, interpolates and validates the
  file as Compose does, with the secrets of ``deploy/env.example`` filled in; it predates only
  the top-level ``name`` (project name), which is taken out for it;
- the file, interpolated as Compose does, validated against the Compose
  Specification's JSON schema (``tests/fixtures/compose-spec.json``, vendored from
  github.com/compose-spec/compose-spec ``schema/compose-spec.json`` at commit 170098ba,
  Apache-2.0 — the schema ``docker compose`` itself validates with), plus what the schema
  cannot see: references between services and volumes, files the compose file mounts that
  the repository ships, ``sesmon`` commands that exist, a health check on every long-running
  service;
- the stages' health check (``python -m sesmon.app.healthcheck``) against a real Kafka API
  broker (Tansu): healthy on a fresh record, unhealthy on a stale one, on dead parts, on
  none, and on a counter that stopped growing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from sesmon.app.cli import build_parser
from sesmon.app.healthcheck import verdict
from sesmon.runtime.kafka import ensure_topics, make_producer
from sesmon.runtime.services import ManagedProcess
from sesmon.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec.json"
#: what .env provides (deploy/env.example)
SECRETS = {
    "MQTT_INGEST_PASSWORD": "ingest-pw",
    "MQTT_ALERTS_PASSWORD": "alerts-pw",
    "INFLUX_ADMIN_PASSWORD": "influx-pw",
    "INFLUX_TOKEN": "influx-token",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
}
#: bind-mounted files the operator provides before `docker compose up` (the header says how)
OPERATOR_FILES = {"deploy/registry.csv", "deploy/mqtt", "deploy/mqtt/credentials.csv"}
#: files written by the Grafana helper's part of the work (grafana/provisioning/...)
ONE_SHOT = {"grafana-boards"}

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, on every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return "$"
        if env.get(name):
            return env[name]
        if match.group("op") == "?":
            raise KeyError(f"{name}: {match.group('arg')}")
        return match.group("arg") or ""

    return _VARIABLE.sub(substitute, value)


def compose_model(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<` merge keys as Compose does
    return interpolate(raw, SECRETS if env is None else env)


def test_compose_file_matches_the_compose_specification_schema() -> None:
    model = compose_model()
    validator = jsonschema.Draft7Validator(orjson.loads(SCHEMA.read_bytes()))
    errors = sorted(validator.iter_errors(model), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    with pytest.raises(KeyError, match="INFLUX_TOKEN"):  # a missing secret stops compose, with a hint
        compose_model({k: v for k, v in SECRETS.items() if k != "INFLUX_TOKEN"})


def docker_compose_config(text: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose config -q`` on ``text`` (without ``name``) placed where the real file is."""
    model = yaml.safe_load(text)
    model.pop("name", None)
    probe = ROOT / f".compose-check-{uuid.uuid4().hex[:8]}.yml"  # relative paths resolve as for the real file
    probe.write_text(yaml.safe_dump(model))
    try:
        return subprocess.run(
            ["docker-compose", "--project-name", "sesmon", "-f", str(probe), "config", "-q"],
            cwd=tmp_path,
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()


def test_docker_compose_config_accepts_the_file_and_catches_mistakes(tmp_path: Path) -> None:
    example = (ROOT / "deploy" / "env.example").read_text()
    assert set(SECRETS) <= set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))  # all in the example
    text = COMPOSE.read_text()
    done = docker_compose_config(text, SECRETS, tmp_path)
    assert done.returncode == 0, done.stderr
    missing = docker_compose_config(text, {k: v for k, v in SECRETS.items() if k != "INFLUX_TOKEN"}, tmp_path)
    assert missing.returncode != 0 and "INFLUX_TOKEN" in missing.stderr
    misspelt = docker_compose_config(text.replace("healthcheck:", "healthchek:", 1), SECRETS, tmp_path)
    assert misspelt.returncode != 0 and "healthchek" in misspelt.stderr


def test_compose_references_files_commands_and_health_checks() -> None:
    model = compose_model()
    services: dict[str, Any] = model["services"]
    assert {"mosquitto", "kafka", "influxdb", "grafana", "grafana-boards"} <= services.keys()
    assert {"ingest", "worker", "alerts", "store", "kpi", "simulator"} <= services.keys()
    volumes = set(model["volumes"])
    parser = build_parser()
    unknown_commands = []
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                path = source[2:]
                if path in OPERATOR_FILES or path.startswith("grafana/"):
                    continue
                assert (ROOT / path).exists(), f"{name} mounts {source}, which the repository lacks"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        if service.get("image") == "sesmon:latest":
            try:
                parser.parse_args(service["command"])  # a real `sesmon` command
            except SystemExit:
                unknown_commands.append(f"{name}: sesmon {' '.join(service['command'])}")
            test = service["healthcheck"]["test"] if name not in ONE_SHOT else None
            if test is not None and "sesmon.app.healthcheck" in test:
                assert test[:4] == ["CMD", "python", "-m", "sesmon.app.healthcheck"]
        elif name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        if name not in ONE_SHOT:
            assert service.get("restart") == "unless-stopped", name
    assert not unknown_commands, f"commands `sesmon` does not know: {unknown_commands}"
    # the secure broker config (no anonymous access) and the InfluxQL mapping for InfluxDB 2.7
    assert "allow_anonymous false" in (ROOT / "deploy/mosquitto.conf").read_text()
    init = ROOT / "deploy/influxdb/init/10-sesmon-dbrp.sh"
    assert os.access(init, os.X_OK) and "influx v1 dbrp create" in init.read_text()
    assert services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == SECRETS["INFLUX_TOKEN"]
    store_env = services["store"]["environment"]
    assert (
        store_env["SESMON_INFLUX_TOKEN"] == SECRETS["INFLUX_TOKEN"] and store_env["SESMON_INFLUX_API"] == "v2"
    )
    assert services["grafana-boards"]["command"][-1] in {
        m.split(":")[1] for m in services["grafana"]["volumes"] if m.startswith("grafana-boards:")
    }
    assert set(SECRETS) == set(re.findall(r"^([A-Z_]+)=", (ROOT / "deploy/env.example").read_text(), re.M))


# --------------------------------------------------------------------------- the stages' health check


def test_verdict() -> None:
    now = 1_800_000_100_000
    fresh = {"stage": "store", "at": now - 2_000, "health": {"ok": True, "dead": []}, "received": 10}
    assert verdict([fresh], 30, now_ms=now) is None
    assert "no pipeline record" in (verdict([], 30, now_ms=now) or "")
    assert "40 s old" in (verdict([fresh | {"at": now - 40_000}], 30, now_ms=now) or "")
    dead = fresh | {"health": {"ok": False, "dead": ["influx_writer"]}}
    assert "influx_writer" in (verdict([dead], 30, now_ms=now) or "")
    assert verdict([fresh | {"health": None}], 30, now_ms=now) is None  # a record without health
    earlier = fresh | {"at": now - 12_000, "received": 4}
    assert verdict([earlier, fresh], 30, rising="received", now_ms=now) is None
    assert "not grown" in (
        verdict([earlier | {"received": 10}, fresh], 30, rising="received", now_ms=now) or ""
    )
    assert "not grown" in (verdict([fresh], 30, rising="received", now_ms=now) or "")


def run_healthcheck(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SESMON_KAFKA_URL": settings.kafka_url or "",
        "SESMON_TOPIC_PREFIX": settings.topic_prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "sesmon.app.healthcheck", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_healthcheck_reads_the_stage_records_from_kafka(kafka_server: ManagedProcess, tmp_path: Path) -> None:
    settings = Settings(
        kafka_url=f"127.0.0.1:{kafka_server.port}",
        topic_prefix=f"h{uuid.uuid4().hex[:8]}",
        kafka_partitions=2,
        data_dir=tmp_path,
    )
    ensure_topics(settings)
    now = int(time.time() * 1000)
    producer = make_producer(settings)

    def publish(key: str, **record: Any) -> None:
        producer.produce(settings.topic("pipeline"), key=key.encode(), value=orjson.dumps(record))
        assert producer.flush(30) == 0

    publish("store", stage="store", at=now - 120_000, health={"ok": True})  # stale, then fresh
    publish("store", stage="store", at=now, health={"ok": True, "dead": []})
    publish("streams", stage="streams", at=now, health={"ok": False, "dead": ["kafka_probe"]})
    publish("ingest", stage="ingest", at=now - 5_000, received=100)
    publish("ingest", stage="ingest", at=now, received=100)

    healthy = run_healthcheck(settings, "store")
    assert healthy.returncode == 0 and "store: healthy" in healthy.stdout, healthy
    worker = run_healthcheck(settings, "worker")  # the Faust worker reports as `streams`
    assert worker.returncode == 1 and "kafka_probe" in worker.stdout, worker
    silent = run_healthcheck(settings, "alerts")
    assert silent.returncode == 1 and "no pipeline record" in silent.stdout, silent
    stale = run_healthcheck(settings, "store", "--max-age", "0.001")
    assert stale.returncode == 1 and "old" in stale.stdout, stale
    ingest = run_healthcheck(settings, "ingest", "--rising", "received")
    assert ingest.returncode == 1 and "not grown" in ingest.stdout, ingest
    publish("ingest", stage="ingest", at=now + 1, received=130)
    ingest = run_healthcheck(settings, "ingest", "--rising", "received")
    assert ingest.returncode == 0, ingest
    away = run_healthcheck(Settings(kafka_url="127.0.0.1:1", topic_prefix="x"), "store")
    assert away.returncode == 1 and "unhealthy" in away.stdout, away
