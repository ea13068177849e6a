"""Small panel and variable helpers over grafana-foundation-sdk's builders, so the boards read as a list.

Only styling defaults live here (sizes, units, thresholds); every query is written in
``grafana.boards`` next to the panel that shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, geomap, piechart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import geomap as geomap_models
from grafana_foundation_sdk.models.dashboard import (
    DataTransformerConfig,
    DynamicConfigValue,
    FieldColorModeId,
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


P = TypeVar("P")


def _framed(panel: P, title: str, description: str, targets: Targets, width: int, height: int) -> P:
    """What every panel has: title, description, the InfluxDB datasource, its queries, its size."""
    return (
        panel.title(title)  # type: ignore[attr-defined]
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .span(width)
        .height(height)
    )


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
        _framed(stat.Panel(), title, description, targets, width, height)
        .unit(unit)
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
        _framed(timeseries.Panel(), title, description, targets, width, height)
        .unit(unit)
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
        _framed(table.Panel(), title, description, targets, width, height)
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
        _framed(bargauge.Panel(), title, description, targets, width, height)
        .unit(unit)
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
        _framed(piechart.Panel(), title, description, targets, width, height)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(True))
        .transformations(list(transformations))
    )


#: Grafana's circle marker (public/img/icons/marker/circle.svg)
CIRCLE_MARKER = "img/icons/marker/circle.svg"


def geomap_panel(
    title: str,
    targets: Targets,
    *,
    latitude: str,
    longitude: str,
    color_field: str,
    thresholds: dash.ThresholdsConfig,
    layer_name: str,
    centre: tuple[float, float],
    zoom: int,
    tooltip_hidden: Sequence[str] = (),
    description: str = "",
    transformations: Sequence[DataTransformerConfig] = (),
    width: int = 24,
    height: int = 14,
) -> geomap.Panel:
    """A map with one marker layer: a point per row at (``latitude``, ``longitude``), coloured by a field.

    Grafana's markers legend lists the colour thresholds by value ("< 1", "1+", ...), not by a
    value mapping's text, so ``layer_name`` (shown above the legend) carries the key. The SDK has
    no model for the markers layer's own config (``MarkersConfig``): it is assembled from the
    SDK's typed dimension models. ``tooltip_hidden`` columns are left out of the hover tooltip.
    """
    style = {
        "color": common_builders.ColorDimensionConfig().field(color_field).fixed("green").build(),
        "size": common_builders.ScaleDimensionConfig().fixed(6).min(2).max(15).build(),
        "symbol": common_builders.ResourceDimensionConfig()
        .mode(common.ResourceDimensionMode.FIXED)
        .fixed(CIRCLE_MARKER)
        .build(),
        "opacity": 0.8,
    }
    markers = (
        common_builders.MapLayerOptions()
        .type("markers")
        .name(layer_name)
        .location(
            common_builders.FrameGeometrySource()
            .mode(common.FrameGeometrySourceMode.COORDS)
            .latitude(latitude)
            .longitude(longitude)
        )
        .config({"showLegend": True, "style": style})
        .tooltip(True)
    )
    lat, lon = centre
    panel = (
        _framed(geomap.Panel(), title, description, targets, width, height)
        .transformations(list(transformations))
        # the SDK types lat/lon as int (Grafana's CUE schema says int64; its TypeScript, number)
        .view(geomap.MapViewConfig().id("coords").lat(lat).lon(lon).zoom(zoom))  # type: ignore[arg-type]
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_attribution(True))
        .basemap(common_builders.MapLayerOptions().type("default").name("Basemap"))
        .layers([markers])
        .tooltip(geomap.TooltipOptions().mode(geomap_models.TooltipMode.DETAILS))
        .color_scheme(dash.FieldColor().mode(FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds)
    )
    hidden = common_builders.HideSeriesConfig().tooltip(True).legend(False).viz(False).build()
    for column in tooltip_hidden:
        panel = panel.override_by_name(column, [DynamicConfigValue(id_val="custom.hideFrom", value=hidden)])
    return panel


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
