"""The scripts' head revisions without importing every revision script.

Alembic imports all revision scripts to know the heads: ~650 ms for 1,000 revisions, paid by every replica
at every start even when there is nothing to do. Here the heads come from a small cache file keyed on the
version files' names, sizes and modification times, or, when that is stale, from each file's
``revision = ...`` / ``down_revision = ...`` header lines. Anything unusual (a header that is not a plain
literal, a ``down_revision`` naming no known revision, sourceless or recursive version locations) returns
None, and the caller falls back to Alembic's full load. The result is only ever used to decide that there
is *nothing* to do (the no-op startup check, a replica waiting for another one's upgrade) and, with the
database at a head, to print that head's line for ``current`` as Alembic would: any work goes through
Alembic's own view of the scripts.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if (
    TYPE_CHECKING
):  # Alembic is imported only by callers that already loaded it: this module runs without
    from alembic.script import ScriptDirectory

CACHE_FILE = ".async_migrate-heads.json"
CACHE_FORMAT = 4

# Alembic's own rule for which files in a versions folder are revision scripts.
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_HEADER = re.compile(
    r"^(revision|down_revision|depends_on)\s*(?::[^=\n]*)?=\s*(.+?)\s*(?:#.*)?$", re.MULTILINE
)


@dataclass(frozen=True)
class Heads:
    """The scripts' heads; how ``alembic current`` shows each of them when the database is there
    (``"abc123 (head)"``), or None when that is not known without a full load; and every revision id of
    the scripts (so that a database at a revision no script has is refused without a full load)."""

    heads: tuple[str, ...]
    current_lines: dict[str, str] | None
    revisions: frozenset[str]


def locations_of(script: ScriptDirectory) -> list[str] | None:
    """The version folders of a loaded ScriptDirectory; None for layouts this module does not handle."""
    if script.sourceless or script.recursive_version_locations:
        return None
    return [str(location) for location in script._version_locations]


def _version_files(locations: Sequence[str]) -> list[tuple[int, os.DirEntry[str]]]:
    files: list[tuple[int, os.DirEntry[str]]] = []
    for number, location in enumerate(locations):
        try:
            with os.scandir(location) as entries:
                files.extend(
                    (number, entry)
                    for entry in entries
                    if _REVISION_FILE.match(entry.name) and entry.is_file()
                )
        except FileNotFoundError:
            continue
    return files


def settled_files(
    locations: Sequence[str], fingerprint: str, settled_s: float
) -> frozenset[str] | None:
    """The paths of the version files, in one scan, when they still have ``fingerprint`` and none of
    them (nor a folder) changed in the last ``settled_s`` seconds; else None."""
    files = _version_files(locations)
    if _fingerprint(files) != fingerprint:
        return None
    times = [entry.stat().st_mtime for _, entry in files]  # DirEntry caches the stat
    for location in locations:
        with contextlib.suppress(OSError):
            times.append(os.stat(location).st_mtime)
    if max(times, default=0.0) > time.time() - settled_s:
        return None
    return frozenset(entry.path for _, entry in files)


def version_paths(locations: Sequence[str]) -> frozenset[str]:
    """The paths of the revision scripts in the version folders."""
    return frozenset(entry.path for _, entry in _version_files(locations))


def _fingerprint(files: list[tuple[int, os.DirEntry[str]]]) -> str:
    # One stat per file is the floor (an edited script must change the fingerprint); the rest is kept to
    # one pass and one hash call, since this runs at every start. Folders are named by position, not
    # path: "./migrations" and "migrations" are the same scripts. The change time and inode are in it
    # because a rewrite can keep the size and the modification time (builds with fixed mtimes,
    # ``touch -r``), but not those.
    lines = []
    for number, entry in files:
        stat = entry.stat()
        lines.append(
            f"{number}\0{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
            f"\0{stat.st_ino}\n"
        )
    lines.sort()
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def headers(locations: Sequence[str]) -> list[tuple[str, dict[str, object]]]:
    """``(file name, {"revision": ..., "down_revision": ..., "depends_on": ...})`` of each version file,
    as far as its header lines are plain literals: for naming the scripts in an error message."""
    found = []
    for _, entry in _version_files(locations):
        try:
            with open(entry.path, encoding="utf-8") as handle:
                text = handle.read(8192)
        except (OSError, UnicodeDecodeError):
            continue
        found.append((entry.name, header_values(text)))
    return sorted(found)


def header_values(text: str) -> dict[str, object]:
    """The ``revision``, ``down_revision`` and ``depends_on`` of a script's text, as far as they are
    plain literals."""
    values: dict[str, object] = {}
    for name, value in _HEADER.findall(text[:8192]):
        with contextlib.suppress(ValueError, SyntaxError):
            values.setdefault(name, ast.literal_eval(value))
    return values


def _from_headers(files: list[tuple[int, os.DirEntry[str]]]) -> Heads | None:
    revisions: set[str] = set()
    parents: set[str] = set()
    merges: set[str] = set()
    has_dependencies = False
    for _, entry in files:
        try:
            with open(entry.path, encoding="utf-8") as handle:
                text = handle.read(8192)
        except (OSError, UnicodeDecodeError):
            return None
        found: dict[str, object] = {}
        for name, value in _HEADER.findall(text):
            if name in found:
                return None
            try:
                found[name] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return None
        revision = found.get("revision")
        down = found.get("down_revision", ...)
        if not isinstance(revision, str) or revision in revisions or down is ...:
            return None
        revisions.add(revision)
        # A revision something depends on is shown as an "effective head": leave that to Alembic.
        has_dependencies = has_dependencies or found.get("depends_on") is not None
        if down is None:
            continue
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, (tuple, list)) and all(isinstance(d, str) for d in down):
            parents.update(down)
            if len(down) > 1:
                merges.add(revision)
        else:
            return None
    if not parents <= revisions:
        return None
    heads = tuple(sorted(revisions - parents))
    lines = None
    if not has_dependencies:
        lines = {
            head: f"{head} (head){' (mergepoint)' if head in merges else ''}" for head in heads
        }
    return Heads(heads, lines, frozenset(revisions))


def cached(locations: Sequence[str], directory: str | Path) -> Heads | None:
    """The heads of the scripts in ``locations`` (the version folders of the migrations ``directory``),
    from the cache or the header lines; None when only a full load can tell."""
    files = _version_files(locations)
    fingerprint = _fingerprint(files)
    path = Path(directory) / CACHE_FILE
    try:
        found = json.loads(path.read_text())
        if found.get("format") == CACHE_FORMAT and found.get("fingerprint") == fingerprint:
            lines = found.get("current_lines")
            return Heads(
                tuple(found["heads"]),
                dict(lines) if lines is not None else None,
                frozenset(found["revisions"]),
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    heads = _from_headers(files)
    if heads is not None:
        _write(path, fingerprint, heads)
    return heads


def fingerprint_of(script: ScriptDirectory) -> str | None:
    """The fingerprint of a ScriptDirectory's version files as they are now; None for layouts this module
    does not handle. Taken before Alembic loads the scripts (see :func:`remember_heads`)."""
    locations = locations_of(script)
    return _fingerprint(_version_files(locations)) if locations is not None else None


def remember_heads(script: ScriptDirectory, heads: Iterable[str], fingerprint: str | None) -> None:
    """Record the heads Alembic found by a full load (and how ``current`` shows each), for the next
    process. ``fingerprint`` is :func:`fingerprint_of` taken before the load: when a version file came,
    went or changed during the load, Alembic may not have seen it, and nothing is recorded (the next
    process reads the scripts again)."""
    locations = locations_of(script)
    if locations is None or fingerprint is None:
        return
    if _fingerprint(_version_files(locations)) != fingerprint:
        return
    ordered = tuple(sorted(heads))
    lines = {}
    for head in ordered:
        revision = script.get_revision(head)
        if revision is None:
            return
        lines[head] = revision.cmd_format(verbose=False)
    _write(
        Path(script.dir) / CACHE_FILE,
        fingerprint,
        Heads(ordered, lines, frozenset(s.revision for s in script.walk_revisions())),
    )


def _write(path: Path, fingerprint: str, heads: Heads) -> None:
    write_cache_file(
        path,
        {
            "format": CACHE_FORMAT,
            "fingerprint": fingerprint,
            "heads": list(heads.heads),
            "current_lines": heads.current_lines,
            "revisions": sorted(heads.revisions),
        },
    )


def write_cache_file(path: Path, content: dict[str, object]) -> None:
    """Write a cache file of the migrations folder as JSON, whole or not at all. A read-only deploy
    simply goes without it; a temporary file and a rename never leave half a file."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(content))
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
