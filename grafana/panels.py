"""Small panel and variable helpers over grafana-foundation-sdk's builders, so the boards read as a list.

Only styling defaults live here (sizes, units, thresholds); every query is written in
``grafana.boards`` next to the panel that shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import bargauge, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from grafana.influxql import InfluxQL, datasource_ref

#: Grafana's default series colours for "fine", "watch", "breach"
GREEN, AMBER, RED = "green", "orange", "red"

Targets = Sequence[InfluxQL]


def steps(*limits: tuple[float, str], base: str = GREEN) -> dash.ThresholdsConfig:
    """Absolute thresholds: ``base`` below the first limit, then each (limit, colour)."""
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color=base), *(Threshold(value=v, color=c) for v, c in limits)])
    )


def _last() -> common_builders.ReduceDataOptions:
    return common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def stat_panel(
    title: str,
    targets: Targets,
    *,
    unit: str = "short",
    description: str = "",
    thresholds: dash.ThresholdsConfig | None = None,
    width: int = 6,
    height: int = 5,
    no_value: str = "",
    decimals: float | None = None,
    time_from: str = "",
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .reduce_options(_last())
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .thresholds(thresholds or steps())
    )
    if no_value:
        panel = panel.no_value(no_value)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if time_from:
        panel = panel.time_from(time_from)
    return panel


def timeseries_panel(
    title: str,
    targets: Targets,
    *,
    unit: str = "short",
    description: str = "",
    thresholds: dash.ThresholdsConfig | None = None,
    threshold_style: common.GraphThresholdsStyleMode = common.GraphThresholdsStyleMode.OFF,
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    time_from: str = "",
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .span_nulls(True)
        .thresholds(thresholds or steps())
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(threshold_style))
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if time_from:
        panel = panel.time_from(time_from)
    return panel


def table_panel(
    title: str,
    targets: Targets,
    *,
    description: str = "",
    width: int = 24,
    height: int = 9,
    transformations: Sequence[DataTransformerConfig] = (),
    units: dict[str, str] | None = None,
    thresholds: dict[str, dash.ThresholdsConfig] | None = None,
    sort_by: str = "",
    descending: bool = True,
    time_from: str = "",
) -> table.Panel:
    """A table; ``units`` / ``thresholds`` per column name become field overrides."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .span(width)
        .height(height)
        .transformations(list(transformations))
        .align(common.FieldTextAlignment.AUTO)
        .filterable(True)
    )
    for column, unit in (units or {}).items():
        panel = panel.override_by_name(column, [DynamicConfigValue(id_val="unit", value=unit)])
    for column, config in (thresholds or {}).items():
        panel = panel.override_by_name(
            column,
            [
                DynamicConfigValue(id_val="thresholds", value=config.build()),
                DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ],
        )
    if sort_by:
        panel = panel.sort_by(
            [common_builders.TableSortByFieldState().display_name(sort_by).desc(descending)]
        )
    if time_from:
        panel = panel.time_from(time_from)
    return panel


def bar_panel(
    title: str,
    targets: Targets,
    *,
    unit: str = "short",
    description: str = "",
    thresholds: dash.ThresholdsConfig | None = None,
    width: int = 12,
    height: int = 8,
    time_from: str = "",
    no_value: str = "",
) -> bargauge.Panel:
    """Horizontal bars, one per series (a ranking or a breakdown by tag)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(_last())
        .thresholds(thresholds or steps())
    )
    if time_from:
        panel = panel.time_from(time_from)
    if no_value:
        panel = panel.no_value(no_value)
    return panel


def pie_panel(
    title: str,
    targets: Targets,
    *,
    description: str = "",
    transformations: Sequence[DataTransformerConfig] = (),
    width: int = 8,
    height: int = 8,
) -> piechart.Panel:
    return (
        piechart.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .span(width)
        .height(height)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(True))
        .transformations(list(transformations))
    )


# --------------------------------------------------------------------------- transformations


def merge() -> DataTransformerConfig:
    """One table from the frames of several targets, rows joined on their common columns."""
    return DataTransformerConfig(id_val="merge", options={})


def count_by(column: str, counted: str) -> DataTransformerConfig:
    """Rows grouped by ``column``, ``counted`` counted in each group (units by state)."""
    return DataTransformerConfig(
        id_val="groupBy",
        options={
            "fields": {
                column: {"aggregations": [], "operation": "groupby"},
                counted: {"aggregations": ["count"], "operation": "aggregate"},
            }
        },
    )


# --------------------------------------------------------------------------- template variables


def tag_variable(name: str, label: str, show_query: str) -> dash.QueryVariable:
    """A tag-value picker with "All" (``.*``), used in queries as ``=~ /^$name$/``."""
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(datasource_ref())
        .query(show_query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def choice_variable(name: str, label: str, values: Sequence[str]) -> dash.CustomVariable:
    """A fixed list (kind, window); the first value is the default."""
    return (
        dash.CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .current(VariableOption(selected=True, text=values[0], value=values[0]))
    )
