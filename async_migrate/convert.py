"""Turning a Flask-Migrate migrations folder into an async_migrate one, in place.

A project moving from Flask to Quart has the ``migrations/`` folder ``flask db init`` made. Only its env.py
cannot come along: it takes the engine and models from Flask's ``current_app``, which fails under
async_migrate. The rest is the user's and keeps working: the revision scripts, alembic.ini with what they
added (post-write hooks, ``file_template``, logging), the script template they may have customised.
:func:`convert_flask_migrate` replaces env.py (keeping the old one beside it) and what else cannot run here,
edits alembic.ini by lines so that it stays as the user wrote it, and lists the revision scripts that
import Flask, without editing them. It checks everything before writing anything and puts back what it
wrote when a write fails: a folder is converted, or left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from .alembic_bridge import TEMPLATES_DIRECTORY
from .errors import CommandError

__all__ = ["BACKUP_SUFFIX", "ConversionReport", "NeedsAttention", "convert_flask_migrate"]

#: Added to the name of a file the conversion replaces, for the copy it keeps: ``env.py.flask-migrate``.
BACKUP_SUFFIX = ".flask-migrate"

# The first 12 hex digits of the git blob ids (`git hash-object env.py`) of env.py in every release of
# Flask-Migrate, 0.1.0 to 4.1.0, all four templates (flask, flask-multidb, aioflask, aioflask-multidb):
# an env.py among them holds nothing of the user's. From the release tags of
# github.com/miguelgrinberg/Flask-Migrate: `git ls-tree -r <tag> | grep 'templates/.*/env.py$'`.
_DEFAULT_ENV_BLOBS = frozenset(
    """
    02ee486d5972 04b1ff749b86 0694bc4c6dad 06a074e36810 0a038e6cdd4d 169d48741a18 1b3207609a2d
    23663ff2f54e 2556d6dc0997 299f544f5720 2d31c5ad3776 2d90ccd00ce3 2ed594a25351 31b8e7248bac
    3a1ece5acba1 42438a5a22b5 4593816063f7 476b9bfcc60f 4c9709271b2f 55e9df94b642 606505785641
    68feded2a040 70961ce2c752 71659dcde45f 79a2cfbe6eee 79b8174be8a3 7e76ef4bdb86 891ca933cf76
    89f80b211221 8b3fb33535df 8c572fcafcf1 8f3101fec3e1 945217923e89 953e2b2d3dd7 a0a39a3355db
    bc2981c6c223 bfb2957bf6e4 c041738d6440 e2dd4dae1fd1 e33496bb0da2 e4d060fc7c8f f14bd6c091bc
    fa412e8c3200 feab4a87f02e
    """.split()
)

# script.py.mako: Flask-Migrate's single-database one (2c0156303a8d since 2.0.1) and ours write the same
# revisions, ours adding type hints only, so the user's is kept, default or customised: new revisions
# then look like their old ones. Its multi-database ones (these, every release since 1.5.0) render the bind
# names from Flask's `current_app` inside the template, so no revision can be written with them under
# async_migrate: when byte-identical to one of these, ours replaces it (the old one backed up). A
# customised template that still imports Flask is kept and reported instead: it is the user's.
_DEFAULT_MULTIDB_SCRIPT_BLOBS = frozenset(
    {"3beabc46397a", "56f3cb436d96", "a3f466e40b2b", "eedd2647ae13"}
)

# Flask-Migrate's READMEs (one line describing the environment, no longer true once converted): replaced
# by ours without a backup, as they hold nothing of the user's. Any other README is kept.
_DEFAULT_READMES = {"Generic single-database configuration."} | {
    f"{kind}-database configuration for {flask}.\n"
    for kind in ("Single", "Multi")
    for flask in ("Flask", "aioflask")
}

# `import flask`, `from flask import current_app`, `from flask_sqlalchemy import ...`, indented or not.
_FLASK_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+flask(?:_\w+)?(?:\.\w+)*[ \t]+import\b|import[ \t]+flask(?:_\w+)?\b).*$",
    re.MULTILINE,
)
# Flask-Migrate's multidb env.py runs each database with `run_migrations(engine_name=name)`, over the
# `bind_names` of the app, from `get_engine(bind_key)`; its single-database env.py has none of them.
_MULTIDB_ENV = re.compile(r"\bengine_name\s*=|\bbind_names\b|\bget_engine\(\s*bind")
_MULTIDB_UPGRADE = re.compile(r"^def upgrade\(\s*engine_name\b", re.MULTILINE)
_SINGLE_UPGRADE = re.compile(r"^def upgrade\(\s*\)", re.MULTILINE)
_BIND_UPGRADE = re.compile(r"^def upgrade_(\w*)\(", re.MULTILINE)


@dataclass(frozen=True)
class NeedsAttention:
    """A file the conversion left as it was that will not work as it is, or holds changes to carry over."""

    path: Path
    line: int | None
    why: str


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_flask_migrate` did to a migrations folder; ``str()`` is what a CLI prints."""

    directory: Path
    multidb: bool
    #: Files that are now async_migrate's (env.py; script.py.mako and README when they had to go).
    replaced: tuple[Path, ...]
    #: Where the replaced files' old contents are (``env.py.flask-migrate``, ...); a file replaced
    #: without a backup was Flask-Migrate's own text.
    backups: tuple[Path, ...]
    #: The user's files left byte for byte as they were (alembic.ini too, when nothing had to be added).
    kept: tuple[Path, ...]
    #: What changed in alembic.ini, one sentence each; empty when it was kept as it was.
    ini_changes: tuple[str, ...]
    #: The revision scripts found (versions/ or ``version_locations``), untouched.
    scripts: tuple[Path, ...]
    attention: tuple[NeedsAttention, ...]

    @property
    def env_backup(self) -> Path:
        """Flask-Migrate's env.py, as it was."""
        return self.directory / f"env.py{BACKUP_SUFFIX}"

    def lines(self) -> list[str]:
        """The report as a CLI prints it, one line each."""
        kind = '"async-multidb", several databases' if self.multidb else '"async", one database'
        out = [f"Converted {self.directory} from Flask-Migrate to async_migrate (template {kind})."]
        for path in self.replaced:
            backup = path.with_name(path.name + BACKUP_SUFFIX)
            note = (
                f"the old one is {backup.name}"
                if backup in self.backups
                else "nothing of yours in it"
            )
            out.append(f"  replaced {self._show(path)} with async_migrate's ({note})")
        kept = [self._show(path) for path in self.kept]
        if self.scripts:
            count = len(self.scripts)
            kept.append(f"{count} revision script{'s' if count != 1 else ''}")
        if kept:
            out.append(f"  kept as they were: {', '.join(kept)}")
        if self.ini_changes:
            out.append(f"  alembic.ini: {'; '.join(self.ini_changes)}; the rest as it was")
        if self.attention:
            out.append("Needs your attention:")
            for item in self.attention:
                where = self._show(item.path) + (f":{item.line}" if item.line else "")
                out.append(f"  {where}: {item.why}")
        else:
            out.append("Nothing needs your attention; `quart db heads` lists the head revision(s).")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _show(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(self.directory))
        return str(path)


