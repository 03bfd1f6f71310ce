"""What the ledger can tell about the scripts on disk: ``verify``'s findings, and ``recover``'s scripts.

:func:`findings` compares what the database ran (the ledger, :mod:`async_migrate.ledger`) with the scripts
on disk: an applied script edited since (with a diff of the two), an applied script missing from disk, and
a script that the history says is applied but that never ran here (inserted into the history after the
database moved past its place, or stamped over). :func:`scripts_to_recover` picks the stored scripts that
bring back the missing ones; :func:`write_scripts` writes them, byte for byte, never over a differing file.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import script_heads
from .errors import CommandError
from .ledger import APPLYING, LedgerEntry, checksum
from .squash import archived_scripts

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

#: How many lines of a diff a finding keeps (the rest is counted, not shown).
MAX_DIFF_LINES = 200


@dataclass(frozen=True)
class Finding:
    """One thing ``verify`` found. ``kind``: ``edited``, ``missing``, ``never_applied`` or ``no_ledger``."""

    kind: str
    revision: str
    message: str
    diff: str = ""


def on_disk(locations: Sequence[str]) -> dict[str, Path]:
    """The revision scripts in the version folders, by revision id (read from their headers only)."""
    found: dict[str, Path] = {}
    for location in locations:
        for name, values in script_heads.headers([location]):
            revision = values.get("revision")
            if isinstance(revision, str):
                found.setdefault(revision, Path(location) / name)
    return found


def latest_applying(entries: Iterable[LedgerEntry]) -> dict[str, LedgerEntry]:
    """Per revision, the newest row that says what script the database has (``upgrade``, ``stamp``,
    ``adopted``, ``accepted``) and has a checksum; ``entries`` newest first, as the ledger is read."""
    latest: dict[str, LedgerEntry] = {}
    for entry in entries:
        if entry.direction in APPLYING and entry.checksum and entry.revision not in latest:
            latest[entry.revision] = entry
    return latest


def applied_revisions(
    script: ScriptDirectory | None, current: Sequence[str], entries: Sequence[LedgerEntry]
) -> list[str]:
    """The revisions the database has, oldest first: the history below its current revision(s) as the
    scripts tell it; without usable scripts, the ledger's own account (its rows replayed)."""
    if script is not None:
        try:
            return [
                s.revision for s in reversed(list(script.iterate_revisions(tuple(current), "base")))
            ]
        except Exception:
            pass
    applied: dict[str, None] = {}
    for entry in reversed(entries):
        if entry.direction == "downgrade":
            applied.pop(entry.revision, None)
        elif entry.direction != "stamp" or entry.revision != "base":
            applied[entry.revision] = None
    return [*applied, *(rev for rev in current if rev not in applied)]


def _when(entry: LedgerEntry) -> str:
    if entry.direction == "adopted" or entry.finished_at is None:
        return f"{entry.direction} (no time recorded)"
    return f"{entry.direction} at {entry.finished_at:%Y-%m-%d %H:%M:%S} UTC by {entry.who}"


