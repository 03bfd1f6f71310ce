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
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return mask_password(str(url))
    if parsed.host and "@" in parsed.host:  # the tail of a password with an unencoded '@'
        return mask_password(str(url))
    return parsed.render_as_string(hide_password=True)


def mask_password(raw: str) -> str:
    """``raw``, a URL that did not parse (or parsed wrongly), with everything between ``user:`` and the
    last ``@`` replaced by ``***``: an unencoded ``@`` or ``:`` in a password must not leak its tail."""
    scheme, sep, rest = raw.partition("://")
    if not sep or "@" not in rest:
        return raw
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


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
    encode = (
        "If the password has characters such as @ : / ? # % in it, percent-encode it "
        "(urllib.parse.quote(password, safe=''))."
    )
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            f"Could not parse the database URL {mask_password(str(url))!r}. Expected something like "
            f"postgresql+asyncpg://user@host/dbname or sqlite+aiosqlite:///app.db. {encode}"
        ) from None
    except ValueError:  # a port that is not a number, often the tail of a password with a ':' in it
        raise ConfigurationError(
            f"The database URL {mask_password(str(url))!r} has a port that is not a number (or a host "
            f"that does not parse). {encode}"
        ) from None
    if parsed.host and "@" in parsed.host:
        raise ConfigurationError(
            f"The database URL {mask_password(str(url))!r} has an '@' after its user and password, so "
            f"part of the password would be taken for the host. {encode}"
        )
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