def convert_flask_migrate(
    directory: str | Path, *, multidb: bool | None = None
) -> ConversionReport:
    """Turn the Flask-Migrate migrations folder ``directory`` (made by ``flask db init``) into an
    async_migrate one, in place, keeping what belongs to the user.

    - env.py becomes async_migrate's (template ``async``, or ``async-multidb`` for Flask-Migrate's
      multi-database env.py); the old one is kept as ``env.py.flask-migrate``.
    - alembic.ini stays as written, but for the options plain ``alembic -c alembic.ini`` runs need (added)
      and a ``version_locations`` separated by spaces (written again with ``os.pathsep``).
    - script.py.mako is kept, unless it is Flask-Migrate's multi-database one, which renders with Flask's
      ``current_app`` (then ours replaces it, the old one kept as ``script.py.mako.flask-migrate``).
    - versions/ is not touched; scripts that import Flask are listed in the report.

    :param directory: the migrations folder.
    :param multidb: force the single (False) or multi-database (True) environment; None: as the old
        env.py was.
    :raises CommandError: the folder is not a Flask-Migrate one (no env.py, or env.py already
        async_migrate's), a backup is in the way, or the folder cannot be written. Nothing is changed then.
    """
    folder = Path(directory).absolute()
    env_text = _flask_migrate_env(folder)
    plan = _Plan(folder, bool(_MULTIDB_ENV.search(env_text)) if multidb is None else multidb)
    env = folder / "env.py"
    plan.replace(env, plan.template_file("env.py"), backup=True)
    if _blob_id(env.read_bytes()) not in _DEFAULT_ENV_BLOBS:
        why = (
            "differs from Flask-Migrate's env.py: carry your changes over to the new env.py (the "
            "options of context.configure() go to Migrate(app, db, ...) or Migrator(...) as keywords)"
        )
        plan.attention.append(NeedsAttention(plan.backup_of(env), None, why))
    _plan_script_template(plan)
    _plan_readme(plan)
    _plan_ini(plan)  # and the scripts, whose databases a multi-database alembic.ini lists
    _check_writable(plan)
    _write_all(plan)
    return plan.report()


