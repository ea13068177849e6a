"""Boards → JSON files, and JSON → the SDK's model (the loader the round-trip test uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana import influxql
from grafana.boards import BOARDS


def board_json(board: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (plain dicts, lists and scalars)."""
    return json.loads(json.dumps(board, cls=JSONEncoder))


def all_boards() -> dict[str, dict[str, Any]]:
    """Every board's JSON by file name (without ``.json``)."""
    return {name: board_json(build()) for name, build in BOARDS.items()}


def dumps(board: dict[str, Any]) -> str:
    """Stable text: sorted keys, so a regenerated board diffs only where it changed."""
    return json.dumps(board, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def export_boards(out_dir: Path) -> list[Path]:
    """Write ``<name>.json`` per board into ``out_dir`` (created); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in all_boards().items():
        path = out_dir / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(board), encoding="utf-8")
        tmp.replace(path)  # Grafana's file provider never reads a half-written board
        written.append(path)
    return written


def load_board(data: dict[str, Any]) -> Dashboard:
    """Grafana JSON → the SDK's model, InfluxQL targets as :class:`grafana.influxql.InfluxQLQuery`."""
    register_default_plugins()
    influxql.register()
    return Dashboard.from_json(data)
