"""Network realism between the terminals and the broker, each effect switchable.

Real 4G/NB-IoT terminals buffer while the link is bad and then flush in a burst, deliver
out of order, resend on a lost ack (duplicates), run on skewed clocks, drop off (the
broker publishes their Last Will ``offline``), and now and then send garbage. The
pipeline has to cope with all of it (DESIGN.md §8), so the simulator can produce it.

The layer moves messages in *delivery* time: ``submit`` takes what devices emitted and
``due(until)`` returns what reaches the broker by ``until``, in delivery order. Only device
messages are affected; reports and dispatch actions pass straight through.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, replace

import orjson

from simulators.common import WILL_PAYLOAD, Device, Msg, lognormal_s


@dataclass
class NetworkOptions:
    """Probabilities are per message unless noted; all zero = a perfect network."""

    buffering: float = 0.0  # per device per hour: chance a buffering episode starts
    buffer_median_s: float = 120.0  # how long a device holds messages in an episode
    reorder: float = 0.0  # chance a message is delayed 0.5–5 s (overtaken by later ones)
    duplicates: float = 0.0  # chance a message is delivered twice
    skew_fraction: float = 0.0  # share of devices with a wrong clock
    skew_max_s: float = 120.0  # clock error up to ± this
    dropouts_per_year: float = 0.0  # per device: link loss with LWT offline
    dropout_median_s: float = 600.0
    dropout_loss: float = 0.3  # share of messages lost (not buffered) during a dropout
    malformed: float = 0.0  # chance a payload is corrupted
    iso_ts_fraction: float = 0.1  # share of terminals sending RFC 3339 text instead of epoch ms

    @classmethod
    def realistic(cls) -> NetworkOptions:
        """A plausible city network: a little of everything."""
        return cls(
            buffering=0.002,
            reorder=0.002,
            duplicates=0.001,
            skew_fraction=0.05,
            skew_max_s=90.0,
            dropouts_per_year=12.0,
            malformed=0.0002,
        )


class Network:
    """Holds messages in flight; deterministic from its own seeded generator."""

    def __init__(self, options: NetworkOptions, rng: random.Random) -> None:
        self.o = options
        self.rng = rng
        self.heap: list[tuple[int, int, Msg]] = []
        self.direct: list[Msg] = []  # perfect-network fast path: already in time order
        self.n = 0
        self.offline_until: dict[str, int] = {}
        self.held: dict[str, list[Msg]] = {}
        self.buffer_until: dict[str, int] = {}
        self.counts = {"buffered": 0, "reordered": 0, "duplicated": 0, "malformed": 0, "lost": 0, "lwt": 0}

    def configure_device(self, dev: Device) -> None:
        """Per-device traits fixed at start: clock skew and timestamp style."""
        if self.o.skew_fraction and self.rng.random() < self.o.skew_fraction:
            dev.skew_ms = int(self.rng.uniform(-self.o.skew_max_s, self.o.skew_max_s) * 1000)
        if self.o.iso_ts_fraction and self.rng.random() < self.o.iso_ts_fraction:
            dev.iso_ts = True

    def _push(self, t: int, msg: Msg) -> None:
        self.n += 1
        heapq.heappush(self.heap, (t, self.n, msg))

    # ------------------------------------------------------------------ dropouts
    def drop(self, dev: Device, t: int, duration_s: float, lwt_delay_s: float = 45.0) -> None:
        """Link lost now: the broker publishes the LWT; the terminal buffers until back."""
        if dev.device_id in self.offline_until:
            return
        self.offline_until[dev.device_id] = t + int(duration_s * 1000)
        self.held.setdefault(dev.device_id, [])
        self.counts["lwt"] += 1
        # keepalive expiry: the broker notices about 1.5 × keepalive later and publishes the Will
        t_lwt = t + int(lwt_delay_s * 1000)
        self._push(t_lwt, Msg(t_lwt, dev.topic("status"), WILL_PAYLOAD, True, dev.device_id, "status"))

    def reconnect(self, dev: Device, t: int) -> None:
        self.offline_until.pop(dev.device_id, None)
        dev.status(t, "online")  # goes through submit like any message
        flushed = self.held.pop(dev.device_id, [])
        for msg in flushed:
            self._push(t + 200, msg)

    # ------------------------------------------------------------------ flow
    def submit(self, msgs: list[Msg]) -> None:
        o = self.o
        rng = self.rng
        perfect = not (o.buffering or o.reorder or o.duplicates or o.malformed or self.offline_until)
        if perfect:
            self.direct.extend(msgs)
            return
        for msg in msgs:
            if not msg.device_id:
                self._push(msg.t, msg)
                continue
            dev_id = msg.device_id
            if dev_id in self.offline_until:
                if rng.random() < o.dropout_loss:
                    self.counts["lost"] += 1
                else:
                    self.held[dev_id].append(msg)
                continue
            t = msg.t
            if o.buffering:
                until = self.buffer_until.get(dev_id, 0)
                if until <= t and rng.random() < o.buffering / 3600.0 * 30:  # ~30 s between msgs
                    until = t + int(lognormal_s(rng, o.buffer_median_s, 0.6) * 1000)
                    self.buffer_until[dev_id] = until
                if until > t:
                    self.counts["buffered"] += 1
                    t = until
            if o.reorder and rng.random() < o.reorder:
                self.counts["reordered"] += 1
                t += int(rng.uniform(500, 5000))
            if o.malformed and rng.random() < o.malformed:
                self.counts["malformed"] += 1
                msg = replace(msg, body=corrupt(msg, rng))
            self._push(t, msg)
            if o.duplicates and rng.random() < o.duplicates:
                self.counts["duplicated"] += 1
                self._push(t + int(rng.uniform(100, 3000)), msg)

    def due(self, until: int) -> list[Msg]:
        heap = self.heap
        if self.direct:
            direct, self.direct = self.direct, []
            if not heap:
                return direct  # emitted by the engine up to ``until``, in time order
            for msg in direct:
                self._push(msg.t, msg)
        out: list[Msg] = []
        while heap and heap[0][0] <= until:
            t, _, msg = heapq.heappop(heap)
            if msg.t != t:
                msg = replace(msg, t=t)
            out.append(msg)
        return out


def corrupt(msg: Msg, rng: random.Random) -> bytes:
    """A plausible broken payload: truncated JSON, wrong types, missing keys, bad time."""
    body = msg.body if isinstance(msg.body, dict) else {}
    raw = orjson.dumps(body) if body else b"{}"
    pick = rng.randrange(5)
    if pick == 0:
        return raw[: max(1, len(raw) // 2)]
    broken = dict(body)
    if pick == 1:
        broken["seq"] = str(broken.get("seq", 0))
    elif pick == 2:
        broken.pop("device_id", None)
    elif pick == 3:
        broken["ts"] = "yesterday"
    else:
        return b"\xff\xfe" + raw[:20]
    return orjson.dumps(broken)