@dataclass
class _Plan:
    """What a conversion will write, decided (and checked) before anything is written."""

    directory: Path
    multidb: bool
    #: (path, content, mode), in order: each backup before the file it saves.
    writes: list[tuple[Path, bytes, int]] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    ini_changes: tuple[str, ...] = ()
    scripts: list[Path] = field(default_factory=list)
    attention: list[NeedsAttention] = field(default_factory=list)

    @property
    def template(self) -> str:
        return "async-multidb" if self.multidb else "async"

    def template_file(self, name: str) -> bytes:
        return (TEMPLATES_DIRECTORY / self.template / name).read_bytes()

    def backup_of(self, path: Path) -> Path:
        return path.with_name(path.name + BACKUP_SUFFIX)

    def replace(self, path: Path, content: bytes, *, backup: bool) -> None:
        mode = _mode_of(path)
        if backup:
            saved = self.backup_of(path)
            if saved.exists() or saved.is_symlink():
                raise CommandError(
                    f"{saved} already exists: converting {self.directory} would overwrite that earlier "
                    f"copy of Flask-Migrate's {path.name}. Move it away (or delete it if you no longer "
                    "need it), then convert again. Nothing was changed."
                )
            self.writes.append((saved, path.read_bytes(), mode))
            self.backups.append(saved)
        self.writes.append((path, content, mode))
        self.replaced.append(path)

    def report(self) -> ConversionReport:
        return ConversionReport(
            self.directory, self.multidb, tuple(self.replaced), tuple(self.backups),
            tuple(self.kept), self.ini_changes, tuple(self.scripts), tuple(self.attention),
        )  # fmt: skip


# -- what is there --------------------------------------------------------------------------------------------


def _flask_migrate_env(folder: Path) -> str:
    """The text of Flask-Migrate's env.py in ``folder``; CommandError when the folder is not such a one."""
    if not folder.is_dir():
        raise CommandError(
            f"{folder} is not a folder: give the migrations folder `flask db init` made (the one with "
            "env.py and alembic.ini in it). Nothing was changed."
        )
    env, ini = folder / "env.py", folder / "alembic.ini"
    if not env.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise CommandError(
            f"{folder} has no env.py (found: {found}), so it is not a Flask-Migrate migrations folder. "
            "Give the folder `flask db init` made (usually migrations/), or start afresh with `quart db "
            "init`. Nothing was changed."
        )
    try:
        text = env.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"Cannot read {env}: {exc}. Nothing was changed.") from None
    if not (_FLASK_IMPORT.search(text) and "current_app" in text):
        if "async_migrate" in text:
            saved = env.with_name(env.name + BACKUP_SUFFIX)
            earlier = f" (Flask-Migrate's is beside it, {saved.name})" if saved.exists() else ""
            raise CommandError(
                f"{env} is already async_migrate's env.py{earlier}, so {folder} needs no conversion: use "
                "it as it is with `quart db ...`. Nothing was changed."
            )
        raise CommandError(
            f"{env} is not Flask-Migrate's env.py (it does not take the app from Flask's current_app), "
            f"so {folder} was not converted. For another Alembic environment, create one with `quart db "
            "init -d <new folder>` and copy your versions/ scripts into it. Nothing was changed."
        )
    if not ini.is_file():
        raise CommandError(
            f"{folder} has Flask-Migrate's env.py but no alembic.ini, which `flask db init` writes beside "
            "it: restore it (or copy the one of a `quart db init` folder), then convert again. Nothing "
            "was changed."
        )
    return text


