"""Routing as data (issue 10): who is paged for an alert, read from a YAML file that can change
without a release.

The file (``alerts/routing.yaml`` is the shipped default; ``SESMON_ALERTS_ROUTING_FILE`` another)
maps an alert to receiver KINDS with ordered routes; the receiver IDS come from the unit's
registry row, so a firm change in the registry re-routes without touching this file:

- ``firm``, ``user_unit``: the row's ``firm_id`` / ``user_unit_id``;
- ``regulator``: ``district:<the row's district>``;
- ``centre``: the 96333 centre (``SESMON_CENTRE_ID``);
- ``rescue``: the station nearest the row's coordinates (``alerts/stations.py``), else the
  district's station;
- ``fire``: ``fire.by_district[district]`` or ``fire.default`` (119).

Without a registry row the alert record's own fields (``firm_id``, ``user_unit_id``,
``district``) and receivers list are used. A route's ``centre: rule`` means "if the alert's rule
marked it": the rules carry their catalogue flags (``centre:``, ``regulator:``) in the alert's
receivers list, so the flags stay the catalogue's to set.

The file also names each receiver's webhook endpoints; a secret is read from the environment
variable the file names, never written in the file.

A file is validated whole (pydantic, unknown keys refused): every problem is reported at once
with the file, line, route and key, and :class:`RoutingWatcher` keeps the table in force when a
changed file is broken.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.stations import DEFAULT_STATIONS, Stations, StationsError
from sesmon.contract.problems import DocumentError
from sesmon.contract.registry import Unit
from sesmon.contract.schemas import Alert, Kind, Level, Receiver
from sesmon.runtime.settings import Settings

log = logging.getLogger("sesmon.alerts.routing")

DEFAULT_ROUTING = Path(__file__).with_name("routing.yaml")
#: receiver kinds in the order a route lists them (and the MQTT topic level: sesmon/v1/alerts/{kind}/{id})
RECEIVER_KINDS = ("firm", "user_unit", "centre", "rescue", "fire", "regulator")
ReceiverKind = Literal["firm", "user_unit", "centre", "rescue", "fire", "regulator"]
#: ``always``, or ``rule``: only when the alert's rule marked this receiver (kinds a rule can list)
When = Literal["always", "rule"]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_URL_FIELD = re.compile(r"\{([^{}]*)\}")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RoutingError(DocumentError):
    """The routing file is unusable; ``problems`` lists everything found (file, line, route, key)."""

    what = "routing file"
    shown_max = 30


# --------------------------------------------------------------------------- the file's shape


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_or_many(value: Any) -> Any:
    """``kind: elevator`` and ``kind: [elevator, boiler]`` both allowed."""
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


class Match(_Strict):
    """When a route applies: every key given must hold (a list means any of its values)."""

    kind: list[Kind] | None = None
    level: list[Level] | None = None
    rule: list[str] | None = Field(None, description="rule ids, shell globs allowed: elevator.*")
    state: list[Literal["firing", "resolved"]] | None = None
    district: list[str] | None = None
    min_escalation: int | None = Field(None, ge=0, le=3, description="the incident's escalation >= this")
    sla_breach: bool | None = None
    accident: bool | None = None

    _lists = field_validator("kind", "level", "rule", "state", "district", mode="before")(_one_or_many)

    def holds(self, alert: Alert, district: str, escalation: int, sla_breach: bool, accident: bool) -> bool:
        return (
            (self.kind is None or alert.kind in self.kind)
            and (self.level is None or alert.level in self.level)
            and (self.rule is None or any(fnmatch.fnmatchcase(alert.rule, glob) for glob in self.rule))
            and (self.state is None or alert.state in self.state)
            and (self.district is None or district in self.district)
            and (self.min_escalation is None or escalation >= self.min_escalation)
            and (self.sla_breach is None or sla_breach == self.sla_breach)
            and (self.accident is None or accident == self.accident)
        )


class Receivers(_Strict):
    """Receiver kinds a route adds (rescue and fire are the escalation's, never a rule's)."""

    firm: When | None = None
    user_unit: When | None = None
    centre: When | None = None
    rescue: Literal["always"] | None = None
    fire: Literal["always"] | None = None
    regulator: When | None = None

    def kinds(self) -> list[tuple[str, str]]:
        return [(k, w) for k in RECEIVER_KINDS if (w := getattr(self, k)) is not None]


class Route(_Strict):
    name: str = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    receivers: Receivers
    stop: bool = Field(False, description="no later route is looked at when this one matched")

    @model_validator(mode="after")
    def _sane(self) -> Route:
        if not self.receivers.kinds():
            raise ValueError("receivers: lists no receiver kind")
        if self.receivers.centre is not None and self.match.kind != [Kind.elevator]:
            raise ValueError(
                "receivers.centre: 96333 is the elevator emergency platform; a route that pages it "
                "must match kind: elevator (a boiler's alerts go to its own responders)"
            )
        return self


class Fire(_Strict):
    default: str = Field("119", min_length=1)
    by_district: dict[str, str] = Field(default_factory=dict)


class Webhook(_Strict):
    """An HTTP endpoint for one receiver kind, or (with ``id``) for one receiver."""

    kind: ReceiverKind
    id: str | None = Field(None, min_length=1)
    url: str = Field(description="http(s) URL; {id} and {kind} are replaced by the receiver's")
    secret_env: str = Field(pattern=_ENV_NAME, description="environment variable holding the HMAC secret")
    timeout_s: float | None = Field(None, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        bad = [f for f in _URL_FIELD.findall(url) if f not in ("id", "kind")]
        if bad:
            raise ValueError(f"only {{id}} and {{kind}} may be filled in, not {{{bad[0]}}}")
        parts = urlsplit(_URL_FIELD.sub("x", url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        return url


class RoutingDoc(_Strict):
    version: Literal[1]
    fire: Fire = Field(default_factory=Fire)
    routes: list[Route] = Field(min_length=1)
    webhooks: list[Webhook] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> RoutingDoc:
        names = [r.name for r in self.routes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"route names must be unique: {', '.join(twice)}")
        return self


# --------------------------------------------------------------------------- targets and the table


@dataclass(frozen=True)
class WebhookTarget:
    """One endpoint a page is POSTed to; ``key`` (the URL) names its delivery queue."""

    receiver: str  # "kind/id" it delivers for (logs, audit)
    url: str
    secret: bytes = field(repr=False)
    timeout_s: float | None = None

    @property
    def key(self) -> str:
        return self.url


def _marked(alert: Alert, kind: str) -> bool:
    """Did the alert's rule mark this receiver? Its receivers list says so; an alert without one
    (not from the rules) gets today's defaults: firm, user unit, and 96333 for a P1."""
    if alert.receivers:
        return any(r.kind == kind for r in alert.receivers)
    return kind in ("firm", "user_unit") or (kind == "centre" and alert.level == Level.P1)


