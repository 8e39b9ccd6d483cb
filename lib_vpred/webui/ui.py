"""The Gradio panel (gradio 3.41, as shipped by the WebUI), built from the parameter table.

``build`` must stay free of side effects: the WebUI's API calls ``Script.ui()`` twice more to read default values.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import gradio as gr

from lib_vpred import params as vp
from lib_vpred.plan import KDIFFUSION, OTHER, TIMESTEP

PANEL_LABEL = "V-Prediction / Zero Terminal SNR"
#: Samplers of the WebUI's timestep family (``modules.sd_samplers_timesteps``) and others we never touch.
TIMESTEP_SAMPLERS = frozenset({"DDIM", "DDIM CFG++", "PLMS", "UniPC"})
OTHER_SAMPLERS = frozenset({"LCM"})


def sampler_family_by_name(name: str | None) -> str:
    if name in TIMESTEP_SAMPLERS:
        return TIMESTEP
    if name in OTHER_SAMPLERS:
        return OTHER
    return KDIFFUSION


def infotext_reader(field: str, default: Any) -> Callable[[dict[str, Any]], Any]:
    """Paste handler for one control: the value from the infotext, or the default when the infotext has none of our
    keys (so an old image does not inherit the current settings)."""

    def read(infotext_params: dict[str, Any]) -> Any:
        found = vp.parse_infotext(infotext_params)
        return found.get(field, default)

    return read


def status_html(text: str) -> str:
    return f"<p class='vpred-status'>{html.escape(text)}</p>"


def build(
    script: Any,
    is_img2img: bool,
    input_accordion: type,
    status_fn: Callable[..., str],
    defaults: vp.VPredParams | None = None,
) -> list[Any]:
    """Create the panel; returns the input components in :data:`lib_vpred.params.PARAMS` order.

    ``defaults`` (from Settings) are the controls' initial values; the API uses them for calls without our args.
    """
    table = vp.PARAMS_BY_NAME
    defaults = defaults or vp.defaults()
    with input_accordion(defaults.enabled, label=PANEL_LABEL, elem_id=script.elem_id("enabled")) as enabled:
        with gr.Row():
            prediction = gr.Radio(
                list(table["prediction"].choices),
                value=defaults.prediction,
                label=table["prediction"].label,
                elem_id=script.elem_id("prediction"),
            )
            ztsnr = gr.Radio(
                list(table["ztsnr"].choices),
                value=defaults.ztsnr,
                label=table["ztsnr"].label,
                elem_id=script.elem_id("ztsnr"),
            )
        with gr.Row():
            spacing = gr.Radio(
                list(table["spacing"].choices),
                value=defaults.spacing,
                label=table["spacing"].label,
                elem_id=script.elem_id("spacing"),
            )
            cfg_rescale = gr.Slider(
                minimum=table["cfg_rescale"].minimum,
                maximum=table["cfg_rescale"].maximum,
                step=table["cfg_rescale"].step,
                value=defaults.cfg_rescale,
                label=table["cfg_rescale"].label,
                elem_id=script.elem_id("cfg_rescale"),
            )
        with gr.Row():
            status = gr.HTML(
                status_html("Press Refresh (or change a setting) to see what the next generation will do."),
                elem_id=script.elem_id("status"),
            )
            refresh = gr.Button("Refresh", elem_id=script.elem_id("refresh"), size="sm")
    controls = [enabled, prediction, ztsnr, spacing, cfg_rescale]

    def update(*values: Any) -> str:
        return status_html(status_fn(*values))

    refresh.click(fn=update, inputs=controls, outputs=[status], show_progress=False)
    for control in controls:
        control.change(fn=update, inputs=controls, outputs=[status], show_progress=False)

    fields = [p.name for p in vp.PARAMS]
    script.infotext_fields = [
        (component, infotext_reader(name, getattr(defaults, name)))
        for component, name in zip(controls, fields, strict=True)
    ]
    script.paste_field_names = [p.infotext_key for p in vp.PARAMS if p.infotext_key]
    script.vpred_status = status
    script.vpred_controls = controls
    return controls
