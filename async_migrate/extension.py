"""The Quart glue: :class:`Migrate` (Flask-Migrate's extension, async), the startup auto-upgrade hook and
the optional ``/healthz`` blueprint. Flask-Migrate's module-level functions (``await upgrade()``, ...) are
in :mod:`async_migrate.app_commands`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from quart import Blueprint, Quart, current_app
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from . import cli
from .alembic_bridge import SYS_STDOUT, ConfigureCallback
from .database import NoDatabase
from .errors import NO_EXTENSION, AsyncMigrateError, ConfigurationError
from .health import status_body
from .migrator import MigrationStatus, Migrator
from .settings import MigrationSettings
from .startup import startup_upgrade

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["Migrate", "MigrateState", "healthz_blueprint", "state_of"]

log = logging.getLogger("async_migrate")

EngineSource = AsyncEngine | async_sessionmaker[Any] | Callable[[], Any]

# Settings read from app.config when not given to Migrate()/init_app(), with their defaults: the
# Migrator's (MIGRATE_LOCK, ...; a startup upgrade waits 30 s for a database still coming up) and the
# extension's own.
CONFIG_DEFAULTS: dict[str, Any] = {
    "MIGRATE_AUTO_UPGRADE": False,
    "MIGRATE_UPGRADE_TARGET": "head",
    **MigrationSettings.defaults(),
    "MIGRATE_CONNECT_TIMEOUT": 30.0,
    "MIGRATE_STARTUP_TIMEOUT": 50.0,
    "MIGRATE_ALLOW_DB_AHEAD": False,
    "MIGRATE_STARTUP_REFUSE_EDITED": False,
    "MIGRATE_HEALTHZ": False,
}


def metadata_of(db: Any) -> MetaData | None:
    """The MetaData that ``db`` stands for: a MetaData, or anything with a ``.metadata`` (a declarative base
    class, a ``db`` object)."""
    if db is None or isinstance(db, MetaData):
        return db
    metadata = getattr(db, "metadata", None)
    if isinstance(metadata, MetaData):
        return metadata
    raise ConfigurationError(
        f"Migrate cannot use db={db!r} ({type(db).__name__}): pass a sqlalchemy.MetaData, a declarative base "
        "class (anything with a .metadata that is a MetaData), or an object with .metadata and .engine."
    )


def engine_of(source: Any) -> AsyncEngine | None:
    """The AsyncEngine behind ``source``: an AsyncEngine, an async_sessionmaker (its bind), or a zero-argument
    callable returning either. None when the source yields none (yet)."""
    if callable(source) and not isinstance(source, (AsyncEngine, async_sessionmaker)):
        source = source()
    if source is None or isinstance(source, AsyncEngine):
        return source
    if isinstance(source, async_sessionmaker):
        bind = source.kw.get("bind")
        if isinstance(bind, AsyncEngine):
            return bind
        raise ConfigurationError(
            "The async_sessionmaker given as engine has no AsyncEngine bind: create it with "
            "async_sessionmaker(engine) or pass the engine itself."
        )
    raise ConfigurationError(
        f"engine must be an AsyncEngine, an async_sessionmaker or a callable returning one, not "
        f"{type(source).__name__}."
    )


def split_bind(spec: Any) -> tuple[Any, Any]:
    """One entry of ``binds=`` as ``(engine source or None, db)``: given as ``(engine source, db)``, as an
    object with ``.engine`` and ``.metadata``, or as a db alone."""
    if isinstance(spec, tuple) and len(spec) == 2:
        return spec[0], spec[1]
    return getattr(spec, "engine", None), spec


def bind_of(name: str, spec: Any, app: Quart) -> tuple[AsyncEngine | str, MetaData | None]:
    """One entry of ``binds=`` resolved: its engine (or URL; a db alone takes ``SQLALCHEMY_BINDS[name]``)
    and its MetaData."""
    source, db = split_bind(spec)
    metadata = metadata_of(db)
    if isinstance(source, str):
        return source, metadata
    engine = engine_of(source) if source is not None else None
    if engine is not None:
        return engine, metadata
    url = (app.config.get("SQLALCHEMY_BINDS") or {}).get(name)
    if url:
        return str(url), metadata
    raise ConfigurationError(
        f"Bind {name!r} has no database: give binds={{{name!r}: (engine, metadata)}} or set "
        f"SQLALCHEMY_BINDS[{name!r}] to its URL."
    )


@dataclass
class MigrateState:
    """What :meth:`Migrate.init_app` keeps for one app, as ``app.extensions["migrate"]``."""

    migrate: Migrate
    db: Any
    directory: str
    configure_args: dict[str, Any]
    engine_source: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    binds: dict[str, Any] = field(default_factory=dict)
    migrating: bool = False

    @property
    def metadata(self) -> MetaData | None:
        return metadata_of(self.db)

    def engine_sources(self) -> list[Any]:
        """Every engine source the app handed over (main database and binds; URLs and None left out)."""
        sources = [self.engine_source, getattr(self.db, "engine", None)]
        sources += [split_bind(spec)[0] for spec in self.binds.values()]
        return [s for s in sources if s is not None and not isinstance(s, str)]

    def engine(self, app: Quart) -> AsyncEngine | str:
        """The app's own engine if it has one, else its ``SQLALCHEMY_DATABASE_URI``."""
        for source in (self.engine_source, getattr(self.db, "engine", None)):
            if source is not None:
                engine = engine_of(source)
                if engine is not None:
                    return engine
        url = app.config.get("SQLALCHEMY_DATABASE_URI")
        if url:
            return str(url)
        if self.engine_source is not None:
            raise ConfigurationError(
                "The engine callable given to Migrate returned None: the engine does not exist yet. Create "
                "it before Migrate's startup hook runs (register your own before_serving hook before calling "
                "Migrate()/init_app()), or set SQLALCHEMY_DATABASE_URI."
            )
        raise ConfigurationError(
            "Migrate has no database: pass engine= (an AsyncEngine, async_sessionmaker or a callable "
            "returning one), a db with an .engine, or set app.config['SQLALCHEMY_DATABASE_URI'] "
            "(e.g. sqlite+aiosqlite:///app.db)."
        )

    def migrator(
        self,
        app: Quart,
        directory: str | None = None,
        x_arg: Sequence[str] | None = None,
        stdout: TextIO | None = SYS_STDOUT,
        **overrides: Any,
    ) -> Migrator:
        """A Migrator for ``app``'s database(s), with the app's settings; ``overrides`` are settings by
        their Migrator keyword (``lock_timeout=5``). Commands connect once (``connect_timeout`` 0) unless
        told otherwise."""
        settings = MigrationSettings.from_config(
            self.settings, **{"connect_timeout": 0.0, **overrides}
        )
        try:
            engine: AsyncEngine | str | NoDatabase = self.engine(app)
        except ConfigurationError as exc:
            # heads, history, init, ... read only the scripts (in an image build, say): they still work,
            # and a command that reaches the database says what is missing.
            engine = NoDatabase(str(exc))
        return Migrator(
            engine,
            self.metadata,
            directory or self.directory,
            binds={name: bind_of(name, spec, app) for name, spec in self.binds.items()} or None,
            stdout=stdout,
            configure=self._configure_callbacks(),
            x_arg=list(x_arg or ()),
            **settings.keywords(),
            **self.configure_args,
        )

    async def status(self, app: Quart) -> MigrationStatus:
        """Readiness of ``app``'s database: revision(s), heads, at head, migrating (here or elsewhere)."""
        migrator = self.migrator(app, stdout=None)
        try:
            found = await migrator.status()
        finally:
            await migrator.aclose()
        if self.migrating and not found.migrating:
            return MigrationStatus(found.current_heads, found.script_heads, True)
        return found

    async def dispose_engines(self) -> None:
        """Dispose of the app's engines: a command's pooled connections belong to its event loop."""
        for source in self.engine_sources():
            try:
                engine = engine_of(source)
            except AsyncMigrateError:
                engine = None
            if engine is not None:
                await engine.dispose()

    def _configure_callbacks(self) -> list[ConfigureCallback]:
        # None registered: the Migrator then knows the Alembic Config is the plain one, which lets its
        # no-op startup check and `current` at head skip loading Alembic.
        hook = self.migrate.call_configure_callbacks
        if not self.migrate.configure_callbacks and type(self.migrate).call_configure_callbacks is (
            Migrate.call_configure_callbacks
        ):
            return []
        return [hook]


