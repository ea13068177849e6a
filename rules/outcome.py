"""What one ``process`` or ``tick`` call produced (the worker's side of the contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sesmon.contract.schemas import Alert

from .hazards import Hazard
from .state import UnitState


@dataclass(slots=True, init=False)
class Outcome:
    """``state`` is the unit's new state: store it back (it serialises to compact JSON)."""

    state: UnitState | dict[str, Any]  # {} when the message concerned no unit
    alerts: list[Alert]  # state changes only (firing / resolved)
    hazards: list[Hazard]  # new or changed hidden dangers
    late_dropped: int
    late: list[dict[str, Any]]  # readings beyond the lateness bound, for the worker to record
    duplicates: int
    suppressed: int  # alert openings held back by suppression or inhibition
    evaluated: int  # telemetry readings evaluated (released from the reorder buffer)
    rejected: list[str]  # messages or reports that changed nothing, with why

    def __init__(
        self,
        state: UnitState | dict[str, Any],
        alerts: list[Alert] | None = None,
        hazards: list[Hazard] | None = None,
        late_dropped: int = 0,
        late: list[dict[str, Any]] | None = None,
        duplicates: int = 0,
        suppressed: int = 0,
        evaluated: int = 0,
        rejected: list[str] | None = None,
    ) -> None:
        # hand-written: a dataclass __init__ with default factories costs twice as much per reading
        self.state = state
        self.alerts = [] if alerts is None else alerts
        self.hazards = [] if hazards is None else hazards
        self.late_dropped = late_dropped
        self.late = [] if late is None else late
        self.duplicates = duplicates
        self.suppressed = suppressed
        self.evaluated = evaluated
        self.rejected = [] if rejected is None else rejected
