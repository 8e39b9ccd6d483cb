"""What the reForge live tests share: the reForge's URL (``VPRED_REFORGE_URL``), the skip gate, HTTP calls.

Without ``VPRED_REFORGE_URL`` a module that calls :func:`require_reforge` is skipped as a whole (a module-level skip,
so ``VPRED_REQUIRE_LIVE=1`` of a run that started only A1111 does not turn it into failures);
``VPRED_REQUIRE_REFORGE=1`` makes a missing URL an error instead. HTTP and probe tensors as for Forge
(``forge_client``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.webui.forge_client import STOCK_SIGMA_MAX, STOCK_SIGMA_MIN, request, tensor

__all__ = ["STOCK_SIGMA_MAX", "STOCK_SIGMA_MIN", "URL", "call", "require_reforge", "tensor"]

URL = os.environ.get("VPRED_REFORGE_URL", "").rstrip("/")
SKIP_REASON = "no reForge: set VPRED_REFORGE_URL, e.g. export VPRED_REFORGE_URL=$(python3 tools/host.py start reforge)"


def require_reforge() -> None:
    """Skip the calling module (or fail under ``VPRED_REQUIRE_REFORGE=1``) when no reForge is given."""
    if URL:
        return
    if os.environ.get("VPRED_REQUIRE_REFORGE") == "1":
        raise RuntimeError(f"VPRED_REQUIRE_REFORGE=1 but {SKIP_REASON}")
    pytest.skip(SKIP_REASON, allow_module_level=True)


def call(path: str, body: dict[str, Any] | None = None, base: str | None = None) -> tuple[int, Any]:
    """GET (no body) or POST JSON to the reForge at ``base`` (default ``VPRED_REFORGE_URL``)."""
    return request(base or URL, path, body)
