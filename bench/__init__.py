"""Benchmarks for async_migrate, each checked against a stated target.

Run them all with ``python -m bench`` (``--quick`` for one repetition each). Every benchmark is a module of
this package with a ``run(quick: bool) -> bool`` function that prints its results table and returns whether
its target passed; it raises when the benchmark could not run or its result was wrong.

This module stays free of imports: a benchmark's subprocesses import the package too.
"""

#: The benchmark modules of this package, in the order ``python -m bench`` runs them.
BENCHMARKS: tuple[str, ...] = (
    "startup_replicas",
    "upgrade_speed",
    "faults",
    "console_current",
    "ledger_cost",
    "stairway",
    "squash_speed",
)
