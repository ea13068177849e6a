"""Catalogue versions kept (issue 12): every catalogue that ran is stored by its bytes' SHA-256, and
alerts and hazards name the one that decided them, so a replay runs the rules of the time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rules import RuleEngine, load_catalogue
from rules.catalogue import DEFAULT_CATALOGUE, CatalogueError
from rules.catalogue_store import catalogue_for, catalogue_versions, store_catalogue, store_dir
from rules.testing import Run, elevator, tele
from sesmon.runtime.settings import Settings

E = "elevator"


def _two_versions(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped catalogue, and the same with another version label and a tighter threshold."""
    first = tmp_path / "first.yaml"
    first.write_bytes(DEFAULT_CATALOGUE.read_bytes())
    text = DEFAULT_CATALOGUE.read_text(encoding="utf-8")
    version = load_catalogue(first).version
    assert text.count(f"version: {version}") == 1 or text.count(f'version: "{version}"') == 1
    second = tmp_path / "second.yaml"
    second.write_text(text.replace(version, f"{version}-b", 1), encoding="utf-8")
    return first, second


def test_loading_hashes_the_exact_bytes(tmp_path: Path) -> None:
    first, _second = _two_versions(tmp_path)
    catalogue = load_catalogue(first)
    assert catalogue.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    assert catalogue.catalogue_sha == catalogue.sha256[:16] and catalogue.source == first.read_bytes()


def test_store_keeps_both_versions_and_finds_them_by_sha_and_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first_path, second_path = _two_versions(tmp_path)
    first, second = load_catalogue(first_path), load_catalogue(second_path)
    assert first.sha256 != second.sha256
    store_catalogue(data, first, loaded_at_ms=1_000, event_time_ms=900)
    store_catalogue(data, second, loaded_at_ms=5_000, event_time_ms=4_900)
    store_catalogue(data, first, loaded_at_ms=9_000)  # a restart on the first again: no second copy
    stored = sorted(p.name for p in store_dir(data).glob("*.yaml"))
    assert stored == sorted(f"{c.sha256}.yaml" for c in (first, second))
    assert (store_dir(data) / f"{first.sha256}.yaml").read_bytes() == first_path.read_bytes()
    versions = catalogue_versions(data)
    assert [(v.sha256, v.version, v.loaded_at_ms, v.event_time_ms) for v in versions] == [
        (first.sha256, first.version, 1_000, 900),
        (second.sha256, second.version, 5_000, 4_900),
        (first.sha256, first.version, 9_000, None),
    ]
    assert versions[0].path == str(first_path)
    # by the sha an alert carries (16 hex digits) or in full
    assert catalogue_for(data, sha=second.catalogue_sha).version == second.version
    assert catalogue_for(data, sha=first.sha256).sha256 == first.sha256
    # by time: the one in effect then (event time where known, else the wall clock of the load)
    assert catalogue_for(data, at_ms=4_899).sha256 == first.sha256
    assert catalogue_for(data, at_ms=4_900).sha256 == second.sha256
    assert catalogue_for(data, at_ms=8_999).sha256 == second.sha256
    assert catalogue_for(data, at_ms=9_000).sha256 == first.sha256
    assert catalogue_for(data, at_ms=0).sha256 == first.sha256  # before any: the first
    assert catalogue_for(data).sha256 == first.sha256  # the latest
    with pytest.raises(LookupError):
        catalogue_for(data, sha="0" * 16)
    with pytest.raises(ValueError, match="16 hex"):
        catalogue_for(data, sha=first.sha256[:8])
    # a stored file altered afterwards is refused, never replayed with
    (store_dir(data) / f"{second.sha256}.yaml").write_bytes(first_path.read_bytes())
    with pytest.raises(CatalogueError, match="hash"):
        catalogue_for(data, sha=second.catalogue_sha)


def test_alerts_and_hazards_carry_the_catalogue_sha(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first_path, second_path = _two_versions(tmp_path)
    store_catalogue(data, load_catalogue(first_path))
    store_catalogue(data, load_catalogue(second_path))
    for path in (first_path, second_path):
        catalogue = catalogue_for(data, sha=load_catalogue(path).catalogue_sha)
        run = Run(RuleEngine(catalogue=catalogue), elevator())
        idle = dict(moving=False, door="open", door_zone=True, occupied=True, speed_mps=0.0, mode="normal")
        run.feed(
            tele(E, "E1", 0, 1, **idle),
            tele(E, "E1", 1, 2, **{**idle, "moving": True, "speed_mps": 0.5}),  # 开门走车
        )
        run.feed(tele(E, "E1", 3, 3, **idle))
        run.tick()
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        assert run.alerts and {a.catalogue_sha for a in run.alerts} == {sha}
        assert run.hazards and {h.catalogue_sha for h in run.hazards} == {sha}
        assert all(a.rule_version == catalogue.version for a in run.alerts)
        assert "catalogue_sha" in run.alerts[0].model_dump(mode="json")


def test_the_worker_records_the_catalogue_it_runs(settings: Settings) -> None:
    from streams.app import create_app

    engine = RuleEngine()
    create_app(settings, None, engine)
    (version,) = catalogue_versions(settings.data_dir)
    assert version.sha256 == engine.catalogue.sha256 and version.version == engine.version
    assert version.event_time_ms is None and version.path == str(DEFAULT_CATALOGUE)
    assert catalogue_for(settings.data_dir).sha256 == engine.catalogue.sha256
