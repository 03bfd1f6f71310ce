"""The Migrator's ledger commands: ``log``, ``verify`` (and ``--accept``), ``recover``.

The ledger itself (its table, its rows) is :mod:`async_migrate.ledger`; what it tells about the scripts
on disk is :mod:`async_migrate.ledger_checks`. :class:`LedgerCommands` is the part of
:class:`~async_migrate.migrator.Migrator` that reads them, and :func:`mentions_recovery` is how an
"unknown revision" error learns that the database keeps a copy of the lost script.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa

from .alembic_errors import version_locations
from .errors import (
    ConfigurationError,
    LedgerFindingsError,
    MissingScriptError,
    UnknownRevisionError,
)
from .ledger import LedgerEntry, read_ledger, script_message, script_source
from .ledger_checks import Finding, findings, on_disk, scripts_to_recover, write_scripts
from .migrator_base import MigratorBase
from .squash import archived_scripts

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("async_migrate")

P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", bound="LedgerCommands")


def mentions_recovery(
    method: Callable[Concatenate[M, P], Awaitable[T]],
) -> Callable[Concatenate[M, P], Awaitable[T]]:
    """Let the :class:`~async_migrate.errors.UnknownRevisionError` (or
    :class:`~async_migrate.errors.MissingScriptError`) of a command say, when the ledger keeps a copy of
    the missing scripts, that ``recover`` brings them back."""

    @functools.wraps(method)
    async def wrapper(self: M, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except (UnknownRevisionError, MissingScriptError) as exc:
            hinted = await self._recovery_hint(exc)
            if hinted is None:
                raise
            raise hinted from exc.__cause__

    return wrapper


class LedgerCommands(MigratorBase):
    """The ledger's commands (see :class:`~async_migrate.migrator.Migrator`)."""

    async def log(self, limit: int | None = None) -> list[LedgerEntry]:
        """The ledger's rows, newest first (at most ``limit``): what ran on the database, when, for how
        long, by whom; ``[]`` when the database has no ledger yet. In a multi-database setup, those of
        the main database (:meth:`log_by_bind` has each)."""
        return (await self.log_by_bind(limit))[self.bind_name or ""]

    async def log_by_bind(self, limit: int | None = None) -> dict[str, list[LedgerEntry]]:
        """The ledger of each database, ``{"": [...], "users": [...]}`` (``{"": ...}`` for one)."""
        table = self._required_ledger("log")
        found = {}
        for child in self.bind_migrators():
            async with child.connect() as connection:
                entries, _ = await read_ledger(connection, table, limit)
            found[child.bind_name or ""] = entries or []
        return found

    async def verify(self) -> list[Finding]:
        """Compare what each database ran (its ledger) with the scripts on disk: an applied script edited
        since (with a diff), one missing on disk, one older than the current revision that never ran.
        Returns the findings (``[]``: all is well); a database without a ledger is one finding."""
        table = self._required_ledger("verify")
        self._ensure_directory()
        found: list[Finding] = []
        for child in self.bind_migrators():
            found.extend(await child._verify_one(table))
        return found

    async def _verify_one(self, table: sa.Table) -> list[Finding]:
        config = self.get_config()
        script = self._loaded_scripts(config)
        disk = on_disk(version_locations(config) or ())
        async with self.connect() as connection:
            current = await self.read_current_heads(connection)
            entries, sources = await read_ledger(connection, table, sources=True)
        where = f" of {self.bind_name}" if self.bind_name else ""
        if entries is None:
            if not current:
                return []
            return [
                Finding(
                    "no_ledger",
                    ", ".join(current),
                    f"The database{where} ({self.url}) has no ledger ({table.fullname}) to verify the "
                    "scripts against: it is made by the next upgrade or stamp, which also records the "
                    "revisions already applied as they are on disk now.",
                )
            ]
        archived = archived_scripts(version_locations(config) or ())
        found = findings(script, current, entries, sources, disk, archived)
        if where:
            found = [
                Finding(f.kind, f.revision, f"Database {self.bind_name}: {f.message}", f.diff)
                for f in found
            ]
        return found

    async def verify_or_raise(self, ignore_no_ledger: bool = False) -> None:
        """:meth:`verify`, raising :class:`~async_migrate.errors.LedgerFindingsError` on any finding
        (``ignore_no_ledger``: but a database without a ledger)."""
        found = [f for f in await self.verify() if not (ignore_no_ledger and f.kind == "no_ledger")]
        if found:
            raise LedgerFindingsError(
                " ".join(f.message for f in found)
                + " (`verify` lists each finding with its diff.)",
                found,
            )

    async def accept_edited(self) -> list[str]:
        """Record each applied script that was edited since it ran as it is now (an ``accepted`` row with
        the new checksum and source), so that ``upgrade`` and ``verify`` accept it; the revisions."""
        table = self._required_ledger("verify --accept")
        self._ensure_directory()
        accepted: list[str] = []
        for child in self.bind_migrators():
            edited = [f for f in await child._verify_one(table) if f.kind == "edited"]
            if not edited:
                continue
            script = child.script_directory()
            rows = []
            for finding in edited:
                revision = script.get_revision(finding.revision)
                digest, name, source = script_source(revision)
                rows.append(
                    {
                        "revision": finding.revision,
                        "direction": "accepted",
                        "checksum": digest,
                        "script": name,
                        "source": source,
                        "message": script_message(revision),
                    }
                )
            async with child.connect() as connection:
                await connection.execute(table.insert(), rows)
                await connection.commit()
            accepted.extend(f.revision for f in edited)
        return accepted

    async def recover(self, revisions: Sequence[str] = ()) -> list[Path]:
        """Write the scripts the ledger keeps back into the first version folder: ``revisions``, else
        every one missing on disk that the database's revisions stand on. Refuses (writing nothing) where
        a different file of the same name is there. Returns the files written."""
        table = self._required_ledger("recover")
        self._ensure_directory()
        locations = version_locations(self.get_config())
        if not locations:
            raise ConfigurationError(
                f"Cannot tell the version folder of {self.directory!r} (sourceless or recursive "
                "version locations): recover writes into a plain versions/ folder."
            )
        disk = on_disk(locations)
        chosen: list[tuple[LedgerEntry, str]] = []
        for child in self.bind_migrators():
            async with child.connect() as connection:
                current = await child.read_current_heads(connection)
                entries, sources = await read_ledger(connection, table, sources=True)
            picked = scripts_to_recover(revisions, current, entries or [], sources, disk)
            chosen.extend(e for e in picked if e[0].revision not in {c[0].revision for c in chosen})
        return write_scripts(chosen, Path(locations[0]))

    def _required_ledger(self, command: str) -> sa.Table:
        table = self._ledger_table()
        if table is None:
            raise ConfigurationError(
                f"{command} reads the ledger, which this Migrator has turned off (ledger=False, "
                "MIGRATE_LEDGER = False): turn it on."
            )
        return table

    def _loaded_scripts(self, config: Config) -> ScriptDirectory | None:
        """The scripts loaded, or None when they cannot be (a script missing mid-history)."""
        try:
            return self.script_directory(config)
        except Exception:
            return None

    async def _recovery_hint(
        self, exc: UnknownRevisionError | MissingScriptError
    ) -> UnknownRevisionError | MissingScriptError | None:
        """``exc`` saying that the ledger keeps the unknown revisions' scripts; None when it does not
        (or cannot be read: the error as it is says enough)."""
        table = self._ledger_table()
        if table is None or exc.recovery_checked:
            return None
        exc.recovery_checked = True
        try:
            async with self.connect() as connection:
                entries, sources = await read_ledger(connection, table, sources=True)
        except Exception:
            return None
        kept = {e.revision for e in entries or () if e.id in sources}
        copies = [rev for rev in exc.revisions if rev in kept]
        if not copies:
            return None
        hinted = type(exc)(
            f"{exc} The database's ledger ({table.fullname}) keeps a copy of the script of "
            f"{', '.join(copies)}: `recover` writes it back into the versions folder, after which this "
            "command works again.",
            exc.revisions,
        )
        hinted.recovery_checked = True
        return hinted