def edited_diff(entry: LedgerEntry, stored: str | None, path: Path) -> str:
    """A unified diff of the script as it ran against the file now (at most :data:`MAX_DIFF_LINES`)."""
    if stored is None:
        return ""
    now = path.read_text(encoding="utf-8", errors="replace")
    lines = list(
        difflib.unified_diff(
            stored.replace("\r\n", "\n").splitlines(keepends=True),
            now.replace("\r\n", "\n").splitlines(keepends=True),
            fromfile=f"{entry.revision} as applied ({_when(entry)})",
            tofile=str(path),
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more diff lines)\n"]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def same_code(stored: str, now: str) -> bool:
    """Whether two versions of a script differ only in comments, layout and the module docstring: the
    autogenerate review's ``# WARNING:`` lines deleted once reviewed, a formatter run, a message
    reworded. The database has what either says."""

    def code(text: str) -> str:
        tree = ast.parse(text)
        body = tree.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            tree.body = body[1:]
        return ast.dump(tree)

    try:
        return code(stored) == code(now)
    except (SyntaxError, ValueError):
        return False


def edited(
    applied: Sequence[str],
    entries: Sequence[LedgerEntry],
    disk: dict[str, Path],
    sources: dict[int, str],
    archived: dict[str, Path] | None = None,
) -> list[tuple[LedgerEntry, Path]]:
    """The applied revisions whose script on disk is not the code the database ran: the checksum
    differs, and the stored script (in ``sources``; without it, by checksum alone) is other code. A
    revision a squash replaced by its baseline ran as the script now ``archived``: that is no edit."""
    latest = latest_applying(entries)
    found = []
    for revision in applied:
        entry, path = latest.get(revision), disk.get(revision)
        if entry is None or path is None:
            continue
        old = (archived or {}).get(revision)
        try:
            if _digest(path) == entry.checksum or (
                old is not None and _digest(old) == entry.checksum
            ):
                continue
            now = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        text = sources.get(entry.id)
        if text is None or not same_code(text, now):
            found.append((entry, path))
    return found


async def edited_since_applied(
    script: ScriptDirectory,
    current: Sequence[str],
    entries: Sequence[LedgerEntry],
    stored_sources: Callable[[], Awaitable[dict[int, str]]],
) -> list[tuple[LedgerEntry, Path]]:
    """The revisions applied to a database at ``current`` whose script was edited after it ran (see
    :func:`edited`): by checksum first, the stored scripts (``stored_sources()``) read only when one
    differs. The checksums of unchanged files come from the last process (:func:`remembered_digests`)."""
    applied = applied_revisions(script, current, entries)
    # The applied scripts only, from the revision map itself: a walk of the whole history, or
    # ScriptDirectory.get_revision (a context manager per call), cost 30 to 50 ms per 1,000 revisions.
    revision_map, disk = script.revision_map, {}
    for rev in applied:
        with contextlib.suppress(Exception):  # not in the scripts: nothing on disk to compare
            found = revision_map.get_revision(rev)
            path = getattr(found, "path", None)
            if path:
                disk[rev] = Path(path)
    archived = archived_scripts(script_heads.locations_of(script) or ())
    with remembered_digests(script.dir):
        if not edited(applied, entries, disk, {}, archived):
            return []
    return edited(applied, entries, disk, await stored_sources(), archived)


# Checksums of script files by path, with what a stat said of the file then (size, modification and
# change times, inode): every upgrade checks every applied script, and a long history (or the test kit's
# stairway) would read each again. The change time cannot be set back by hand or by an archive, so a
# rewritten file of the same size and modification time (fixed-mtime builds) is still read again.
# Each value is one string, "size:mtime:ctime:inode:" and the checksum: a thousand tuples loaded at once
# in a process holding a whole revision map could start a full garbage collection (tens of ms).
_digests: dict[str, str] = {}
_new_digests: set[str] = set()

#: Where :func:`remembered_digests` keeps the checksums between processes (inside the migrations folder).
DIGESTS_FILE = ".async_migrate-digests.json"
_DIGESTS_FORMAT = 2


def _digest(path: Path) -> str:
    stat = path.stat()
    key, seen = str(path), f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}:"
    known = _digests.get(key)
    if known is not None and known.startswith(seen):
        return known[len(seen) :]
    digest = checksum(path.read_bytes())
    _digests[key] = seen + digest
    _new_digests.add(key)
    return digest


@contextlib.contextmanager
def remembered_digests(directory: str | Path) -> Iterator[None]:
    """Checksums of scripts computed in this block are written to ``directory``'s
    :data:`DIGESTS_FILE`, and those written by an earlier process are used where the file is unchanged:
    a deploy that adds one revision to a history of 1,000 reads one script, not 1,000."""
    path = Path(directory) / DIGESTS_FILE
    try:
        stored = json.loads(path.read_text())
        if stored.get("format") == _DIGESTS_FORMAT:
            for key, value in stored["files"].items():
                if isinstance(key, str) and isinstance(value, str):
                    _digests.setdefault(key, value)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none yet, unreadable, or from another version: computed again
    _new_digests.clear()
    try:
        yield
    finally:
        if _new_digests:
            _new_digests.clear()
            _write_digests(path)


def _write_digests(path: Path) -> None:
    # This folder's scripts only: the process may have checked another project's too.
    under = os.path.join(os.path.abspath(path.parent), "")
    files = {
        key: value for key, value in _digests.items() if os.path.abspath(key).startswith(under)
    }
    script_heads.write_cache_file(path, {"format": _DIGESTS_FORMAT, "files": files})