def _listed(alert: Alert, kind: str) -> str:
    return next((r.id for r in alert.receivers if r.kind == kind), "")


@dataclass
class RoutingTable:
    doc: RoutingDoc
    centre_id: str
    stations: Stations
    secrets: dict[str, bytes] = field(repr=False)
    path: Path | None = None

    def __post_init__(self) -> None:
        # (match, receiver kinds, stop) per route, computed once: receivers() runs for every change
        self._plan = [(r.match, tuple(r.receivers.kinds()), r.stop) for r in self.doc.routes]
        self._targets: dict[tuple[str, str], list[WebhookTarget]] = {}
        self._exact: dict[tuple[str, str], list[Webhook]] = {}
        self._by_kind: dict[str, list[Webhook]] = {}
        for hook in self.doc.webhooks:
            if hook.id is None:
                self._by_kind.setdefault(hook.kind, []).append(hook)
            else:
                self._exact.setdefault((hook.kind, hook.id), []).append(hook)

    # ---- loading
    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        *,
        centre_id: str = "96333",
        stations: Stations | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RoutingTable:
        """Read and validate a routing file; raises :class:`RoutingError` with every problem."""
        path = Path(path) if path is not None else DEFAULT_ROUTING
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RoutingError(path, ["file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RoutingError(path, [f"cannot read: {exc}"]) from None
        return cls.parse(text, path, centre_id=centre_id, stations=stations, env=env)

    @classmethod
    def parse(
        cls,
        text: str,
        path: Path | str = "<text>",
        *,
        centre_id: str = "96333",
        stations: Stations | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RoutingTable:
        raw, lines, problems = _read_yaml(text, path)
        if problems:
            raise RoutingError(path, problems)
        try:
            doc = RoutingDoc.model_validate(raw)
        except ValidationError as exc:
            raise RoutingError(path, _explain(exc, raw, lines, path)) from None
        env = os.environ if env is None else env
        secrets: dict[str, bytes] = {}
        for i, hook in enumerate(doc.webhooks):
            secret = env.get(hook.secret_env, "")
            if not secret:
                who = f"{hook.kind}/{hook.id}" if hook.id else hook.kind
                where = _where(path, lines, ("webhooks", i))
                problems.append(f"{where}webhook {i + 1} ({who}): secret_env {hook.secret_env} is not set")
            secrets[hook.secret_env] = secret.encode()
        if problems:
            raise RoutingError(path, problems)
        return cls(doc, centre_id, stations if stations is not None else Stations.load(), secrets, Path(path))

    # ---- routing
    def receivers(
        self,
        alert: Alert,
        unit: Unit | None,
        *,
        escalation: int | None = None,
        sla_breach: bool = False,
        accident: bool = False,
    ) -> list[Receiver]:
        """Who is paged for ``alert`` at this escalation (default: the alert's own), in route order."""
        level = alert.escalation if escalation is None else escalation
        district = (unit.district if unit else "") or alert.district
        out: dict[tuple[str, str], Receiver] = {}
        for match, kinds, stop in self._plan:
            if not match.holds(alert, district, level, sla_breach, accident):
                continue
            for kind, when in kinds:
                if when == "rule" and not _marked(alert, kind):
                    continue
                receiver_id = self._receiver_id(kind, alert, unit, district)
                if receiver_id and (kind, receiver_id) not in out:
                    out[(kind, receiver_id)] = Receiver(kind=kind, id=receiver_id)  # type: ignore[arg-type]
            if stop:
                break
        return list(out.values())

    def _receiver_id(self, kind: str, alert: Alert, unit: Unit | None, district: str) -> str:
        if kind == "firm":
            return (unit.firm_id if unit else "") or alert.firm_id or _listed(alert, kind)
        if kind == "user_unit":
            return (unit.user_unit_id if unit else "") or alert.user_unit_id or _listed(alert, kind)
        if kind == "centre":
            return self.centre_id
        if kind == "regulator":
            return f"district:{district}" if district else _listed(alert, kind)
        if kind == "fire":
            return self.doc.fire.by_district.get(district, self.doc.fire.default)
        # rescue: the nearest station; the district's when the unit has no coordinates
        station = self.stations.nearest(unit.lat if unit else None, unit.lon if unit else None, district)
        if station is None:
            log.warning(
                "alert %s: no rescue station for district %r and no coordinates", alert.alert_id, district
            )
            return ""
        return station.id

    def webhooks_for(self, receiver: Receiver) -> list[WebhookTarget]:
        """The receiver's endpoints: its own entries if the file has any, else its kind's (kept per
        receiver: the stage asks for every page)."""
        key = (receiver.kind, receiver.id)
        targets = self._targets.get(key)
        if targets is None:
            if len(self._targets) >= 100_000:
                self._targets.clear()
            targets = self._targets[key] = self._webhooks_for(receiver)
        return targets

    def _webhooks_for(self, receiver: Receiver) -> list[WebhookTarget]:
        hooks = self._exact.get((receiver.kind, receiver.id)) or self._by_kind.get(receiver.kind, [])
        return [
            WebhookTarget(
                receiver=f"{receiver.kind}/{receiver.id}",
                url=hook.url.replace("{id}", quote(receiver.id, safe="")).replace("{kind}", receiver.kind),
                secret=self.secrets[hook.secret_env],
                timeout_s=hook.timeout_s,
            )
            for hook in hooks
        ]


def check_routing(
    path: Path | str,
    *,
    centre_id: str = "96333",
    stations_path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Every problem of a routing file (and the stations file it would use); empty when usable.

    For ``sesmon alerts routing-check FILE``: check a change before putting it in place.
    """
    try:
        stations = Stations.load(stations_path)
    except StationsError as exc:
        return [f"stations {exc.path}: {p}" for p in exc.problems]
    try:
        RoutingTable.load(path, centre_id=centre_id, stations=stations, env=env)
    except RoutingError as exc:
        return list(exc.problems)
    return []


# --------------------------------------------------------------------------- reload on change


class RoutingWatcher:
    """The table in force, reloaded when the routing or stations file changes (mtime and size).

    Polled from the stage's own loop (no thread). A broken new version is logged, counted in
    ``rejected`` and otherwise ignored until the file changes again: the previous table stays.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        centre_id: str = "96333",
        stations_path: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path is not None else DEFAULT_ROUTING
        self.stations_path = Path(stations_path) if stations_path is not None else DEFAULT_STATIONS
        self.centre_id = centre_id
        self.env = env
        self.every_s = every_s
        self.clock = clock
        self.reloads = 0  # new versions put in force
        self.rejected = 0  # broken versions refused
        self.last_error = ""
        self._signature = self._stat()
        self._rejected_signature: tuple[Any, ...] | None = None
        self._next_poll = clock() + every_s
        self.table = self._load()  # a stage must not start on a broken file: this raises

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RoutingWatcher:
        return cls(
            settings.alerts_routing_file,
            centre_id=settings.centre_id,
            stations_path=settings.alerts_stations_file,
            **kwargs,
        )

    def _stat(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for path in (self.path, self.stations_path):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _load(self) -> RoutingTable:
        stations = Stations.load(self.stations_path)
        return RoutingTable.load(self.path, centre_id=self.centre_id, stations=stations, env=self.env)

    def poll(self, force: bool = False) -> bool:
        """Reload if a file changed (at most every ``every_s``); True when a new table is in force."""
        now = self.clock()
        if not force and now < self._next_poll:
            return False
        self._next_poll = now + self.every_s
        signature = self._stat()
        if None in signature:
            return False  # being replaced, or gone: keep what is in force
        if signature in (self._signature, self._rejected_signature):
            return False
        try:
            table = self._load()
        except (RoutingError, StationsError) as exc:
            self._rejected_signature = signature
            self.rejected += 1
            self.last_error = str(exc)
            log.error("routing not reloaded, the previous table stays in force: %s", exc)
            return False
        self.table, self._signature, self._rejected_signature = table, signature, None
        self.reloads += 1
        self.last_error = ""
        log.info("routing reloaded from %s (%d routes)", self.path, len(table.doc.routes))
        return True


# --------------------------------------------------------------------------- YAML with lines


def _read_yaml(text: str, path: Path | str) -> tuple[Any, dict[tuple[Any, ...], int], list[str]]:
    """The document, the line of every key and list item (1-based), and structural problems
    (YAML syntax, a key given twice: PyYAML would silently keep the last one)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}: " if mark is not None else f"{path}: "
        return None, {}, [f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"]
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[str] = []
    _walk(node, (), lines, problems, path)
    if data is None:
        problems.append(f"{path}: the file is empty")
    return data, lines, problems


def _walk(
    node: Any, at: tuple[Any, ...], lines: dict[tuple[Any, ...], int], problems: list[str], path: Any
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(f"{path} line {line}: {_dotted((*at, key))}: key given twice")
            seen.add(key)
            lines[(*at, key)] = line
            _walk(value, (*at, key), lines, problems, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*at, i)] = item.start_mark.line + 1
            _walk(item, (*at, i), lines, problems, path)


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _where(path: Any, lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> str:
    """``file line N: `` for the deepest part of ``loc`` that has a line."""
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return f"{path} line {lines[loc[:cut]]}: "
    return f"{path}: "


def _explain(exc: ValidationError, raw: Any, lines: dict[tuple[Any, ...], int], path: Any) -> list[str]:
    """pydantic's errors as 'file line N: route 3 (name): match.levl: unknown key'."""
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (a typo?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif not isinstance(err.get("input"), dict | list):
            msg = f"{msg} (got {err.get('input')!r})"
        where = _where(path, lines, loc)
        if len(loc) >= 2 and loc[0] in ("routes", "webhooks") and isinstance(loc[1], int):
            item = (
                raw[loc[0]][loc[1]] if isinstance(raw, dict) and isinstance(raw.get(loc[0]), list) else None
            )
            label = "route" if loc[0] == "routes" else "webhook"
            name = f" {item.get('name')!r}" if isinstance(item, dict) and item.get("name") else ""
            key = _dotted(loc[2:]) or "(the entry itself)"
            line = f"{where}{label} {loc[1] + 1}{name}: {key}: {msg}"
        else:
            line = f"{where}{_dotted(loc) or '(document)'}: {msg}"
        if line not in out:
            out.append(line)
    return out
