"""``report.html`` (self-contained: PNGs embedded as base64) and its PNGs, for inspectors.

What it shows (domain.md §4.4): the relevant signals with the rule thresholds and the moments
each rule fired and cleared; the alert and dispatch timeline (received, dispatched, accepted, on
site, freed, closed, with actors and the 5/30-minute clocks); the unit's state at the time (last
maintenance, inspection validity, open hidden dangers); the audit entries the timeline rests on,
verified and cited by seq and hash. A broken audit chain is the report's first line.

Deterministic: a fixed matplotlib style, no time of the run anywhere, PNG metadata without the
software version, so the same replay renders the same files.
"""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, ever (a server, a test)

import matplotlib.pyplot as plt
import orjson

from alerts.audit import FILE_RE, VerifyResult, audit_dir, verify
from sesmon.contract.time import local_datetime

from .engine import ReplayResult
from .output import in_window, write_atomically
from .window import PLOTTED_UNITS

SIGNALS_PNG, TIMELINE_PNG, REPORT_HTML = "signals.png", "timeline.png", "report.html"
MAX_SIGNAL_AXES = 6
STYLE = {
    "figure.dpi": 100,
    "font.size": 9,
    "font.family": "DejaVu Sans",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "sesmon-replay",
}
VALIDITY = {True: "valid", False: "OVERDUE", None: "unknown"}
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same input, same bytes
STEP_COLOURS = {
    "opened": "#c0392b",
    "resolved": "#27ae60",
    "escalated": "#e67e22",
    "sla_breach": "#8e44ad",
    "accident": "#000000",
}


# --------------------------------------------------------------------------- audit


@dataclass
class AuditFindings:
    """The chain's verdict and the entries the replayed timeline rests on."""

    present: bool
    result: VerifyResult | None = None
    cited: list[dict[str, Any]] = field(default_factory=list)  # seq, hash, kind, what, matches
    missing_in_audit: list[str] = field(default_factory=list)  # replayed changes live did not record

    def first_line(self) -> str:
        if not self.present:
            return (
                "No audit log in this data dir: the replay could not be checked against what live recorded."
            )
        assert self.result is not None
        if not self.result.ok:
            return f"AUDIT CHAIN BROKEN: {self.result.first_bad} — entries from there on cannot be relied on."
        return (
            f"Audit chain intact: {self.result.entries} entries verified "
            f"(last seq {self.result.last_seq}, hash {str(self.result.last_hash)[:16]}…)."
        )


def audit_findings(data_dir: Path, alert_ids: set[str], change_ids: list[str]) -> AuditFindings:
    """Verify the live audit chain, cite its entries about ``alert_ids`` (seq + hash), and say which
    replayed changes (``change_ids``) live did not record."""
    directory = audit_dir(data_dir)
    files = (
        sorted(p for p in directory.glob("audit-*.jsonl") if FILE_RE.match(p.name))
        if directory.is_dir()
        else []
    )
    if not files:
        return AuditFindings(present=False, missing_in_audit=[])
    result = verify(directory)
    findings = AuditFindings(present=True, result=result)
    seen_changes: set[str] = set()
    for path in files:
        with path.open("rb") as stream:
            for number, raw in enumerate(stream, 1):
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                data = entry.get("data") or {}
                if not isinstance(data, dict) or data.get("alert_id") not in alert_ids:
                    continue
                if entry.get("kind") == "delivery":
                    continue
                change_id = data.get("change_id")
                if change_id:
                    seen_changes.add(change_id)
                verified = result.ok or (
                    result.first_bad is not None and entry.get("seq", 0) < (result.first_bad.seq or 0)
                )
                findings.cited.append(
                    {
                        "seq": entry.get("seq"),
                        "hash": str(entry.get("hash", "")),
                        "file": f"{path.name}:{number}",
                        "kind": entry.get("kind"),
                        "what": data.get("what") or data.get("action") or "",
                        "alert_id": data.get("alert_id"),
                        "event_at": entry.get("event_at"),
                        "verified": bool(verified),
                        "replayed": change_id in change_ids if change_id else None,
                    }
                )
    findings.missing_in_audit = [c for c in change_ids if c not in seen_changes]
    return findings


# --------------------------------------------------------------------------- plots


def _minutes(ts: int, origin: int) -> float:
    return (ts - origin) / 60_000


def _origin(result: ReplayResult) -> int:
    return result.target.anchor_ms if result.target.anchor_ms is not None else result.window.start_ms


