"""The ``kpi`` stage: live safety KPIs (DESIGN.md §6) from the pipeline's low-rate streams.

- :mod:`kpi.inputs`: what the stage keeps of each record (accidents, trapped incidents,
  dispatch actions, maintenance visits, inspections, hazards, terminal status), folded
  idempotently, in memory and durably in SQLite (:class:`kpi.inputs.KpiState`)
- :mod:`kpi.rows`: the ``safety_kpi`` rows for scopes and windows, by the definitions in
  ``metrics`` (pure: no I/O)
- :mod:`kpi.stage`: ``sesmon kpi``, Kafka in (``reports``, ``alerts``, ``hazards``,
  ``dispatch``, ``status``, ``pipeline``), Kafka ``kpi`` out
"""
