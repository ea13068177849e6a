"""The InfluxDB sink (``sesmon store``): Kafka records → line protocol → InfluxDB 1.x or 2.x/3.x.

- :mod:`store.points`: records → points (DESIGN.md §7 schema), :mod:`store.lineproto`: the encoder
- :mod:`store.wire`: v1 ``/write`` or the v2 API (influxdb-client), chosen by setting or ``/ping``
- :mod:`store.spool`: points on disk while InfluxDB is away
- :mod:`store.sink`: batching, the writer thread, offsets committed when durable, the stage
"""
