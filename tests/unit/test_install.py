"""install.py runs inside the WebUI's installer at every launch: fast, repeatable, no torch import, no installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_install_py_is_import_free_and_repeatable():
    # Run it as the WebUI does (a subprocess, __name__ != "__main__" is also accepted), twice, and check that it
    # neither imported torch nor tried to install anything.
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
        "runpy.run_path(sys.argv[1], run_name='__main__'); "
        "print('torch' in sys.modules, 'pip' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, str(REPO / "install.py")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False False"


def test_missing_modules_reports_what_is_absent():
    import runpy

    namespace = runpy.run_path(str(REPO / "install.py"), run_name="not_main")
    assert namespace["missing_modules"](("json", "surely_not_a_module_xyz")) == ["surely_not_a_module_xyz"]
