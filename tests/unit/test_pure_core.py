"""The pure core imports only the standard library, torch, safetensors and PyYAML (never the WebUI or gradio)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PURE = ["schedule", "guidance", "detect", "params", "plan", "preview", "sampling", "timestep"]

PROBE = """
import json, sys
import torch, safetensors, safetensors.torch, yaml  # the allowed dependencies, and whatever they pull in
before = set(sys.modules)
for name in NAMES:
    __import__("lib_vpred." + name)
new = {m.split(".")[0] for m in set(sys.modules) - before}
print(json.dumps(sorted(m for m in new if m not in sys.stdlib_module_names and m != "lib_vpred")))
"""


def test_pure_modules_import_nothing_beyond_the_standard_library_torch_safetensors_and_yaml():
    code = PROBE.replace("NAMES", repr(PURE))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
