"""Alembic's errors, and the broken histories it has no words for, as ours: each names what is wrong
(the revision, the script file) and what to do.

Alembic answers some broken histories with a bare ``KeyError`` (a ``down_revision`` naming no script) or
its own ``CycleDetected``, warns and carries on for two scripts with one revision id (one of them is then
never applied), and words an ambiguous id prefix as a missing revision. The functions here are called by
:mod:`async_migrate.alembic_bridge` where it loads the scripts and runs a command.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from . import script_heads
from .errors import (
    AsyncMigrateError,
    CommandError,
    ConfigurationError,
    MissingScriptError,
    NotUpToDateError,
    UnknownRevisionError,
)
from .urls import hide_password

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.util import CommandError as AlembicCommandError

#: Alembic's warning before its KeyError for a reference to a missing revision (the error below says it).
MISSING_REFERENCE_WARNING = r"Revision .* is not present"
#: Alembic's warning for two scripts with one revision id, after which it ignores one of them.
DUPLICATE_WARNING = "is present more than once"


def sentence(text: str) -> str:
    """``text`` without its final period, to be followed by one: no doubled periods in messages."""
    return text.rstrip().rstrip(".")


def version_locations(config: Config) -> list[str] | None:
    """The version folders of ``config``, without loading any script."""
    from alembic.script import ScriptDirectory

    try:
        return script_heads.locations_of(ScriptDirectory.from_config(config))
    except Exception:
        return None


def unknown_revisions(unknown: Sequence[str], heads: Sequence[str]) -> UnknownRevisionError:
    """The refusal of a database at revisions no script has."""
    named = ", ".join(rev if rev else "'' (an empty version_num)" for rev in unknown)
    empty = (
        " An empty version_num is no revision at all: delete that row (or `stamp --purge <revision>`)."
        if "" in unknown
        else ""
    )
    return UnknownRevisionError(
        f"The database is at revision {named}, which the migration scripts don't know "
        f"(script heads: {', '.join(heads) or 'none'}). Either a newer release already migrated this "
        "database (deploy that release), or the script was deleted or not pulled: restore it. If the "
        f"schema really matches a known revision, record that with `stamp --purge <revision>`.{empty}",
        list(unknown),
    )


def broken_history(exc: BaseException, locations: Sequence[str] | None) -> CommandError | None:
    """The error for a history Alembic could not build: a ``down_revision`` or ``depends_on`` naming no
    script, a cycle; None when ``exc`` is something else."""
    from alembic.script.revision import CycleDetected, RevisionError

    if isinstance(exc, KeyError) and _raised_by_alembics_revision_map(exc):
        missing = str(exc.args[0]) if exc.args else "?"
        naming = [
            name
            for name, values in script_heads.headers(locations or ())
            if any(missing in _ids(values.get(key)) for key in ("down_revision", "depends_on"))
        ]
        who = (
            f"{', '.join(naming)} name{'s' if len(naming) == 1 else ''}"
            if naming
            else "A script names"
        )
        return MissingScriptError(
            f"{who} {missing!r} as its down_revision or depends_on, but no script has that revision id "
            "(deleted, renamed, or not pulled). Restore that script, or point down_revision at an "
            "existing revision (`history` lists them); nothing was applied.",
            [missing],
        )
    if isinstance(exc, CycleDetected):
        return CommandError(
            f"Revisions {', '.join(exc.revisions)} form a cycle: following down_revision (or depends_on) "
            "from them leads back to them. Fix the down_revision of one of them; nothing was applied."
        )
    if isinstance(exc, RevisionError):
        return CommandError(
            f"The revision history is broken: {sentence(str(exc))}. Nothing was applied."
        )
    return None


def duplicate_revisions(revision: str, locations: Sequence[str] | None) -> CommandError:
    """Two scripts with one revision id: Alembic would apply only one of them."""
    files = [
        name
        for name, values in script_heads.headers(locations or ())
        if values.get("revision") == revision
    ]
    return CommandError(
        f"Several scripts have the revision id {revision!r} ({', '.join(files) or 'see versions/'}), and "
        "only one of them would ever be applied. Give the newer one a new id (and point its children's "
        "down_revision at it); nothing was applied."
    )


def _ids(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(str(v) for v in value)
    return ()


def _raised_by_alembics_revision_map(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.replace("\\", "/").endswith(
        "alembic/script/revision.py"
    )


def translate(
    exc: AlembicCommandError, url: URL | None = None, config: Config | None = None
) -> AsyncMigrateError:
    """Alembic's CommandError as ours, with the fix for the common cases. With ``config``, an id that is
    the start of several revisions is told apart from one no script has."""
    message = hide_password(str(exc), url)
    if "Can't locate revision" in message or "No such revision" in message:
        ambiguous = _ambiguous_prefix(message, config)
        if ambiguous is not None:
            return ambiguous
        return CommandError(
            f"{sentence(message)}. Check the revision id (`history` lists them); if the database is at "
            "a revision whose script is gone, restore the script, or run `stamp --purge <revision>` after "
            "checking the schema."
        )
    if "overlaps with other requested revisions" in message:
        return CommandError(
            f"{sentence(message)}: the version table holds two revisions of one line of history (one comes "
            "after the other), where a database has one revision per branch. A hand edit of the version "
            "table or two tools migrating at once leave this. Check which one the schema matches, then "
            "record it with `stamp --purge <revision>`."
        )
    if "Online migration expected to match one row" in message:
        return CommandError(
            f"{sentence(message)}: the version table no longer held the revision being moved from. "
            "Something else changed it during the migration: a revision script that writes to it, or "
            "a client that migrates without the migration lock. The failing revision was rolled back "
            "(where DDL commits as it runs, MySQL/MariaDB, its statements stay applied). Check the "
            "version table with `current`, fix what writes to it, then run the command again."
        )
    if "Multiple head revisions" in message or "multiple heads" in message.lower():
        return CommandError(
            f"{message} Merge them with `merge heads -m 'merge'`, or name a revision."
        )
    if "Target database is not up to date" in message:
        return NotUpToDateError(
            "The database is not at the latest revision, so a new revision cannot be generated "
            "against it: run `upgrade` first, then `migrate` again."
        )
    if "already exists and is not empty" in message:
        return CommandError(
            f"{message}: the migrations folder is already set up. Use it as it is, or pass another "
            "directory with -d."
        )
    if "does not provide a MetaData object" in message:
        return ConfigurationError(
            "Autogenerate needs the models' MetaData: pass metadata= to Migrator (or db= to Migrate), "
            "or set target_metadata in env.py."
        )
    return CommandError(message)


def _ambiguous_prefix(message: str, config: Config | None) -> CommandError | None:
    named = re.search(r"identified by '([^']+)'", message)
    if config is None or named is None:
        return None
    prefix = named.group(1)
    matches = sorted(
        str(values["revision"])
        for _, values in script_heads.headers(version_locations(config) or ())
        if isinstance(values.get("revision"), str) and str(values["revision"]).startswith(prefix)
    )
    if len(matches) < 2 or prefix in matches:
        return None
    return CommandError(
        f"{prefix!r} is the start of several revision ids ({', '.join(matches)}): give more of the id."
    )


def script_error(exc: BaseException) -> CommandError | None:
    """A CommandError naming the file and line when ``exc`` came from importing a migration script or
    env.py (a syntax error, a missing import), rather than from running a revision."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.filename.endswith(".py"):
        return CommandError(
            f"Cannot load {exc.filename}, line {exc.lineno}: {exc.msg}. Fix the script; nothing was applied."
        )
    installed = (sys.prefix, sys.base_prefix, str(Path(__file__).parent))
    user_frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(("<", *installed))
    ]
    # Flask-Migrate's env.py fails in its own functions (get_engine: no Flask app), wherever it is.
    flask_env = next(
        (
            f
            for f in user_frames
            if Path(f.filename).name == "env.py" and _is_flask_migrate_env(f.filename)
        ),
        None,
    )
    # Otherwise only when the innermost frame of the user's code is a module body: an error raised
    # inside a revision's upgrade() is a failed migration, not a broken script.
    if flask_env is None and (not user_frames or user_frames[-1].name != "<module>"):
        return None
    frame = flask_env or user_frames[-1]
    if flask_env is not None:
        return CommandError(
            f"{frame.filename} is Flask-Migrate's env.py (it uses Flask's current_app), which cannot run "
            "under async_migrate. Convert the folder in place with `quart db init --convert` (env.py "
            "replaced and the old one kept; alembic.ini's settings and versions/ kept). Nothing was "
            "applied."
        )
    return CommandError(
        f"Cannot load {frame.filename}, line {frame.lineno}: {type(exc).__name__}: {sentence(str(exc))}. "
        "Fix the script (or the import it needs); nothing was applied."
    )


def unwritable_file(exc: BaseException, config: Config | None) -> CommandError | None:
    """A CommandError when ``exc`` is the OS refusing to write a file of the migrations directory (or the
    directory itself): ``init`` under a read-only parent, ``revision`` into a read-only versions/."""
    if not isinstance(exc, OSError) or not exc.filename or config is None:
        return None
    directory = Path(config.get_main_option("script_location") or ".").resolve()
    path = Path(os.fsdecode(exc.filename)).resolve()
    if path != directory and directory not in path.parents:
        return None
    folder = path.parent
    return CommandError(
        f"Cannot write {path}: {exc.strerror or type(exc).__name__}. Give this process write access to "
        f"{folder} (or free some space), or use another migrations folder with -d; then run the command "
        "again."
    )


def _is_flask_migrate_env(path: str) -> bool:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return False
    return "current_app" in text and "flask" in text
