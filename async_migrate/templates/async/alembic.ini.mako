# Alembic configuration for async_migrate (`quart db ...`) and plain `alembic -c <this file> ...`.

[alembic]
# This file lives in the migrations folder itself.
script_location = %(here)s
path_separator = os

# Template for revision file names.
# file_template = %%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s

# Run env.py for `revision` and `merge` too (not only for autogenerate).
# revision_environment = false

# Used only by plain `alembic` runs; async_migrate passes the app's own engine. Prefer the DATABASE_URL
# environment variable over writing a password here. Must use an async driver
# (postgresql+asyncpg://, sqlite+aiosqlite://).
sqlalchemy.url =

# Used only by plain `alembic revision --autogenerate`: where the models' MetaData is, as module:attribute.
# target_metadata = myapp.models:Base.metadata

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
