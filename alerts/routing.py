"""What the stage publishes for a change: the page body, its idempotency key and the receivers' topics.

Who receives an incident change is decided upstream, by the response loop's resolver (the
routing file, :mod:`alerts.routing_file`), and stored with the change; this module only turns a
change (or a hidden-danger record) into a :class:`Route` the publisher delivers, page by page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from alerts.incidents import IncidentChange
from sesmon.contract.receivers import hazard_receivers, receivers_of
from sesmon.contract.schemas import TOPIC_ROOT, Alert, Receiver


class BadRecord(ValueError):
    """A Kafka record that is not what its topic should hold (counted under ``counter``, skipped)."""

    def __init__(self, counter: str, reason: str) -> None:
        super().__init__(reason)
        self.counter = counter


@dataclass(frozen=True)
class Route:
    """One change to deliver: its idempotency key, the page body and the receivers' topics."""

    key: str  # idempotency key: the same key is never paged twice to the same topic
    item_id: str  # alert_id or hazard_id
    payload: bytes  # the page, with ``idempotency_key`` in it so a receiver can drop a repeat
    topics: tuple[str, ...]  # MQTT topics of the receivers, one publish each
    counter: str  # per-kind counter of the stage's stats


def receivers_for(alert: Alert, centre_id: str) -> list[Receiver]:
    """The rules' own receivers of an alert (DESIGN.md §4), or the defaults: the routing file's
    fallback when it cannot be read (``alerts.incidents.default_resolver``)."""
    return receivers_of(alert, centre_id)


def hazard_receivers_of(hazard: dict[str, Any]) -> list[Receiver]:
    """A hidden danger's receivers from its published record."""
    return hazard_receivers(
        str(hazard.get("firm_id") or ""), str(hazard.get("district") or ""), str(hazard.get("grade") or "")
    )


def _safe(level: str) -> str:
    return level.replace("/", "_").replace("+", "_").replace("#", "_")


def mqtt_topic(receiver: Receiver) -> str:
    return f"{TOPIC_ROOT}/alerts/{receiver.kind}/{_safe(receiver.id)}"


def hazard_topic(receiver: Receiver) -> str:
    return f"{TOPIC_ROOT}/hazards/{receiver.kind}/{_safe(receiver.id)}"


def webhook_record_topic(url: str) -> str:
    """The delivery log's "topic" of a webhook endpoint (a page delivered there is not sent again)."""
    return f"webhook {url}"


def hazard_key(hazard: dict[str, Any]) -> str:
    """What makes a hazard change distinct (its status, supervision level and update time)."""
    return f"{hazard['hazard_id']}|{hazard['status']}|{hazard.get('supervision')}|{hazard.get('updated_at')}"


def route_change(change: IncidentChange) -> Route:
    """An incident change as pages: ``change.page()`` to each of its receivers, keyed by its change id."""
    page = change.page()
    topics = tuple(dict.fromkeys(mqtt_topic(r) for r in change.receivers))  # listed twice: one page
    what = change.what.split(":", 1)[0]
    return Route(
        change.change_id, change.alert_id, orjson.dumps(page), topics, f"paged_{page['level']}_{what}"
    )


def route_hazard(value: bytes) -> Route:
    try:
        hazard = orjson.loads(value)
        key = hazard_key(hazard)
        hazard_id, status = str(hazard["hazard_id"]), hazard["status"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRecord("bad_hazard_records", f"undecodable hazard record: {exc!r}") from exc
    payload = orjson.dumps(hazard | {"idempotency_key": key})
    topics = tuple(dict.fromkeys(hazard_topic(r) for r in hazard_receivers_of(hazard)))
    return Route(key, hazard_id, payload, topics, f"hazards_{status}")
