"""Live tier, Forge: what stock Forge does with a v-prediction SD1.5 checkpoint, seen through the probe extension.

The anchor of ``../shared/design/forge-host.md`` ("Native behaviour"), reproduced on a running Forge
(``python tools/host.py start forge``: full-size random SD1.5 checkpoints ``sd15-v`` (+ YAML with
``parameterization: "v"``) and ``sd15-eps`` (same tensors, no YAML), the probe extension ``tests/webui/probe``
installed) **without sd-webui-vpred acting**: its script, when Forge lists it, gets ``Enable`` False; the probe shows
that no CFG function was installed on the UNet either.

Skipped unless ``VPRED_FORGE_URL`` names the Forge (e.g. ``export VPRED_FORGE_URL=$(python tools/host.py start
forge)``). The skip is a module-level one, so ``VPRED_REQUIRE_LIVE=1`` (set by ``tools/dev.sh test`` once it has
started the A1111 host, which turns skips of live tests into failures) does not fail a run that never started a
Forge; ``VPRED_REQUIRE_FORGE=1`` makes a missing ``VPRED_FORGE_URL`` a failure instead. Three generations at 64x64 (Euler 8 and DDIM 8 on ``sd15-v``, Euler 4 on ``sd15-eps``), about 1-2 s per
step on a 2-core CPU, plus the first checkpoint load.
"""

from __future__ import annotations

import pytest

from tests.webui import forge_client
from tests.webui.patcher_live import client
from tests.webui.patcher_native import PatcherNativeChecks

forge_client.require_forge()
pytestmark = [pytest.mark.webui]


class TestForgeNative(PatcherNativeChecks):
    """The checks of :mod:`tests.webui.patcher_native` on Forge."""

    probe_host = "forge"
    call = client(forge_client.call)
