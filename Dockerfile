# One image for every sesmon stage: `sesmon ingest | worker | alerts | board | simulate`.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sesmon ./sesmon
COPY ingest ./ingest
COPY streams ./streams
COPY rules ./rules
COPY alerts ./alerts
COPY simulators ./simulators
COPY grafana ./grafana
COPY metrics ./metrics
COPY store ./store
COPY kpi ./kpi
COPY replay ./replay
RUN pip install --no-cache-dir .
ENV SESMON_DATA_DIR=/data
VOLUME /data
ENTRYPOINT ["sesmon"]
