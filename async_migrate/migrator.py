"""The core: Alembic's commands on an async SQLAlchemy engine, with no web framework involved.

:class:`Migrator` is the façade: its settings, its database(s), and one short method per command. Each
command hands Alembic a sync connection through ``Config.attributes["connection"]`` inside ``await
connection.run_sync(...)`` (Alembic's connection-sharing recipe). The work is done next door:
:mod:`~async_migrate.database` (connections, the version table), :mod:`~async_migrate.locking` (the
migration lock and the wait for it), :mod:`~async_migrate.alembic_bridge` and
:mod:`~async_migrate.listings` (Alembic's Config, scripts and commands), :mod:`~async_migrate.runner`
(applying revisions), :mod:`~async_migrate.doctor` and :mod:`~async_migrate.review`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import alembic_bridge, listings
from .alembic_bridge import TEMPLATES_DIRECTORY
from .autogenerate import (
    ReviewHook,
    refuse_autogenerate,
    report_review,
)
from .errors import CommandError, ConfigurationError, DatabaseUnreachableError
from .ledger import LedgerRecorder
from .locking import run_locked
from .migrator_checks import MigrationStatus
from .migrator_ledger import mentions_recovery
from .migrator_squash import SquashCommands
from .runner import DowngradeRun, StampRun, UpgradeRun

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script

    from .review import RenamePolicy

__all__ = ["TEMPLATES_DIRECTORY", "MigrationStatus", "Migrator"]

log = logging.getLogger("async_migrate")


class Migrator(SquashCommands):
    """Alembic migrations for one async engine and one migrations directory.

    :param engine_or_url: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`, or a URL with an asyncio driver
        (``postgresql+asyncpg://...``, ``sqlite+aiosqlite:///...``). An engine made from a URL (on first use)
        belongs to the Migrator: close it with :meth:`aclose` (or use ``async with``). An engine handed in is
        left open.
    :param metadata: the models' :class:`~sqlalchemy.MetaData`; needed by ``migrate`` and ``check``.
    :param directory: the migrations directory (``alembic.ini``, ``env.py``, ``versions/``).
    :param lock: take the migration lock around upgrade, downgrade and stamp. Turn it off only for databases
        where it cannot work; then make sure only one process migrates at a time.
    :param lock_timeout: seconds to wait for another migrator before giving up with :class:`~async_migrate.errors.LockTimeoutError`.
    :param connect_timeout: seconds to keep retrying a database that refuses connections (still starting,
        too many clients) before giving up with :class:`~async_migrate.errors.DatabaseUnreachableError`; 0 tries once.
    :param stdout: where Alembic's text output goes (history listings, ``--sql`` output); ``None`` drops it.
    :param configure: callbacks that receive the Alembic :class:`~alembic.config.Config` and return it.
    :param x_arg: ``-x`` arguments passed to env.py with every command.
    :param ddl_lock_timeout: seconds a migration statement may wait for a table lock (``lock_timeout``,
        MySQL's ``lock_wait_timeout``; on the migration session only) before its revision is rolled back
        and retried, so that a blocked migration does not queue every query on the table behind it.
        ``"auto"`` (default): 5 s on PostgreSQL, off elsewhere; None: wait forever.
    :param ddl_retry_attempts: how many times a revision that hit the DDL lock timeout is tried in all.
    :param ddl_retry_backoff: seconds before the second attempt, doubled for each further one.
    :param statement_timeout: PostgreSQL only: seconds any migration statement may run; None: no limit.
    :param bookkeeping_timeout: seconds a statement around the migration (version table, lock; not the
        revisions') may go unanswered before the connection counts as broken (:class:`~async_migrate.errors.ConnectionLostError`).
    :param ledger: keep the ledger (``<version_table>_log``, :mod:`async_migrate.ledger`): a row per
        revision applied, reverted or stamped, with the script's checksum and source, so that
        :meth:`verify` can tell edited or missing scripts and :meth:`recover` can bring a lost one back.
    :param ledger_table: the ledger's name, instead of the version table's with ``_log`` added.
    :param allow_edited: let ``upgrade`` run although a script applied earlier was edited since (a
        warning per script instead of :class:`~async_migrate.errors.EditedScriptError`).
    :param binds: the other databases of a multi-database setup: name -> (engine or URL, metadata).
    :param bind_name: set on the Migrators :meth:`bind_migrators` makes, one per database.
    :param context_kwargs: passed to ``context.configure()`` in env.py (``compare_type``, ``render_as_batch``,
        ``version_table``, ``include_object``, ...). ``compare_type`` and ``render_as_batch`` default to True
        and ``transaction_per_migration`` to True, so that a failed revision is rolled back alone.

    The settings from ``lock`` to ``allow_edited`` (:class:`~async_migrate.settings.MigrationSettings`)
    are attributes of the same names; :attr:`settings` is them, checked, as each command uses them.
    """

    # -- commands: scripts only ---------------------------------------------------------------------------

    async def list_templates(self) -> list[tuple[str, str]]:
        """The migration environment templates ``init`` can use, as ``(name, synopsis)`` pairs, also listed
        to ``stdout`` as Alembic lists its own (with this package's ``init`` command as the example)."""
        templates = []
        for path in sorted(TEMPLATES_DIRECTORY.iterdir()):
            readme = path / "README"
            if readme.is_file():
                templates.append((path.name, readme.read_text().splitlines()[0].strip()))
        listed = "\n".join(f"{name} - {synopsis}" for name, synopsis in templates)
        self._print(f"Available templates:\n\n{listed}\n\nTemplates are used via the 'init' command,"
                    " e.g.:\n\n  quart db init --template async-multidb")  # fmt: skip
        return templates

    async def init(self, template: str | None = None, package: bool = False) -> None:
        """Create the migrations directory from a template.

        :param template: ``async`` (default), or ``async-multidb`` (the default when the Migrator has binds).
        :param package: write empty ``__init__.py`` files to the environment and version locations.
        """
        from alembic import command

        template = template or ("async-multidb" if self.binds else "async")
        config = self.get_config()
        if not (TEMPLATES_DIRECTORY / template).is_dir():
            names = ", ".join(sorted(p.name for p in TEMPLATES_DIRECTORY.iterdir() if p.is_dir()))
            raise ConfigurationError(f"No template named {template!r}; the templates are: {names}.")
        await self._run(lambda c: command.init(c, self.directory, template, package), config)

    async def heads(
        self, verbose: bool = False, resolve_dependencies: bool = False
    ) -> tuple[str, ...]:
        """The head revisions of the scripts, listed to ``stdout`` as by ``alembic heads``.

        :param verbose: list each head in full.
        :param resolve_dependencies: treat ``depends_on`` revisions as down revisions.
        """
        self._ensure_directory()
        config = self.get_config()
        script = self.script_directory(config)
        return await self._run(
            lambda c: listings.show_heads(c, script, verbose, resolve_dependencies), config
        )

    async def branches(self, verbose: bool = False) -> tuple[str, ...]:
        """The revisions where the history branches, listed to ``stdout`` as by ``alembic branches``.

        :param verbose: list each branch point in full.
        """
        self._ensure_directory()
        config = self.get_config()
        script = self.script_directory(config)
        return await self._run(lambda c: listings.show_branches(c, script, verbose), config)

    @mentions_recovery
    async def show(self, revision: str = "head") -> tuple[Script, ...]:
        """The scripts of the revision(s) ``revision`` names, shown on ``stdout`` as by ``alembic show``.

        :param revision: a revision id, a symbol (``head``, ``base``, ``heads``), or ``current`` (read from
            the database).
        """
        self._ensure_directory()
        config = self.get_config()
        revisions = await self.current(quiet=True) if revision == "current" else (revision,)
        script = self.script_directory(config)
        return await self._run(lambda c: listings.show_revisions(c, script, revisions), config)

    @mentions_recovery
    async def history(
        self, rev_range: str | None = None, verbose: bool = False, indicate_current: bool = False
    ) -> tuple[Script, ...]:
        """The scripts in a range, newest first, listed to ``stdout`` as by ``alembic history``.

        :param rev_range: ``[start]:[end]``; either end may be ``current`` (read from the database).
        :param verbose: list each revision in full.
        :param indicate_current: mark the database's revision(s) ``(current)``.
        """
        self._ensure_directory()
        config = self.get_config()
        base, head = listings.split_range(rev_range)
        environment = indicate_current or alembic_bridge.revision_environment(config)
        current: tuple[str, ...] = ()
        async with self._connected(environment or "current" in (base, head)) as connections:
            script = self.script_directory(config)
            await self._run(
                lambda c: listings.show_history(
                    c, script, base, head, verbose, indicate_current, environment
                ),
                config,
                connections,
            )
            if connections:
                current = await self.read_current_heads(next(iter(connections.values())))
        try:
            return listings.walk_history(script, base, head, current)
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

    # -- commands: new scripts ----------------------------------------------------------------------------

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
        """Create a revision script; with ``autogenerate``, from comparing the models to the database,
        and no file (None returned) when nothing changed. The other parameters are Alembic's.

        Autogenerated operations are reviewed (:mod:`async_migrate.review`): a drop plus an add that may be
        a rename is turned into a rename when ``renames`` is ``"yes"`` or a callable returning True for
        the :class:`~async_migrate.review.RenameCandidate`, and left as it is (with a loud warning) for
        ``"no"``; every lint finding is logged (or given to :attr:`on_review`) and written as a
        ``# WARNING:`` comment above its operation. The review of the last call is in :attr:`last_review`.
        """
        from alembic import command

        self._ensure_directory()
        config = self.get_config(x_arg, opts=["autogenerate"] if autogenerate else None)
        self.last_review = None
        hook = ReviewHook(renames) if autogenerate else None

        def call(c: Config) -> Any:
            return command.revision(
                c, message, autogenerate=autogenerate, sql=sql, head=head, splice=splice,
                branch_label=branch_label, version_path=version_path, rev_id=rev_id,
                process_revision_directives=hook,
            )  # fmt: skip

        if hook is not None:
            refuse_autogenerate(self.directory, self.metadata, sql)
            self._refuse_empty_metadata("migrate")
        online = hook is not None or (alembic_bridge.revision_environment(config) and not sql)
        try:
            async with self._connected(online) as connections:
                if hook is not None and connections is not None:
                    script = self.script_directory(config)
                    await self._ensure_at_heads(connections, script, "migrate")
                    with alembic_bridge.warned_once(script):
                        result = await self._run(call, config, connections)
                else:
                    result = await self._run(call, config, connections)
        finally:
            self.last_review = hook.review if hook is not None else None
        report_review(self.last_review, self.on_review)
        return alembic_bridge.first_script(result)

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
            message, True, sql, head, splice, branch_label, version_path, rev_id, x_arg, renames
        )

    async def edit(self, revision: str = "current") -> None:
        """Open the script of ``revision`` (``current``: the database's) in ``$EDITOR``."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        async with self._connected(revision == "current") as connections:
            await self._run(lambda c: command.edit(c, revision), config, connections)

    async def merge(
        self,
        revisions: str | Sequence[str] = "heads",
        message: str | None = None,
        branch_label: str | None = None,
        rev_id: str | None = None,
    ) -> Script | None:
        """Create a revision that merges ``revisions`` (default: all heads); the others are Alembic's."""
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        revs: Any = list(revisions) if not isinstance(revisions, str) else (revisions or "heads")

        def call(c: Config) -> Script | None:
            return command.merge(c, revs, message=message, branch_label=branch_label, rev_id=rev_id)

        async with self._connected(alembic_bridge.revision_environment(config)) as connections:
            return await self._run(call, config, connections)

    # -- commands: the database ---------------------------------------------------------------------------

    @mentions_recovery
    async def current(self, verbose: bool = False, *, quiet: bool = False) -> tuple[str, ...]:
        """The revision(s) the database is at; ``()`` for an empty database. In a multi-database setup,
        those of every database, the main one first (:meth:`current_by_bind` keeps them apart).

        :param verbose: list each revision in full (as ``alembic current -v``).
        :param quiet: write nothing to ``stdout``.
        """
        self._ensure_directory()
        if self.binds:
            found = await self.current_by_bind(verbose, quiet=quiet)
            return tuple(dict.fromkeys(rev for revs in found.values() for rev in revs))
        if quiet:
            return await self.database.read_version_table(self._deadline())
        if not verbose:
            # At a head, Alembic's own line for it is in the heads cache: no script needs importing.
            known = self._cached_heads()
            if known is not None and known.current_lines is not None:
                heads = await self.database.read_version_table(self._deadline())
                if heads and all(rev in known.current_lines for rev in heads):
                    if self.stdout is not None:
                        for rev in heads:
                            self.stdout.write(known.current_lines[rev] + "\n")
                    return heads
        config = self.get_config()
        async with self.connect() as connection:
            heads = await self.read_current_heads(connection)
            script = self.script_directory(config)
            alembic_bridge.check_known(script, heads)
            await self._run(
                lambda c: listings.show_current(c, script, verbose),
                config,
                {self.bind_name or "": connection},
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

    @mentions_recovery
    async def upgrade(
        self,
        revision: str = "head",
        sql: bool = False,
        tag: str | None = None,
        x_arg: Sequence[str] | None = None,
        through_squashed: bool = False,
    ) -> tuple[str, ...]:
        """Upgrade to ``revision``, behind the migration lock; return the ids of the revisions applied, in
        order. When the database is already there, no lock is taken.

        :param sql: write the SQL to ``stdout`` instead (``revision`` may be a ``start:end`` range); nothing
            touches the database.
        :param tag: Alembic's ``--tag``, for env.py.
        :param x_arg: more ``-x`` arguments for env.py.
        :param through_squashed: a database at a revision a squash replaced is first brought through the
            archived scripts (``versions/squashed/``) to the baseline.
        """
        self._ensure_directory()
        if through_squashed and not sql:
            first = await self._through_squashed()
            return first + await self.upgrade(revision, tag=tag, x_arg=x_arg)
        if not sql and ":" in revision:
            raise CommandError(
                f"A range ({revision!r}) only makes sense with --sql; upgrade to one revision."
            )
        if sql:
            from alembic import command

            await self._offline(lambda c: command.upgrade(c, revision, sql=True, tag=tag), x_arg)
            return ()
        if self.binds:  # each database in turn, each behind its own lock
            applied = await self._each_database(
                lambda child: child.upgrade(revision, tag=tag, x_arg=x_arg)
            )
            return tuple(rev for revs in applied for rev in revs)
        # The heads, known without importing every script (see script_heads), when that is enough to
        # tell "nothing to do": the no-op fast path, and replicas waiting for another one's upgrade.
        known = self._cached_heads() if revision in ("head", "heads") else None
        if known is not None and revision == "head" and len(known.heads) != 1:
            known = None  # Alembic's full load words the multiple-heads refusal
        if known is not None and set(
            await self.database.read_version_table(self._deadline())
        ) == set(known.heads):
            return ()
        # Alembic's Config and the scripts are made once there is work: a replica that only waits for
        # another one's upgrade loads neither Alembic nor any script.
        return await self._apply(
            UpgradeRun(
                self.database,
                self.settings,
                lambda: self.get_config(x_arg),
                revision,
                tag,
                self.progress,
                self.bind_name,
                known,
            )
        )

    @mentions_recovery
    async def downgrade(
        self,
        revision: str = "-1",
        sql: bool = False,
        tag: str | None = None,
        x_arg: Sequence[str] | None = None,
    ) -> tuple[str, ...]:
        """Downgrade to ``revision`` (default one step back), behind the migration lock; return the ids of
        the revisions undone, in order.

        :param sql: write the SQL to ``stdout`` instead; ``revision`` must then be a ``from:to`` range.
        :param tag: Alembic's ``--tag``, for env.py.
        :param x_arg: more ``-x`` arguments for env.py.
        """
        from alembic import command

        self._ensure_directory()
        config = self.get_config(x_arg)
        if sql:
            if revision == "-1":
                revision = "head:-1"  # as Flask-Migrate: offline, one step back from the head
            if ":" not in revision:
                raise CommandError(
                    f"downgrade --sql needs a range <from>:<to> (e.g. head:-1, the default), not "
                    f"{revision!r}: offline mode cannot read the database's current revision."
                )
            await self._offline(lambda c: command.downgrade(c, revision, sql=True, tag=tag), x_arg)
            return ()
        if self.binds:
            undone = await self._each_database(
                lambda child: child.downgrade(revision, tag=tag, x_arg=x_arg)
            )
            return tuple(rev for revs in undone for rev in revs)
        return await self._apply(
            DowngradeRun(
                self.database,
                self.settings,
                lambda: config,
                revision,
                tag,
                self.progress,
                self.bind_name,
            )
        )

    @mentions_recovery
    async def stamp(
        self,
        revision: str | Sequence[str] = "head",
        sql: bool = False,
        tag: str | None = None,
        purge: bool = False,
    ) -> None:
        """Record ``revision`` in the version table without running migrations, behind the migration lock.

        :param sql: write the SQL to ``stdout`` instead.
        :param tag: Alembic's ``--tag``, for env.py.
        :param purge: first empty the version table (for a database at a revision the scripts don't know).
        """
        from alembic import command

        self._ensure_directory()
        config = self.get_config()
        revs: Any = revision if isinstance(revision, str) else list(revision)
        if sql:
            await self._offline(lambda c: command.stamp(c, revs, sql=True, tag=tag, purge=purge))
            return
        if self.binds:
            await self._each_database(lambda child: child.stamp(revision, tag=tag, purge=purge))
            return
        table = self._ledger_table()
        ledger = LedgerRecorder(table) if table is not None else None
        if ledger is not None:
            alembic_bridge.add_version_callbacks(config, ledger)
        stamp = StampRun(
            self.script_directory(config),
            purge,
            lambda connection: self._run(
                lambda c: command.stamp(c, revs, tag=tag, purge=purge),
                config,
                {self.bind_name or "": connection},
            ),
            ledger,
        )
        await run_locked(self.database, self.settings, stamp)
