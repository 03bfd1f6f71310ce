"""What every command of :class:`~async_migrate.migrator.Migrator` stands on: its database(s) and
settings, its migrations directory as Alembic's Config, and connections for migrating.

:class:`MigratorBase` holds no command; :class:`~async_migrate.migrator.Migrator` adds them, one method
each, so that the API reads as a list of commands.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TextIO, TypeVar

import sqlalchemy as sa
from sqlalchemy import MetaData
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import alembic_bridge
from .alembic_bridge import SYS_STDOUT, ConfigureCallback
from .autogenerate import ensure_at_heads, refuse_empty_metadata
from .database import Database, NoDatabase, checked_metadata, engine_from
from .ddl_guard import DDLGuard
from .errors import ConfigurationError
from .ledger import LedgerRecorder, hiding_ledger, ledger_of, ledger_table_name
from .locking import run_locked
from .progress import Progress
from .settings import MigrationSettings

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from .review import Review
    from .runner import MigrationRun
    from .script_heads import Heads

T = TypeVar("T")


# What env.py's context.configure() gets unless told otherwise: a failed revision is rolled back alone.
DEFAULT_CONTEXT_KWARGS = {
    "compare_type": True,
    "render_as_batch": True,
    "transaction_per_migration": True,
}


class MigratorBase:
    """A Migrator's database(s), settings and Alembic setup; the parameters are
    :class:`~async_migrate.migrator.Migrator`'s."""

    lock: bool
    lock_timeout: float
    connect_timeout: float
    ddl_lock_timeout: float | str | None
    ddl_retry_attempts: int
    ddl_retry_backoff: float
    statement_timeout: float | None
    bookkeeping_timeout: float
    ledger: bool
    ledger_table: str | None
    allow_edited: bool

    def __init__(
        self,
        engine_or_url: AsyncEngine | URL | str | NoDatabase,
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
        bookkeeping_timeout: float = 30.0,
        ledger: bool = True,
        ledger_table: str | None = None,
        allow_edited: bool = False,
        binds: Mapping[str, tuple[AsyncEngine | URL | str, MetaData | None]] | None = None,
        bind_name: str | None = None,
        **context_kwargs: Any,
    ) -> None:
        self.context_kwargs: dict[str, Any] = {**DEFAULT_CONTEXT_KWARGS, **context_kwargs}
        #: The database: its engine, connections for migrating, its version table.
        self.database = Database(engine_or_url, self.version_table, self.version_table_schema)
        self.metadata = checked_metadata(metadata)
        #: In a multi-database setup, the name of the database this Migrator stands for ("" is the
        #: main one); None otherwise.
        self.bind_name = bind_name
        #: The other databases of a multi-database setup: name -> (engine, metadata).
        self.binds: dict[str, tuple[AsyncEngine, MetaData | None]] = {}
        self._owned_bind_engines: list[AsyncEngine] = []
        for name, (bind_engine, bind_metadata) in (binds or {}).items():
            self._add_bind(name, bind_engine, bind_metadata)
        self.directory = str(directory)
        self.stdout = stdout
        self.configure_callbacks = list(configure)
        self.x_arg = list(x_arg)
        given = locals()  # every setting is a parameter of the same name
        self._use(MigrationSettings(**{name: given[name] for name in MigrationSettings.names()}))
        #: The review of the last ``revision``/``migrate`` call (:mod:`async_migrate.review`).
        self.last_review: Review | None = None
        #: Where upgrade/downgrade report each revision; None: INFO log lines.
        self.progress: Progress | None = None
        #: Receives the review of each generated revision that has findings; None: a WARNING log line
        #: per finding. (``quart db migrate`` prints them itself.)
        self.on_review: Callable[[Review], None] | None = None
        self._all_bind_names: list[str] = []

    def _add_bind(self, name: str, engine_or_url: Any, metadata: MetaData | None) -> None:
        if not name or not name.isidentifier():
            raise ConfigurationError(
                f"Bind name {name!r} must be a Python identifier (it names functions in the scripts)."
            )
        engine, owned = engine_from(engine_or_url)
        self.binds[name] = (engine, checked_metadata(metadata))
        if owned:
            self._owned_bind_engines.append(engine)

    def _use(self, settings: MigrationSettings) -> None:
        for name, value in settings.keywords().items():
            setattr(self, name, value)

    @property
    def settings(self) -> MigrationSettings:
        """The lock, connection and DDL settings as they are now (checked: a bad value raises here)."""
        return MigrationSettings(
            **{name: getattr(self, name) for name in MigrationSettings.names()}
        )

    @property
    def engine(self) -> AsyncEngine:
        """The database's AsyncEngine (made from the URL on first use, when the Migrator got a URL)."""
        return self.database.engine

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
        return self.database.url

    async def aclose(self) -> None:
        """Dispose of the engines the Migrator made."""
        await self.database.aclose()
        for engine in self._owned_bind_engines:
            await engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- several databases --------------------------------------------------------------------------------

    @property
    def bind_names(self) -> list[str]:
        """All databases of a multi-database setup, the main one ("") first; [] for a single database."""
        return ["", *self.binds] if self.binds else []

    def bind_migrators(self) -> list[Self]:
        """One Migrator per database of a multi-database setup (each with its own version table and lock),
        made with this Migrator's current settings; [self] for a single database."""
        if not self.binds:
            return [self]
        children = []
        for name in self.bind_names:
            engine, metadata = (self.engine, self.metadata) if not name else self.binds[name]
            child = type(self)(
                engine,
                metadata,
                self.directory,
                stdout=self.stdout,
                configure=self.configure_callbacks,
                x_arg=self.x_arg,
                bind_name=name,
                **self.settings.keywords(),
                **self.context_kwargs,
            )
            child._all_bind_names = self.bind_names
            child.progress = self.progress
            child.on_review = self.on_review
            children.append(child)
        return children

    def on_database(
        self,
        engine_or_url: AsyncEngine | URL | str,
        *,
        configure: Iterable[ConfigureCallback] = (),
        **settings: Any,
    ) -> Self:
        """A quiet Migrator (no ``stdout``) for this one's scripts, models, settings and context options
        on another database (or this one's engine), with more ``configure`` callbacks and ``settings``
        changed: a scratch database, archived scripts."""
        return type(self)(
            engine_or_url, self.metadata, self.directory, stdout=None,
            configure=[*self.configure_callbacks, *configure], x_arg=self.x_arg,
            **{**self.settings.keywords(), **settings}, **self.context_kwargs,
        )  # fmt: skip

    async def _each_database(self, action: Callable[[Self], Awaitable[T]]) -> list[T]:
        """``action`` on the Migrator of each database in turn, the main one first."""
        return [await action(child) for child in self.bind_migrators()]

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

    @contextlib.asynccontextmanager
    async def _connected(self, needed: bool) -> AsyncIterator[dict[str, AsyncConnection] | None]:
        """:meth:`connect_binds` when ``needed``, else None: for commands that run env.py only sometimes."""
        if not needed:
            yield None
            return
        async with self.connect_binds() as connections:
            yield connections

    # -- Alembic's view -----------------------------------------------------------------------------------

    def get_config(
        self,
        x_arg: Sequence[str] | None = None,
        opts: Sequence[str] | None = None,
    ) -> Config:
        """The Alembic Config for this directory, after the ``configure`` callbacks.

        ``opts`` names ``cmd_opts`` flags to set (as Flask-Migrate's ``opts``), e.g. ``["autogenerate"]``.
        """
        databases = None
        if self.binds or self.bind_name is not None:
            # Multi-database: the databases this command runs on.
            engines = {self.bind_name or "": (self.engine, self.metadata)}
            if self.bind_name is None:
                engines.update(self.binds)
            databases = {
                name: (engine.url, metadata) for name, (engine, metadata) in engines.items()
            }
        env_settings = alembic_bridge.env_settings(
            self.metadata,
            self.context_options(),
            self.database.sqlalchemy_url,
            databases,
            self._all_bind_names or self.bind_names,
        )
        return alembic_bridge.make_config(
            self.directory,
            stdout=self.stdout,
            x_arg=[*self.x_arg, *(x_arg or ())],
            env_settings=env_settings,
            configure=self.configure_callbacks,
            opts=opts or (),
        )

    def script_directory(self, config: Config | None = None) -> ScriptDirectory:
        """Alembic's view of the migration scripts, loaded (so a broken script fails here, by name)."""
        return alembic_bridge.load_scripts(
            config or self.get_config(), self.database.sqlalchemy_url
        )

    def _cached_heads(self) -> Heads | None:
        """The scripts' heads without importing every script; None when only Alembic's full load can tell."""
        return alembic_bridge.cached_heads(
            self.directory, self.configure_callbacks, self.get_config
        )

    async def _run(
        self,
        call: Callable[[Config], T],
        config: Config,
        connections: Mapping[str, AsyncConnection] | None = None,
    ) -> T:
        """One Alembic command, online on ``connections`` or offline without them."""
        return await alembic_bridge.run(
            call,
            config,
            connections,
            url=self.database.sqlalchemy_url,
            multidb=bool(self.binds) or self.bind_name is not None,
        )

    #: Let ``migrate`` and ``check`` run with a MetaData that has no tables (an empty schema really meant);
    #: by default they refuse, since models not imported would make every table look dropped.
    allow_empty_metadata = False

    def _refuse_empty_metadata(self, command: str, required: bool = False) -> None:
        metadata = [self.metadata, *(m for _, m in self.binds.values())]
        if required and not any(m is not None for m in metadata):
            raise ConfigurationError(
                f"{command} needs the models' MetaData: pass metadata= to Migrator (or db= to Migrate)."
            )
        refuse_empty_metadata(command, metadata, self.allow_empty_metadata)

    def _print(self, text: str) -> None:
        if self.stdout is not None:
            self.stdout.write(text + "\n")

    async def _offline(
        self, call: Callable[[Config], None], x_arg: Sequence[str] | None = None
    ) -> None:
        """An Alembic command in offline mode (``--sql``): SQL in the database's dialect, to ``stdout``."""
        self.database.require()  # the dialect must be known, even with no connection
        config = self.get_config(x_arg)
        table = self._ledger_table()
        if table is not None:  # the ledger's CREATE TABLE and INSERTs are part of the script
            alembic_bridge.add_version_callbacks(config, LedgerRecorder(table))
        await self._run(call, config)

    def context_options(self) -> dict[str, Any]:
        """What env.py's ``context.configure()`` gets: :attr:`context_kwargs`, and the ledger kept out of
        autogenerate (on or off: a ledger from before is still no model's table)."""
        name = ledger_table_name(self.version_table, self.ledger_table)
        return hiding_ledger(self.context_kwargs, name, self.version_table_schema)

    def _ledger_table(self) -> sa.Table | None:
        """This database's ledger (:mod:`async_migrate.ledger`); None when it is off."""
        return ledger_of(
            self.ledger, self.ledger_table, self.version_table, self.version_table_schema
        )

    async def _ensure_at_heads(
        self, connections: Mapping[str, AsyncConnection], script: ScriptDirectory, command_name: str
    ) -> None:
        """Refuse autogenerate on a database behind the scripts (see :func:`ensure_at_heads`)."""
        await ensure_at_heads(
            connections, script, command_name, self.read_current_heads, bool(self.binds)
        )

    async def _apply(self, run: MigrationRun) -> tuple[str, ...]:
        """An upgrade or downgrade behind the migration lock; the revisions it applied, in order."""
        await run_locked(self.database, run.settings, run)
        return tuple(run.recorder.applied)

    def _ensure_directory(self) -> None:
        if not (Path(self.directory) / "env.py").is_file():
            raise ConfigurationError(
                f"No migrations environment in {self.directory!r} (env.py is missing). Run `init` first, "
                "or point -d/--directory at the folder that has it."
            )

    # -- the database -------------------------------------------------------------------------------------

    def connect(
        self, deadline: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """One connection set up for migrations, retrying transient failures until ``deadline``
        (``time.monotonic()``; default: ``connect_timeout`` from now). See ``Database.connect``."""
        return self.database.connect(deadline if deadline is not None else self._deadline())

    def _deadline(self) -> float:
        return time.monotonic() + float(self.connect_timeout)

    async def read_current_heads(self, connection: AsyncConnection) -> tuple[str, ...]:
        """The revisions in the version table: one cheap read, no script loaded."""
        return await self.database.read_current_heads(connection)

    def ddl_guard(self, dialect: str) -> DDLGuard | None:
        """The session timeouts and retries for a migration on ``dialect``: PostgreSQL (lock timeout on by
        default) and MySQL/MariaDB (only when ``ddl_lock_timeout`` is a number); None elsewhere."""
        return self.settings.ddl_guard(dialect)
