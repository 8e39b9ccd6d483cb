"""HTTP endpoints under ``/vpred/v1`` (registered from ``script_callbacks.on_app_started``).

- ``GET /vpred/v1/schema``: every parameter (type, default, allowed values, infotext key) in positional order;
- ``POST /vpred/v1/validate``: body ``{"args": [...]}`` or ``{"args": {...}}`` as in ``alwayson_scripts``; 200 with
  the normalised values, or 422 naming the bad field and the allowed values;
- ``GET /vpred/v1/status``: what is detected for the loaded checkpoint and what a default generation will do;
- ``GET /vpred/v1/loaded``: the loaded checkpoint's title only (cheap; the panel's page polls it to notice a change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lib_vpred import params as vp

ROUTE_PREFIX = "/vpred/v1"


def validate_body(body: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for a validation request. Pure, so it is tested without FastAPI."""
    if not isinstance(body, dict) or "args" not in body:
        return 422, {
            "valid": False,
            "field": "args",
            "error": 'expected a JSON object {"args": [...]} or {"args": {...}}',
        }
    args = body["args"]
    try:
        parsed = vp.from_args(list(args) if isinstance(args, list) else [args])
    except vp.ParamError as e:
        return 422, {"valid": False, "field": e.field, "error": str(e)}
    return 200, {"valid": True, "params": dataclasses.asdict(parsed), "args": vp.to_args(parsed)}


def register_routes(
    app: Any, status_fn: Callable[[], dict[str, Any]], loaded_fn: Callable[[], dict[str, Any]] | None = None
) -> None:
    """Add the routes to the WebUI's FastAPI ``app`` (once per app)."""
    from fastapi import Body
    from fastapi.responses import JSONResponse

    existing = {getattr(route, "path", None) for route in getattr(app, "routes", [])}
    if f"{ROUTE_PREFIX}/schema" in existing:
        return

    def schema() -> dict[str, Any]:
        return vp.schema()

    def validate(body: Any = Body(...)) -> Any:  # noqa: B008 - FastAPI's idiom
        status, content = validate_body(body)
        return JSONResponse(status_code=status, content=content)

    app.add_api_route(f"{ROUTE_PREFIX}/schema", schema, methods=["GET"])
    app.add_api_route(f"{ROUTE_PREFIX}/validate", validate, methods=["POST"])
    app.add_api_route(f"{ROUTE_PREFIX}/status", status_fn, methods=["GET"])
    if loaded_fn is not None:
        app.add_api_route(f"{ROUTE_PREFIX}/loaded", loaded_fn, methods=["GET"])