class Migrate:
    """Alembic migrations for a Quart app, as Flask-Migrate's ``Migrate`` is for Flask.

    ``db`` is a MetaData, a declarative base class (anything with ``.metadata``), or an object with
    ``.metadata`` and ``.engine``. The engine comes from ``engine=`` (an AsyncEngine, an async_sessionmaker,
    or a zero-argument callable returning one), else ``db.engine``, else ``SQLALCHEMY_DATABASE_URI``.
    Further keyword arguments go to ``context.configure()`` in env.py.

    Settings (keyword argument, else the app config key, else the default):

    - ``auto_upgrade`` / ``MIGRATE_AUTO_UPGRADE`` (False): upgrade in a ``before_serving`` hook, behind the
      migration lock; the app serves only once the database is at the target, and fails to start otherwise.
    - ``upgrade_target`` / ``MIGRATE_UPGRADE_TARGET`` ("head"): the revision the startup upgrade goes to.
    - ``lock`` / ``MIGRATE_LOCK`` (True): take the migration lock for upgrade, downgrade and stamp.
    - ``lock_timeout`` / ``MIGRATE_LOCK_TIMEOUT`` (60): seconds to wait for another migrator.
    - ``connect_timeout`` / ``MIGRATE_CONNECT_TIMEOUT`` (30): seconds the startup upgrade keeps retrying a
      database that is still coming up.
    - ``startup_timeout`` / ``MIGRATE_STARTUP_TIMEOUT`` (50): seconds the startup upgrade may wait (to
      connect, for the lock) before failing the start with a LockTimeoutError that says why; keep it
      below the server's startup timeout (Hypercorn: 60). 0: no limit but the timeouts above.
    - ``allow_db_ahead`` / ``MIGRATE_ALLOW_DB_AHEAD`` (False): serve when the database is at a revision these
      scripts don't know (a newer release migrated it) instead of refusing to start.
    - ``healthz`` / ``MIGRATE_HEALTHZ`` (False): register ``GET /healthz`` (or the path given as a string):
      200 with the revision when the database is at head, 503 otherwise.
    - ``ddl_lock_timeout`` / ``MIGRATE_DDL_LOCK_TIMEOUT`` ("auto": 5 s on PostgreSQL, off on MySQL): seconds a migration
      statement may wait for a table lock before its revision is rolled back and retried (None: forever).
    - ``ddl_retry_attempts`` / ``MIGRATE_DDL_RETRY_ATTEMPTS`` (5) and ``ddl_retry_backoff`` /
      ``MIGRATE_DDL_RETRY_BACKOFF`` (2 s, doubling): how often and how patiently.
    - ``statement_timeout`` / ``MIGRATE_STATEMENT_TIMEOUT`` (None): seconds any migration statement may run.
    - ``bookkeeping_timeout`` / ``MIGRATE_BOOKKEEPING_TIMEOUT`` (30): seconds a statement around the
      migration (version table, lock) may go unanswered before the connection counts as broken.
    - ``ledger`` / ``MIGRATE_LEDGER`` (True): keep the ledger, a table beside the version table with a row
      per revision applied, reverted or stamped (``quart db log``, ``verify``, ``recover``);
      ``ledger_table`` / ``MIGRATE_LEDGER_TABLE`` (None: ``<version table>_log``) renames it.
    - ``allow_edited`` / ``MIGRATE_ALLOW_EDITED`` (False): let ``quart db upgrade`` run although a script
      applied earlier was edited since (a warning each) instead of refusing.
    - ``startup_refuse_edited`` / ``MIGRATE_STARTUP_REFUSE_EDITED`` (False): let the startup upgrade refuse
      (the app does not start) on such a script; by default it logs a warning and goes on.

    Several databases: ``binds={"users": (users_engine, UsersBase), ...}`` (an engine source and a db, as
    for the main database; or an object with ``.engine`` and ``.metadata``; or just the db, with the URL in
    ``SQLALCHEMY_BINDS["users"]``). Use ``quart db init --multidb``: every command then runs on each
    database, each with its own version table and lock; the startup upgrade too.
    """

    def __init__(
        self,
        app: Quart | None = None,
        db: Any = None,
        directory: str | Path = "migrations",
        command: str = "db",
        compare_type: bool = True,
        render_as_batch: bool = True,
        *,
        engine: EngineSource | None = None,
        auto_upgrade: bool | None = None,
        upgrade_target: str | None = None,
        lock: bool | None = None,
        lock_timeout: float | None = None,
        connect_timeout: float | None = None,
        startup_timeout: float | None = None,
        allow_db_ahead: bool | None = None,
        healthz: bool | str | None = None,
        ddl_lock_timeout: float | str | None = None,
        ddl_retry_attempts: int | None = None,
        ddl_retry_backoff: float | None = None,
        statement_timeout: float | None = None,
        bookkeeping_timeout: float | None = None,
        ledger: bool | None = None,
        ledger_table: str | None = None,
        allow_edited: bool | None = None,
        startup_refuse_edited: bool | None = None,
        binds: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.binds = dict(binds or {})
        self.configure_callbacks: list[ConfigureCallback] = []
        self.db = db
        self.command = command
        self.directory = str(directory)
        self.engine = engine
        given = locals()  # every setting is a keyword parameter of the same name
        #: The settings given here, by app config key; None: the app config's, else the default.
        self.settings: dict[str, Any] = {
            key: given[key.removeprefix("MIGRATE_").lower()] for key in CONFIG_DEFAULTS
        }
        self.alembic_ctx_kwargs = dict(kwargs)
        self.alembic_ctx_kwargs["compare_type"] = compare_type
        self.alembic_ctx_kwargs["render_as_batch"] = render_as_batch
        # Unlike Flask-Migrate, Migrate(app) alone registers too: the URL may come from the app config
        # (SQLALCHEMY_DATABASE_URI), and auto_upgrade=True must never be silently ignored.
        if app is not None:
            self.init_app(app, db, directory)

    def init_app(
        self,
        app: Quart,
        db: Any = None,
        directory: str | Path | None = None,
        command: str | None = None,
        compare_type: bool | None = None,
        render_as_batch: bool | None = None,
        *,
        engine: EngineSource | None = None,
        **kwargs: Any,
    ) -> None:
        """Register the extension on ``app`` (the application-factory pattern)."""
        self.db = db if db is not None else self.db
        self.command = command or self.command
        self.directory = str(directory or self.directory)
        self.engine = engine if engine is not None else self.engine
        # As Flask-Migrate: what init_app is given stays on the extension, for later apps too.
        self.alembic_ctx_kwargs.update(kwargs)
        if compare_type is not None:
            self.alembic_ctx_kwargs["compare_type"] = compare_type
        if render_as_batch is not None:
            self.alembic_ctx_kwargs["render_as_batch"] = render_as_batch
        ctx_kwargs = dict(self.alembic_ctx_kwargs)
        metadata_of(self.db)  # fail now, not at the first command, on a db we cannot use
        for spec in self.binds.values():
            metadata_of(split_bind(spec)[1])
        if self.engine is not None and not callable(self.engine):
            engine_of(self.engine)
        settings = {
            key: value if value is not None else app.config.get(key, CONFIG_DEFAULTS[key])
            for key, value in self.settings.items()
        }
        state = MigrateState(
            self, self.db, self.directory, ctx_kwargs, self.engine, settings, dict(self.binds)
        )
        app.extensions["migrate"] = state

        app.cli.add_command(cli.db, name=self.command)
        if settings["MIGRATE_AUTO_UPGRADE"]:
            app.before_serving(_auto_upgrade)
        if settings["MIGRATE_HEALTHZ"]:
            path = settings["MIGRATE_HEALTHZ"]
            app.register_blueprint(healthz_blueprint(path if isinstance(path, str) else "/healthz"))

    def configure(self, f: ConfigureCallback) -> ConfigureCallback:
        """Decorator: ``f(config) -> config`` runs on the Alembic Config of every command."""
        self.configure_callbacks.append(f)
        return f

    def call_configure_callbacks(self, config: Config) -> Config:
        for f in self.configure_callbacks:
            config = f(config)
        return config

    def get_config(
        self,
        directory: str | None = None,
        x_arg: Sequence[str] | None = None,
        opts: Sequence[str] | None = None,
    ) -> Config:
        """The Alembic Config the current app's commands use (as Flask-Migrate's ``get_config``)."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        migrator = state_of(app).migrator(app, directory, x_arg)
        return migrator.get_config(opts=opts)

    async def status(self) -> MigrationStatus:
        """Readiness of the current app's database: revision(s), heads, at head, migrating."""
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return await state_of(app).status(app)


def state_of(app: Quart) -> MigrateState:
    """What :meth:`Migrate.init_app` keeps for ``app``; a ConfigurationError when it was not called."""
    state = app.extensions.get("migrate")
    if not isinstance(state, MigrateState):
        raise ConfigurationError(NO_EXTENSION)
    return state


async def _auto_upgrade() -> None:
    """``before_serving`` hook: bring the schema to the target before the app serves, or fail startup."""
    app: Quart = current_app._get_current_object()  # type: ignore[attr-defined]
    state = state_of(app)
    migrator = state.migrator(
        app, stdout=None, connect_timeout=float(state.settings["MIGRATE_CONNECT_TIMEOUT"])
    )
    state.migrating = True
    try:
        await startup_upgrade(
            migrator,
            state.settings["MIGRATE_UPGRADE_TARGET"],
            allow_db_ahead=bool(state.settings["MIGRATE_ALLOW_DB_AHEAD"]),
            connect_timeout=None,  # the app config's, set on the Migrator above
            startup_timeout=float(state.settings["MIGRATE_STARTUP_TIMEOUT"] or 0) or None,
            refuse_edited=bool(state.settings["MIGRATE_STARTUP_REFUSE_EDITED"]),
        )
    finally:
        state.migrating = False
        await migrator.aclose()


def healthz_blueprint(path: str = "/healthz") -> Blueprint:
    """A blueprint with ``GET <path>``: 200 and the revision when the database is at head, else 503."""
    blueprint = Blueprint("async_migrate_healthz", __name__)

    @blueprint.get(path)
    async def healthz() -> tuple[dict[str, Any], int]:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            status = await state_of(app).status(app)
        except AsyncMigrateError as exc:
            return {"status": "error", "error": str(exc)}, 503
        code, body = status_body(status)
        return body, code

    return blueprint
