"""Live tier, reForge: what stock reForge does with a v-prediction SD1.5 checkpoint, seen through the probe extension.

The anchor of ``../shared/design/reforge-host.md`` ("Native behaviour"), reproduced on a running reForge
(``python tools/host.py start reforge``: full-size random SD1.5 checkpoints ``sd15-v`` (+ YAML with
``parameterization: "v"``) and ``sd15-eps`` (same tensors, no YAML), the probe extension ``tests/webui/probe``
installed) **without sd-webui-vpred acting**: its script, when reForge lists it, gets ``Enable`` False; the probe shows
that no CFG function was installed on the UNet either.

reForge keeps two sigma tables: its ``ldm_patched`` model sampling (``sigmas_*`` in the probe's record), which maps
each sigma to the UNet's timestep, and the A1111-style one (``wrapper_sigmas_*``: the k-diffusion wrapper's, or
``alphas_cumprod`` for DDIM), which gives the sampler its sigma schedule. Both must be stock here.

Skipped unless ``VPRED_REFORGE_URL`` names the reForge (e.g. ``export VPRED_REFORGE_URL=$(python tools/host.py start
reforge)``), as a module-level skip (``VPRED_REQUIRE_LIVE=1`` of an A1111-only run does not fail it);
``VPRED_REQUIRE_REFORGE=1`` makes a missing ``VPRED_REFORGE_URL`` a failure instead. Three generations at 64x64
(Euler 8 and DDIM 8 on ``sd15-v``, Euler 4 on ``sd15-eps``), about 1-2 s per step on a 2-core CPU.
"""

from __future__ import annotations

import pytest

from tests.webui import reforge_client
from tests.webui.patcher_live import client
from tests.webui.patcher_native import PatcherNativeChecks

reforge_client.require_reforge()
pytestmark = [pytest.mark.webui]


class TestReForgeNative(PatcherNativeChecks):
    """The checks of :mod:`tests.webui.patcher_native` on reForge."""

    probe_host = "reforge"
    has_wrapper_table = True
    sigma_max_rel_tol = 1e-5
    call = client(reforge_client.call)
