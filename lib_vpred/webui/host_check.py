"""Which WebUI the extension runs in, decided once at import. Only a host it supports is ever changed.

Forge and reForge share the A1111 front end (same Script API, same ``modules``), so the extension loads there, but
they sample through their own back ends (Forge: ``backend``; reForge: ``ldm_patched``), where the A1111 hooks either
do nothing or break generations (e.g. an A1111 ``CompVisVDenoiser`` handed to Forge's sampler). Each supported host
has its own adapter (``HostInfo.adapter``: :mod:`lib_vpred.webui.hooks` for A1111, :mod:`lib_vpred.webui.forge` for
Forge, :mod:`lib_vpred.webui.reforge` for reForge), chosen here once. On any other host, or on a layout this version does not know, the extension says so in the
panel and the console and leaves every generation untouched.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable

A1111 = "AUTOMATIC1111 WebUI"
FORGE = "Forge"

#: The Forge back-end modules the Forge adapter uses (Forge2, dfdcbab): the predictor's sigma table and the CFG
#: function whose ``sampler_post_cfg_function`` hook carries CFG rescale.
FORGE_BACKEND = ("backend.modules.k_prediction", "backend.sampling.sampling_function", "backend.patcher.base")
REFORGE = "reForge"
#: The reForge back-end modules the reForge adapter uses (3b56b268): its model sampling (the UNet's sigma table) and
#: the CFG function whose ``sampler_post_cfg_function`` hook carries CFG rescale.
REFORGE_BACKEND = ("ldm_patched.modules.model_sampling", "ldm_patched.modules.samplers", "modules_forge.forge_sampler")


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """The host's name, whether this version supports it, and (when not) why, in words for the user."""

    name: str
    supported: bool
    reason: str = ""
    #: the adapter module for a supported host: "hooks" (A1111) or "forge"
    adapter: str = ""

    def message(self) -> str:
        if self.supported:
            return f"running in the {self.name}"
        return f"{self.name} is not supported by this version ({self.reason}): the extension changes nothing"


def module_exists(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (a parent package may be imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def detect_host(exists: Callable[[str], bool] = module_exists) -> HostInfo:
    """Tell the AUTOMATIC1111 WebUI from Forge, reForge and unknown layouts by the packages each one ships."""
    if exists("modules_forge"):
        if exists("ldm_patched"):
            if all(exists(name) for name in REFORGE_BACKEND):
                return HostInfo(REFORGE, True, adapter="reforge")
            return HostInfo(REFORGE, False, "its ldm_patched back end is not the layout this version knows")
        if exists("backend") and all(exists(name) for name in FORGE_BACKEND):
            return HostInfo(FORGE, True, adapter="forge")
        if exists("backend"):
            return HostInfo(FORGE, False, "its back end is not the Forge2 layout this version knows")
        return HostInfo("this Forge-family WebUI", False, "its sampling back end is unknown to this version")
    if not exists("modules.sd_samplers_cfg_denoiser"):
        return HostInfo(
            "this WebUI", False, "it has no modules.sd_samplers_cfg_denoiser, the CFG denoiser hooked here"
        )
    return HostInfo(A1111, True, adapter="hooks")
