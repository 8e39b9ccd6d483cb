"""X/Y/Z plot axes for every parameter, registered once (also after "Reload UI") from ``on_before_ui``.

An axis writes only to the ``p`` of its grid cell (``p._vpred_xyz``, a fresh dict each time because the XYZ script
shallow-copies ``p``); the script merges it over the panel's values in ``process``. Nothing lives in module globals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lib_vpred import params as vp

AXIS_PREFIX = "[VPred]"
ATTR_XYZ = "_vpred_xyz"
#: Module names the WebUI gives the built-in XYZ script (A1111 loads scripts by file name; Forge as a package).
XYZ_MODULE_NAMES = ("xyz_grid.py", "scripts.xyz_grid")


def axis_label(param: vp.Param) -> str:
    return f"{AXIS_PREFIX} {param.label}"


def _to_value(param: vp.Param, raw: Any) -> Any:
    if param.kind is bool and isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in ("true", "on", "yes", "1"):
            return True
        if lowered in ("false", "off", "no", "0"):
            return False
    return param.validate(raw)


def make_apply(param: vp.Param) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, x: Any, xs: Any) -> None:
        setattr(p, ATTR_XYZ, {**(getattr(p, ATTR_XYZ, None) or {}), param.name: _to_value(param, x)})

    return apply


def make_confirm(param: vp.Param) -> Callable[[Any, Any], None]:
    def confirm(p: Any, xs: Any) -> None:
        for x in xs:
            try:
                _to_value(param, x)
            except vp.ParamError as e:
                raise RuntimeError(f"{axis_label(param)}: {e}") from None

    return confirm


def axis_options(xyz_module: Any) -> list[Any]:
    """One ``AxisOption`` per parameter, typed and with ``choices`` where the parameter has them."""
    options = []
    for param in vp.PARAMS:
        if param.kind is float:
            kind, choices = float, None
        elif param.kind is bool:
            kind, choices = str, (lambda: ["True", "False"])
        else:
            kind, choices = str, (lambda c=param.choices: list(c))
        options.append(
            xyz_module.AxisOption(
                axis_label(param), kind, make_apply(param), confirm=make_confirm(param), choices=choices
            )
        )
    return options


def find_xyz_module(scripts_data: Any) -> Any:
    for data in scripts_data:
        if data.script_class.__module__ in XYZ_MODULE_NAMES and getattr(data, "module", None) is not None:
            return data.module
    return None


def register(scripts_data: Any) -> bool:
    """Add the axes to the XYZ script's ``axis_options`` unless they are there already. True when present after."""
    xyz = find_xyz_module(scripts_data)
    if xyz is None:
        return False
    if not any(str(o.label).startswith(AXIS_PREFIX) for o in xyz.axis_options):
        xyz.axis_options.extend(axis_options(xyz))
    return True


def overrides(p: Any) -> dict[str, Any]:
    """The values XYZ set for this cell (validated), to apply over the panel's."""
    return dict(getattr(p, ATTR_XYZ, None) or {})