def _blob_id(data: bytes) -> str:
    """The first 12 hex digits of the git blob id of ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()[:12]


def _mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777 if path.exists() else 0o644


def _flask_imports(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each Flask import in ``text``."""
    return [
        (text.count("\n", 0, match.start()) + 1, match.group().strip())
        for match in _FLASK_IMPORT.finditer(text)
    ]


def _shape_mismatch(text: str, multidb: bool) -> str | None:
    """Why a revision (or the script template) does not fit the environment chosen, if it does not."""
    if multidb and _SINGLE_UPGRADE.search(text):
        found = "upgrade() for one database"
    elif not multidb and _MULTIDB_UPGRADE.search(text):
        found = "upgrade(engine_name) for several databases"
    else:
        return None
    wanted, flag = ("async", "") if multidb else ("async-multidb", " --multidb")
    return (
        f"has {found}, which the new env.py does not run: if that is right, take env.py and "
        f"script.py.mako of the {wanted!r} template instead (`quart db init{flag} -d <new folder>`)"
    )


# -- script.py.mako, README, versions/ -------------------------------------------------------------------------


def _plan_script_template(plan: _Plan) -> None:
    path = plan.directory / "script.py.mako"
    if not path.is_file():  # Alembic needs one to write a revision
        plan.writes.append((path, plan.template_file("script.py.mako"), 0o644))
        plan.replaced.append(path)
        return
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    imports = _flask_imports(text)
    if imports and _blob_id(data) in _DEFAULT_MULTIDB_SCRIPT_BLOBS:
        plan.replace(path, plan.template_file("script.py.mako"), backup=True)
        return
    plan.kept.append(path)
    for line, source in imports:
        why = (
            f"renders with Flask (`{source}`), so no new revision can be written under async_migrate: "
            f"port your changes onto async_migrate's script.py.mako (template {plan.template!r})"
        )
        plan.attention.append(NeedsAttention(path, line, why))
    shape = _shape_mismatch(text, plan.multidb)
    if shape is not None:
        plan.attention.append(NeedsAttention(path, None, shape.replace("has up", "writes up")))


def _plan_readme(plan: _Plan) -> None:
    path = plan.directory / "README"
    if not path.is_file():
        return
    if path.read_bytes().decode("utf-8", errors="replace") in _DEFAULT_READMES:
        plan.writes.append((path, plan.template_file("README"), _mode_of(path)))
        plan.replaced.append(path)
    else:
        plan.kept.append(path)


def _plan_scripts(plan: _Plan, locations: list[Path]) -> list[str]:
    """Note the revision scripts that import Flask or do not fit the environment; the names of the
    databases (besides the main one) the scripts have ``upgrade_<name>()`` functions for."""
    found = {
        script
        for location in locations
        if location.is_dir()
        for script in location.rglob("*.py")
        if "__pycache__" not in script.parts
    }
    binds: set[str] = set()
    for script in sorted(found):
        plan.scripts.append(script)
        try:
            text = script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # Alembic will say so, by name, when it loads the scripts
        for line, source in _flask_imports(text):
            why = (
                f"imports Flask (`{source}`), which is not there under Quart: use `from quart import "
                "current_app` (set under `quart db ...`), or do without the app; the script was not changed"
            )
            plan.attention.append(NeedsAttention(script, line, why))
        shape = _shape_mismatch(text, plan.multidb)
        if shape is not None:
            plan.attention.append(NeedsAttention(script, None, shape))
        binds.update(_BIND_UPGRADE.findall(text))
    return sorted(binds - {""})


