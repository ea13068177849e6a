"""``sesmon replay``: the archived stream, the rules of the time, the same decisions (issue 12).

Inspectors replay what the devices sent and see what sesmon decided and who did what, when.
The raw archive (:mod:`sesmon.contract.archive`) is re-parsed with ingest's validation, run
through the rule engine with the catalogue version recorded for that time (fresh, isolated
state), then through the alerts stage's response loop (escalation clocks, the archived dispatch
actions). Output goes to a directory (and, when asked, InfluxDB with a ``run`` tag), never to live
topics, pages, the live data dir or live metrics.

| module | job |
|---|---|
| ``window`` | what to replay: an alert, a hidden danger, a unit or a district over a time span; warm-up |
| ``engine`` | :class:`~replay.engine.Replayer`: the worker and the alerts stage on one simulated clock |
| ``output`` | canonical JSON lines (sorted keys), the replay_* InfluxDB points |
| ``report`` | ``report.html`` (self-contained) and its PNGs; audit entries verified and cited |
| ``cli`` | ``sesmon replay`` |

Where live and replay can differ (and why it does not change the decisions):

- **Processing time.** The worker ticks a quiet unit (reorder flush, deadman, pending durations)
  when its wall clock passes the unit's due time, sweeping every ``deadman_check_every_s``. Replay
  has no wall clock: it uses the archive's receive times (ingest's clock, the same axis the
  worker's due times are on) and ticks each unit exactly at its due time. The rules stamp what a
  tick opens with device time (``opened = last ts + timeout``, a duration's start), so alert ids
  and ``opened_at`` are the same; only a tick's *moment* differs (by up to the sweep period).
- **The alerts stage's clock** is device time plus the wall time since device time last moved
  (:class:`alerts.incidents.EventClock`). Replay drives the same clock with the receive times as
  its wall. Clock entries carry their deadline, not the moment of the check, so the timeline is
  the same unless a dispatch action reached live sesmon within the pipeline's latency of a
  deadline (then live may have escalated first).
- **Order across a unit's streams.** Replay takes a unit's messages in the order ingest received
  them. The worker reads telemetry, events and status as separate Kafka topics, so in a burst
  (a buffered terminal flushing, a backlog after the worker was down) it may evaluate an event
  before telemetry received earlier. Where both raise the same alert (a ``trapped`` event and the
  trapped telemetry condition) the alert's ``opened_at``, hence its id, can then differ: live is
  the one that depends on chance here (``tests/test_replay.py`` publishes as a terminal in real
  time would, each event after what came before it has been evaluated).
- **The watermark** the alerts stage observes is the fleet's highest device time; a replay of one
  unit or district sees only theirs. It moves the clock only by clock skew between units.
- **State before the warm-up** is unknown: maintenance windows, count windows, hidden dangers and
  incidents opened earlier than the warm-up start are missing (``--warmup`` reaches further back).
- **The registry and routing file** are today's (neither is versioned); the ingest verdicts are
  the archived ones (the registry and authorisation of the time decided them), not recomputed.
"""
