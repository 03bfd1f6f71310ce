"""The scripts' head revisions without importing every revision script.

Alembic imports all revision scripts to know the heads: ~650 ms for 1,000 revisions, paid by every replica
at every start even when there is nothing to do. Here the heads come from a small cache file keyed on the
version files' names, sizes and modification times, or, when that is stale, from each file's
``revision = ...`` / ``down_revision = ...`` header lines. Anything unusual (a header that is not a plain
literal, a ``down_revision`` naming no known revision, sourceless or recursive version locations) returns
None, and the caller falls back to Alembic's full load. The result is only ever used to decide that there
is *nothing* to do: any work goes through Alembic's own view of the scripts.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from alembic.script import ScriptDirectory

CACHE_FILE = ".async_migrate-heads.json"
CACHE_FORMAT = 1

# Alembic's own rule for which files in a versions folder are revision scripts.
_REVISION_FILE = re.compile(r"(?!\.\#|__init__)(.*\.py)$")
_HEADER = re.compile(
    r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*(?:#.*)?$", re.MULTILINE
)


def _version_files(script: ScriptDirectory) -> list[os.DirEntry[str]] | None:
    if script.sourceless or script.recursive_version_locations:
        return None
    files: list[os.DirEntry[str]] = []
    locations: Iterable[Path] = script._version_locations
    for location in locations:
        try:
            with os.scandir(location) as entries:
                files.extend(
                    entry
                    for entry in entries
                    if _REVISION_FILE.match(entry.name) and entry.is_file()
                )
        except FileNotFoundError:
            continue
    return files


def _fingerprint(files: list[os.DirEntry[str]]) -> str:
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e.path):
        stat = entry.stat()
        digest.update(f"{entry.path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_path(script: ScriptDirectory) -> Path:
    return Path(script.dir) / CACHE_FILE


def _from_headers(files: list[os.DirEntry[str]]) -> tuple[str, ...] | None:
    revisions: set[str] = set()
    parents: set[str] = set()
    for entry in files:
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
        if down is None:
            continue
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, (tuple, list)) and all(isinstance(d, str) for d in down):
            parents.update(down)
        else:
            return None
    if not parents <= revisions:
        return None
    return tuple(sorted(revisions - parents))


def cached_heads(script: ScriptDirectory) -> tuple[str, ...] | None:
    """The heads, from the cache or the header lines; None when only a full load can tell."""
    files = _version_files(script)
    if files is None:
        return None
    fingerprint = _fingerprint(files)
    try:
        cached = json.loads(_cache_path(script).read_text())
        if cached.get("format") == CACHE_FORMAT and cached.get("fingerprint") == fingerprint:
            return tuple(cached["heads"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    heads = _from_headers(files)
    if heads is not None:
        _write(script, fingerprint, heads)
    return heads


def remember_heads(script: ScriptDirectory, heads: Iterable[str]) -> None:
    """Record the heads Alembic found by a full load, for the next process."""
    files = _version_files(script)
    if files is not None:
        _write(script, _fingerprint(files), tuple(sorted(heads)))


def _write(script: ScriptDirectory, fingerprint: str, heads: tuple[str, ...]) -> None:
    path = _cache_path(script)
    payload = json.dumps({"format": CACHE_FORMAT, "fingerprint": fingerprint, "heads": list(heads)})
    # A read-only deploy simply goes without the cache; a temp file + rename never leaves half a file.
    with contextlib.suppress(OSError):
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(payload)
        os.replace(temporary, path)