def findings(
    script: ScriptDirectory | None,
    current: Sequence[str],
    entries: Sequence[LedgerEntry],
    sources: dict[int, str],
    disk: dict[str, Path],
    archived: dict[str, Path] | None = None,
) -> list[Finding]:
    """Everything ``verify`` reports, oldest revision first."""
    applied = applied_revisions(script, current, entries)
    out = [
        Finding(
            "edited",
            entry.revision,
            f"Revision {entry.revision} was edited after it was applied: {path} is not the script "
            f"the database ran ({_when(entry)}). Restore the script as it ran (the diff shows what "
            "changed), or, if the edit changes nothing the database needs, accept it with "
            "`verify --accept`.",
            edited_diff(entry, sources.get(entry.id), path),
        )
        for entry, path in edited(applied, entries, disk, sources, archived)
    ]
    latest = latest_applying(entries)
    ever = {entry.revision for entry in entries if entry.direction in APPLYING}
    for revision in applied:
        if revision in disk:
            if revision not in ever:
                out.append(
                    Finding(
                        "never_applied",
                        revision,
                        f"Revision {revision} is older than the database's current revision but never "
                        "ran on it (the ledger has no row for it): it was added to the history after "
                        "the database moved past its place, or stamped over. Check whether its changes "
                        "are in the database; if not, apply them by hand or in a new revision.",
                    )
                )
            continue
        entry = latest.get(revision)
        copy = (
            f"; the ledger keeps a copy ({_when(entry)}): `recover {revision}` writes it back"
            if entry is not None and entry.id in sources
            else "; the ledger has no copy of it: restore it from version control"
        )
        out.append(
            Finding(
                "missing",
                revision,
                f"Revision {revision} is applied to the database but its script is missing on "
                f"disk{copy}.",
            )
        )
    order = {rev: number for number, rev in enumerate(applied)}
    return sorted(out, key=lambda finding: order.get(finding.revision, len(order)))


def scripts_to_recover(
    requested: Sequence[str],
    current: Sequence[str],
    entries: Sequence[LedgerEntry],
    sources: dict[int, str],
    disk: dict[str, Path],
) -> list[tuple[LedgerEntry, str]]:
    """The stored scripts to write back, with their text: ``requested`` ones, else every one missing on
    disk that the database's revisions stand on (its current revisions, what they and the scripts on
    disk name as ``down_revision`` or ``depends_on``, and on through the recovered scripts)."""
    newest: dict[str, LedgerEntry] = {}
    for entry in entries:  # newest first: the last copy stored is the one that ran last
        if entry.id in sources and entry.revision not in newest:
            newest[entry.revision] = entry
    if requested:
        unknown = [rev for rev in requested if rev not in newest]
        if unknown:
            raise CommandError(
                f"The ledger has no copy of {', '.join(unknown)} (revisions it keeps: "
                f"{', '.join(sorted(newest)) or 'none'}). Restore the script from version control."
            )
        return [(newest[rev], sources[newest[rev].id]) for rev in requested]
    wanted = [*current]
    for path in disk.values():
        wanted.extend(_parents(path.read_text(encoding="utf-8", errors="replace")))
    chosen: dict[str, tuple[LedgerEntry, str]] = {}
    while wanted:
        revision = wanted.pop()
        if revision in disk or revision in chosen or revision not in newest:
            continue
        entry = newest[revision]
        chosen[revision] = (entry, sources[entry.id])
        wanted.extend(_parents(sources[entry.id]))
    return list(chosen.values())


def _parents(text: str) -> list[str]:
    values = script_heads.header_values(text)
    found: list[str] = []
    for key in ("down_revision", "depends_on"):
        value = values.get(key)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(str(rev) for rev in value)
    return found


def write_scripts(chosen: Sequence[tuple[LedgerEntry, str]], location: Path) -> list[Path]:
    """Write the stored scripts into ``location``; refuse (before writing any) where a different file
    of that name is there. Returns the files written, leaving out those already there as stored."""
    plan: list[tuple[Path, str]] = []
    for entry, text in chosen:
        path = location / (entry.script or f"{entry.revision}_recovered.py")
        if path.exists():
            if checksum(path.read_bytes()) == checksum(text.encode("utf-8")):
                continue
            raise CommandError(
                f"Not recovering {entry.revision}: {path} already exists and is a different file; "
                "nothing was written. Move that file away (or delete it, if it is a stale copy) and "
                "run recover again."
            )
        plan.append((path, text))
    location.mkdir(parents=True, exist_ok=True)
    for path, text in plan:
        # newline="": the text goes back exactly as it was read, line endings and all.
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    return [path for path, _ in plan]
