"""What the Forge live tests share: the Forge's URL (``VPRED_FORGE_URL``), the skip gate, HTTP calls (:func:`request`,
used by the A1111 and reForge tiers too), probe tensors.

Without ``VPRED_FORGE_URL`` a module that calls :func:`require_forge` is skipped as a whole (a module-level skip, so
``VPRED_REQUIRE_LIVE=1`` of a run that started only A1111 does not turn it into failures); ``VPRED_REQUIRE_FORGE=1``
(set by ``tools/dev.sh test`` when it started a Forge) makes a missing URL an error instead.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import urllib.error
import urllib.request
from typing import Any

import pytest

URL = os.environ.get("VPRED_FORGE_URL", "").rstrip("/")
TIMEOUT = float(os.environ.get("VPRED_WEBUI_TIMEOUT", "600"))
SKIP_REASON = "no Forge: set VPRED_FORGE_URL, e.g. export VPRED_FORGE_URL=$(python3 tools/host.py start forge)"
#: The stock SD1.5 sigma table's ends (scaled-linear betas 0.00085..0.012, 1000 steps)
STOCK_SIGMA_MIN = 0.029167
STOCK_SIGMA_MAX = 14.614641


def require_forge() -> None:
    """Skip the calling module (or fail under ``VPRED_REQUIRE_FORGE=1``) when no Forge is given."""
    if URL:
        return
    if os.environ.get("VPRED_REQUIRE_FORGE") == "1":
        raise RuntimeError(f"VPRED_REQUIRE_FORGE=1 but {SKIP_REASON}")
    pytest.skip(SKIP_REASON, allow_module_level=True)


def call(path: str, body: dict[str, Any] | None = None, base: str | None = None) -> tuple[int, Any]:
    """GET (no body) or POST JSON to the Forge at ``base`` (default ``VPRED_FORGE_URL``): (status, decoded answer)."""
    return request(base or URL, path, body)


def request(base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET (no body) or POST JSON to ``base + path``: (HTTP status, decoded JSON or text). Shared with reForge."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except ValueError:
            return e.code, payload.decode(errors="replace")


def tensor(entry: dict[str, Any]) -> tuple[list[int], list[float]]:
    """A probe tensor: (shape, flat float32 values)."""
    raw = base64.b64decode(entry["b64"])
    return entry["shape"], list(struct.unpack(f"<{len(raw) // 4}f", raw))
