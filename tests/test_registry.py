"""The fleet registry (DESIGN.md §3): round trip, clear errors, reload on change."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from sesmon.contract.registry import COLUMNS, Registry, RegistryError, write_registry
from sesmon.contract.schemas import Kind
from simulators.fleet import generate_fleet


def test_generated_registry_round_trips(tmp_path: Path) -> None:
    units = generate_fleet(300, 30, seed=7)
    path = tmp_path / "fleet.csv"
    write_registry(units, path)
    registry = Registry.load(path)
    assert len(registry) == 330
    assert registry.get(units[0].device_id) == units[0]
    assert registry.kind_of(units[-1].device_id) == Kind.boiler
    counts = registry.in_use_counts()
    assert sum(counts.values()) == sum(1 for u in units if u.in_use)
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)


def test_every_bad_line_reported_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    good = generate_fleet(2, 0, seed=1)[0].to_row()
    rows = [
        ",".join(COLUMNS),
        ",".join(good[c] for c in COLUMNS),
        ",".join({**good, "device_id": "bad id", "kind": "crane"}[c] for c in COLUMNS),
        ",".join({**good, "rated_speed_mps": "fast"}[c] for c in COLUMNS),
        ",".join(good[c] for c in COLUMNS),  # duplicate of line 2
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        Registry.load(path)
    text = str(info.value)
    assert "line 3, column device_id" in text and "line 3, column kind" in text
    assert "line 4, column rated_speed_mps" in text
    assert "line 5: duplicate device_id" in text
    assert len(info.value.problems) == 4


def test_missing_columns_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "thin.csv"
    path.write_text("device_id,kind\nX,elevator\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="lacks required column"):
        Registry.load(path)
    with pytest.raises(RegistryError, match="file not found"):
        Registry.load(tmp_path / "nope.csv")


def test_reload_on_change_keeps_old_on_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    write_registry(generate_fleet(10, 0, seed=1), path)
    registry = Registry.load(path)
    assert not registry.reload_if_changed()
    write_registry(generate_fleet(20, 0, seed=1), path)
    os.utime(path, ns=(registry.mtime_ns + 10**9, registry.mtime_ns + 10**9))
    assert registry.reload_if_changed() and len(registry) == 20
    path.write_text("device_id,kind,district,firm_id,status\nX,crane,a,b,in_use\n", encoding="utf-8")
    os.utime(path, ns=(registry.mtime_ns + 2 * 10**9,) * 2)
    with pytest.raises(RegistryError):
        registry.reload_if_changed()
    assert len(registry) == 20  # the good registry stays in force


def test_generation_is_deterministic() -> None:
    assert generate_fleet(50, 5, seed=3) == generate_fleet(50, 5, seed=3)
    assert generate_fleet(50, 5, seed=3) != generate_fleet(50, 5, seed=4)


def test_every_kind_of_bad_file_is_a_registry_error(tmp_path: Path) -> None:
    """A reload must be able to catch one exception type for every way a file can be unusable."""
    good = generate_fleet(2, 0, seed=1)[0].to_row()
    oversized = tmp_path / "oversized.csv"
    huge = {**good, "address": "x" * (csv.field_size_limit() + 10)}
    oversized.write_text(
        ",".join(COLUMNS) + "\n" + ",".join(huge[c] for c in COLUMNS) + "\n", encoding="utf-8"
    )
    with pytest.raises(RegistryError, match=r"line 2: not readable as CSV: field larger than field limit"):
        Registry.load(oversized)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"device_id,kind\n\xff\xfe\x00junk\n")
    with pytest.raises(RegistryError, match="not UTF-8"):
        Registry.load(binary)
    directory = tmp_path / "a-directory.csv"
    directory.mkdir()
    with pytest.raises(RegistryError, match="cannot read"):
        Registry.load(directory)
    long_cell = tmp_path / "long-cell.csv"
    bad = {**good, "rated_speed_mps": "9" * 5000}  # within the CSV limit, but no speed
    long_cell.write_text(
        ",".join(COLUMNS) + "\n" + ",".join(bad[c] for c in COLUMNS) + "\n", encoding="utf-8"
    )
    with pytest.raises(RegistryError) as info:
        Registry.load(long_cell)
    assert "line 2, column rated_speed_mps" in str(info.value) and len(str(info.value)) < 500


def test_reload_of_an_oversized_field_keeps_the_registry_and_is_counted_once(tmp_path: Path) -> None:
    """The worker's reload (streams.app.reload_registry_safely): old registry kept, one failure
    counted and shown in the pipeline counters, and a later good file is loaded."""
    from collections import Counter

    from streams.app import reload_registry_safely

    path = tmp_path / "fleet.csv"
    write_registry(generate_fleet(10, 0, seed=1), path)
    registry = Registry.load(path)
    first = next(iter(registry)).device_id
    counters: Counter[str] = Counter()
    huge = {**next(iter(registry)).to_row(), "address": "x" * (csv.field_size_limit() + 1)}
    path.write_text(",".join(COLUMNS) + "\n" + ",".join(huge[c] for c in COLUMNS) + "\n", encoding="utf-8")
    os.utime(path, ns=(registry.mtime_ns + 10**9,) * 2)
    assert not reload_registry_safely(registry, counters)
    assert counters["registry_reload_failures"] == 1
    assert len(registry) == 10 and registry.get(first) is not None  # the old registry is in force
    assert not reload_registry_safely(registry, counters)  # the same bad file: not counted again
    assert counters["registry_reload_failures"] == 1
    write_registry(generate_fleet(25, 0, seed=1), path)
    os.utime(path, ns=(registry.mtime_ns + 2 * 10**9,) * 2)
    assert reload_registry_safely(registry, counters)
    assert len(registry) == 25 and counters["registry_reload_failures"] == 1
    assert counters["registry_reloads"] == 1 and counters["registry_units"] == 25
