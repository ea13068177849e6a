"""``sesmon grafana export|push``: the boards as files for provisioning, or uploaded to a Grafana.

``export --out DIR`` writes one ``<board>.json`` per board (nothing else), what Grafana's file
provider reads (``grafana/provisioning/dashboards/sesmon.yaml``). ``push`` uploads the InfluxDB
datasource and every board through grafana-client's HTTP API, keyed by uid and overwriting:
running it twice leaves the same Grafana.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sesmon.runtime.settings import Settings

# the SDK (and the boards) are imported by the commands, not here: every `sesmon` command,
# the pipeline stages included, builds this parser
DATASOURCE_UID = "sesmon-influxdb"  # == grafana.influxql.DATASOURCE_UID (a test checks)

log = logging.getLogger("sesmon.grafana")

#: the folder the boards go to on ``push`` (provisioning names its own folder)
FOLDER_UID = "sesmon"
FOLDER_TITLE = "sesmon"


def datasource_model(influx_url: str, database: str, token: str | None) -> dict[str, Any]:
    """Grafana's InfluxDB datasource in InfluxQL mode, the same as provisioning's ``sesmon.yaml``.

    InfluxDB 2.x answers InfluxQL on its v1 API (``/query``, a DBRP mapping for ``database``)
    and takes its token as ``Authorization: Token …``; a 1.x server with auth takes
    ``user:password`` (the convention of ``SESMON_INFLUX_TOKEN`` on v1); none: no auth.
    """
    from grafana.influxql import DATASOURCE_NAME, INFLUXDB_TYPE

    model: dict[str, Any] = {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": INFLUXDB_TYPE,
        "access": "proxy",
        "url": influx_url,
        "database": database,
        "isDefault": True,
        "jsonData": {"version": "InfluxQL", "dbName": database, "httpMode": "POST", "timeInterval": "1s"},
        "secureJsonData": {},
    }
    if token and ":" in token and not token.startswith("Token "):
        user, password = token.split(":", 1)
        model["user"] = user
        model["secureJsonData"]["password"] = password
    elif token:
        model["jsonData"]["httpHeaderName1"] = "Authorization"
        model["secureJsonData"]["httpHeaderValue1"] = (
            token if token.startswith("Token ") else f"Token {token}"
        )
    return model


def push(
    url: str,
    token: str | None,
    influx_url: str,
    database: str,
    influx_token: str | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Upload the datasource, the folder and every board; returns the board uids pushed."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    from grafana.export import all_boards

    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    source = datasource_model(influx_url, database, influx_token)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.datasource.create_datasource(source)
        log.info("datasource %s created", DATASOURCE_UID)
    else:
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, source)
        log.info("datasource %s updated", DATASOURCE_UID)
    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    pushed = []
    for board in all_boards().values():
        api.dashboard.update_dashboard(
            {"dashboard": board, "folderUid": FOLDER_UID, "overwrite": True, "message": "sesmon grafana push"}
        )
        pushed.append(str(board["uid"]))
        log.info("board %s pushed", board["uid"])
    return pushed


def cmd_export(args: argparse.Namespace) -> int:
    from grafana.export import export_boards

    for path in export_boards(args.out):
        print(path)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    settings = Settings()
    url = args.url or settings.grafana_url
    if not url or not urlparse(url).scheme:
        print(
            "sesmon grafana push: --url http(s)://grafana:3000 (or SESMON_GRAFANA_URL) is needed",
            file=sys.stderr,
        )
        return 2
    from grafana_client.client import GrafanaException

    try:
        uids = push(
            url,
            args.token or settings.grafana_token,
            args.influx_url or settings.grafana_influx_url,
            args.database or settings.influx_db,
            args.influx_token if args.influx_token is not None else settings.influx_token,
        )
    except GrafanaException as exc:
        print(f"sesmon grafana push: {url} refused: {exc}", file=sys.stderr)
        return 1
    print(f"pushed the datasource {DATASOURCE_UID} and {len(uids)} boards to {url}: {', '.join(uids)}")
    return 0


def register(sub: Any) -> None:
    """Add ``grafana export|push`` to the ``sesmon`` command."""
    grafana = sub.add_parser("grafana", help="the Grafana boards: export them as files or push them")
    commands = grafana.add_subparsers(dest="grafana_command", required=True)
    export = commands.add_parser("export", help="write one JSON file per board (for file provisioning)")
    export.add_argument("--out", type=Path, required=True, help="directory for <board>.json")
    export.set_defaults(func=cmd_export)
    upload = commands.add_parser(
        "push", help="upload the InfluxDB datasource and the boards (overwrite by uid)"
    )
    upload.add_argument("--url", default=None, help="Grafana base URL (SESMON_GRAFANA_URL)")
    upload.add_argument("--token", default=None, help="service-account token (SESMON_GRAFANA_TOKEN)")
    upload.add_argument(
        "--influx-url",
        default=None,
        help="InfluxDB URL as Grafana reaches it (SESMON_GRAFANA_INFLUX_URL, default http://influxdb:8086)",
    )
    upload.add_argument(
        "--database", default=None, help="InfluxQL database (SESMON_INFLUX_DB, default sesmon)"
    )
    upload.add_argument(
        "--influx-token",
        default=None,
        help="InfluxDB token (2.x) or user:password (1.x) for the datasource (SESMON_INFLUX_TOKEN)",
    )
    upload.set_defaults(func=cmd_push)
