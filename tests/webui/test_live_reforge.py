"""Live tier, reForge: sd-webui-vpred acting on a real, unmodified reForge (3b56b268), seen through the probe.

Runs against ``VPRED_REFORGE_URL`` (``bash tools/dev.sh test`` starts one; see ``tests/webui/README.md``); the checks
are shared with Forge (:mod:`tests.webui.patcher_live`). reForge keeps two sigma tables that must agree: its model
sampling (the UNet's sigma -> t; ``sigmas_*`` in the probe's record) and the A1111-style one that gives the sampler
its sigmas (``wrapper_sigmas_*``); the shared checks compare every model call's sigma with its UNet timestep.
"""

from __future__ import annotations

import math

import pytest

from tests.webui import reforge_client
from tests.webui.forge_client import STOCK_SIGMA_MAX
from tests.webui.patcher_live import ZTSNR_SIGMA_MAX, PatcherLiveChecks, V, client

reforge_client.require_reforge()
pytestmark = [pytest.mark.webui]


class TestReForge(PatcherLiveChecks):
    host_key = "reforge"
    port_env = "VPRED_REFORGE_PORT"
    eps_name = "epsilon"
    call = client(reforge_client.call)
    # A second reForge loads a model at startup (about a minute more in CI): the enabled/disabled comparison stands
    # alone here (the --no-extension baseline passed by hand on 2026-12-03: byte-identical).
    test_eps_twin_is_byte_identical_to_the_host_without_the_extension = None

    def test_both_tables_are_ztsnr_while_sampling_and_stock_outside(self, euler_v):
        _, probe = euler_v
        assert probe["wrapper"] == "model_wrap.sigmas"
        assert probe["wrapper_sigmas_during"]["max"] == pytest.approx(ZTSNR_SIGMA_MAX, abs=0.01)
        assert probe["sigmas_during"]["max"] == pytest.approx(ZTSNR_SIGMA_MAX, abs=0.01)
        for key in ("wrapper_sigmas_before", "wrapper_sigmas_after"):
            assert math.isclose(probe[key]["max"], STOCK_SIGMA_MAX, rel_tol=1e-5), (key, probe[key])

    def test_reforges_rescale_cfg_and_ours_both_run_when_both_are_on(self):
        """reForge's built-in RescaleCFG (a ``sampler_cfg_function``, off by default) compounds with ours (a post-CFG
        function): with it on, both are installed for the pass (the plan warns: ``lib_vpred.webui.reforge.
        builtin_rescale_cfg``, unit-tested), and its state does not stick to the next generation."""
        title = "rescalecfg for reforge"
        status, scripts = self.call("/sdapi/v1/scripts")
        assert status == 200
        assert title in scripts["txt2img"], scripts["txt2img"]
        _, off = self.generate(V, steps=2)
        assert not off["calls"][0]["has_cfg_function"]  # off by default: only ours
        assert off["calls"][0]["post_cfg_functions"] == 1
        body_scripts = {"vpred": {"args": [True]}, title: {"args": [True, "Normal", 0.7]}}
        status, _ = self.call("/vpred-probe/v1/reset", {"capture": [0]})
        status, out = self.call(
            "/sdapi/v1/txt2img",
            {
                "prompt": "a cat",
                "width": 64,
                "height": 64,
                "steps": 2,
                "seed": 1234,
                "alwayson_scripts": body_scripts,
                "override_settings": {"sd_model_checkpoint": V},
            },
        )
        assert status == 200, out
        status, both = self.call("/vpred-probe/v1/last")
        assert both["calls"][0]["has_cfg_function"]
        assert both["calls"][0]["post_cfg_functions"] == 1
        _, after = self.generate(V, [True], steps=2)
        assert after["calls"][0]["post_cfg_functions"] == 1
