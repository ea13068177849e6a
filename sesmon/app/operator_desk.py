"""Operators without a dispatch system (``sesmon alerts ack|dispatch``): publish a responder's action
over MQTT, then say what the alerts stage made of it.

The action goes where a dispatch system would put it, ``sesmon/v1/dispatch/{alert_id}`` (with the
publisher's username as the last level when the settings carry one: on a secure broker that is the
only topic the ACL lets the account write, and ingest accepts both forms on an open one). Then
the desk waits for the outcome from two places: the incident's page (an applied action is paged
to the incident's receivers with the timeline that holds it; the operator account reads every
alert page) and, when the stage's data directory is readable here, its audit log, which also
records refusals and duplicates (a refused action is dead-lettered, never paged).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson
import paho.mqtt.client as mqtt

from alerts.audit import FILE_RE, audit_dir
from sesmon.contract.identity import OPERATOR
from sesmon.contract.schemas import TOPIC_ROOT
from sesmon.runtime.mqtt import connect_async, make_client
from sesmon.runtime.settings import Settings

#: exit statuses: applied (or already applied) / could not publish / refused / outcome unknown
APPLIED, NOT_SENT, REFUSED, UNKNOWN = 0, 1, 3, 4


class AuditTail:
    """New entries of the audit log after the moment it was opened (read-only, line by line)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pos = {p.name: p.stat().st_size for p in self._files()}

    def _files(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if FILE_RE.match(p.name)) if self.dir.is_dir() else []

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for path in self._files():
            start = self.pos.get(path.name, 0)
            with path.open("rb") as fh:
                fh.seek(start)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.pos[path.name] = start + len(complete)
            for line in complete.splitlines():
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return out


def _matches(entry: dict[str, Any], action: str, by: str, ts: int) -> bool:
    return entry.get("what") == action and entry.get("by") == by and entry.get("at") == ts


def send_dispatch(
    settings: Settings,
    alert_id: str,
    action: str,
    by: str | None = None,
    *,
    wait_s: float = 15.0,
    out: IO[str] | None = None,
) -> int:
    """Publish ``action`` on ``alert_id`` (QoS 1) and report the outcome; returns an exit status."""
    out = out or sys.stdout
    endpoint = settings.mqtt_endpoint
    who = by or endpoint.username or OPERATOR
    topic = f"{TOPIC_ROOT}/dispatch/{alert_id}" + (f"/{endpoint.username}" if endpoint.username else "")
    ts = int(time.time() * 1000)
    body = {"alert_id": alert_id, "action": action, "by": who, "ts": ts}
    tail = AuditTail(audit_dir(settings.data_dir)) if audit_dir(settings.data_dir).is_dir() else None

    pages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    connected, subscribed = threading.Event(), threading.Event()
    refused: list[str] = []

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))
            return
        connected.set()
        client.subscribe(f"{TOPIC_ROOT}/alerts/#", qos=1)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            page = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if page.get("alert_id") == alert_id and any(
            _matches(e, action, who, ts) for e in page.get("timeline") or []
        ):
            pages.put((msg.topic, page))

    client = make_client(settings, f"sesmon-desk-{os.getpid()}")
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    connect_async(client, settings)
    try:
        if not subscribed.wait(10):
            why = f"refused: {refused[0]}" if refused else "no answer"
            print(f"cannot use the MQTT broker {endpoint.url()} ({why})", file=out)
            return NOT_SENT
        info = client.publish(topic, orjson.dumps(body), qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            print(f"the broker did not acknowledge the action on {topic}", file=out)
            return NOT_SENT
        print(f"sent {action} on {alert_id} by {who} ({topic}, ts {ts})", file=out)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                first = pages.get(timeout=0.25)
            except queue.Empty:
                first = None
            if first is not None:
                time.sleep(0.3)  # the other receivers' pages of the same change, for the summary
                topics = [first[0]] + [pages.get_nowait()[0] for _ in range(pages.qsize())]
                page = first[1]
                print(
                    f"applied: incident {page.get('incident_state')}, escalation {page.get('escalation')}, "
                    f"sla_breach {page.get('sla_breach')}; paged {len(page.get('receivers') or [])} "
                    f"receiver(s), e.g. {', '.join(sorted(set(topics)))}",
                    file=out,
                )
                return APPLIED
            for entry in tail.entries() if tail is not None else []:
                data = entry.get("data") or {}
                if data.get("alert_id") != alert_id:
                    continue
                said = (data.get("action"), data.get("by"), data.get("ts")) == (action, who, ts)
                if entry.get("kind") == "dispatch_refused" and said:
                    print(f"refused ({data.get('reason')}): {data.get('detail')}; dead-lettered", file=out)
                    return REFUSED
                if entry.get("kind") == "dispatch_duplicate" and said:
                    print("already applied: dropped as a duplicate", file=out)
                    return APPLIED
                if _matches(data.get("entry") or {}, action, who, ts):  # applied, no page seen yet
                    print(
                        f"applied ({data.get('change_id')}): escalation {data.get('escalation')}, "
                        f"paged {', '.join(data.get('receivers') or []) or 'nobody'}",
                        file=out,
                    )
                    return APPLIED
        print(
            f"no page and no audit entry about it within {wait_s:.0f} s: the stage may be down or behind, "
            "or refused it (refusals are dead-lettered with their reason; pass --data-dir to read them "
            "from the audit log here)",
            file=out,
        )
        return UNKNOWN
    finally:
        client.disconnect()
        client.loop_stop()
