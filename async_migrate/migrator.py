"""The core: Alembic's commands on an async SQLAlchemy engine, with no web framework involved.

Each command opens one :class:`~sqlalchemy.ext.asyncio.AsyncConnection` and calls the ``alembic.command``
function inside ``await connection.run_sync(...)``, handing the sync connection to env.py through
``Config.attributes["connection"]`` (Alembic's connection-sharing recipe). Commands that change the database
(upgrade, downgrade, stamp) run behind the migration lock of :mod:`async_migrate.locking`.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import io
import logging
import random
import sys
import time
import traceback
import weakref
from argparse import Namespace
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import MetaData, event, pool
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import asyncpg_simple_query, script_heads
from .ddl_guard import (
    DEFAULT_POSTGRES_DDL_LOCK_TIMEOUT,
    MYSQL_DIALECTS,
    AutocommitTracker,
    BlockerWatcher,
    DDLGuard,
    is_lock_timeout,
    reset_session_timeouts,
    session_id,
    set_session_timeouts,
)
from .errors import (
    AsyncMigrateError,
    CommandError,
    ConfigurationError,
    DatabaseUnreachableError,
    DDLLockTimeoutError,
    LockTimeoutError,
    MigrationFailedError,
    ModelsDifferError,
    MultipleHeadsError,
    NotUpToDateError,
    UnknownRevisionError,
    UnreviewedWarningsError,
)
from .locking import MigrationLock, lock_for
from .sqlite_runner import (
    RevisionSavepoints,
    in_thread,
    read_version_table,
    run_in_savepoints,
    sqlite_file_url,
)
from .urls import async_url, hide_password, render_url

if TYPE_CHECKING:
    # Alembic itself is imported where a command runs: `import async_migrate` and the no-op startup
    # check (and `current` at head) never load it, which is a good part of a replica's start-up CPU.
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext, MigrationInfo
    from alembic.script import Script, ScriptDirectory
    from alembic.util import CommandError as AlembicCommandError

    from .doctor import Diagnosis
    from .review import RenamePolicy, Review

__all__ = ["TEMPLATES_DIRECTORY", "MigrationStatus", "Migrator"]

log = logging.getLogger("async_migrate")

# Alembic is imported lazily, usually after the app has set up logging: its import-time "setup plugin" INFO
# lines, which no app saw while Alembic was imported with everything else, stay quiet unless a level is set.
_alembic_plugins_log = logging.getLogger("alembic.runtime.plugins")
if _alembic_plugins_log.level == logging.NOTSET:
    _alembic_plugins_log.setLevel(logging.WARNING)

T = TypeVar("T")

TEMPLATES_DIRECTORY = Path(__file__).parent / "templates"

#: The key of ``Config.attributes`` under which env.py finds what the Migrator hands it.
SETTINGS_KEY = "async_migrate"

ConfigureCallback = Callable[["Config"], "Config"]

# SQLSTATEs worth retrying a connection for: too many clients, server starting up, connection failures.
_TRANSIENT_SQLSTATES = {"53300", "57P03", "08000", "08001", "08003", "08004", "08006"}

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


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the time: CLI runners and tests replace it."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


#: The default ``stdout`` of a Migrator: the process's standard output as it is when written to.
SYS_STDOUT = cast(TextIO, _CurrentStdout())


def _template_config(ini: Path, stdout: TextIO) -> Config:
    """Alembic's Config, with ``init`` and ``list_templates`` reading our templates."""
    from alembic.config import Config

    class TemplateConfig(Config):
        def get_template_directory(self) -> str:
            return str(TEMPLATES_DIRECTORY)

    return TemplateConfig(ini, stdout=stdout, output_buffer=stdout)


@dataclass(frozen=True)
class MigrationStatus:
    """What :meth:`Migrator.status` found: the readiness of a database."""

    current_heads: tuple[str, ...]
    script_heads: tuple[str, ...]
    migrating: bool

    @property
    def at_head(self) -> bool:
        return set(self.current_heads) == set(self.script_heads)


def _emit_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), exc.__cause__):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _is_transient(exc: BaseException) -> bool:
    """Whether a failed connection attempt may succeed if tried again shortly."""
    if _sqlstate(exc) in _TRANSIENT_SQLSTATES:
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)) or (
            isinstance(current, OSError) and not isinstance(current, PermissionError)
        ):
            return True
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return False


def _call_with(
    call: Callable[[Config], T],
    config: Config,
    connection: Connection,
    savepoints: RevisionSavepoints,
    recorder: _AppliedRecorder | None,
) -> T:
    config.attributes["connection"] = connection
    if recorder is not None:
        recorder.on_revision = savepoints.revision_done
    try:
        return call(config)
    finally:
        config.attributes.pop("connection", None)
        if recorder is not None:
            recorder.on_revision = None


