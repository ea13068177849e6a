"""The two wire modes: v2 checked on its request format against a local HTTP receiver, v1 against
real Debian influxd 1.6.7 (started here), and how each kind of answer is classified."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sesmon.runtime.services import ManagedProcess, free_port, start_influxdb
from sesmon.runtime.settings import Settings
from store.wire import InfluxUnavailable, InfluxWriter, V1Wire, WriteRejected, api_for_version, query

BODY = (
    b'elevator,device_id=E1 floor=3i,door="closed" 1800000000000\n'
    b"boiler,device_id=B1 pressure_mpa=1.2 1800000000001\n"
)


class Receiver:
    """A tiny HTTP server on a free loopback port that records every request and answers as told."""

    def __init__(self, version: str | None = "v2.7.11", status: int = 204, answer: bytes = b"") -> None:
        self.requests: list[dict[str, Any]] = []
        self.version, self.status, self.answer = version, status, answer
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                if receiver.version:
                    self.send_header("X-Influxdb-Version", receiver.version)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # /ping
                receiver._record(self, b"")
                self._reply(204)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver._record(self, body)
                if self.path.startswith("/query"):
                    self._reply(200, b'{"results":[{"statement_id":0}]}')
                else:
                    self._reply(receiver.status, receiver.answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _record(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        parts = urlsplit(handler.path)
        self.requests.append(
            {
                "method": handler.command,
                "path": parts.path,
                "query": parse_qs(parts.query),
                "headers": dict(handler.headers),
                "body": body,
            }
        )

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/write")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_v2_request_format(receiver: Receiver) -> None:
    settings = Settings(
        influx_url=receiver.url,
        influx_api="v2",
        influx_token="s3cret-token",
        influx_org="gz-org",
        influx_bucket="sesmon-bucket",
    )
    writer = InfluxWriter(settings)
    writer.write(BODY)
    writer.close()
    (req,) = receiver.writes()
    assert req["method"] == "POST" and req["path"] == "/api/v2/write"
    assert req["query"] == {"org": ["gz-org"], "bucket": ["sesmon-bucket"], "precision": ["ms"]}
    assert req["headers"]["Authorization"] == "Token s3cret-token"
    assert req["headers"]["Content-Type"].startswith("text/plain")
    assert req["body"] == BODY


def test_auto_mode_reads_the_server_version(receiver: Receiver) -> None:
    assert api_for_version("1.6.7~rc0", False) == "v1"
    assert api_for_version("v2.7.11", False) == "v2"
    assert api_for_version("3.0.1", False) == "v2"
    assert api_for_version(None, True) == "v2" and api_for_version(None, False) == "v1"
    # a 2.x server (header "v2.7.11"): the v2 API
    writer = InfluxWriter(Settings(influx_url=receiver.url, influx_token="t"))
    writer.write(BODY)
    assert writer.api == "v2" and receiver.writes()[-1]["path"] == "/api/v2/write"
    # a 1.x server: /write?db=&precision=ms, after CREATE DATABASE
    receiver.version = "1.8.10"
    writer = InfluxWriter(Settings(influx_url=receiver.url, influx_db="citydb"))
    writer.write(BODY)
    assert writer.api == "v1"
    req = receiver.writes()[-1]
    assert req["path"] == "/write" and req["query"] == {"db": ["citydb"], "precision": ["ms"]}
    assert req["body"] == BODY and "Authorization" not in req["headers"]
    created = [r["query"]["q"] for r in receiver.requests if r["path"] == "/query"]
    assert created == [['CREATE DATABASE "citydb"']]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_answers_are_classified(receiver: Receiver, api: str) -> None:
    writer = InfluxWriter(Settings(influx_url=receiver.url, influx_api=api, influx_token="t"))
    receiver.status, receiver.answer = 400, b'{"error":"partial write: field type conflict: dropped=3"}'
    with pytest.raises(WriteRejected) as rejected:
        writer.write(BODY)
    assert rejected.value.dropped == 3
    receiver.status, receiver.answer = 422, b'{"code":"unprocessable entity","message":"failure"}'
    with pytest.raises(WriteRejected):
        writer.write(BODY)
    for status in (401, 500, 503):
        receiver.status, receiver.answer = status, b'{"error":"nope"}'
        with pytest.raises(InfluxUnavailable):
            writer.write(BODY)
    receiver.close()
    with pytest.raises(InfluxUnavailable):
        writer.write(BODY)  # nothing listens any more


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    server = start_influxdb(tmp_path_factory.mktemp("influxd"))
    yield server
    server.stop()


def test_v1_against_debian_influxd(influxd: ManagedProcess) -> None:
    url = f"http://127.0.0.1:{influxd.port}"
    writer = InfluxWriter(Settings(influx_url=url, influx_db="wire_v1"))
    writer.write(BODY)  # auto: /ping says 1.6.7 → v1, database created on the way
    assert writer.api == "v1"
    answer = query(url, "SELECT count(*) FROM elevator, boiler", "wire_v1")
    series = answer["results"][0]["series"]
    counts = {s["name"]: [c for c in s["values"][0][1:] if c is not None] for s in series}
    assert counts == {"elevator": [1, 1], "boiler": [1]}
    # the v2 API is absent on 1.6.7: that is why v1 exists
    v2 = InfluxWriter(Settings(influx_url=url, influx_api="v2", influx_token="x"))
    with pytest.raises(InfluxUnavailable, match="404"):
        v2.write(BODY)


def test_v1_field_type_conflict_is_a_partial_write(influxd: ManagedProcess) -> None:
    url = f"http://127.0.0.1:{influxd.port}"
    wire = V1Wire(url, "wire_conflict")
    wire.create_database()
    wire.write(b"m,t=a f=1i 1000\n")
    with pytest.raises(WriteRejected) as rejected:  # f is an integer field now: 2.5 is refused
        wire.write(b"m,t=a f=2.5 2000\nm,t=a f=3i 3000\nm,t=b g=1 4000\n")
    assert rejected.value.dropped == 1
    values = query(url, "SELECT count(f) FROM m", "wire_conflict")["results"][0]["series"][0]["values"]
    assert values[0][1] == 2  # the good points of the batch were written


def test_v1_missing_database_is_created_and_retried(influxd: ManagedProcess, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{influxd.port}"
    wire = V1Wire(url, "made_on_the_fly")
    with pytest.raises(InfluxUnavailable, match="created"):
        wire.write(BODY)
    wire.write(BODY)  # the retry goes through
