# Alembic configuration for async_migrate (`quart db ...`) and plain `alembic -c <this file> ...`.

[alembic]
# This file lives in the migrations folder itself.
script_location = %(here)s
path_separator = os

# Template for revision file names.
# file_template = %%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s

# Run env.py for `revision` and `merge` too (not only for autogenerate).
# revision_environment = false

# Used only by plain `alembic` runs; async_migrate passes the app's own engines. The databases, the main
# one first as an empty name: ",users" is the main database and "users". Their URLs come from the
# environment: DATABASE_URL for the main one, DATABASE_URL_USERS for "users", and so on. Async drivers only
# (postgresql+asyncpg://, sqlite+aiosqlite://).
databases =


# Logging below is configured only by plain `alembic` runs: in an app, async_migrate leaves logging alone.
[loggers]
keys = root,sqlalchemy,alembic,async_migrate

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[logger_async_migrate]
level = INFO
handlers =
qualname = async_migrate

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
