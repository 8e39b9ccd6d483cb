"""Host detection: the packages each WebUI flavour ships decide; A1111, Forge (Forge2) and reForge are supported."""

from __future__ import annotations

import pytest

from lib_vpred.webui.host_check import (
    A1111,
    FORGE,
    FORGE_BACKEND,
    REFORGE,
    REFORGE_BACKEND,
    detect_host,
    module_exists,
)

# Top-level packages of each host's source tree (../shared/hosts tarballs: a1111 v1.10.1, Forge dfdcbab, reForge
# 3b56b268), plus the CFG denoiser module A1111 >= 1.6 has.
A1111_TREE = {"modules", "modules.sd_samplers_cfg_denoiser", "extensions-builtin"}
FORGE_TREE = {"modules", "modules.sd_samplers_cfg_denoiser", "modules_forge", "backend", "k_diffusion", *FORGE_BACKEND}
#: A Forge-family tree whose back end is not the Forge2 layout (e.g. the older ldm-based Forge, or a future one)
OTHER_FORGE_TREE = {"modules", "modules.sd_samplers_cfg_denoiser", "modules_forge", "backend"}
REFORGE_TREE = {
    "modules",
    "modules.sd_samplers_cfg_denoiser",
    "modules_forge",
    "ldm_patched",
    "k_diff",
    *REFORGE_BACKEND,
}
OTHER_REFORGE_TREE = {"modules", "modules.sd_samplers_cfg_denoiser", "modules_forge", "ldm_patched"}


@pytest.mark.parametrize(
    ("tree", "name", "supported", "adapter"),
    [
        (A1111_TREE, A1111, True, "hooks"),
        (FORGE_TREE, FORGE, True, "forge"),
        (OTHER_FORGE_TREE, FORGE, False, ""),
        (REFORGE_TREE, REFORGE, True, "reforge"),
        (OTHER_REFORGE_TREE, REFORGE, False, ""),
        ({"modules", "modules_forge"}, "this Forge-family WebUI", False, ""),
        ({"modules"}, "this WebUI", False, ""),
    ],
)
def test_detect_host(tree, name, supported, adapter):
    info = detect_host(tree.__contains__)
    assert (info.name, info.supported, info.adapter) == (name, supported, adapter)
    if not supported:
        assert "changes nothing" in info.message()
        assert info.reason


def test_module_exists_never_raises():
    assert module_exists("json")
    assert not module_exists("no_such_package_vpred")
    assert not module_exists("no_such_package_vpred.sub")  # parent missing: no exception