def _migrate_online(
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


def _unknown_revisions(unknown: Sequence[str], heads: Sequence[str]) -> UnknownRevisionError:
    return UnknownRevisionError(
        f"The database is at revision {', '.join(unknown)}, which the migration scripts don't know "
        f"(script heads: {', '.join(heads) or 'none'}). Either a newer release already migrated this "
        "database (deploy that release), or the script was deleted or not pulled: restore it. If the "
        "schema really matches a known revision, record that with `stamp --purge <revision>`.",
        list(unknown),
    )


def cancel_requested() -> bool:
    """Whether someone asked to cancel the current task and nobody withdrew it (``Task.uncancel``).

    On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives just as the awaited operation
    completes (CPython gh-86296, fixed in 3.12). Drivers connect through it (asyncmy always, asyncpg with a
    timeout), so a waiter cancelled while connecting could carry on and later take the lock; the request
    stays visible in ``cancelling()``.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _backoff(attempt: int, base: float = 0.05, cap: float = 1.0) -> float:
    """Exponential backoff with full jitter, so that many waiters don't poll in step."""
    return float(random.uniform(0.5, 1.0) * min(cap, base * (2**attempt)))


class Migrator:
    """Alembic migrations for one async engine and one migrations directory.

    :param engine_or_url: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`, or a URL with an asyncio driver
        (``postgresql+asyncpg://...``, ``sqlite+aiosqlite:///...``). An engine made from a URL (on first use)
        belongs to the Migrator: close it with :meth:`aclose` (or use ``async with``). An engine handed in is
        left open.
    :param metadata: the models' :class:`~sqlalchemy.MetaData`; needed by ``migrate`` and ``check``.
    :param directory: the migrations directory (``alembic.ini``, ``env.py``, ``versions/``).
    :param lock: take the migration lock around upgrade, downgrade and stamp. Turn it off only for databases
        where it cannot work; then make sure only one process migrates at a time.
    :param lock_timeout: seconds to wait for another migrator before giving up with :class:`LockTimeoutError`.
    :param connect_timeout: seconds to keep retrying a database that refuses connections (still starting,
        too many clients) before giving up with :class:`DatabaseUnreachableError`; 0 tries once.
    :param stdout: where Alembic's text output goes (history listings, ``--sql`` output); ``None`` drops it.
    :param configure: callbacks that receive the Alembic :class:`~alembic.config.Config` and return it.
    :param x_arg: ``-x`` arguments passed to env.py with every command.
    :param ddl_lock_timeout: seconds a migration statement may wait for a table lock (``SET lock_timeout``
        on PostgreSQL, ``lock_wait_timeout`` on MySQL/MariaDB; on the migration session only, never on the
        app's connections) before its revision is rolled back and retried, so that a migration blocked by a
        long transaction does not queue every query on the table behind it. ``"auto"`` (default): 5 s on
        PostgreSQL, off elsewhere; None: wait forever.
    :param ddl_retry_attempts: how many times a revision that hit the DDL lock timeout is tried in all.
    :param ddl_retry_backoff: seconds before the second attempt, doubled for each further one.
    :param statement_timeout: PostgreSQL only: seconds any migration statement may run; None: no limit.
    :param context_kwargs: passed to ``context.configure()`` in env.py (``compare_type``, ``render_as_batch``,
        ``version_table``, ``include_object``, ...). ``compare_type`` and ``render_as_batch`` default to True
        and ``transaction_per_migration`` to True, so that a failed revision is rolled back alone.
    """

    def __init__(
        self,
        engine_or_url: AsyncEngine | URL | str,
        metadata: MetaData | None = None,
        directory: str | Path = "migrations",
        *,
        lock: bool = True,
        lock_timeout: float = 60.0,
        connect_timeout: float = 0.0,
        stdout: TextIO | None = SYS_STDOUT,
        configure: Iterable[ConfigureCallback] = (),
        x_arg: Sequence[str] = (),
        ddl_lock_timeout: float | str | None = "auto",
        ddl_retry_attempts: int = 5,
        ddl_retry_backoff: float = 2.0,
        statement_timeout: float | None = None,
        binds: Mapping[str, tuple[AsyncEngine | URL | str, MetaData | None]] | None = None,
        bind_name: str | None = None,
        **context_kwargs: Any,
    ) -> None:
        # Built from a URL, the engine is made on first use: the no-op fast path on a SQLite file never
        # needs it, and making it imports the driver and its dialect.
        self._engine: AsyncEngine | None = None
        self._owns_engine = not isinstance(engine_or_url, AsyncEngine)
        if isinstance(engine_or_url, (str, URL)):
            self._url = async_url(engine_or_url)
        else:
            self._engine, _ = self._engine_from(engine_or_url)
            self._url = self._engine.url
        _check_metadata(metadata)
        self.metadata = metadata
        #: In a multi-database setup, the name of the database this Migrator stands for ("" is the
        #: main one); None otherwise.
        self.bind_name = bind_name
        #: The other databases of a multi-database setup: name -> (engine, metadata).
        self.binds: dict[str, tuple[AsyncEngine, MetaData | None]] = {}
        self._owned_bind_engines: list[AsyncEngine] = []
        for name, (bind_engine, bind_metadata) in (binds or {}).items():
            if not name or not name.isidentifier():
                raise ConfigurationError(
                    f"Bind name {name!r} must be a Python identifier (it names functions in the scripts)."
                )
            engine, owned = self._engine_from(bind_engine)
            _check_metadata(bind_metadata)
            self.binds[name] = (engine, bind_metadata)
            if owned:
                self._owned_bind_engines.append(engine)
        self.directory = str(directory)
        self.lock = lock
        self.lock_timeout = float(lock_timeout)
        self.connect_timeout = float(connect_timeout)
        self.stdout = stdout
        self.configure_callbacks = list(configure)
        self.x_arg = list(x_arg)
        if ddl_lock_timeout not in ("auto", None) and not isinstance(
            ddl_lock_timeout, (int, float)
        ):
            raise ConfigurationError(
                f"ddl_lock_timeout must be a number of seconds, None (off) or 'auto', not {ddl_lock_timeout!r}."
            )
        self.last_review: Review | None = None
        #: Where upgrade/downgrade report each revision; None: INFO log lines.
        self.progress: Progress | None = None
        self._all_bind_names: list[str] = []
        self.ddl_lock_timeout = ddl_lock_timeout
        self.ddl_retry_attempts = ddl_retry_attempts
        self.ddl_retry_backoff = ddl_retry_backoff
        self.statement_timeout = statement_timeout
        self.context_kwargs: dict[str, Any] = {
            "compare_type": True,
            "render_as_batch": True,
            "transaction_per_migration": True,
            **context_kwargs,
        }
        _check_identifier("version_table", self.version_table)
        if self.version_table_schema is not None:
            _check_identifier("version_table_schema", self.version_table_schema)

    @classmethod
    def _engine_from(cls, engine_or_url: Any) -> tuple[AsyncEngine, bool]:
        """The engine to use, and whether the Migrator made it (and so disposes of it)."""
        if isinstance(engine_or_url, AsyncEngine):
            async_url(engine_or_url.url)
            return engine_or_url, False
        if isinstance(engine_or_url, (str, URL)):
            return cls._engine_for(async_url(engine_or_url)), True
        raise ConfigurationError(
            f"Migrator needs an AsyncEngine or a database URL, not {type(engine_or_url).__name__}."
        )

    @staticmethod
    def _engine_for(url: URL) -> AsyncEngine:
        # Migrations are rare and short: no pool to outlive the event loop. An in-memory SQLite database
        # lives in its one connection, so that one is kept.
        in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        poolclass = pool.StaticPool if in_memory else pool.NullPool
        return create_async_engine(url, poolclass=poolclass)

    @property
    def engine(self) -> AsyncEngine:
        """The database's AsyncEngine (made from the URL on first use, when the Migrator got a URL)."""
        if self._engine is None:
            try:
                self._engine = self._engine_for(self._url)
            except ModuleNotFoundError as exc:
                raise ConfigurationError(
                    f"The database driver for {self.url} is not installed ({exc}): install it, e.g. "
                    f"`pip install {exc.name or self._url.get_driver_name()}`."
                ) from None
        return self._engine

    @property
    def version_table(self) -> str:
        return str(self.context_kwargs.get("version_table") or "alembic_version")

    @property
    def version_table_schema(self) -> str | None:
        schema = self.context_kwargs.get("version_table_schema")
        return str(schema) if schema else None

    @property
    def url(self) -> str:
        """The database URL with the password hidden."""
        return render_url(self._url)

    async def aclose(self) -> None:
        """Dispose of the engines the Migrator made."""
        if self._owns_engine and self._engine is not None:
            await self._engine.dispose()
        for engine in self._owned_bind_engines:
            await engine.dispose()

    @property
    def bind_names(self) -> list[str]:
        """All databases of a multi-database setup, the main one ("") first; [] for a single database."""
        return ["", *self.binds] if self.binds else []

    def bind_migrators(self) -> list[Migrator]:
        """One Migrator per database of a multi-database setup (each with its own version table and lock),
        made with this Migrator's current settings; [self] for a single database."""
        if not self.binds:
            return [self]
        bind_migrators = []
        for name in self.bind_names:
            engine, metadata = (self.engine, self.metadata) if not name else self.binds[name]
            child = Migrator(
                engine,
                metadata,
                self.directory,
                lock=self.lock,
                lock_timeout=self.lock_timeout,
                connect_timeout=self.connect_timeout,
                stdout=self.stdout,
                configure=self.configure_callbacks,
                x_arg=self.x_arg,
                ddl_lock_timeout=self.ddl_lock_timeout,
                ddl_retry_attempts=self.ddl_retry_attempts,
                ddl_retry_backoff=self.ddl_retry_backoff,
                statement_timeout=self.statement_timeout,
                bind_name=name,
                **self.context_kwargs,
            )
            child._all_bind_names = self.bind_names
            child.progress = self.progress
            bind_migrators.append(child)
        return bind_migrators

    @contextlib.asynccontextmanager
    async def connect_binds(self) -> AsyncIterator[dict[str, AsyncConnection]]:
        """A connection to each database (``{"": connection}`` for a single database)."""
        async with contextlib.AsyncExitStack() as stack:
            connections = {}
            for child in self.bind_migrators():
                connections[child.bind_name or ""] = await stack.enter_async_context(
                    child.connect()
                )
            yield connections

    async def __aenter__(self) -> Migrator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- configuration -------------------------------------------------------------------------------------

    def get_config(
        self,
        x_arg: Sequence[str] | None = None,
        opts: Sequence[str] | None = None,
    ) -> Config:
        """The Alembic Config for this directory, after the ``configure`` callbacks.

        ``opts`` names ``cmd_opts`` flags to set (as Flask-Migrate's ``opts``), e.g. ``["autogenerate"]``.
        """
        ini = Path(self.directory) / "alembic.ini"
        stdout = self.stdout or io.StringIO()
        config = _template_config(ini, stdout)
        # Set in code rather than through set_main_option: ConfigParser interpolation would mangle a '%'.
        config.set_main_option("script_location", self.directory.replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        config.cmd_opts = Namespace(x=[*self.x_arg, *(x_arg or ())], quiet=self.stdout is None)
        for opt in opts or ():
            setattr(config.cmd_opts, opt, True)
        config.attributes[SETTINGS_KEY] = {
            "target_metadata": self.metadata,
            "configure_kwargs": dict(self.context_kwargs),
            "url": self._url,
        }
        if self.binds or self.bind_name is not None:
            # Multi-database: the databases this command runs on, and all names (for script.py.mako).
            databases = (
                {self.bind_name: (self.engine, self.metadata)}
                if self.bind_name is not None
                else {"": (self.engine, self.metadata), **self.binds}
            )
            config.attributes[SETTINGS_KEY]["binds"] = {
                name: {"target_metadata": metadata, "url": engine.url}
                for name, (engine, metadata) in databases.items()
            }
            config.attributes[SETTINGS_KEY]["bind_names"] = self._all_bind_names or self.bind_names
        for callback in self.configure_callbacks:
            config = callback(config)
        return config

    def script_directory(self, config: Config | None = None) -> ScriptDirectory:
        """Alembic's view of the migration scripts, loaded (so a broken script fails here, by name)."""
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError as AlembicCommandError

        try:
            script = ScriptDirectory.from_config(config or self.get_config())
            script_heads.remember_heads(script, script.get_heads())  # imports every revision script
            return script
        except AlembicCommandError as exc:
            raise self._translate(exc) from None
        except Exception as exc:
            raise _script_error(exc) or exc from None

    # -- connections ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connect(self, deadline: float | None = None) -> AsyncIterator[AsyncConnection]:
        """One connection set up for migrations, retrying transient failures until ``deadline``.

        On SQLite the connection runs in real transactions (the driver's own mode would not BEGIN before
        DDL), so that a failed revision leaves nothing half-applied.
        """
        if deadline is None:
            deadline = time.monotonic() + self.connect_timeout
        attempt = 0
        while True:
            try:
                connection = await self.engine.connect()
                break
            except InvalidRequestError as exc:
                raise ConfigurationError(
                    f"Cannot connect to {self.url}: {hide_password(str(exc), self._url)}"
                ) from None
            except (DBAPIError, OSError, TimeoutError) as exc:
                remaining = deadline - time.monotonic()
                if not _is_transient(exc) or remaining <= 0:
                    if self.engine.dialect.name == "sqlite":
                        # aiosqlite stops its worker thread after a failed connect with a future on this
                        # loop; a loop closed before that thread answers makes it print a traceback.
                        await asyncio.sleep(0.1)
                    raise self._unreachable(exc) from None
                delay = min(remaining, _backoff(attempt, base=0.2, cap=2.0))
                if attempt == 0 or attempt % 5 == 0:
                    log.info(
                        "Database %s not reachable yet (%s); retrying for up to %.0fs",
                        self.url,
                        self._cause(exc),
                        remaining,
                    )
                attempt += 1
                await asyncio.sleep(delay)
        if cancel_requested():
            await connection.close()
            raise asyncio.CancelledError("cancelled while connecting")
        try:
            if connection.dialect.name == "sqlite":
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                event.listen(connection.sync_connection, "begin", _emit_begin)
            elif connection.dialect.driver == "asyncpg":
                asyncpg_simple_query.enable(self.engine.sync_engine)
                await connection.execution_options(**{asyncpg_simple_query.OPTION: True})
            yield connection
        finally:
            await connection.close()

    def _cause(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        text = f"{type(orig).__name__}: {orig}".strip().rstrip(":")
        return hide_password(text.splitlines()[0] if text else type(orig).__name__, self._url)

    def _unreachable(self, exc: BaseException) -> DatabaseUnreachableError:
        url = self._url
        where = (
            f"file {url.database!r}"
            if url.get_backend_name() == "sqlite"
            else f"host {url.host or 'localhost'}, port {url.port or 'default'}, database {url.database!r}"
        )
        return DatabaseUnreachableError(
            f"Could not connect to the database {self.url} ({where}): {self._cause(exc)}. "
            "Check that the server is running and that the URL (host, port, user, password, database name) "
            "is right."
        )

    async def read_current_heads(self, connection: AsyncConnection) -> tuple[str, ...]:
        """The revisions in the version table: one cheap read, no script loaded.

        Read directly rather than through a MigrationContext, which would log two INFO lines on every
        readiness probe.
        """
        table = sa.table(
            self.version_table, sa.column("version_num"), schema=self.version_table_schema
        )

        def read(sync_connection: Connection) -> tuple[str, ...]:
            try:
                return tuple(sync_connection.execute(sa.select(table.c.version_num)).scalars())
            except DBAPIError:
                # Usually "no such table" (a new database): ask, rather than ask first on every start.
                sync_connection.rollback()
                if not sa.inspect(sync_connection).has_table(
                    self.version_table, schema=self.version_table_schema
                ):
                    return ()
                # Another migrator created it meanwhile (or the read failed for another reason: then
                # this one fails again, and says why).
                return tuple(sync_connection.execute(sa.select(table.c.version_num)).scalars())

        heads = await connection.run_sync(read)
        await connection.rollback()
        return heads

    # -- running Alembic -----------------------------------------------------------------------------------

    async def _alembic(
        self,
        call: Callable[[Config], T],
        config: Config,
        connection: AsyncConnection | Mapping[str, AsyncConnection] | None = None,
        *,
        sqlite_file: URL | None = None,
        recorder: _AppliedRecorder | None = None,
    ) -> T:
        """Run one ``alembic.command`` call, online on ``connection`` or offline without one.

        In a multi-database setup ``connection`` maps database names to connections; env.py finds them
        all in ``Config.attributes["connections"]`` (a single database's in ``["connection"]``). With
        ``sqlite_file`` the call runs in a worker thread on a plain connection to that file, a savepoint
        per revision (see :mod:`async_migrate.sqlite_runner`).
        """
        from alembic.util import AutogenerateDiffsDetected
        from alembic.util import CommandError as AlembicCommandError

        async with _alembic_lock():
            try:
                if sqlite_file is not None:
                    return await in_thread(
                        lambda: run_in_savepoints(
                            sqlite_file,
                            lambda c, points: _call_with(call, config, c, points, recorder),
                        )
                    )
                if connection is None:
                    return call(config)
                connections = (
                    dict(connection)
                    if isinstance(connection, Mapping)
                    else {self.bind_name or "": connection}
                )
                first = next(iter(connections.values()))

                def run(sync_connection: Connection) -> T:
                    # Inside run_sync's greenlet every connection's sync face can be used.
                    config.attributes["connection"] = sync_connection
                    if self.binds or self.bind_name is not None:
                        config.attributes["connections"] = {
                            name: c.sync_connection for name, c in connections.items()
                        }
                    try:
                        return call(config)
                    finally:
                        config.attributes.pop("connection", None)
                        config.attributes.pop("connections", None)

                return await first.run_sync(run)
            except AutogenerateDiffsDetected:
                raise  # check's finding, not a failure: the caller words it
            except AlembicCommandError as exc:
                raise self._translate(exc) from None
            except Exception as exc:
                script_error = _script_error(exc)
                if script_error is None:
                    raise
                raise script_error from None

    def _translate(self, exc: AlembicCommandError) -> AsyncMigrateError:
        message = hide_password(str(exc), self._url)
        if "Can't locate revision" in message or "No such revision" in message:
            return CommandError(
                f"{message}. Check the revision id (`history` lists them); if the database is at a revision "
                "whose script is gone, restore the script, or run `stamp --purge <revision>` after checking "
                "the schema."
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

    def _ensure_directory(self) -> None:
        if not (Path(self.directory) / "env.py").is_file():
            raise ConfigurationError(
                f"No migrations environment in {self.directory!r} (env.py is missing). Run `init` first, "
                "or point -d/--directory at the folder that has it."
            )

    @staticmethod
    def _check_known(script: ScriptDirectory, current_heads: Sequence[str]) -> None:
        unknown = []
        for rev in current_heads:
            try:
                script.revision_map.get_revision(rev)
            except Exception:
                unknown.append(rev)
        if unknown:
            raise _unknown_revisions(unknown, script.get_heads())

    @staticmethod
    def _check_single_head(script: ScriptDirectory, target: str) -> None:
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

    async def _locked(
        self,
        work: Callable[[AsyncConnection, tuple[str, ...]], Any],
        *,
        is_done: Callable[[tuple[str, ...]], bool],
        check: Callable[[tuple[str, ...]], None],
        precheck: Callable[[tuple[str, ...]], None] | None = None,
    ) -> None:
        """Run ``work`` under the migration lock, unless ``is_done`` says there is nothing to do.

        Waiters poll: each attempt opens a connection, re-reads the version table, leaves if another migrator
        finished the work meanwhile, and otherwise tries the lock once and closes the connection again.
        ``check`` refuses a state it cannot work from; with a ``precheck`` (a cheaper one), waiters run
        only that, and ``check`` runs just before ``work``.
        """
        first_check = precheck or check

        def final_check(current: tuple[str, ...]) -> None:
            if precheck is not None:
                check(current)

        connect_deadline = time.monotonic() + self.connect_timeout
        lock_deadline: float | None = None
        waited_since: float | None = None
        lock: MigrationLock | None = (
            None  # kept across polls: its key is read from the database once
        )
        attempt = 0
        while True:
            deadline = (
                connect_deadline if lock_deadline is None else max(connect_deadline, lock_deadline)
            )
            async with self.connect(deadline) as connection:
                current = await self.read_current_heads(connection)
                first_check(current)
                if is_done(current):
                    if waited_since is not None:
                        log.info(
                            "Another migrator brought %s to %s while this one waited %.1fs; nothing to do",
                            self.url,
                            ", ".join(current) or "base",
                            time.monotonic() - waited_since,
                        )
                    return
                if not self.lock:
                    final_check(current)
                    await work(connection, current)
                    return
                lock = lock or lock_for(connection, self.version_table, self.version_table_schema)
                if await self._try_lock(lock, connection):
                    if waited_since is not None:
                        log.info(
                            "Took the %s after waiting %.1fs",
                            lock.description,
                            time.monotonic() - waited_since,
                        )
                    try:
                        # Another migrator may have finished between our read and our lock.
                        current = await self.read_current_heads(connection)
                        first_check(current)
                        if not is_done(current):
                            final_check(current)
                            await work(connection, current)
                    finally:
                        await self._unlock(lock, connection)
                    return
                now = time.monotonic()
                if lock_deadline is None:
                    lock_deadline = now + self.lock_timeout
                    waited_since = now
                    log.info(
                        "Waiting up to %.0fs for the %s, held by %s",
                        self.lock_timeout,
                        lock.description,
                        await lock.describe_holder(connection) or "another migrator",
                    )
                elif now >= lock_deadline:
                    holder = await lock.describe_holder(connection)
                    raise LockTimeoutError(
                        f"Gave up after waiting {self.lock_timeout:.0f}s for the {lock.description}, held by "
                        f"{holder or 'another migrator (it let go just now)'}. Another deploy may still be "
                        "migrating: wait for it, raise the lock timeout, or stop the holder if it is stuck.",
                        holder,
                    )
            attempt += 1
            await asyncio.sleep(_backoff(attempt))

    @staticmethod
    async def _try_lock(lock: MigrationLock, connection: AsyncConnection) -> bool:
        acquired = False
        try:
            if cancel_requested():
                raise asyncio.CancelledError("cancelled before taking the migration lock")
            acquired = await lock.try_acquire(connection)
            if acquired and cancel_requested():
                raise asyncio.CancelledError("cancelled while taking the migration lock")
            return acquired
        except BaseException:
            # Cancelled or failed half-way: the lock may be ours anyway. Give it back (a file lock lives
            # outside the session), then close the session for good: a closed session holds no lock.
            if acquired:
                with contextlib.suppress(Exception):
                    await lock.release(connection)
            await _discard(connection)
            raise

    @staticmethod
    async def _unlock(lock: MigrationLock, connection: AsyncConnection) -> None:
        try:
            await lock.release(connection)
        except BaseException:
            log.warning(
                "Could not release the %s cleanly; closing its connection", lock.description
            )
            await _discard(connection)
            raise

    # -- commands: scripts only ----------------------------------------------------------------------------

    async def list_templates(self) -> list[tuple[str, str]]:
        """The migration environment templates ``init`` can use, as ``(name, synopsis)`` pairs."""
        from alembic import command

        config = self.get_config()
        await self._alembic(command.list_templates, config)
        templates = []
        for path in sorted(TEMPLATES_DIRECTORY.iterdir()):
            readme = path / "README"
            if readme.is_file():
                templates.append((path.name, readme.read_text().splitlines()[0].strip()))
        return templates

    async def init(self, template: str | None = None, package: bool = False) -> None:
        """Create the migrations directory from a template (default ``async``, or ``async-multidb`` when
        the Migrator has binds)."""
        from alembic import command

        template = template or ("async-multidb" if self.binds else "async")
        config = self.get_config()
        if not (TEMPLATES_DIRECTORY / template).is_dir():
            names = ", ".join(sorted(p.name for p in TEMPLATES_DIRECTORY.iterdir() if p.is_dir()))
            raise ConfigurationError(f"No template named {template!r}; the templates are: {names}.")
        await self._alembic(lambda c: command.init(c, self.directory, template, package), config)

    async def heads(
        self, verbose: bool = False, resolve_dependencies: bool = False
    ) -> tuple[str, ...]:
        """The head revisions of the scripts."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        await self._alembic(lambda c: command.heads(c, verbose, resolve_dependencies), config)
        script = self.script_directory(config)
        if resolve_dependencies:
            return tuple(s.revision for s in script.get_revisions("heads") if s is not None)
        return tuple(script.get_heads())

    async def branches(self, verbose: bool = False) -> tuple[str, ...]:
        """The revisions where the history branches."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        await self._alembic(lambda c: command.branches(c, verbose), config)
        return tuple(
            s.revision for s in self.script_directory(config).walk_revisions() if s.is_branch_point
        )

    async def show(self, revision: str = "head") -> tuple[Script, ...]:
        """The scripts of the revision(s) ``revision`` names (``current`` reads the database)."""
        from alembic import command
        from alembic.script import Script

        self._ensure_directory()
        config = self.get_config()
        if revision == "current":
            current = await self.current(quiet=True)
            revs: tuple[str, ...] = current
        else:
            revs = (revision,)
        script = self.script_directory(config)

        def show_each(c: Config) -> None:
            for rev in revs:
                command.show(c, rev)

        await self._alembic(show_each, config)
        found: list[Script] = []
        for rev in revs:
            try:
                found.extend(s for s in script.get_revisions(rev) if isinstance(s, Script))
            except Exception as exc:
                raise CommandError(f"No revision {rev!r}: {exc}") from None
        return tuple(found)

    async def history(
        self, rev_range: str | None = None, verbose: bool = False, indicate_current: bool = False
    ) -> tuple[Script, ...]:
        """The scripts in ``rev_range`` (``[start]:[end]``), newest first, as Alembic lists them."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        base = head = None
        if rev_range is not None:
            if ":" not in rev_range:
                raise CommandError(
                    "History range requires [start]:[end], [start]:, or :[end] (e.g. -r base:head)."
                )
            base, head = rev_range.strip().split(":", 1)
        needs_db = (
            indicate_current or "current" in (base, head) or self._revision_environment(config)
        )
        current: tuple[str, ...] = ()
        if needs_db:
            async with self.connect_binds() as connections:
                await self._alembic(
                    lambda c: command.history(c, rev_range, verbose, indicate_current),
                    config,
                    connections,
                )
                current = await self.read_current_heads(next(iter(connections.values())))
        else:
            await self._alembic(lambda c: command.history(c, rev_range, verbose), config)
        script = self.script_directory(config)

        def resolve(end: str | None, default: str) -> str:
            if end == "current":
                return current[0] if len(current) == 1 else default
            return end or default

        try:
            return tuple(script.walk_revisions(resolve(base, "base"), resolve(head, "heads")))
        except Exception as exc:
            raise CommandError(f"Cannot list history {rev_range!r}: {exc}") from None

    async def history_graph(self, fmt: str = "text") -> str:
        """The revision DAG (``text`` lanes, ``mermaid`` or ``dot``) with the database's revision(s)
        marked ``(current)``; without the marks, and a warning, when the database cannot be reached."""
        from .graph import render_graph

        self._ensure_directory()
        script = self.script_directory()
        try:
            current = await self.current(quiet=True)
        except DatabaseUnreachableError as exc:
            log.warning("Graph without the current revision: %s", exc)
            current = ()
        try:
            return render_graph(script, current, fmt)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:
            raise CommandError(f"Cannot draw the history: {exc}") from None

    @staticmethod
    def _revision_environment(config: Config) -> bool:
        value = config.get_alembic_option("revision_environment")
        return str(value).lower() in ("true", "1", "yes", "on")

    async def revision(
        self,
        message: str | None = None,
        autogenerate: bool = False,
        sql: bool = False,
        head: str = "head",
        splice: bool = False,
        branch_label: str | None = None,
        version_path: str | None = None,
        rev_id: str | None = None,
        x_arg: Sequence[str] | None = None,
        renames: RenamePolicy = "no",
    ) -> Script | None:
        """Create a revision script. With ``autogenerate``, compare the models to the database; when nothing
        changed, no file is written and None is returned.

        Autogenerated operations are reviewed (:mod:`async_migrate.review`): a drop plus an add that may be
        a rename is turned into a rename when ``renames`` is ``"yes"`` or a callable returning True for
        the :class:`~async_migrate.review.RenameCandidate`, and left as it is (with a loud warning) for
        ``"no"``; every lint finding is logged and written as a ``# WARNING:`` comment above its operation.
        The review of the last call is in :attr:`last_review`.
        """
        from alembic import command
        from alembic.script import Script

        self._ensure_directory()
        config = self.get_config(x_arg, opts=["autogenerate"] if autogenerate else None)
        self.last_review = None

        from .review import review_migration

        def review_hook(context: Any, revision: Any, directives: list[Any]) -> None:
            if directives and not all(u.is_empty() for u in directives[0].upgrade_ops_list):
                self.last_review = review_migration(
                    directives[0], context.dialect, renames, self.last_review
                )

        def call(c: Config) -> Any:
            return command.revision(
                c,
                message,
                autogenerate=autogenerate,
                sql=sql,
                head=head,
                splice=splice,
                branch_label=branch_label,
                version_path=version_path,
                rev_id=rev_id,
                process_revision_directives=review_hook if autogenerate else None,
            )

        if autogenerate or self._revision_environment(config):
            if sql and not autogenerate:
                result = await self._alembic(call, config)
            else:
                if autogenerate:
                    if sql:
                        raise CommandError(
                            "--sql cannot be used with autogenerate: autogenerate compares the models "
                            "to a live database. Generate the revision, then `upgrade --sql`."
                        )
                    if self.metadata is None and not self._env_has_metadata(config):
                        raise ConfigurationError(
                            "Autogenerate needs the models' MetaData: pass metadata= to Migrator (or db= "
                            "to Migrate)."
                        )
                async with self.connect_binds() as connections:
                    if autogenerate:
                        await self._ensure_at_heads(connections, config, "migrate")
                    result = await self._alembic(call, config, connections)
        else:
            result = await self._alembic(call, config)
        if isinstance(result, list):
            result = next((s for s in result if s is not None), None)
        if self.last_review is not None:
            for message in self.last_review.messages():
                log.warning("%s", message)
        return result if isinstance(result, Script) else None

    async def _ensure_at_heads(
        self, connections: Mapping[str, AsyncConnection], config: Config, command_name: str
    ) -> None:
        """Refuse autogenerate (``migrate``, ``check``) on a database that is behind the scripts."""
        script = self.script_directory(config)
        heads = script.get_heads()
        for name, connection in connections.items():
            current = await self.read_current_heads(connection)
            self._check_known(script, current)
            if set(current) != set(heads):
                where = f"The database {name!r}" if self.binds else "The database"
                if command_name == "migrate":
                    raise NotUpToDateError(
                        f"{where} is at {', '.join(current) or 'base (empty)'} but the scripts are at "
                        f"{', '.join(heads)}: a new revision generated now would repeat the pending ones. "
                        "Run `upgrade` first, then `migrate` again."
                    )
                raise NotUpToDateError(
                    f"{where} is at {', '.join(current) or 'base (empty)'} but the scripts are at "
                    f"{', '.join(heads)}: run `upgrade` before `check`."
                )

    def _env_has_metadata(self, config: Config) -> bool:
        # A hand-edited env.py may set target_metadata itself; let Alembic decide then.
        settings = config.attributes.get(SETTINGS_KEY) or {}
        return (
            settings.get("target_metadata") is not None
            or "async_migrate" not in (Path(self.directory) / "env.py").read_text()
        )

    async def migrate(
        self,
        message: str | None = None,
        sql: bool = False,
        head: str = "head",
        splice: bool = False,
        branch_label: str | None = None,
        version_path: str | None = None,
        rev_id: str | None = None,
        x_arg: Sequence[str] | None = None,
        renames: RenamePolicy = "no",
    ) -> Script | None:
        """``revision`` with autogenerate: the new script, or None when the models match the database."""
        return await self.revision(
            message,
            autogenerate=True,
            sql=sql,
            head=head,
            splice=splice,
            branch_label=branch_label,
            version_path=version_path,
            rev_id=rev_id,
            x_arg=x_arg,
            renames=renames,
        )

    async def edit(self, revision: str = "current") -> None:
        """Open the script of ``revision`` in ``$EDITOR``."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        if revision == "current":
            async with self.connect_binds() as connections:
                await self._alembic(lambda c: command.edit(c, revision), config, connections)
        else:
            await self._alembic(lambda c: command.edit(c, revision), config)

    async def merge(
        self,
        revisions: str | Sequence[str] = "heads",
        message: str | None = None,
        branch_label: str | None = None,
        rev_id: str | None = None,
    ) -> Script | None:
        """Create a revision that merges ``revisions`` (default: all heads)."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        revs: Any = list(revisions) if not isinstance(revisions, str) else (revisions or "heads")

        def call(c: Config) -> Script | None:
            return command.merge(c, revs, message=message, branch_label=branch_label, rev_id=rev_id)

        if self._revision_environment(config):
            async with self.connect_binds() as connections:
                return await self._alembic(call, config, connections)
        return await self._alembic(call, config)

    # -- commands: database ---------------------------------------------------------------------------------

    async def current(self, verbose: bool = False, *, quiet: bool = False) -> tuple[str, ...]:
        """The revision(s) the database is at; ``()`` for an empty database. In a multi-database setup,
        those of every database, the main one first (:meth:`current_by_bind` keeps them apart)."""
        self._ensure_directory()
        if self.binds:
            found = await self.current_by_bind(verbose, quiet=quiet)
            return tuple(dict.fromkeys(rev for revs in found.values() for rev in revs))
        if quiet:
            return await self._read_version_table()
        if not verbose:
            # At a head, Alembic's own line for it is in the heads cache: no script needs importing.
            known = self._cached_heads()
            if known is not None and known.current_lines is not None:
                heads = await self._read_version_table()
                if heads and all(rev in known.current_lines for rev in heads):
                    if self.stdout is not None:
                        for rev in heads:
                            self.stdout.write(known.current_lines[rev] + "\n")
                    return heads
        from alembic import command

        config = self.get_config()
        async with self.connect() as connection:
            heads = await self.read_current_heads(connection)
            if not quiet:
                self._check_known(self.script_directory(config), heads)
                await self._alembic(
                    lambda c: command.current(c, verbose=verbose), config, connection
                )
        return heads

    async def current_by_bind(
        self, verbose: bool = False, *, quiet: bool = False
    ) -> dict[str, tuple[str, ...]]:
        """The revision(s) of each database: ``{"": (...), "users": (...)}`` (``{"": ...}`` for one)."""
        found = {}
        for child in self.bind_migrators():
            if not quiet and self.binds:
                (self.stdout or io.StringIO()).write(f"Database {child.bind_name or '(main)'}:\n")
            found[child.bind_name or ""] = await child.current(verbose, quiet=quiet)
        return found

    def _version_locations(self) -> list[str] | None:
        """The scripts' version folder(s), told without Alembic when the setup is the plain one (no
        ``configure`` callbacks, no version location settings in alembic.ini); else from Alembic's
        ScriptDirectory; None where the heads cache does not apply."""
        ini = Path(self.directory) / "alembic.ini"
        parser = configparser.RawConfigParser()
        try:
            parser.read(ini, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            return None
        settings = ("version_locations", "recursive_version_locations", "sourceless")
        if not self.configure_callbacks and not any(
            parser.has_option("alembic", name) for name in settings if parser.has_section("alembic")
        ):
            return [str(Path(self.directory) / "versions")]
        from alembic.script import ScriptDirectory

        try:
            return script_heads.locations_of(ScriptDirectory.from_config(self.get_config()))
        except Exception:
            return None  # the full load that follows reports what is wrong

    def _cached_heads(self) -> script_heads.Heads | None:
        """The scripts' heads without importing every script; None when only Alembic's full load can tell."""
        locations = self._version_locations()
        return script_heads.cached(locations, self.directory) if locations is not None else None

    async def _read_version_table(self) -> tuple[str, ...]:
        """The database's revisions: on a SQLite file by a plain sqlite3 read in this thread (the engine's
        driver thread would cost more than the read), else on a connection of the engine."""
        file_url = sqlite_file_url(self._url) if self.version_table_schema is None else None
        current = read_version_table(file_url, self.version_table) if file_url else None
        if current is None:
            async with self.connect() as connection:
                current = await self.read_current_heads(connection)
        return current

    async def status(self) -> MigrationStatus:
        """Readiness: the database's revision(s), the scripts' heads, and whether a migration is running.
        In a multi-database setup: at head only when every database is, migrating when any is."""
        self._ensure_directory()
        if self.binds:
            found = [await child.status() for child in self.bind_migrators()]
            return MigrationStatus(
                found[0].current_heads if all(f.at_head for f in found) else (),
                found[0].script_heads,
                any(f.migrating for f in found),
            )
        known = self._cached_heads()
        heads = known.heads if known is not None else tuple(self.script_directory().get_heads())
        async with self.connect() as connection:
            current = await self.read_current_heads(connection)
            migrating = False
            if self.lock:
                lock = lock_for(connection, self.version_table, self.version_table_schema)
                migrating = await lock.describe_holder(connection) is not None
        return MigrationStatus(current, heads, migrating)

    async def doctor(self) -> Diagnosis:
        """A read-only report: revisions, heads, unknown and pending revisions, multiple heads, tables
        without a version table, and drift between the models and the database."""
        from .doctor import diagnose

        self._ensure_directory()
        return await diagnose(self)

    async def check(self, strict: bool = False) -> None:
        """Raise :class:`ModelsDifferError` when the models differ from the database; else return None.

        With ``strict``, also raise :class:`UnreviewedWarningsError` while any revision script still has a
        ``# WARNING:`` comment from the autogenerate review (delete each once its operation is reviewed).
        """
        from alembic import command
        from alembic.util import AutogenerateDiffsDetected

        self._ensure_directory()
        if strict:
            from .review import unreviewed_warnings

            scripts = [s.path for s in self.script_directory().walk_revisions()]
            left = unreviewed_warnings(scripts)
            if left:
                listed = "; ".join(f"{Path(path).name}: {warning}" for path, warning in left[:5])
                more = f" and {len(left) - 5} more" if len(left) > 5 else ""
                raise UnreviewedWarningsError(
                    f"{len(left)} autogenerate warning(s) not reviewed yet: {listed}{more}. Review each "
                    "operation, then delete its '# WARNING:' comment.",
                    left,
                )
        if self.metadata is None and not any(metadata for _, metadata in self.binds.values()):
            raise ConfigurationError(
                "check needs the models' MetaData: pass metadata= to Migrator (or db= to Migrate)."
            )
        config = self.get_config()
        async with self.connect_binds() as connections:
            await self._ensure_at_heads(connections, config, "check")
            try:
                await self._alembic(command.check, config, connections)
            except AutogenerateDiffsDetected as exc:
                diffs = list(exc.diffs)
                listed = "; ".join(describe_diff(d) for d in diffs[:10])
                more = f" and {len(diffs) - 10} more" if len(diffs) > 10 else ""
                raise ModelsDifferError(
                    f"The models differ from the database: {listed}{more}. Run `migrate` to generate a "
                    "revision for them.",
                    diffs,
                ) from None

    async def upgrade(
        self,
        revision: str = "head",
        sql: bool = False,
        tag: str | None = None,
        x_arg: Sequence[str] | None = None,
    ) -> tuple[str, ...]:
        """Upgrade to ``revision``; return the ids of the revisions applied, in order.

        When the database is already there, no lock is taken. With ``sql=True`` the SQL is written to
        ``stdout`` instead (``revision`` may be a ``start:end`` range) and nothing touches the database.
        """
        self._ensure_directory()
        if not sql and ":" in revision:
            raise CommandError(
                f"A range ({revision!r}) only makes sense with --sql; upgrade to one revision."
            )
        if not sql and self.binds:  # each database in turn, each behind its own lock
            applied: list[str] = []
            for child in self.bind_migrators():
                applied += await child.upgrade(revision, tag=tag, x_arg=x_arg)
            return tuple(applied)
        # The heads, known without importing every script (see script_heads), when that is enough to
        # tell "nothing to do": the no-op fast path, and replicas waiting for another one's upgrade.
        known = self._cached_heads() if not sql and revision in ("head", "heads") else None
        if known is not None and revision == "head" and len(known.heads) != 1:
            known = None  # Alembic's full load words the multiple-heads refusal
        if known is not None and set(await self._read_version_table()) == set(known.heads):
            return ()
        if sql:
            from alembic import command

            config = self.get_config(x_arg)
            await self._alembic(lambda c: command.upgrade(c, revision, sql=True, tag=tag), config)
            return ()
        # Alembic's Config and the scripts are made once there is work: a replica that only waits for
        # another one's upgrade loads neither Alembic nor any script.
        made: list[Config] = []
        loaded: list[ScriptDirectory] = []

        def make_config() -> Config:
            if not made:
                made.append(self.get_config(x_arg))
            return made[0]

        def scripts() -> ScriptDirectory:
            if not loaded:
                loaded.append(self.script_directory(make_config()))
            return loaded[0]

        def check(current: tuple[str, ...]) -> None:
            self._check_known(scripts(), current)
            self._check_single_head(scripts(), revision)

        heads = set(known.heads) if known is not None else set(scripts().get_heads())

        def known_revisions_only(current: tuple[str, ...]) -> None:
            # A database at a revision no script has is refused at once, not after a turn at the lock.
            assert known is not None
            unknown = [rev for rev in current if rev not in known.revisions]
            if unknown:
                raise _unknown_revisions(unknown, known.heads)

        def is_done(current: tuple[str, ...]) -> bool:
            return revision in ("head", "heads") and set(current) == heads

        return await self._apply(
            lambda c: _migrate_online(c, scripts(), "upgrade", revision, tag),
            make_config,
            scripts,
            target=revision,
            is_done=is_done,
            check=check,
            # Waiters then import no script; the full check runs once there is work to do.
            precheck=known_revisions_only if known is not None else None,
        )

    async def downgrade(
        self,
        revision: str = "-1",
        sql: bool = False,
        tag: str | None = None,
        x_arg: Sequence[str] | None = None,
    ) -> tuple[str, ...]:
        """Downgrade to ``revision`` (default one step back); return the ids of the revisions undone, in
        order. With ``sql=True``, ``revision`` must be a ``from:to`` range and the SQL goes to ``stdout``."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config(x_arg)
        if sql:
            if ":" not in revision:
                raise CommandError(
                    "downgrade --sql needs a range <from>:<to> (e.g. head:-1 is not allowed offline; "
                    "name the revisions): offline mode cannot read the database's current revision."
                )
            await self._alembic(lambda c: command.downgrade(c, revision, sql=True, tag=tag), config)
            return ()
        if self.binds:
            undone: list[str] = []
            for child in self.bind_migrators():
                undone += await child.downgrade(revision, tag=tag, x_arg=x_arg)
            return tuple(undone)
        script = self.script_directory(config)

        def check(current: tuple[str, ...]) -> None:
            self._check_known(script, current)
            if not current and revision != "base":
                raise CommandError(
                    f"The database is at base (no revision applied): there is nothing to downgrade "
                    f"to {revision!r}."
                )

        return await self._apply(
            lambda c: _migrate_online(c, script, "downgrade", revision, tag),
            lambda: config,
            lambda: script,
            target=None,
            is_done=lambda current: False,
            check=check,
        )

    async def stamp(
        self,
        revision: str | Sequence[str] = "head",
        sql: bool = False,
        tag: str | None = None,
        purge: bool = False,
    ) -> None:
        """Record ``revision`` in the version table without running migrations. ``purge`` first empties the
        version table (for a database at a revision the scripts don't know)."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        revs: Any = revision if isinstance(revision, str) else list(revision)
        if sql:
            await self._alembic(
                lambda c: command.stamp(c, revs, sql=True, tag=tag, purge=purge), config
            )
            return
        if self.binds:
            for child in self.bind_migrators():
                await child.stamp(revision, tag=tag, purge=purge)
            return
        script = self.script_directory(config)

        def check(current: tuple[str, ...]) -> None:
            if not purge:
                self._check_known(script, current)

        async def work(connection: AsyncConnection, current: tuple[str, ...]) -> None:
            await self._alembic(
                lambda c: command.stamp(c, revs, tag=tag, purge=purge), config, connection
            )

        await self._locked(work, is_done=lambda current: False, check=check)

    async def _apply(
        self,
        call: Callable[[Config], None],
        make_config: Callable[[], Config],
        scripts: Callable[[], ScriptDirectory],
        *,
        target: str | None,
        is_done: Callable[[tuple[str, ...]], bool],
        check: Callable[[tuple[str, ...]], None],
        precheck: Callable[[tuple[str, ...]], None] | None = None,
    ) -> tuple[str, ...]:
        """Run an upgrade or downgrade under the lock, recording and logging each revision applied.
        ``make_config`` and ``scripts`` give Alembic's Config and the loaded ScriptDirectory; with a
        ``precheck`` and an ``is_done`` that need neither, they are called only when there is work."""
        recorder = _AppliedRecorder(self.url, self.progress)

        async def work(connection: AsyncConnection, current: tuple[str, ...]) -> None:
            config = make_config()
            settings = config.attributes[SETTINGS_KEY]
            user_callbacks = settings["configure_kwargs"].get("on_version_apply") or ()
            if callable(user_callbacks):
                user_callbacks = (user_callbacks,)
            settings["configure_kwargs"]["on_version_apply"] = (recorder, *user_callbacks)
            recorder.start()
            if target is not None:
                try:
                    recorder.total = len(
                        list(scripts().iterate_revisions(target, current or "base"))
                    )
                except Exception:
                    recorder.total = None  # Alembic will say what is wrong with the target
            sync_connection = connection.sync_connection
            if sync_connection is not None and connection.dialect.name not in (
                "postgresql",
                "sqlite",
            ):
                # Where DDL commits as it runs, remember what a failing revision already did. (A listener
                # costs every statement some CPU, so only there.)
                recorder.watch_statements(sync_connection)
            try:
                await guarded_or_plain(connection, config)
            finally:
                recorder.stop_watching()
            recorder.summarise()

        async def guarded_or_plain(connection: AsyncConnection, config: Config) -> None:
            guard = self.ddl_guard(connection.dialect.name)
            sqlite_file = (
                sqlite_file_url(connection.engine.url)
                if connection.dialect.name == "sqlite" and self.bind_name is None
                else None
            )
            if sqlite_file is not None:
                try:
                    await self._alembic(call, config, sqlite_file=sqlite_file, recorder=recorder)
                except AsyncMigrateError:
                    raise
                except Exception as exc:
                    raise await self._failed(exc, scripts(), target, recorder, connection) from exc
            elif guard is None or not guard.active:
                try:
                    await self._alembic(call, config, connection)
                except AsyncMigrateError:
                    raise
                except Exception as exc:
                    raise await self._failed(exc, scripts(), target, recorder, connection) from exc
            else:
                await self._guarded(call, config, connection, scripts(), target, recorder, guard)

        await self._locked(work, is_done=is_done, check=check, precheck=precheck)
        return tuple(recorder.applied)

    def ddl_guard(self, dialect: str) -> DDLGuard | None:
        """The session timeouts and retries for a migration on ``dialect``: PostgreSQL (lock timeout on by
        default) and MySQL/MariaDB (only when ``ddl_lock_timeout`` is a number); None elsewhere."""
        mysql = dialect in MYSQL_DIALECTS
        if dialect != "postgresql" and not mysql:
            return None
        if self.ddl_lock_timeout == "auto":
            lock_timeout = None if mysql else DEFAULT_POSTGRES_DDL_LOCK_TIMEOUT
        else:
            lock_timeout = self.ddl_lock_timeout  # type: ignore[assignment]
        return DDLGuard(
            lock_timeout=float(lock_timeout) if lock_timeout else None,
            attempts=max(1, int(self.ddl_retry_attempts)),
            backoff=float(self.ddl_retry_backoff),
            statement_timeout=(
                float(self.statement_timeout) if self.statement_timeout and not mysql else None
            ),
        )

    async def _guarded(
        self,
        call: Callable[[Config], None],
        config: Config,
        connection: AsyncConnection,
        script: ScriptDirectory,
        target: str | None,
        recorder: _AppliedRecorder,
        guard: DDLGuard,
    ) -> None:
        """Run the migration with the session's lock_timeout set, retrying a revision that timed out waiting
        for a table lock when its transaction was rolled back entirely."""
        backend_pid = await session_id(connection)
        await set_session_timeouts(connection, guard)
        # Where DDL commits as it runs, a revision may be retried only if none of its statements had run.
        commits_as_it_runs = connection.dialect.name in MYSQL_DIALECTS
        sync_connection = connection.sync_connection
        if sync_connection is None:  # the connection was closed under us
            raise CommandError("The migration connection closed before the migration could start.")
        tracker = AutocommitTracker(sync_connection)
        recorder.on_revision = tracker.revision_done
        try:
            attempt = 1
            while True:
                # Look often enough to see a blocker several times within the lock timeout, and no
                # more: each look is a query on a second connection while the migration runs.
                interval = min(1.0, max(0.05, (guard.lock_timeout or 5.0) / 5))
                watcher = BlockerWatcher(self.engine, backend_pid, interval=interval)
                try:
                    async with watcher.running():
                        await self._alembic(call, config, connection)
                    return
                except AsyncMigrateError:
                    raise
                except Exception as exc:
                    timed_out = is_lock_timeout(exc)
                    # A relative target (-1, +2) would mean something else once some revisions are done.
                    relative = target is None or "+" in target or "-" in target
                    rolled_back_entirely = (
                        not recorder.statements
                        if commits_as_it_runs
                        else not tracker.since_last_revision
                    )
                    retryable = (
                        timed_out
                        and rolled_back_entirely
                        and not (relative and recorder.applied)
                        and attempt < guard.attempts
                    )
                    if not retryable:
                        failure = await self._failed(exc, script, target, recorder, connection)
                        if not timed_out:
                            raise failure from exc
                        left = (
                            "Nothing of it was applied"
                            if rolled_back_entirely
                            else f"Of it, these statements ran and stay applied: {'; '.join(recorder.statements)}"
                        )
                        raise DDLLockTimeoutError(
                            f"Revision {failure.revision or '(unknown)'} could not get the table locks it "
                            f"needs within {guard.lock_timeout:g}s on {attempt} attempt(s), blocked by "
                            f"{watcher.describe()}. {left}; the database is at "
                            f"{', '.join(failure.current_heads) or 'base (no revision)'}. Retry later, "
                            "raise the DDL lock timeout (ddl_lock_timeout / MIGRATE_DDL_LOCK_TIMEOUT / "
                            f"--ddl-lock-timeout), or end the blocking session{watcher.terminate_hint()}.",
                            failure.revision,
                            failure.current_heads,
                            list(watcher.blockers.values()),
                        ) from exc
                    pause = guard.pause(attempt)
                    log.warning(
                        "A revision waited more than %gs for a table lock (attempt %d of %d), blocked by "
                        "%s; nothing of it stays applied; retrying in %.1fs",
                        guard.lock_timeout,
                        attempt,
                        guard.attempts,
                        watcher.describe(),
                        pause,
                    )
                    await connection.rollback()
                    await asyncio.sleep(pause)
                    attempt += 1
        finally:
            tracker.close()
            recorder.on_revision = None
            try:
                await reset_session_timeouts(connection)
            except Exception:
                # Never let the pool lend out a session with our timeouts.
                await _discard(connection)

    async def _failed(
        self,
        exc: Exception,
        script: ScriptDirectory,
        target: str | None,
        recorder: _AppliedRecorder,
        connection: AsyncConnection,
    ) -> MigrationFailedError:
        """Describe a revision that raised: which one, what was rolled back, where the database is now.

        Reads the version table on the migration connection itself (after a rollback): a second connection
        might not be had from a small pool.
        """
        transactional = connection.dialect.name in ("postgresql", "sqlite")
        ran = list(recorder.statements)  # before the reads below add their own
        try:
            await connection.rollback()
            now_at = await self.read_current_heads(connection)
        except Exception:
            try:
                async with self.connect() as fresh:
                    now_at = await self.read_current_heads(fresh)
            except AsyncMigrateError:
                now_at = ()
        failed: str | None = None
        try:
            if target is None:  # downgrade: the revision being undone is the one the database is at
                failed = now_at[0] if len(now_at) == 1 else None
            else:
                pending = list(
                    script.iterate_revisions(target, now_at[0] if len(now_at) == 1 else "base")
                )
                failed = pending[-1].revision if pending else None
        except Exception:
            failed = None
        cause = hide_password(self._cause(exc), self._url)
        done = (
            f" {len(recorder.applied)} revision(s) before it were applied and committed: "
            f"{', '.join(recorder.applied)}."
            if recorder.applied
            else ""
        )
        if transactional:
            rolled_back = "Its transaction was rolled back, so none of its changes were applied."
        elif ran:
            rolled_back = (
                "This database cannot roll back DDL, and these statements of the revision ran and stay "
                f"applied: {'; '.join(ran[-10:])}. Undo them (or finish the revision by hand and `stamp` it) before "
                "running upgrade again."
            )
        else:
            rolled_back = (
                "This database cannot roll back DDL: no statement of the revision had run."
            )
        return MigrationFailedError(
            f"Revision {failed or '(unknown)'} failed: {cause}. {rolled_back}{done} The database is now at "
            f"{', '.join(now_at) or 'base (no revision)'}. Fix the revision script, then run upgrade again.",
            failed,
            now_at,
        )


# Statements that change a database: what a failed revision may have left behind.
_CHANGING_STATEMENTS = (
    "CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE", "INSERT", "UPDATE", "DELETE", "REPLACE", "GRANT",
    "REVOKE", "COMMENT",
)  # fmt: skip


class Progress(Protocol):
    """Receives the progress of an upgrade or downgrade, instead of the INFO log lines (e.g. to draw a
    progress line on a terminal, as ``quart db upgrade`` does)."""

    def applied(
        self, index: int, total: int | None, revision: str, doc: str, seconds: float
    ) -> None:
        """Revision number ``index`` (1-based) of ``total`` (None: unknown) took ``seconds``."""

    def finished(self, count: int, seconds: float, slowest: Sequence[tuple[float, str]]) -> None:
        """All done: how many revisions, how long in all, the slowest three ``(seconds, revision)``."""


class _AppliedRecorder:
    """Alembic ``on_version_apply`` callback: collects the revisions applied and reports each with its time
    (INFO log lines, or a :class:`Progress`)."""

    def __init__(self, url: str, progress: Progress | None = None) -> None:
        self.url = url
        self.progress = progress
        self.total: int | None = None
        self.applied: list[str] = []
        self.durations: list[tuple[float, str]] = []
        self.on_revision: Callable[[], None] | None = None
        #: The statements that ran since the last revision was recorded: on a database whose DDL commits
        #: as it goes, what a failed revision left behind.
        self.statements: list[str] = []
        self._watched: Connection | None = None
        self._started = self._mark = time.monotonic()

    def watch_statements(self, connection: Connection) -> None:
        self._watched = connection
        event.listen(connection, "after_cursor_execute", self._statement_ran)

    def stop_watching(self) -> None:
        if self._watched is not None:
            event.remove(self._watched, "after_cursor_execute", self._statement_ran)
            self._watched = None

    def _statement_ran(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        words = " ".join(statement.split())
        if words.upper().startswith(_CHANGING_STATEMENTS):  # not the reads (SELECT, DESCRIBE, SHOW)
            self.statements.append(words[:120] + ("..." if len(words) > 120 else ""))

    def start(self) -> None:
        self._started = self._mark = time.monotonic()

    def __call__(
        self, *, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: Any
    ) -> None:
        now = time.monotonic()
        elapsed, self._mark = now - self._mark, now
        self.statements.clear()
        if self.on_revision is not None:
            self.on_revision()
        if step.is_stamp:
            return
        revision = step.up_revision_id or ""
        self.applied.append(revision)
        self.durations.append((elapsed, revision))
        direction = "upgrade" if step.is_upgrade else "downgrade"
        doc = getattr(step.up_revision, "doc", "") or ""
        if self.progress is not None:
            self.progress.applied(len(self.applied), self.total, revision, doc, elapsed)
        else:
            log.info("Applied %s %s (%s) in %.3fs", direction, revision, doc, elapsed)

    def summarise(self) -> None:
        if not self.applied:
            return
        slowest_three = sorted(self.durations, reverse=True)[:3]
        if self.progress is not None:
            self.progress.finished(
                len(self.applied), time.monotonic() - self._started, slowest_three
            )
            return
        slowest = ", ".join(f"{rev} {secs:.3f}s" for secs, rev in slowest_three)
        log.info(
            "Applied %d revision(s) to %s in %.3fs (slowest: %s)",
            len(self.applied),
            self.url,
            time.monotonic() - self._started,
            slowest,
        )


async def _discard(connection: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.invalidate()


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


def _script_error(exc: BaseException) -> CommandError | None:
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
    # Only when the innermost frame of the user's code is a module body: an error raised inside a
    # revision's upgrade() is a failed migration, not a broken script.
    if user_frames and user_frames[-1].name == "<module>":
        frame = user_frames[-1]
        return CommandError(
            f"Cannot load {frame.filename}, line {frame.lineno}: {type(exc).__name__}: {exc}. "
            "Fix the script (or the import it needs); nothing was applied."
        )
    return None


def _check_metadata(metadata: object) -> None:
    if metadata is not None and not isinstance(metadata, MetaData):
        raise ConfigurationError(
            f"metadata must be a sqlalchemy.MetaData (e.g. Base.metadata), not {type(metadata).__name__}."
        )


def _check_identifier(what: str, name: str) -> None:
    if not name or not name.replace("_", "").replace("$", "").isalnum() or name[0].isdigit():
        raise ConfigurationError(
            f"{what} {name!r} is not a usable name: use letters, digits and underscores, not starting "
            "with a digit."
        )
