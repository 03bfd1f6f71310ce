"""The Migrator's squash commands: ``squash``, ``squash --check``, and the run through squashed scripts.

How a baseline is made and where the old scripts go is :mod:`async_migrate.squash`; this part of
:class:`~async_migrate.migrator.Migrator` gets the scratch database, runs the old scripts on it, and
brings a database that is in the middle of a squashed history through the archived scripts.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy.engine import make_url

from .alembic_errors import version_locations
from .errors import CommandError, ConfigurationError, MissingScriptError, UnknownRevisionError
from .migrator_checks import ChecksCommands
from .schema_snapshot import (
    own_tables,
    require_empty,
    rows_of,
    schema_difference,
    schema_of,
    wipe,
)
from .squash import plan_squash, render_baseline, squashed_revisions, write_baseline

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("async_migrate")


class SquashCommands(ChecksCommands):
    """The squash commands (see :class:`~async_migrate.migrator.Migrator`)."""

    if TYPE_CHECKING:  # the Migrator's own command

        def upgrade(self, revision: str = "head") -> Awaitable[tuple[str, ...]]: ...

    async def squash(
        self,
        to: str = "head",
        message: str = "baseline",
        keep_data: bool = False,
        drop_data: bool = False,
        scratch_url: str | None = None,
    ) -> Path:
        """Replace the revisions up to ``to`` by one baseline revision with ``to``'s id, whose upgrade
        creates the schema the old scripts produce (read from a scratch database upgraded through them)
        and whose downgrade drops it; the old scripts move to ``versions/squashed/<to>/``. Returns the
        baseline's file.

        :param keep_data: revisions that change data are in the history: keep the rows they leave as
            the baseline's seed (``op.bulk_insert``).
        :param drop_data: such revisions are in the history: leave their rows out, knowingly.
        :param scratch_url: an empty database of the same kind to run the old scripts on (default: a
            temporary SQLite file, or a temporary database on the same server, made and dropped here).
        """
        self._ensure_directory()
        if self.binds or self.bind_name is not None:
            raise ConfigurationError(
                "squash works on a single-database project; this one has several databases "
                "(async-multidb), whose scripts have a function per database. Nothing was written."
            )
        config = self.get_config()
        script = self.script_directory(config)
        plan = plan_squash(script, to)
        if plan.data_revisions and not (keep_data or drop_data):
            raise CommandError(
                f"Revisions {plan.data_listing()} change data, not only the schema: a baseline made of "
                "the schema alone would leave their rows out. Keep the rows they leave as the "
                "baseline's seed (--keep-data), or acknowledge that they go (--drop-data). Nothing "
                "was written."
            )
        location = self._first_location(config)
        async with self._scratch(scratch_url) as scratch:
            await scratch.upgrade(plan.target)
            async with scratch.connect() as connection:
                code = await connection.run_sync(render_baseline, own_tables(self), keep_data)
        path = write_baseline(script, plan, message, code, location)
        log.info(
            "Squashed %d revisions into %s (%s); the old scripts are in %s",
            len(plan.replaced), plan.target, path, location / "squashed" / plan.target,
        )  # fmt: skip
        return path

    async def squash_check(self, scratch_url: str | None = None) -> list[str]:
        """For each squash in ``versions/squashed/``: the differences between the schema (and, when the
        baseline kept data, the rows) its old scripts produce and the baseline's; ``[]`` when equal."""
        self._ensure_directory()
        location = self._first_location(self.get_config())
        archives = sorted({folder for folder in squashed_revisions([str(location)]).values()})
        if not archives:
            raise CommandError(
                f"No squash to check: {location / 'squashed'} has no archived scripts."
            )
        found: list[str] = []
        async with self._scratch(scratch_url) as scratch:
            for folder in archives:
                target = folder.name
                baseline = next(location.glob(f"{target}_*.py"), None)
                with_rows = baseline is not None and "op.bulk_insert(" in baseline.read_text()
                old = scratch._archived(folder)
                await old.upgrade(target)
                before = await _state(old, with_rows)
                await wipe(scratch)
                await scratch.upgrade(target)
                after = await _state(scratch, with_rows)
                await wipe(scratch)
                found.extend(f"{target}: {line}" for line in schema_difference(before, after))
        return found

    async def _through_squashed(self) -> tuple[str, ...]:
        """A database at a revision that a squash archived: upgrade it through the archived scripts to
        the baseline's revision, where the scripts in use go on; the revisions applied."""
        current = await self.database.read_version_table(self._deadline())
        archives = squashed_revisions(version_locations(self.get_config()) or ())
        folders = {archives[rev] for rev in current if rev in archives}
        applied: tuple[str, ...] = ()
        for folder in sorted(folders):
            log.info("Upgrading %s through the squashed scripts in %s", self.url, folder)
            applied += await self._archived(folder).upgrade(folder.name)
        return applied

    def _archived(self, folder: Path) -> Self:
        """This database's Migrator, loading the scripts archived in ``folder`` instead of versions/."""

        def archived(config: Config) -> Config:
            config.set_main_option("version_locations", str(folder))
            return config

        return self.on_database(self.engine, configure=[archived])

    def _first_location(self, config: Config) -> Path:
        locations = version_locations(config)
        if not locations:
            raise ConfigurationError(
                f"Cannot tell the version folder of {self.directory!r} (sourceless or recursive "
                "version locations): squash works on a plain versions/ folder."
            )
        return Path(locations[0])

    @contextlib.asynccontextmanager
    async def _scratch(self, scratch_url: str | None) -> AsyncIterator[Self]:
        """An empty scratch database with this Migrator's scripts and settings (no ledger kept)."""
        url = make_url(scratch_url) if scratch_url else None
        created: str | None = None
        with tempfile.TemporaryDirectory(prefix="async-migrate-squash-") as folder:
            if url is None:
                url, created = await self._temporary_database(Path(folder))
            scratch = self.on_database(url, ledger=False)
            try:
                await require_empty(scratch)
                yield scratch
            finally:
                with contextlib.suppress(Exception):
                    if created is None:
                        await wipe(scratch)
                await scratch.aclose()
                if created is not None:
                    await self._drop_database(created)

    async def _temporary_database(self, folder: Path) -> tuple[Any, str | None]:
        url = self.database.sqlalchemy_url
        if url.get_backend_name() == "sqlite":
            return url.set(database=str(folder / "scratch.db")), None
        name = f"{url.database or 'db'}_squash_{uuid.uuid4().hex[:8]}"
        quoted = self._quoted(name)
        try:
            async with self.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql(f"CREATE DATABASE {quoted}")
        except Exception as exc:
            raise CommandError(
                f"Could not make a scratch database on the server of {self.url} to run the old scripts "
                f"on ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). Give an empty one with "
                "--scratch-url."
            ) from None
        return url.set(database=name), name

    async def _drop_database(self, name: str) -> None:
        force = (
            " WITH (FORCE)"
            if self.database.sqlalchemy_url.get_backend_name() == "postgresql"
            else ""
        )
        async with self.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(f"DROP DATABASE IF EXISTS {self._quoted(name)}{force}")

    def _quoted(self, name: str) -> str:
        return str(self.engine.dialect.identifier_preparer.quote_identifier(name))

    async def _recovery_hint(
        self, exc: UnknownRevisionError | MissingScriptError
    ) -> UnknownRevisionError | MissingScriptError | None:
        if isinstance(exc, UnknownRevisionError) and not exc.recovery_checked:
            archives = squashed_revisions(version_locations(self.get_config()) or ())
            squashed = [rev for rev in exc.revisions if rev in archives]
            if squashed:
                folder = archives[squashed[0]]
                hinted = UnknownRevisionError(
                    f"The database is at {', '.join(squashed)}, which a squash replaced by the baseline "
                    f"{folder.name} (the old scripts are in {folder}). Bring it through them with "
                    "`upgrade --through-squashed`, or upgrade it with the release before the squash "
                    "first; nothing was applied.",
                    exc.revisions,
                )
                hinted.recovery_checked = True
                return hinted
        return await super()._recovery_hint(exc)


async def _state(migrator: SquashCommands, with_rows: bool) -> dict[str, Any]:
    found = await schema_of(migrator)
    if with_rows:
        found.update(await rows_of(migrator))
    return found