def plot_devices(
    result: ReplayResult,
    among: Iterable[str] | None = None,
    has_samples: Callable[[str], bool] | None = None,
) -> list[str]:
    """The units whose signals the report plots: the target unit, else the first three by device id
    with a rule alert and samples in the window, else the first three with samples.

    By default the units and samples are those of ``result.signals``. A district run keeps none
    (replay/cli.py): it names the candidate units (``among``) and reads a unit's samples when
    asked (``has_samples``), for as few units as the choice needs."""
    if result.target.device_id is not None:
        return [result.target.device_id]
    units = set(result.signals if among is None else among)
    with_samples = has_samples or units.__contains__
    with_alerts = sorted({a["device_id"] for a in result.rule_alerts if a["device_id"] in units})
    for candidates in (with_alerts, sorted(units)):
        chosen = list(itertools.islice(filter(with_samples, candidates), PLOTTED_UNITS))
        if chosen:
            return chosen
    return []


def _relevant_fields(result: ReplayResult, device_id: str) -> list[str]:
    """The fields of the rules that fired on the unit, else its most varied numeric fields."""
    rules = [a["rule"] for a in result.rule_alerts if a["device_id"] == device_id]
    wanted: list[str] = []
    for rule in dict.fromkeys(rules):
        for name in result.thresholds.get(rule, {}).get("fields", []):
            if name not in wanted:
                wanted.append(name)
    samples = result.signals.get(device_id, [])
    present = {k for _, body in samples for k, v in body.items() if _value(v) is not None}
    chosen = [f for f in wanted if f in present]
    if len(chosen) < 2:
        varied = sorted(
            (f for f in present if f not in ("ts", "seq") and f not in chosen),
            key=lambda f: (-len({_value(b.get(f)) for _, b in samples}), f),
        )
        chosen += varied[: 4 - len(chosen)]
    return chosen[:MAX_SIGNAL_AXES]


