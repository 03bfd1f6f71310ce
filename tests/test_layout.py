"""The package's layout stays what the README describes: no import circle, sizes within bounds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

CHECKER = Path(__file__).resolve().parent.parent / "scripts" / "check_layout.py"


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layout", CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_layout_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, str(CHECKER), "--graph"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "no import circle" in result.stdout
    order = [line.split()[0] for line in result.stdout.splitlines() if "<-" in line]
    # The core comes before the Quart glue, the glue before the CLI wiring that registers it.
    assert order.index("migrator") < order.index("cli") < order.index("extension")


def test_checker_finds_circles_and_private_imports(tmp_path: Path) -> None:
    checker = _checker()
    assert checker.find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert checker.find_cycles({"a": {"b"}, "b": set()}) == []
    package = tmp_path / "async_migrate"
    package.mkdir()
    (package / "one.py").write_text("def f():\n    from .two import _hidden\n")
    (package / "two.py").write_text("from . import one\n_hidden = 1\n")
    checker.PACKAGE = package
    assert checker.main([]) == 1
