"""Who may say what: MQTT usernames, the roles they carry, and the topics that name them.

The broker authenticates (password file) and authorises topics (ACL file), both written by
``sesmon mqtt credentials``. A subscriber cannot see who published a message, so on a secure
broker reports and dispatch actions are published on topics that end with the publisher's
username, which the ACL lets only that user write:

    sesmon/v1/reports/{report}/{username}
    sesmon/v1/dispatch/{alert_id}/{username}

Ingest reads the principal from that last level and checks what it may report
(:func:`report_refusal`). On an open broker (``mqtt_require_identity`` false) the old
topics without a username keep working, as DESIGN.md §2 promises old publishers.

Usernames (the role is in the name, so ingest needs no password file to know it):

| username            | role        | may                                                       |
|---------------------|-------------|-----------------------------------------------------------|
| ``{device_id}``     | device      | publish under its own device topics only; read nothing    |
| ``firm-{firm_id}``  | firm        | read own alerts/hazards; report maintenance, rectified; dispatch |
| ``inspector-{id}``  | inspector   | report inspections, accidents; verify hazards; dispatch   |
| ``operator[-{id}]`` | operator    | read all alerts and hazards; publish reports and dispatch |
| ``sesmon-ingest``   | ingest      | read device, report and dispatch topics                   |
| ``sesmon-alerts``   | alerts      | publish alerts and hazards                                |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sesmon.contract.schemas import FIRM_HAZARD_ACTIONS, INSPECTOR_HAZARD_ACTIONS

Role = Literal["device", "firm", "inspector", "operator", "ingest", "alerts"]

STAGE_USERS: dict[str, Role] = {"sesmon-ingest": "ingest", "sesmon-alerts": "alerts"}
#: the people's accounts a fresh install gets: the 96333 centre's operator and one inspector
OPERATOR = "operator"
INSPECTOR = "inspector-1"
ROLE_PREFIXES: dict[str, Role] = {"firm-": "firm", "inspector-": "inspector", "operator-": "operator"}


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    id: str  # device id, firm id, inspector id, operator name or stage name


def principal_of(username: str) -> Principal:
    """The role a username carries (see the table above)."""
    if username in STAGE_USERS:
        return Principal(username, STAGE_USERS[username], username)
    if username == "operator":
        return Principal(username, "operator", "operator")
    for prefix, role in ROLE_PREFIXES.items():
        if username.startswith(prefix) and len(username) > len(prefix):
            return Principal(username, role, username[len(prefix) :])
    return Principal(username, "device", username)


def firm_username(firm_id: str) -> str:
    return f"firm-{firm_id}"


def report_refusal(
    principal: Principal, report: str, body: dict[str, object], unit_firm_id: str | None
) -> str | None:
    """Why ``principal`` may not publish this report (None: it may).

    ``unit_firm_id`` is the maintenance firm the registry names for the report's unit.
    """
    role = principal.role
    if role == "operator":
        return None
    if report == "maintenance":
        if role == "firm" and unit_firm_id is not None and principal.id == unit_firm_id:
            return None
        return f"{principal.username} is not the maintenance firm of this unit ({unit_firm_id})"
    if report == "hazard":
        action = body.get("action")
        own_firm = role == "firm" and principal.id == unit_firm_id
        if action in FIRM_HAZARD_ACTIONS and own_firm:
            return None
        if action in INSPECTOR_HAZARD_ACTIONS and role == "inspector":
            return None
        return f"{principal.username} ({role}) may not report hazard action {action!r}"
    if report in ("inspection", "accident"):
        return None if role == "inspector" else f"{principal.username} ({role}) may not report {report}"
    return f"unknown report {report!r}"


def dispatch_refusal(principal: Principal, unit_firm_id: str | None) -> str | None:
    """Why ``principal`` may not act on an alert of a unit maintained by ``unit_firm_id``."""
    if principal.role in ("operator", "inspector"):
        return None
    if principal.role == "firm" and principal.id == unit_firm_id:
        return None
    return f"{principal.username} ({principal.role}) may not act on this unit's alerts"
