"""``python -m async_migrate``: the ``async-migrate`` command (:mod:`async_migrate.console`)."""

from .console import main

main()
