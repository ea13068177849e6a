"""Print the rule catalogue as a table for inspectors: ``python -m rules [catalogue.yaml]``.

With ``--unit`` values (``--rated-speed 1.75 --rated-pressure 1.25 --valve-set 1.3``) the
registry-dependent thresholds are shown as they apply to such a unit.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from .catalogue import load_catalogue


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rules", description=__doc__.splitlines()[0])
    ap.add_argument("catalogue", nargs="?", default=None)
    ap.add_argument("--rated-speed", type=float, default=None, help="elevator rated speed, m/s")
    ap.add_argument("--floors", type=int, default=None)
    ap.add_argument("--rated-pressure", type=float, default=None, help="boiler rated pressure, MPa")
    ap.add_argument("--valve-set", type=float, default=None, help="lower safety-valve set pressure, MPa")
    args = ap.parse_args(argv)
    cat = load_catalogue(args.catalogue)
    unit = SimpleNamespace(
        rated_speed_mps=args.rated_speed,
        floors=args.floors,
        rated_pressure_mpa=args.rated_pressure,
        safety_valve_set_mpa=args.valve_set,
        rated_load_kg=None,
        capacity_tph=None,
        capacity_mw=None,
    )
    print(f"sesmon rule catalogue {cat.version} ({cat.path}), {len(cat.rules)} rules")
    s = cat.settings
    print(
        f"lateness bound {s.get('lateness_s')} s; offline after {s.get('offline_after_heartbeats')} × "
        f"{s.get('heartbeat_s')} s heartbeat; flapping: {s.get('flap')}"
    )
    for r in cat.rules:
        print(f"\n[{r.level}] {r.id}  ({r.kind}, {r.ctype})  {r.title}")
        if r.when_src:
            print(f"    when   {r.when_src}")
        if r.clear_src:
            print(f"    clear  {r.clear_src}")
        if r.params:
            print("    params " + ", ".join(f"{p.name}={p.resolve(unit):g}" for p in r.params))
        if r.for_ms is not None and r.for_ms.resolve(unit):
            print(f"    for    {r.for_ms.resolve(unit) / 1000:g} s")
        if r.events:
            print(f"    events {', '.join(r.events)}")
        if r.suppress or r.inhibited_by:
            print(f"    quiet  suppress={sorted(r.suppress)} inhibited_by={list(r.inhibited_by)}")
        if r.hazard is not None:
            print(
                f"    hazard {r.hazard.grade} '{r.hazard.source}', rectify within {r.hazard.deadline_days} d"
            )


if __name__ == "__main__":
    main()
