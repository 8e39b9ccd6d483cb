"""Live tier, Forge: sd-webui-vpred acting on a real, unmodified Forge (dfdcbab), seen through the probe extension.

Runs against ``VPRED_FORGE_URL`` (``bash tools/dev.sh test`` starts one; see ``tests/webui/README.md``); the checks
are shared with reForge (:mod:`tests.webui.patcher_live`, where the golden values and their sources are described).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from tests.webui import forge_client
from tests.webui.patcher_live import PatcherLiveChecks, client

forge_client.require_forge()
pytestmark = [pytest.mark.webui]


class TestForge(PatcherLiveChecks):
    host_key = "forge"
    port_env = "VPRED_FORGE_PORT"
    eps_name = "epsilon"
    # Forge's hires pass through the API needs its module choice (else TypeError in processing.py)
    hires_fields: ClassVar[dict[str, Any]] = {"hr_additional_modules": ["Use same choices"]}
    call = client(forge_client.call)