# -- alembic.ini -----------------------------------------------------------------------------------------------
#
# Flask-Migrate's alembic.ini (one file for both its templates, the same since 2.0) against ours: its
# [alembic] has no option (file_template and revision_environment commented out; Flask-Migrate sets
# script_location in code) where ours has script_location = %(here)s, path_separator = os and
# sqlalchemy.url = or databases =; the logging sections differ only by the flask_migrate logger (ours:
# async_migrate) and WARN for WARNING. For async_migrate itself nothing must change: make_config sets
# script_location and path_separator = os in code, and only plain `alembic` runs read the logging sections.
# So every line of the user's file stays, and only two edits are made, by lines (configparser would drop
# the comments): the options plain `alembic -c alembic.ini` runs need and the file lacks are added under
# [alembic]; and a version_locations or prepend_sys_path that async_migrate would split otherwise than
# Alembic did under Flask-Migrate (no path_separator: on spaces and commas) is written again with
# os.pathsep between the same paths, else a version folder would be lost.

_SECTION = re.compile(r"[ \t]*\[(?P<name>[^\]]*)\]")
_OPTION = re.compile(r"(?P<key>[^\s#;=:\[][^=:]*?)[ \t]*[=:][ \t]*(?P<value>.*?)\s*$")
_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}


@dataclass(frozen=True)
class _Option:
    key: str  # as written
    first: int  # its line
    end: int  # the line after its last continuation line
    value: str  # raw: no interpolation


def _plan_ini(plan: _Plan) -> None:
    path = plan.directory / "alembic.ini"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(
            f"{path} is not UTF-8 text, which Alembic reads it as: save it as UTF-8, then convert again. "
            "Nothing was changed."
        ) from None
    lines = text.splitlines(keepends=True)
    header, options = _alembic_options(lines)
    binds = _plan_scripts(plan, _version_locations(plan.directory, options))
    edited, changes = _edited_ini(lines, header, options, plan.multidb, binds)
    if changes:
        plan.writes.append((path, "".join(edited).encode("utf-8"), _mode_of(path)))
        plan.ini_changes = tuple(changes)
    else:
        plan.kept.append(path)


def _alembic_options(lines: list[str]) -> tuple[int | None, dict[str, _Option]]:
    """The line of the ``[alembic]`` header (None when there is none) and its options by lower-case name,
    read as configparser reads them."""
    header: int | None = None
    options: dict[str, _Option] = {}
    last: str | None = None
    for index, line in enumerate(lines):
        section = _SECTION.match(line)
        if section is not None:
            if header is not None:
                break
            header = index if section.group("name").strip() == "alembic" else None
            continue
        stripped = line.strip()
        if header is None:
            continue
        if last is not None and stripped and line[:1] in " \t":  # a continuation line
            option = options[last]
            options[last] = replace(option, end=index + 1, value=f"{option.value}\n{stripped}")
            continue
        match = _OPTION.match(line)
        if match is None or stripped.startswith(("#", ";")):
            last = None
            continue
        last = match.group("key").lower()
        options[last] = _Option(match.group("key"), index, index + 1, match.group("value"))
    return header, options


def _split_as_alembic(key: str, value: str, options: dict[str, _Option]) -> list[str]:
    """The paths of ``version_locations`` / ``prepend_sys_path`` as Alembic splits them by this file."""
    names = ["path_separator"] + (["version_path_separator"] if key == "version_locations" else [])
    for name in names:
        if name in options:
            separator = _SEPARATORS.get(options[name].value.strip())
            if separator is None:  # Alembic refuses the value: read it as async_migrate does
                return _split_as_async_migrate(value)
            return [part.strip() for part in value.split(separator) if part.strip()]
    legacy = r", *|(?: +)" if key == "version_locations" else r", *|(?: +)|:"
    return [part.strip() for part in re.split(legacy, value) if part.strip()]


def _split_as_async_migrate(value: str) -> list[str]:
    return [part.strip() for part in value.split(os.pathsep) if part.strip()]


