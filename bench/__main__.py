"""``python -m bench [--quick] [NAME ...]``: run the benchmarks of this package and report each target.

Exit status: 0 when every target passed, 1 when a target failed, 2 when a benchmark could not run or found
a wrong result (its traceback is printed).
"""

from __future__ import annotations

import argparse
import importlib
import traceback
from collections.abc import Callable, Sequence
from typing import cast

from . import BENCHMARKS

RunFunction = Callable[..., bool]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="one repetition per case instead of three"
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all: {', '.join(BENCHMARKS)})",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    results: dict[str, str] = {}
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"{__package__}.{name}")
        run = cast(RunFunction, module.run)
        try:
            results[name] = "PASS" if run(quick=args.quick) else "FAIL"
        except Exception:
            traceback.print_exc()
            results[name] = "ERROR"
        print()

    print("Summary:")
    for name, result in results.items():
        print(f"  {name}: {result}")
    if "ERROR" in results.values():
        return 2
    return 1 if "FAIL" in results.values() else 0


if __name__ == "__main__":
    raise SystemExit(main())
