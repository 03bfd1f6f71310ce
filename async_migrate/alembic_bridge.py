"""The one place async_migrate drives Alembic: its Config, its view of the scripts, and running a command.

- :func:`make_config` builds Alembic's ``Config`` for a migrations directory, with the settings env.py reads
  under ``Config.attributes["async_migrate"]`` (:data:`SETTINGS_KEY`).
- :func:`load_scripts` loads the ScriptDirectory once (a broken script fails here, by file and line).
- :func:`run` calls a command online (on async connections, through ``run_sync``) or offline, under the
  in-process Alembic lock, and turns Alembic's errors into ours (:mod:`async_migrate.alembic_errors`).
- :func:`migrate_online` and the listings of :mod:`async_migrate.listings` are ``alembic.command``'s
  upgrade, downgrade, heads, ... on a ScriptDirectory already loaded, so that no script is imported twice.

Alembic itself is imported only inside these functions: ``import async_migrate``, the no-op startup check
and a replica waiting for another one's upgrade never load it.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import io
import logging
import sys
import warnings
import weakref
from argparse import Namespace
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from . import script_heads
from .alembic_errors import (
    DUPLICATE_WARNING,
    MISSING_REFERENCE_WARNING,
    broken_history,
    duplicate_revisions,
    script_error,
    translate,
    unknown_revisions,
    unwritable_file,
    version_locations,
)
from .errors import AsyncMigrateError, MultipleHeadsError
from .sqlite_runner import in_thread, run_in_savepoints

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory

T = TypeVar("T")

# Alembic is imported lazily, usually after the app has set up logging: its import-time "setup plugin" INFO
# lines, which no app saw while Alembic was imported with everything else, stay quiet unless a level is set.
_alembic_plugins_log = logging.getLogger("alembic.runtime.plugins")
if _alembic_plugins_log.level == logging.NOTSET:
    _alembic_plugins_log.setLevel(logging.WARNING)

TEMPLATES_DIRECTORY = Path(__file__).parent / "templates"

#: The key of ``Config.attributes`` under which env.py finds what the Migrator hands it.
SETTINGS_KEY = "async_migrate"

ConfigureCallback = Callable[["Config"], "Config"]

#: Given the function that ends a revision (its savepoint released), returns the block within which
#: each revision recorded is to call it (``AppliedRecorder.revision_boundary``).
RevisionBoundary = Callable[[Callable[[], None]], contextlib.AbstractContextManager[None]]


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the time: CLI runners and tests replace it."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


#: The default ``stdout`` of a Migrator: the process's standard output as it is when written to.
SYS_STDOUT = cast(TextIO, _CurrentStdout())

# Alembic's EnvironmentContext installs module-global proxies (alembic.context, alembic.op): two commands
# running at once in one process corrupt each other. One lock per event loop serialises them.
_alembic_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _alembic_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _alembic_locks.get(loop)
    if lock is None:
        lock = _alembic_locks[loop] = asyncio.Lock()
    return lock


# -- the Config ------------------------------------------------------------------------------------------------


def make_config(
    directory: str,
    *,
    stdout: TextIO | None,
    x_arg: Sequence[str],
    env_settings: dict[str, Any],
    configure: Sequence[ConfigureCallback] = (),
    opts: Sequence[str] = (),
) -> Config:
    """Alembic's Config for ``directory``, with ``env_settings`` for env.py, after the ``configure``
    callbacks. ``opts`` names ``cmd_opts`` flags to set (as Flask-Migrate's ``opts``)."""
    from alembic.config import Config

    class TemplateConfig(Config):
        # init and list_templates read our templates.
        def get_template_directory(self) -> str:
            return str(TEMPLATES_DIRECTORY)

    out = stdout or io.StringIO()
    config: Config = TemplateConfig(Path(directory) / "alembic.ini", stdout=out, output_buffer=out)
    # Set in code rather than through set_main_option: ConfigParser interpolation would mangle a '%'.
    config.set_main_option("script_location", directory.replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.cmd_opts = Namespace(x=list(x_arg), quiet=stdout is None)
    for opt in opts:
        setattr(config.cmd_opts, opt, True)
    config.attributes[SETTINGS_KEY] = env_settings
    for callback in configure:
        config = callback(config)
    return config


def env_settings(
    metadata: Any,
    context_kwargs: Mapping[str, Any],
    url: URL,
    databases: Mapping[str, tuple[URL, Any]] | None = None,
    bind_names: Sequence[str] = (),
) -> dict[str, Any]:
    """What env.py finds under ``Config.attributes["async_migrate"]``. Users' committed env.py files read
    these keys: ``target_metadata``, ``configure_kwargs``, ``url``; in a multi-database setup also
    ``binds`` (name -> ``{"target_metadata", "url"}``, the databases a command runs on) and ``bind_names``
    (all of them, for script.py.mako)."""
    found: dict[str, Any] = {
        "target_metadata": metadata,
        "configure_kwargs": dict(context_kwargs),
        "url": url,
    }
    if databases is not None:
        found["binds"] = {
            name: {"target_metadata": target, "url": database_url}
            for name, (database_url, target) in databases.items()
        }
        found["bind_names"] = list(bind_names)
    return found


def add_version_callbacks(config: Config, *callbacks: Callable[..., None]) -> None:
    """Have env.py's ``context.configure()`` call ``callbacks`` (``on_version_apply``) before any the
    user configured."""
    configure_kwargs = config.attributes[SETTINGS_KEY]["configure_kwargs"]
    user = configure_kwargs.get("on_version_apply") or ()
    configure_kwargs["on_version_apply"] = (*callbacks, *((user,) if callable(user) else user))


def revision_environment(config: Config) -> bool:
    """Whether alembic.ini asks for env.py to run even for commands that only write scripts."""
    value = config.get_alembic_option("revision_environment")
    return str(value).lower() in ("true", "1", "yes", "on")


# -- the scripts -----------------------------------------------------------------------------------------------


def load_scripts(config: Config, url: URL | None = None) -> ScriptDirectory:
    """Alembic's view of the migration scripts, loaded (so a broken script fails here, by name), and its
    heads remembered for the next process (:mod:`async_migrate.script_heads`)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as AlembicCommandError

    script: ScriptDirectory | None = None
    try:
        script = ScriptDirectory.from_config(config)
        before = script_heads.fingerprint_of(script)
        if _reuse_map(script, before):
            return script
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            heads = script.get_heads()  # imports every revision script
        for warning in seen:
            if DUPLICATE_WARNING in str(warning.message):
                revision = str(warning.message).split()[1]
                raise duplicate_revisions(revision, script_heads.locations_of(script))
        for warning in seen:  # the scripts' own warnings, as they would have been without us
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        script_heads.remember_heads(script, heads, before)
        _remember_map(script, before)
        return script
    except AsyncMigrateError:
        raise
    except AlembicCommandError as exc:
        raise translate(exc, url, config) from None
    except Exception as exc:
        locations = script_heads.locations_of(script) if script is not None else None
        raise broken_history(exc, locations) or script_error(exc) or exc from None


# Revision maps loaded in this process, by version folders and their files' fingerprint (names, sizes,
# modification times), with the script files each holds.
_loaded_maps: dict[tuple[object, ...], tuple[Any, frozenset[str]]] = {}
_MAPS_KEPT = 8
_SETTLED_S = 2.0


def _map_key(script: ScriptDirectory, fingerprint: str | None) -> tuple[object, ...]:
    return (
        tuple(script_heads.locations_of(script) or ()), script.sourceless,
        script.recursive_version_locations, fingerprint,
    )  # fmt: skip


def _reuse_map(script: ScriptDirectory, fingerprint: str | None) -> bool:
    """Give ``script`` the revision map of the last load of the same files in this process, if any:
    its imported scripts, instead of importing each again (the test kit's stairway loads them three
    times per revision). The map must hold exactly the files there now (Alembic adds to a map the
    revisions it writes)."""
    if fingerprint is None:
        return False
    known = _loaded_maps.get(_map_key(script, fingerprint))
    locations = script_heads.locations_of(script)
    if known is None or locations is None:
        return False
    revision_map, paths = known
    held = frozenset(str(s.path) for s in revision_map._revision_map.values() if s is not None)
    if held != paths or paths != script_heads.version_paths(locations):
        return False
    script.revision_map = revision_map
    return True


def _remember_map(script: ScriptDirectory, fingerprint: str | None) -> None:
    locations = script_heads.locations_of(script)
    if fingerprint is None or locations is None:
        return  # a layout script_heads does not read
    # Files that changed during the load are not kept; nor files written just now, which could be
    # written again within the clock's grain, unseen.
    paths = script_heads.settled_files(locations, fingerprint, _SETTLED_S)
    if paths is None:
        return
    if len(_loaded_maps) >= _MAPS_KEPT:
        _loaded_maps.pop(next(iter(_loaded_maps)))
    _loaded_maps[_map_key(script, fingerprint)] = (script.revision_map, paths)


@contextlib.contextmanager
def warned_once(script: ScriptDirectory) -> Iterator[None]:
    """Around an Alembic command that loads the scripts again after :func:`load_scripts` did (autogenerate
    and ``check`` make their own ScriptDirectory): the scripts' import-time warnings, shown by that first
    load, are not shown twice. Other warnings pass as they would."""
    folders = [Path(p).resolve() for p in script_heads.locations_of(script) or ()]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    for warning in seen:
        source = Path(warning.filename).resolve()
        if not any(folder in source.parents for folder in folders):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


def cached_heads(
    directory: str, configure: Sequence[ConfigureCallback], make: Callable[[], Config]
) -> script_heads.Heads | None:
    """The scripts' heads without importing every script; None when only Alembic's full load can tell.

    The version folder is told without Alembic when the setup is the plain one (no ``configure``
    callbacks, no version location settings in alembic.ini); else Alembic's ScriptDirectory (from
    ``make()``'s Config) names the folders, without loading the scripts.
    """
    parser = configparser.RawConfigParser()
    try:
        parser.read(Path(directory) / "alembic.ini", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    settings = ("version_locations", "recursive_version_locations", "sourceless")
    if not configure and not any(
        parser.has_option("alembic", name) for name in settings if parser.has_section("alembic")
    ):
        locations: list[str] | None = [str(Path(directory) / "versions")]
    else:
        # None when Alembic cannot read the setup: the full load that follows says what is wrong.
        locations = version_locations(make())
    return script_heads.cached(locations, directory) if locations is not None else None


def check_known(script: ScriptDirectory, current_heads: Sequence[str]) -> None:
    """Refuse a database at a revision the scripts don't have."""
    unknown = []
    for rev in current_heads:
        try:
            script.revision_map.get_revision(rev)
        except Exception:
            unknown.append(rev)
    if unknown:
        raise unknown_revisions(unknown, script.get_heads())


def check_single_head(script: ScriptDirectory, target: str) -> None:
    """Refuse ``head`` as a target while the scripts have several heads."""
    if target != "head" and not target.endswith(":head"):
        return
    heads = script.get_heads()
    if len(heads) > 1:
        raise MultipleHeadsError(
            f"The migration scripts have {len(heads)} heads ({', '.join(heads)}), so 'head' is "
            f"ambiguous. Merge them with `merge -m 'merge heads' {' '.join(heads)}` (then upgrade), "
            "or upgrade to 'heads' or to one named revision.",
            heads,
        )


# -- running a command -----------------------------------------------------------------------------------------


async def run(
    call: Callable[[Config], T],
    config: Config,
    connections: Mapping[str, AsyncConnection] | None = None,
    *,
    url: URL | None = None,
    multidb: bool = False,
    sqlite_file: URL | None = None,
    revision_boundary: RevisionBoundary | None = None,
) -> T:
    """Run ``call(config)`` (an ``alembic.command`` call) under the in-process Alembic lock.

    Online on ``connections`` (name -> connection; env.py finds the first in ``Config.attributes
    ["connection"]`` and, with ``multidb``, all in ``["connections"]``); offline without them. With
    ``sqlite_file`` the call runs in a worker thread on a plain connection to that file, a savepoint per
    revision (:mod:`async_migrate.sqlite_runner`), ``revision_boundary`` told where each revision ends.
    Alembic's errors become ours, with the password of ``url`` hidden.
    """
    from alembic.util import AutogenerateDiffsDetected
    from alembic.util import CommandError as AlembicCommandError

    async with _alembic_lock():
        try:
            with warnings.catch_warnings():
                # Alembic warns of a missing revision, then fails: the error below says it, once.
                warnings.filterwarnings("ignore", message=MISSING_REFERENCE_WARNING)
                return await _run_unlocked(
                    call, config, connections, multidb, sqlite_file, revision_boundary
                )
        except AutogenerateDiffsDetected:
            raise  # check's finding, not a failure: the caller words it
        except AlembicCommandError as exc:
            raise translate(exc, url, config) from None
        except Exception as exc:
            loading = (
                unwritable_file(exc, config)
                or broken_history(exc, version_locations(config))
                or script_error(exc)
            )
            if loading is None:
                raise
            raise loading from None


async def _run_unlocked(
    call: Callable[[Config], T],
    config: Config,
    connections: Mapping[str, AsyncConnection] | None,
    multidb: bool,
    sqlite_file: URL | None,
    revision_boundary: RevisionBoundary | None,
) -> T:
    if sqlite_file is not None:
        return await in_thread(
            lambda stop: run_in_savepoints(
                sqlite_file,
                lambda connection, points: _call_on(
                    call, config, connection, points.revision_done, revision_boundary
                ),
                stop,
            )
        )
    if not connections:
        return call(config)
    first = next(iter(connections.values()))

    def on_sync_connection(sync_connection: Connection) -> T:
        # Inside run_sync's greenlet every connection's sync face can be used.
        if multidb:
            config.attributes["connections"] = {
                name: c.sync_connection for name, c in connections.items()
            }
        try:
            return _call_on(call, config, sync_connection)
        finally:
            config.attributes.pop("connections", None)

    return await first.run_sync(on_sync_connection)


def _call_on(
    call: Callable[[Config], T],
    config: Config,
    connection: Connection,
    revision_done: Callable[[], None] | None = None,
    revision_boundary: RevisionBoundary | None = None,
) -> T:
    config.attributes["connection"] = connection
    boundary = (
        revision_boundary(revision_done)
        if revision_boundary is not None and revision_done is not None
        else contextlib.nullcontext()
    )
    try:
        with boundary:
            return call(config)
    finally:
        config.attributes.pop("connection", None)


def migrate_online(
    config: Config, script: ScriptDirectory, direction: str, revision: str, tag: str | None
) -> None:
    """``alembic.command.upgrade``/``downgrade`` (online), on the ScriptDirectory already loaded for the
    checks: the command would build its own and import every revision script a second time."""
    from alembic.runtime.environment import EnvironmentContext

    def steps(rev: Any, context: Any) -> Any:
        if direction == "upgrade":
            return script._upgrade_revs(revision, rev)
        return script._downgrade_revs(revision, rev)

    with EnvironmentContext(config, script, fn=steps, destination_rev=revision, tag=tag):
        script.run_env()


def first_script(result: Any) -> Script | None:
    """What ``command.revision``/``merge`` returned (a Script, or one per database), as one Script or None."""
    from alembic.script import Script

    if isinstance(result, list):
        result = next((s for s in result if s is not None), None)
    return result if isinstance(result, Script) else None


def describe_diff(diff: Any) -> str:
    """One of Alembic's diff tuples in words, e.g. ``add_column note.body``."""
    if isinstance(diff, list) and diff:
        return describe_diff(diff[0])
    if not isinstance(diff, tuple) or not diff or not isinstance(diff[0], str):
        return str(diff)
    kind = diff[0]
    if kind.startswith("modify_") and len(diff) > 3:
        return f"{kind} {diff[2]}.{diff[3]}"
    table = next((part for part in diff[1:3] if isinstance(part, str)), None)
    name = next((str(p.name) for p in diff[1:] if getattr(p, "name", None)), None)
    subject = ".".join(part for part in (table, name) if part)
    return f"{kind} {subject}" if subject else kind
