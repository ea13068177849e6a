"""Every catalogue version that ever ran, kept, so a replay runs the rules of the time (issue 12).

Layout under ``<data dir>/catalogue/``::

    <sha256>.yaml       the catalogue file's exact bytes, named by their SHA-256 (content-addressed:
                        a version is written once, however often it is loaded)
    versions.jsonl      one line per load: {"sha256", "version", "loaded_at_ms", "event_time_ms", "path"}

Alerts and hazards carry ``catalogue_sha`` (the first 16 hex digits), so an inspector can name
the exact file that decided them; :func:`catalogue_for` gives that file back compiled, by sha or
by the time it was in effect. ``version`` (the document's own ``version:``) is a label a person
may forget to bump; the sha is not.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from .catalogue import Catalogue, CatalogueError, load_catalogue
from .validate import Problem

STORE_DIR = "catalogue"
INDEX = "versions.jsonl"
SHA_PREFIX = 16  # hex digits of the sha256 that alerts and hazards record


@dataclass(frozen=True)
class CatalogueVersion:
    """One load of a catalogue, as the index records it."""

    sha256: str
    version: str
    loaded_at_ms: int  # wall clock of the load
    event_time_ms: int | None  # the worker's event time (device clock) at the load, when it knew one
    path: str  # where the file was loaded from

    @property
    def effective_ms(self) -> int:
        """When it took effect on the replay's time axis: event time when known, else the wall clock."""
        return self.event_time_ms if self.event_time_ms is not None else self.loaded_at_ms


def store_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / STORE_DIR


def store_catalogue(
    data_dir: Path | str,
    catalogue: Catalogue,
    *,
    event_time_ms: int | None = None,
    loaded_at_ms: int | None = None,
) -> CatalogueVersion:
    """Keep ``catalogue``'s bytes (once per content) and add a line to the index; returns that line.

    The bytes land by write-to-temp and rename, so a reader never sees half a file; the index line
    is one ``write`` in append mode.
    """
    if not catalogue.source or not catalogue.sha256:
        raise ValueError("only a catalogue loaded from a file (load_catalogue) has the bytes to keep")
    if hashlib.sha256(catalogue.source).hexdigest() != catalogue.sha256:
        raise ValueError("the catalogue's bytes do not match its sha256")
    folder = store_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{catalogue.sha256}.yaml"
    if not target.is_file():
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as out:
            out.write(catalogue.source)
            out.flush()
            os.fsync(out.fileno())
        os.replace(out.name, target)
    entry = CatalogueVersion(
        sha256=catalogue.sha256,
        version=catalogue.version,
        loaded_at_ms=int(time.time() * 1000) if loaded_at_ms is None else loaded_at_ms,
        event_time_ms=event_time_ms,
        path=str(catalogue.path or ""),
    )
    line = orjson.dumps(entry.__dict__) + b"\n"
    fd = os.open(folder / INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return entry


def catalogue_versions(data_dir: Path | str) -> list[CatalogueVersion]:
    """Every load recorded, in the order they happened (a torn last line of a crash is left out)."""
    index = store_dir(data_dir) / INDEX
    if not index.is_file():
        return []
    out = []
    for raw in index.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            out.append(CatalogueVersion(**orjson.loads(raw)))
        except (orjson.JSONDecodeError, TypeError):
            continue  # only the last line of a crashed writer can be torn
    return out


def catalogue_for(data_dir: Path | str, sha: str | None = None, at_ms: int | None = None) -> Catalogue:
    """The stored catalogue by ``sha`` (full or a prefix of at least 16 hex digits, as alerts carry it),
    or the one in effect at ``at_ms`` (the last loaded at or before it; before any: the first), or
    with neither the latest. Compiled from the stored bytes, whose hash is checked."""
    folder = store_dir(data_dir)
    if sha is None:
        versions = catalogue_versions(data_dir)
        if not versions:
            raise LookupError(f"no catalogue version is recorded under {folder}")
        chosen = versions[-1]
        if at_ms is not None:
            before = [v for v in versions if v.effective_ms <= at_ms]
            chosen = max(before, key=lambda v: v.effective_ms) if before else versions[0]
        sha = chosen.sha256
    sha = sha.lower()
    if len(sha) < SHA_PREFIX:
        raise ValueError(f"a catalogue sha needs at least {SHA_PREFIX} hex digits, got {sha!r}")
    matches = sorted(folder.glob(f"{sha}*.yaml"))
    if len(matches) != 1:
        what = "no stored catalogue" if not matches else f"{len(matches)} stored catalogues"
        raise LookupError(f"{what} with sha {sha} under {folder}")
    catalogue = load_catalogue(matches[0])
    if catalogue.sha256 != matches[0].stem:  # the stored file was altered: never replay with it
        problem = Problem("catalogue", "", f"its bytes hash to {catalogue.sha256}, not to its name")
        raise CatalogueError(matches[0], [problem])
    return catalogue


__all__ = ["CatalogueVersion", "catalogue_for", "catalogue_versions", "store_catalogue", "store_dir"]
