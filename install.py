"""Run by the WebUI's installer at every launch (in a subprocess, with the WebUI root on PYTHONPATH).

sd-webui-vpred needs only what the WebUI already ships (torch, safetensors, PyYAML, gradio, k-diffusion), so there
is nothing to install. This file is kept as a fast, import-free, idempotent check that says so when something is
missing; it never imports torch and never installs packages.
"""

from __future__ import annotations

import importlib.util

REQUIRED = ("torch", "safetensors", "yaml")


def missing_modules(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """The required modules that cannot be found (checked without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


if __name__ == "__main__" or __name__ == "install":
    missing = missing_modules()
    if missing:
        print(
            f"[VPred] sd-webui-vpred: missing {', '.join(missing)}; they ship with the WebUI, so its venv looks broken."
        )
