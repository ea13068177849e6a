"""Pieces every simulated device shares: the outgoing message, seq/ts stamping, helpers.

Models never do I/O: they append :class:`Msg` records to an outbox list owned by the
engine, stamped with *simulated* time, so the same seed always yields the same stream and
tests can run a simulated day in a second.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from sesmon.contract.gbt24476 import MODE_CODE as MODE_CODE  # the service-mode code table (re-exported)
from sesmon.contract.time import LOCAL_TZ

TOPIC_ROOT = "sesmon/v1"
#: a terminal's MQTT Last Will, retained on its status topic (DESIGN.md §2: the bare word)
WILL_PAYLOAD = b"offline"


@dataclass(slots=True)
class Msg:
    """One message as a device would send it.

    ``t`` is the simulated time (epoch ms) at which it leaves the device (the network layer
    may move it); ``body`` is a dict (serialised late) or raw bytes (LWT words, malformed).
    ``sender`` is the MQTT username a person's message goes out under on a secure broker
    (``firm-{id}``, ``inspector-1``, ``operator``); a device's is its ``device_id``.
    """

    t: int
    topic: str
    body: dict[str, Any] | bytes
    retain: bool = False
    device_id: str = ""
    leaf: str = ""  # telemetry | event | status | report | dispatch
    sender: str = ""

    @property
    def username(self) -> str:
        """The account that publishes this message (device or person)."""
        return self.device_id or self.sender

    @property
    def is_will(self) -> bool:
        """The bare retained ``offline`` a broker publishes for a terminal whose link died."""
        return self.leaf == "status" and self.body == WILL_PAYLOAD

    def payload(self) -> bytes:
        import orjson

        if isinstance(self.body, bytes):
            return self.body
        return orjson.dumps(self.body)


def device_topic(kind: str, device_id: str, leaf: str) -> str:
    return f"{TOPIC_ROOT}/{kind}/{device_id}/{leaf}"


def iso_ms(ms: int, tz: tzinfo = LOCAL_TZ) -> str:
    """RFC 3339 with offset, as some terminals send it (millisecond precision)."""
    return datetime.fromtimestamp(ms / 1000, tz=tz).isoformat(timespec="milliseconds")


def utc_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()


def lognormal_s(rng: random.Random, median_s: float, sigma: float) -> float:
    """Log-normal duration with a given median: how response and repair times are spread."""
    return median_s * math.exp(rng.gauss(0.0, sigma))


def unit_rng(seed: int, device_id: str, salt: str = "") -> random.Random:
    """Per-device generator: string seeds hash deterministically (sha512), unlike hash()."""
    return random.Random(f"{seed}:{device_id}:{salt}")


@dataclass
class Device:
    """Stamping shared by elevator and boiler models: seq, device time (with skew), topics."""

    device_id: str
    kind: str
    outbox: list[Msg]
    seq: int = 0
    skew_ms: int = 0  # device clock error; the network layer may set it
    iso_ts: bool = False  # some terminals send RFC 3339 text instead of epoch ms
    online: bool = True
    _topics: dict[str, str] = field(default_factory=dict)

    def topic(self, leaf: str) -> str:
        top = self._topics.get(leaf)
        if top is None:
            top = self._topics[leaf] = device_topic(self.kind, self.device_id, leaf)
        return top

    def stamp(self, t: int) -> tuple[int | str, int]:
        self.seq += 1
        dev_t = t + self.skew_ms
        return (iso_ms(dev_t) if self.iso_ts else dev_t), self.seq

    def send(self, t: int, leaf: str, body: dict[str, Any], retain: bool = False) -> None:
        ts, seq = self.stamp(t)
        msg = {"device_id": self.device_id, "ts": ts, "seq": seq}
        msg.update(body)
        self.outbox.append(Msg(t, self.topic(leaf), msg, retain, self.device_id, leaf))

    def event(self, t: int, code: str, state: str = "occur", **detail: Any) -> None:
        self.send(t, "event", {"code": code, "state": state, "detail": detail})

    def recover(self, t: int, code: str, **detail: Any) -> None:
        """Report a fault's end, once, and only for a fault the terminal reported (``active_events``)."""
        active: set[str] = self.active_events  # type: ignore[attr-defined]  # set by each model
        if code in active:
            active.discard(code)
            self.event(t, code, "recover", **detail)

    def periodic_reports(self, t: int) -> None:
        """Status report and heartbeat when due (models set ``periodic``, ``next_report``,
        ``next_heartbeat``, ``heartbeat_ms`` and ``telemetry``)."""
        me: Any = self
        if not me.periodic:
            return
        if t >= me.next_report:
            me.telemetry(t)
        if t >= me.next_heartbeat:
            self.status(t, "online")
            me.next_heartbeat = t + me.heartbeat_ms

    def status(self, t: int, status: str = "online") -> None:
        self.send(t, "status", {"status": status}, retain=True)

    def lwt_offline(self, t: int) -> None:
        """What the broker publishes for a terminal whose connection died: the bare Will."""
        self.outbox.append(Msg(t, self.topic("status"), WILL_PAYLOAD, True, self.device_id, "status"))
