"""Database URLs: turning user input into an async URL, and rendering it without the password."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .errors import ConfigurationError

# The async driver to suggest for each backend whose URL arrived with a synchronous driver.
ASYNC_DRIVER_FOR_BACKEND = {
    "postgresql": "asyncpg",
    "sqlite": "aiosqlite",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
}


#: Drivers known to be asyncio ones, told by name: asking SQLAlchemy imports the dialect, a good part of
#: a no-op startup check's time.
KNOWN_ASYNC_DRIVERS = frozenset(
    {"postgresql+asyncpg", "sqlite+aiosqlite", "mysql+asyncmy", "mariadb+asyncmy", "mysql+aiomysql"}
)


def render_url(url: URL | str) -> str:
    """The URL as text with its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def hide_password(text: str, url: URL | None) -> str:
    """``text`` with every occurrence of ``url``'s password replaced by ``***``.

    Driver errors sometimes echo the DSN they were given; this keeps the password out of messages.
    """
    if url is None or not url.password:
        return text
    password = str(url.password)
    return text.replace(password, "***") if len(password) >= 1 else text


def async_url(url: URL | str) -> URL:
    """Parse ``url`` and check that it names an asyncio driver.

    Raises :class:`ConfigurationError` naming the async driver to use when ``url`` has a synchronous one
    (``postgresql://``, ``sqlite:///``), since SQLAlchemy's own error for that comes late and is obscure.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"Could not parse the database URL {url!r}: {exc}. "
            "Expected something like postgresql+asyncpg://user@host/dbname or sqlite+aiosqlite:///app.db."
        ) from None
    if parsed.drivername in KNOWN_ASYNC_DRIVERS:
        return parsed
    try:
        dialect_cls = parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"The database URL {render_url(parsed)} names a driver SQLAlchemy does not know "
            f"({parsed.drivername!r}). Use postgresql+asyncpg:// or sqlite+aiosqlite://."
        ) from None
    if not getattr(dialect_cls, "is_async", False):
        backend = parsed.get_backend_name()
        driver = ASYNC_DRIVER_FOR_BACKEND.get(backend)
        suggestion = (
            f"use {backend}+{driver}://... (for example "
            f"{render_url(parsed.set(drivername=f'{backend}+{driver}'))})"
            if driver
            else "use an asyncio driver for this database"
        )
        raise ConfigurationError(
            f"The database URL {render_url(parsed)} uses the synchronous driver "
            f"{parsed.get_driver_name()!r}, but async_migrate runs on SQLAlchemy's asyncio engine: "
            f"{suggestion}."
        )
    return parsed
