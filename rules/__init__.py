"""Risk rules for sesmon: the catalogue (YAML, versioned, validated), the engine and hidden dangers.

Pure Python with no Kafka, Faust or network import, so it is unit-testable and replayable
(DESIGN.md §1). The Faust worker in ``streams/`` calls :class:`RuleEngine` and stores the
returned ``Outcome.state`` per device.
"""

from .catalogue import Catalogue, CatalogueError, Rule, load_catalogue
from .engine import Outcome, RuleEngine
from .hazards import (
    Hazard,
    HazardBook,
    RectificationRate,
    apply_hazard_report,
    hazard_device_id,
    hazard_id_for,
    mark_overdue,
    rectification_rate,
    transition,
)

__all__ = [
    "Catalogue",
    "CatalogueError",
    "Hazard",
    "HazardBook",
    "Outcome",
    "RectificationRate",
    "Rule",
    "RuleEngine",
    "apply_hazard_report",
    "hazard_device_id",
    "hazard_id_for",
    "load_catalogue",
    "mark_overdue",
    "rectification_rate",
    "transition",
]
