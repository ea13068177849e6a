"""A typed InfluxQL query for grafana-foundation-sdk, which ships no InfluxDB query model.

Why a model and not JSON: panels take their targets through the SDK's builders
(``with_target(builder)``), and the dashboard loader (``Dashboard.from_json``) turns a target
back into an object through the dataquery variant registered for its datasource type. With
:func:`register` called, an exported board loads back into :class:`InfluxQLQuery` objects and
serialises to the same JSON, which is what the round-trip test checks.

Grafana's InfluxDB plugin runs a target as raw InfluxQL when ``rawQuery`` is true; the macros
``$timeFilter``, ``$__interval`` and the dashboard's ``$variables`` are substituted by Grafana
before the query reaches InfluxDB (``grafana.macros`` does the same for the tests).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

#: the plugin id of Grafana's InfluxDB datasource (also the variant key of the loader)
INFLUXDB_TYPE = "influxdb"
#: the uid of the datasource every board points at (provisioning and ``sesmon grafana push`` use it)
DATASOURCE_UID = "sesmon-influxdb"
#: its display name
DATASOURCE_NAME = "sesmon InfluxDB"

ResultFormat = Literal["time_series", "table"]


def datasource_ref(uid: str = DATASOURCE_UID) -> DataSourceRef:
    """The reference a panel or target carries to the sesmon InfluxDB datasource."""
    return DataSourceRef(type_val=INFLUXDB_TYPE, uid=uid)


class InfluxQLQuery(cogvariants.Dataquery):
    """One raw InfluxQL target: ``{"refId","datasource","query","rawQuery":true,"resultFormat"}``."""

    ref_id: str
    query: str
    result_format: ResultFormat
    datasource: DataSourceRef | None
    hide: bool | None
    alias: str | None

    def __init__(
        self,
        ref_id: str = "A",
        query: str = "",
        result_format: ResultFormat = "time_series",
        datasource: DataSourceRef | None = None,
        hide: bool | None = None,
        alias: str | None = None,
    ) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.datasource = datasource
        self.hide = hide
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        if self.alias is not None:
            payload["alias"] = self.alias
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        if data.get("rawQuery") is not True:
            raise ValueError(f"target {data.get('refId')!r} is not a raw InfluxQL query")
        return cls(
            ref_id=data.get("refId", "A"),
            query=data.get("query", ""),
            result_format=data.get("resultFormat", "time_series"),
            datasource=DataSourceRef.from_json(data["datasource"]) if "datasource" in data else None,
            hide=data.get("hide"),
            alias=data.get("alias"),
        )


class InfluxQL(cogbuilder.Builder[InfluxQLQuery]):
    """Builder of an :class:`InfluxQLQuery`, in the SDK's style: ``InfluxQL(q).ref_id("B").table()``."""

    _internal: InfluxQLQuery

    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = InfluxQLQuery(
            ref_id=ref_id, query=" ".join(query.split()), datasource=datasource_ref()
        )

    def build(self) -> InfluxQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def table(self) -> Self:
        """Rows as a table (one column per selected field and grouped tag) instead of series."""
        self._internal.result_format = "table"
        return self

    def alias(self, alias: str) -> Self:
        """Series name pattern (``$tag_district``, ``$col``) shown in legends."""
        self._internal.alias = alias
        return self

    def datasource(self, datasource: DataSourceRef) -> Self:
        self._internal.datasource = datasource
        return self


def register() -> None:
    """Teach the SDK's loader to read InfluxDB targets back as :class:`InfluxQLQuery` (idempotent)."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=INFLUXDB_TYPE, from_json_hook=InfluxQLQuery.from_json)
    )
