"""The Settings section "V-Prediction / ZTSNR": the panel's defaults and per-checkpoint overrides.

Defaults are one option per parameter (``vpred_default_<name>``), driven by the parameter table; the panel starts
from them and so does every API request that does not mention the script. They are read when the UI is built, so
they carry the WebUI's "(requires Reload UI)" marker; the two other options apply at the next generation. An invalid stored value falls back to
the built-in default instead of breaking the UI.
"""

from __future__ import annotations

from typing import Any

from lib_vpred import params as vp
from lib_vpred.webui.hooks import OPT_ASSUME_SD1_ZTSNR, OPT_OVERRIDES

SECTION = ("vpred", "V-Prediction / ZTSNR")
#: Every option's label starts with this, so that searching Settings for "V-Pred" or "ZTSNR" finds all of them.
LABEL_PREFIX = "V-Pred / ZTSNR"
#: The Settings sidebar group (v1.10.1 ``shared_options`` registers "sd", "Stable Diffusion").
CATEGORY = "sd"
OVERRIDES_HELP = (
    "One rule per line: <checkpoint name, glob or short hash>: prediction=v|eps, ztsnr=on|off. "
    "Example: fluffyrock-*: prediction=v, ztsnr=on. Applies when the panel's controls are Auto."
)


def option_key(param: vp.Param) -> str:
    return f"vpred_default_{param.name}"


def defaults(opts: Any) -> vp.VPredParams:
    """The panel's defaults from Settings (each invalid or missing value falls back to the table's default)."""
    values = {}
    for param in vp.PARAMS:
        raw = getattr(opts, option_key(param), param.default) if opts is not None else param.default
        try:
            values[param.name] = param.validate(raw)
        except vp.ParamError:
            values[param.name] = param.default
    return vp.VPredParams(**values)


def _needs_reload_ui(info: Any) -> Any:
    """The WebUI's "(requires Reload UI)" marker (``OptionInfo.needs_reload_ui``, WebUI 1.6+), where it exists."""
    mark = getattr(info, "needs_reload_ui", None)
    return mark() if callable(mark) else info


def register(opts: Any, option_info: type) -> None:
    """Add the options (``on_ui_settings``). Component classes are gradio's, imported here to keep the core pure."""
    import gradio as gr

    for param in vp.PARAMS:
        if param.kind is bool:
            component, args = gr.Checkbox, {}
        elif param.choices:
            component, args = gr.Radio, {"choices": list(param.choices)}
        else:
            component, args = gr.Slider, {"minimum": param.minimum, "maximum": param.maximum, "step": param.step}
        label = (
            f"{LABEL_PREFIX}: default {param.label}"
            if param.name != "enabled"
            else f"{LABEL_PREFIX}: enabled by default (the panel, and API calls without its args)"
        )
        # The panel's controls take these values when the UI is built: the WebUI's own marker says so.
        info = option_info(param.default, label, component, args, section=SECTION, category_id=CATEGORY)
        opts.add_option(option_key(param), _needs_reload_ui(info))
    opts.add_option(
        OPT_ASSUME_SD1_ZTSNR,
        option_info(
            True,
            f"{LABEL_PREFIX}: Auto treats an SD1 v-prediction checkpoint without ZTSNR evidence as ZTSNR "
            "(the fluffyrock family is)",
            gr.Checkbox,
            {},
            section=SECTION,
            category_id=CATEGORY,
        ),
    )
    opts.add_option(
        OPT_OVERRIDES,
        option_info(
            "",
            f"{LABEL_PREFIX}: per-checkpoint overrides. {OVERRIDES_HELP}",
            gr.Textbox,
            {"lines": 4},
            section=SECTION,
            category_id=CATEGORY,
        ),
    )