def _version_locations(directory: Path, options: dict[str, _Option]) -> list[Path]:
    option = options.get("version_locations")
    if option is None:
        return [directory / "versions"]
    paths = _split_as_alembic("version_locations", option.value, options)
    # Relative paths are read from the working directory, as Alembic does.
    return [Path(path.replace("%(here)s", str(directory)).replace("%%", "%")) for path in paths]


def _edited_ini(
    lines: list[str],
    header: int | None,
    options: dict[str, _Option],
    multidb: bool,
    binds: list[str],
) -> tuple[list[str], list[str]]:
    """alembic.ini's lines as async_migrate needs them, and what changed (nothing: an empty list)."""
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    lines, changes = list(lines), []
    rewrites: list[tuple[int, int, str]] = []
    for key in ("version_locations", "prepend_sys_path"):
        option = options.get(key)
        if option is not None:
            paths = _split_as_alembic(key, option.value, options)
            if paths != _split_as_async_migrate(option.value):
                rewrites.append(
                    (option.first, option.end, f"{option.key} = {os.pathsep.join(paths)}")
                )
                changes.append(
                    f"{option.key} now has {os.pathsep!r} between its paths, as async_migrate splits "
                    "it (path_separator = os); the paths are the same"
                )
    separator = options.get("path_separator")
    if rewrites and separator is not None and separator.value.strip() != "os":
        rewrites.append((separator.first, separator.end, f"{separator.key} = os"))
        changes.append(
            f"path_separator is os (was {separator.value}), as async_migrate reads paths"
        )
    for first, end, text in sorted(rewrites, reverse=True):
        lines[first:end] = [text + newline]
    added = [] if "script_location" in options else ["script_location = %(here)s"]
    added += [] if separator is not None else ["path_separator = os"]
    if multidb and "databases" not in options:
        added += [*_DATABASES_COMMENT, f"databases = {','.join(['', *binds])}".rstrip()]
    if added:
        block = [*_ADDED_COMMENT, *added, ""]
        at = 0 if header is None else header + 1
        if header is None:
            block.insert(0, "[alembic]")
        elif not lines[header].endswith("\n"):
            lines[header] += newline
        lines[at:at] = [line + newline for line in block]
        names = ", ".join(line.partition(" ")[0] for line in added if not line.startswith("#"))
        changes.insert(0, f"added {names} under [alembic], for plain `alembic -c` runs")
    return lines, changes


_ADDED_COMMENT = (
    "# Added by async_migrate when converting from Flask-Migrate (the rest of this file is as it was):",
    "# plain `alembic -c alembic.ini ...` runs read these; async_migrate sets script_location and",
    "# path_separator itself.",
)
_DATABASES_COMMENT = (
    "# databases: the main one first (an empty name), then those the revisions have upgrade_<name>()",
    "# for; plain `alembic` runs take their URLs from DATABASE_URL and DATABASE_URL_<NAME>.",
)


# -- writing ---------------------------------------------------------------------------------------------------


def _check_writable(plan: _Plan) -> None:
    for folder in sorted({path.parent for path, _, _ in plan.writes}):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CommandError(
                f"Cannot write to {folder}: permission denied. Give this process write access to "
                f"{folder}, then convert again. Nothing was changed."
            )
    for path, _, _ in plan.writes:
        if path.exists() and not os.access(path, os.W_OK):
            raise CommandError(
                f"Cannot write {path}: it is read-only. Make it writable, then convert again. Nothing "
                "was changed."
            )


def _write_all(plan: _Plan) -> None:
    """Write the plan's files; when one cannot be written, put back those already written."""
    done: list[tuple[Path, bytes | None, int]] = []
    for path, content, mode in plan.writes:
        try:
            before = path.read_bytes() if path.exists() else None
            _write_file(path, content, mode)
        except OSError as exc:
            error = exc
            break
        done.append((path, before, mode))
    else:
        return
    for written, before, mode in reversed(done):
        with contextlib.suppress(OSError):
            if before is None:
                written.unlink()
            else:
                _write_file(written, before, mode)
    raise CommandError(
        f"Cannot write {path}: {error.strerror or error}. What was written is put back, so "
        f"{plan.directory} is as it was: free some space or give this process write access to it, "
        "then convert again."
    )


def _write_file(path: Path, content: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, renamed over it."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
