"""A record ingest owes Kafka costs its envelope's bytes, not orjson's output buffer.

Why: ``orjson.dumps`` returns bytes that keep orjson's whole buffer (4 KiB for a 233-byte envelope)
and ingest holds each record until Kafka confirms it, up to ``ingest_max_unacked`` (20,000): ≈80 MB
while Kafka stalls, instead of ≈5 MB. Pure: the bridge is built but never started (no broker is
reached; the producer only connects on a produce).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from ingest.bridge import IngestBridge
from sesmon.runtime.services import free_port
from sesmon.runtime.settings import Settings
from tests.conftest import reading

TS = 1_795_300_000_000


def test_a_validated_reading_holds_its_length(tmp_path: Path) -> None:
    settings = Settings(kafka_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path, archive=False)
    bridge = IngestBridge(settings, None, create_topics=False, on_fatal=lambda _why: None)
    topic, payload = reading("E1", 1, TS, floor=3, moving=True, door="closed", speed=1.2)
    bridge._decide(topic.encode(), payload, TS + 50, 1, 1)  # warm: the partition cache, imports
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        records = [bridge._decide(topic.encode(), payload, TS + 50 + n, n + 2, 1) for n in range(200)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(r is not None and r.outcome == "produced" for r in records)
    value_bytes = sum(len(r.value) for r in records if r is not None)
    # the records themselves, their key and topic bytes, and the envelopes: not 17 x the envelopes
    assert held < 3 * value_bytes + 200 * 400, f"{held:,} bytes held for {value_bytes:,} bytes of envelopes"
