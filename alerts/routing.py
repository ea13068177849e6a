"""Who receives an alert or hidden-danger change, on which MQTT topic, with which page body.

All routing lives here (DESIGN.md §4), so later work (webhooks, escalation, dispatch
handling) extends one place: the publisher only turns a :class:`Route` into publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from sesmon.contract.receivers import hazard_receivers, receivers_of
from sesmon.contract.schemas import TOPIC_ROOT, Alert, Receiver


class BadRecord(ValueError):
    """A Kafka record that is not an alert or hazard change (counted under ``counter``, skipped)."""

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
    """Who gets it (DESIGN.md §4, sesmon.contract.receivers): the rules' list, or the defaults."""
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


def hazard_key(hazard: dict[str, Any]) -> str:
    """What makes a hazard change distinct (its status, supervision level and update time)."""
    return f"{hazard['hazard_id']}|{hazard['status']}|{hazard.get('supervision')}|{hazard.get('updated_at')}"


def route_alert(value: bytes, centre_id: str) -> Route:
    try:
        alert = Alert.model_validate_json(value)
    except ValidationError as exc:
        raise BadRecord("bad_alert_records", f"undecodable alert record: {exc}") from exc
    receivers = receivers_for(alert, centre_id)
    key = alert.dedup_key()
    payload = orjson.dumps(
        alert.model_dump(mode="json")
        | {"receivers": [r.model_dump() for r in receivers], "idempotency_key": key}
    )
    topics = tuple(dict.fromkeys(mqtt_topic(r) for r in receivers))  # a receiver listed twice: one page
    return Route(key, alert.alert_id, payload, topics, f"delivered_{alert.level}_{alert.state}")


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