def _value(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def plot_signals(result: ReplayResult, path: Path) -> bool:
    """The relevant signals with thresholds, rule fired/cleared moments; False when nothing to plot."""
    origin, start, end = _origin(result), result.window.start_ms, result.end_ms
    rows: list[tuple[str, str]] = [
        (device_id, name)
        for device_id in plot_devices(result)
        for name in _relevant_fields(result, device_id)
    ][:MAX_SIGNAL_AXES]
    if not rows:
        return False
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            len(rows), 1, figsize=(10, 1.9 * len(rows) + 0.8), sharex=True, squeeze=False
        )
        for ax, (device_id, name) in zip(axes[:, 0], rows, strict=True):
            points = [
                (_minutes(ts, origin), _value(body.get(name)))
                for ts, body in result.signals.get(device_id, [])
                if start <= ts <= end and _value(body.get(name)) is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.step(xs, ys, where="post", color="#2c3e50", linewidth=1.2)
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
            _thresholds(ax, result, device_id, name)
            _alert_moments(ax, result, device_id, origin, start, end)
        axes[0, 0].set_title(
            f"{', '.join(dict.fromkeys(d for d, _ in rows))}: signals, thresholds, "
            "rules fired (red) and cleared (green)"
        )
        axes[-1, 0].set_xlabel(f"minutes from {_local(origin)} (Guangzhou time)")
        axes[-1, 0].set_xlim(_minutes(start, origin), _minutes(end, origin))
        fig.tight_layout()
        fig.savefig(path, format="png", metadata=PNG_METADATA)
        plt.close(fig)
    return True


def _thresholds(ax: Any, result: ReplayResult, device_id: str, name: str) -> None:
    """Each threshold of a rule on this field that fired on this unit, as a labelled dashed line."""
    rules = dict.fromkeys(a["rule"] for a in result.rule_alerts if a["device_id"] == device_id)
    for rule in rules:
        info = result.thresholds.get(rule) or {}
        if info.get("fields") != [name]:
            continue  # a threshold is drawn only where it can belong to one signal
        for param, value in sorted((info.get("params") or {}).items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                ax.axhline(value, color="#c0392b", linestyle="--", linewidth=0.8)
                ax.annotate(
                    f"{rule}: {param} = {value:g}",
                    (0.005, value),
                    xycoords=("axes fraction", "data"),
                    fontsize=7,
                    color="#c0392b",
                    va="bottom",
                )


def _alert_moments(ax: Any, result: ReplayResult, device_id: str, origin: int, start: int, end: int) -> None:
    for alert in result.rule_alerts:
        if alert["device_id"] != device_id or not start <= alert["changed_at"] <= end:
            continue
        colour = "#c0392b" if alert["state"] == "firing" else "#27ae60"
        ax.axvline(_minutes(alert["changed_at"], origin), color=colour, linewidth=1.0, alpha=0.8)


def plot_timeline(result: ReplayResult, path: Path) -> bool:
    """Each incident's steps (who, what, when) with its 5- and 30-minute clocks."""
    origin, start, end = _origin(result), result.window.start_ms, result.end_ms
    incidents = _incidents(result)
    if not incidents:
        return False
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(10, 1.0 + 0.9 * len(incidents)))
        for row, incident in enumerate(incidents):
            y = len(incidents) - row
            ax.hlines(
                y,
                _minutes(max(incident["opened_at"], start), origin),
                _minutes(end, origin),
                color="#bdc3c7",
                linewidth=6,
            )
            for name, label in (
                ("accept_due", "accept 5 min"),
                ("on_site_due", "on site 30 min"),
                ("accident_due", "accident 2 h"),
            ):
                due = incident.get(name)
                if due is not None and start <= due <= end:
                    x = _minutes(due, origin)
                    ax.vlines(x, y - 0.35, y + 0.35, color="#7f8c8d", linestyle=":", linewidth=1.2)
                    ax.annotate(label, (x, y + 0.38), fontsize=7, ha="center", color="#7f8c8d")
            for step in incident.get("timeline", []):
                if not start <= step["at"] <= end:
                    continue
                colour = STEP_COLOURS.get(step["what"], "#2980b9")
                x = _minutes(step["at"], origin)
                ax.plot([x], [y], marker="o", color=colour, markersize=6)
                who = f" ({step['by']})" if step.get("by") else ""
                ax.annotate(
                    f"{step['what']}{who}", (x, y - 0.12), fontsize=7, rotation=-35, ha="left", va="top"
                )
        ax.set_yticks([len(incidents) - i for i in range(len(incidents))])
        ax.set_yticklabels([f"{i['rule']} {i['level']}" for i in incidents])
        ax.set_ylim(0.2, len(incidents) + 0.8)
        ax.set_xlim(_minutes(start, origin), _minutes(end, origin))
        ax.set_xlabel(f"minutes from {_local(origin)} (Guangzhou time)")
        ax.set_title("alert and dispatch timeline with the 96333 clocks")
        fig.tight_layout()
        fig.savefig(path, format="png", metadata=PNG_METADATA)
        plt.close(fig)
    return True


def _incidents(result: ReplayResult) -> list[dict[str, Any]]:
    """The incidents of the window (the target's first), as they stood at the end."""
    pages, _hazards, _timeline = in_window(result)
    ids = list(dict.fromkeys(p["alert_id"] for p in pages))
    if result.target.mode == "alert" and result.target.ident in ids:
        ids.remove(result.target.ident)
        ids.insert(0, result.target.ident)
    return [result.incidents[i] for i in ids if i in result.incidents][:12]


# --------------------------------------------------------------------------- HTML


def _local(ts: int | None) -> str:
    if ts is None:
        return "—"
    return local_datetime(int(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: Iterable[list[Any]], css: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _offset(at: int, origin: int) -> str:
    seconds = (at - origin) // 1000
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    return f"{sign}{seconds // 60}:{seconds % 60:02d}"


def _clock_rows(incident: dict[str, Any]) -> list[list[Any]]:
    """Each clock: due when, met when (the step that satisfied it), or what it fired."""
    steps = incident.get("timeline", [])

    def first(*names: str) -> dict[str, Any] | None:
        return next((s for s in steps if s["what"] in names), None)

    rows = []
    opened = incident["opened_at"]
    for label, due_name, met_by, fired in (
        (
            "accept within 5 min (96333 level 2 otherwise)",
            "accept_due",
            ("accepted", "on_site", "freed", "restored"),
            "escalated",
        ),
        (
            "on site within 30 min (level 3 and SLA breach otherwise)",
            "on_site_due",
            ("on_site", "freed", "restored"),
            "sla_breach",
        ),
        ("freed within 2 h (一般事故 otherwise)", "accident_due", ("freed", "restored"), "accident"),
    ):
        due = incident.get(due_name)
        if due is None:
            continue
        met = first(*met_by)
        fire = first(fired)
        if met is not None and met["at"] <= due:
            outcome = f"met: {met['what']} by {met.get('by') or '—'} at {_offset(met['at'], opened)}"
        elif fire is not None:
            outcome = f"missed: {fire['what']} at {_offset(fire['at'], opened)}"
        else:
            outcome = "stopped (resolved or closed) or still running"
        rows.append([label, f"{_offset(due, opened)} ({_local(due)})", outcome])
    return rows


CSS = """
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f2f2f2} .broken{color:#fff;background:#c0392b;padding:8px} .ok{color:#1e8449}
.missing{color:#c0392b} img{max-width:100%;border:1px solid #ddd} code{font-size:11px}
"""


def render_report(
    result: ReplayResult,
    out_dir: Path,
    *,
    data_dir: Path,
    audit: AuditFindings,
    counts: dict[str, int],
) -> Path:
    """Write the PNGs and ``report.html`` (the PNGs embedded) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for name, plot in ((SIGNALS_PNG, plot_signals), (TIMELINE_PNG, plot_timeline)):
        path = out_dir / name
        if plot(result, path):
            images.append((name, base64.b64encode(path.read_bytes()).decode("ascii")))
        elif path.exists():
            path.unlink()
    target, origin = result.target, _origin(result)
    first = audit.first_line()
    status_css = "broken" if audit.present and audit.result is not None and not audit.result.ok else "ok"
    parts = [
        f"<!-- {_esc(first).replace('--', '—')} -->",  # the first line of the file says it, too
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(first)}</title>',
        f"<style>{CSS}</style></head><body>",
        f'<p id="audit-status" class="{status_css}">{_esc(first)}</p>',
        f"<h1>sesmon replay: {_esc(target.mode)} {_esc(target.ident)}</h1>",
        _table(
            ["", ""],
            [
                ["window", f"{_local(result.window.start_ms)} — {_local(result.end_ms)} (Guangzhou time)"],
                ["state built from", _local(result.window.warmup_ms)],
                ["data dir", str(data_dir)],
                [
                    "catalogue",
                    "; ".join(f"{c['version']} (sha {c['catalogue_sha']})" for c in result.catalogues)
                    + (
                        " — none recorded in the data dir: the shipped catalogue"
                        if result.catalogue_fallback
                        else ""
                    ),
                ],
                ["messages replayed", result.stats.get("messages", 0)],
                ["telemetry readings", result.readings],
                ["written", ", ".join(f"{k}: {v}" for k, v in counts.items())],
            ],
            "summary",
        ),
    ]
    parts.append("<h2>Signals and rules</h2>")
    if any(n == SIGNALS_PNG for n, _ in images):
        data = next(d for n, d in images if n == SIGNALS_PNG)
        parts.append(f'<img id="signals-plot" alt="signals" src="data:image/png;base64,{data}">')
    else:
        parts.append("<p>No telemetry of the unit in the window.</p>")
    rule_rows = [
        [
            _local(a["changed_at"]),
            _offset(a["changed_at"], origin),
            a["device_id"],
            a["rule"],
            a["level"],
            a["state"],
            a["alert_id"],
        ]
        for a in result.rule_alerts
        if result.window.start_ms <= a["changed_at"] <= result.end_ms
    ]
    parts.append(
        _table(
            ["time", "from origin", "unit", "rule", "level", "fired / cleared", "alert id"],
            rule_rows,
            "rules",
        )
    )
    thresholds = [
        [
            rule,
            info.get("level"),
            info.get("when") or ", ".join(info.get("events", [])),
            ", ".join(
                f"{k} = {v:g}" if isinstance(v, int | float) else f"{k} = {v}"
                for k, v in sorted((info.get("params") or {}).items())
            ),
        ]
        for rule, info in sorted(result.thresholds.items())
    ]
    parts.append(_table(["rule", "level", "condition", "thresholds for this unit"], thresholds, "thresholds"))

    parts.append("<h2>Alert and dispatch timeline</h2>")
    if any(n == TIMELINE_PNG for n, _ in images):
        data = next(d for n, d in images if n == TIMELINE_PNG)
        parts.append(f'<img id="timeline-plot" alt="timeline" src="data:image/png;base64,{data}">')
    for incident in _incidents(result):
        opened = incident["opened_at"]
        parts.append(
            f"<h3>{_esc(incident['alert_id'])}</h3><p>{_esc(incident.get('title'))} — "
            f"level {_esc(incident['level'])}, escalation {_esc(incident['escalation'])}, "
            f"incident {_esc(incident['state'])}, alert {_esc(incident['alert_state'])}"
            f"{', SLA breach' if incident.get('sla_breach') else ''}"
            f"{', accident' if incident.get('accident') else ''}</p>"
        )
        parts.append(
            _table(
                ["time", "since opened", "what", "by", "level"],
                [
                    [_local(s["at"]), _offset(s["at"], opened), s["what"], s.get("by") or "—", s.get("level")]
                    for s in incident.get("timeline", [])
                ],
                "timeline",
            )
        )
        clocks = _clock_rows(incident)
        if clocks:
            parts.append(_table(["clock", "due", "outcome"], clocks, "clocks"))
    received = [
        [
            _local(t["at"]),
            t["what"],
            t.get("by") or "—",
            t.get("status", ""),
            t.get("reason", ""),
            t.get("alert_id") or t.get("device_id") or "",
        ]
        for t in in_window(result)[2]
        if t["source"] == "received"
    ]
    parts.append("<h3>Received (events, status changes, reports, dispatch actions, dead letters)</h3>")
    parts.append(_table(["device time", "what", "by", "applied", "refusal", "about"], received, "received"))

    parts.append("<h2>The unit at the time</h2>")
    for device_id, snap in sorted(result.snapshots.items()):
        parts.append(
            _table(
                ["", ""],
                [
                    [
                        "unit",
                        f"{device_id} ({snap.get('kind', '?')}, {snap.get('district', '?')}, "
                        f"{snap.get('address', '')})",
                    ],
                    ["as of", _local(snap.get("at"))],
                    [
                        "maintenance firm / user unit",
                        f"{snap.get('firm_id', '—')} / {snap.get('user_unit_id', '—')}",
                    ],
                    [
                        "last maintenance (archived reports)",
                        _local(snap.get("last_maintenance_ms"))
                        if snap.get("last_maintenance_ms")
                        else "none in the replayed span",
                    ],
                    ["under maintenance", snap.get("under_maintenance")],
                    [
                        "inspection",
                        f"due {_local(snap.get('inspection_due_ms'))}: "
                        f"{VALIDITY[snap.get('inspection_valid')]} "
                        f"(last {snap.get('last_inspection') or '—'})",
                    ],
                    [
                        "open hidden dangers",
                        "; ".join(
                            f"{h['hazard_id']} {h['grade']} {h['status']}"
                            for h in snap.get("open_hazards", [])
                        )
                        or "none",
                    ],
                    ["open alerts", ", ".join(snap.get("open_alerts", [])) or "none"],
                ],
                "unit",
            )
        )
    hazards = in_window(result)[1]
    if hazards:
        parts.append("<h3>Hidden-danger changes</h3>")
        parts.append(
            _table(
                ["time", "hazard", "grade", "status", "supervision"],
                [
                    [
                        _local(h.get("updated_at")),
                        h.get("hazard_id"),
                        h.get("grade"),
                        h.get("status"),
                        h.get("supervision"),
                    ]
                    for h in hazards
                ],
                "hazards",
            )
        )

    parts.append("<h2>Audit entries relied on</h2>")
    parts.append(f'<p class="{status_css}">{_esc(first)}</p>')
    if audit.cited:
        parts.append(
            _table(
                ["seq", "hash", "where", "kind", "what", "alert id", "verified", "reproduced by the replay"],
                [
                    [
                        c["seq"],
                        c["hash"],
                        c["file"],
                        c["kind"],
                        c["what"],
                        c["alert_id"],
                        "yes" if c["verified"] else "NO",
                        {True: "yes", False: "no", None: "—"}[c["replayed"]],
                    ]
                    for c in audit.cited
                ],
                "audit",
            )
        )
    if audit.present and audit.missing_in_audit:
        parts.append(
            '<p class="missing">Changes the replay produced that the live audit log does not record: '
            + _esc(", ".join(audit.missing_in_audit))
            + "</p>"
        )
    if result.notes:
        parts.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in result.notes[:100]) + "</ul>"
        )
    parts.append("</body></html>\n")
    path = out_dir / REPORT_HTML
    write_atomically(path, "\n".join(parts).encode())
    return path


__all__ = [
    "AuditFindings",
    "audit_findings",
    "plot_devices",
    "plot_signals",
    "plot_timeline",
    "render_report",
]
