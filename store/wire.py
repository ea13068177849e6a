"""Getting line protocol into InfluxDB: one writer, two wire modes.

- ``v1``: ``POST /write?db=<influx_db>&precision=ms`` — InfluxDB 1.x, e.g. Debian's 1.6.7, which
  answers 404 to ``/api/v2/write`` (stack.md §5). The database is created if missing.
- ``v2``: influxdb-client's write API (``/api/v2/write?org=&bucket=&precision=ms``,
  ``Authorization: Token …``) — InfluxDB 2.x, 3.x and Cloud.
- ``auto`` (default): ``/ping``'s ``X-Influxdb-Version`` header decides (1.x → v1, else v2); a
  server without the header gets v2 when a token is set, v1 otherwise.

Errors come in two kinds only, because the sink treats them in two ways:
:class:`InfluxUnavailable` (down, 5xx, timeouts, refused credentials, missing database or
bucket: retry later, keep the points) and :class:`WriteRejected` (400/422: the points
themselves are wrong — a field type conflict, bad line protocol — and retrying cannot help;
InfluxDB has written the good points of the batch and says how many it dropped).
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import urllib3

from sesmon.runtime.settings import Settings

log = logging.getLogger("sesmon.store")

DEFAULT_URL = "http://127.0.0.1:8086"
TIMEOUT = urllib3.Timeout(connect=3.0, read=20.0)


class InfluxUnavailable(Exception):
    """InfluxDB cannot take the points now: keep them and try again."""


class WriteRejected(Exception):
    """InfluxDB refused (some of) the points as invalid: retrying cannot help."""

    def __init__(self, message: str, dropped: int | None = None) -> None:
        super().__init__(message)
        self.dropped = dropped


def _dropped(message: str) -> int | None:
    """``partial write: … dropped=3`` → 3 (InfluxDB wrote the rest of the batch)."""
    found = re.search(r"dropped=(\d+)", message)
    return int(found.group(1)) if found else None


class Wire(Protocol):
    api: str

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


def server_version(url: str, pool: urllib3.PoolManager | None = None) -> str | None:
    """``X-Influxdb-Version`` from ``/ping`` (None when the header is absent).

    Raises :class:`InfluxUnavailable` when nothing answers.
    """
    pool = pool or urllib3.PoolManager()
    try:
        response = pool.request("GET", f"{url.rstrip('/')}/ping", timeout=TIMEOUT, retries=False)
    except urllib3.exceptions.HTTPError as exc:
        raise InfluxUnavailable(f"{url}/ping: {exc}") from None
    if response.status >= 500:
        raise InfluxUnavailable(f"{url}/ping answered {response.status}")
    return response.headers.get("X-Influxdb-Version")


def api_for_version(version: str | None, has_token: bool) -> str:
    if version is None:
        return "v2" if has_token else "v1"
    major = version.strip().lstrip("vV").split(".", 1)[0]
    return "v1" if major == "1" else "v2"


class V1Wire:
    """``/write`` of InfluxDB 1.x (and the v1-compatibility API of 2.x)."""

    api = "v1"

    def __init__(self, url: str, db: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self.pool = urllib3.PoolManager(maxsize=2)
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if token and ":" in token:  # 1.x credentials: user:password
            self.headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        elif token:  # 1.8+ and 2.x v1 compatibility accept a token
            self.headers["Authorization"] = f"Token {token}"
        self.write_url = f"{self.url}/write?{urlencode({'db': db, 'precision': 'ms'})}"

    def write(self, body: bytes) -> None:
        try:
            response = self.pool.request(
                "POST", self.write_url, body=body, headers=self.headers, timeout=TIMEOUT, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"POST {self.url}/write: {exc}") from None
        if response.status in (200, 204):
            return
        text = response.data.decode(errors="replace")[:1000]
        if response.status == 404 and "database not found" in text:
            self.create_database()
            raise InfluxUnavailable(f"database {self.db!r} did not exist; created it")
        if response.status in (400, 422):
            raise WriteRejected(f"InfluxDB refused points: {text}", _dropped(text))
        raise InfluxUnavailable(f"POST {self.url}/write answered {response.status}: {text}")

    def create_database(self) -> None:
        query = urlencode({"q": f'CREATE DATABASE "{self.db}"'}, quote_via=quote)
        try:
            response = self.pool.request(
                "POST", f"{self.url}/query?{query}", headers=self.headers, timeout=TIMEOUT, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"CREATE DATABASE {self.db}: {exc}") from None
        if response.status != 200:
            log.warning("CREATE DATABASE %s answered %s: %s", self.db, response.status, response.data[:300])

    def close(self) -> None:
        self.pool.clear()


class V2Wire:
    """influxdb-client's synchronous write API (the v2 wire: 2.x, 3.x, Cloud)."""

    api = "v2"

    def __init__(self, url: str, token: str | None, org: str, bucket: str) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.org, self.bucket = org, bucket
        # retries=False: the sink's own policy (sesmon.runtime.retry) decides when to try again
        self.client = InfluxDBClient(url=url, token=token or "", org=org, timeout=20_000, retries=False)
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.write_api.write(
                bucket=self.bucket, org=self.org, record=body, write_precision=WritePrecision.MS
            )
        except ApiException as exc:
            text = str(exc.body or exc.reason or "")[:1000]
            if exc.status in (400, 422):
                raise WriteRejected(f"InfluxDB refused points: {text}", _dropped(text)) from None
            raise InfluxUnavailable(f"v2 write answered {exc.status}: {text}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise InfluxUnavailable(f"v2 write: {exc}") from None

    def close(self) -> None:
        self.client.close()


class InfluxWriter:
    """Writes line-protocol bodies with the wire the settings (or the server) call for.

    The wire is chosen on the first write, so a stage can start while InfluxDB is down.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = (settings.influx_url or DEFAULT_URL).rstrip("/")
        self.wire: Wire | None = None

    @property
    def api(self) -> str:
        return self.wire.api if self.wire else self.settings.influx_api

    def connect(self) -> Wire:
        if self.wire is not None:
            return self.wire
        s = self.settings
        api = s.influx_api
        if api == "auto":
            version = server_version(self.url)
            api = api_for_version(version, bool(s.influx_token))
            log.info("InfluxDB at %s reports version %s: writing with the %s API", self.url, version, api)
        if api == "v1":
            wire: Wire = V1Wire(self.url, s.influx_db, s.influx_token)
            wire.create_database()  # type: ignore[attr-defined]
        else:
            wire = V2Wire(self.url, s.influx_token, s.influx_org, s.influx_bucket)
        self.wire = wire
        return wire

    def write(self, body: bytes) -> None:
        self.connect().write(body)

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()


def query(url: str, q: str, db: str | None = None) -> Any:
    """An InfluxQL query on ``/query`` (tests, bench, board checks): the decoded JSON answer."""
    import orjson

    params = {"q": q, **({"db": db} if db else {})}
    response = urllib3.request(
        "POST",
        f"{url.rstrip('/')}/query?{urlencode(params, quote_via=quote)}",
        timeout=TIMEOUT,
        retries=False,
    )
    if response.status != 200:
        raise InfluxUnavailable(f"/query answered {response.status}: {response.data[:300]!r}")
    return orjson.loads(response.data)
