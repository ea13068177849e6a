"""Who is paged (DESIGN.md §4): the one definition, used by the rules and the alerts stage.

- An alert goes to the unit's maintenance firm and its user unit (使用单位).
- The 96333 centre is the *elevator* emergency platform: it gets an elevator alert when the
  rule says so (a trapped passenger, an unsafe car); never a boiler's, which the boiler's own
  responders (firm, user unit) handle.
- The district regulator gets what a rule marks for it.
- A hidden danger goes to the firm that must rectify it, and to the district regulator when
  it is major or suspected major: a suspected major must be confirmed on site (GB 45067-2024).
"""

from __future__ import annotations

from sesmon.contract.schemas import Alert, Kind, Level, Receiver


def alert_receivers(
    kind: Kind | str,
    *,
    firm_id: str,
    user_unit_id: str,
    district: str,
    centre: bool,
    regulator: bool,
    centre_id: str,
) -> list[Receiver]:
    """The receivers of an alert on a unit of ``kind`` (``centre``/``regulator``: the rule's flags)."""
    out = []
    if firm_id:
        out.append(Receiver(kind="firm", id=firm_id))
    if user_unit_id:
        out.append(Receiver(kind="user_unit", id=user_unit_id))
    if centre and kind == Kind.elevator:
        out.append(Receiver(kind="centre", id=centre_id))
    if regulator and district:
        out.append(Receiver(kind="regulator", id=f"district:{district}"))
    return out


def receivers_of(alert: Alert, centre_id: str) -> list[Receiver]:
    """An alert's receivers: as the rules listed them, or (an alert from elsewhere) the defaults,
    with 96333 for an elevator P1."""
    if alert.receivers:
        return alert.receivers
    return alert_receivers(
        alert.kind,
        firm_id=alert.firm_id,
        user_unit_id=alert.user_unit_id,
        district=alert.district,
        centre=alert.level == Level.P1,
        regulator=False,
        centre_id=centre_id,
    )


def hazard_receivers(firm_id: str, district: str, grade: str) -> list[Receiver]:
    """A hidden danger's receivers: the firm, and the district regulator if (suspected) major."""
    out = [Receiver(kind="firm", id=firm_id)] if firm_id else []
    if grade in ("major", "suspected_major") and district:
        out.append(Receiver(kind="regulator", id=f"district:{district}"))
    return out
