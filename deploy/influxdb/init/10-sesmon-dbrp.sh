#!/bin/bash
# Run once by the influxdb:2.7 image after its first setup (/docker-entrypoint-initdb.d): the
# influx CLI is configured with the admin token, DOCKER_INFLUXDB_INIT_* describe what setup made.
#
# Why: the boards query with InfluxQL (DESIGN.md §7), which InfluxDB 2.x answers on its v1
# /query API only for a database mapped to a bucket (DBRP). This maps database `sesmon`
# (SESMON_INFLUX_DB), retention policy `autogen`, to the bucket the sink writes.
set -euo pipefail

db="${SESMON_INFLUX_DB:-sesmon}"
influx v1 dbrp create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${db}" \
  --rp autogen \
  --default
echo "sesmon: InfluxQL database ${db} (rp autogen) -> bucket ${DOCKER_INFLUXDB_INIT_BUCKET}"
