"""The Gradio panel (gradio 3.41, as shipped by the WebUI), built from the parameter table.

``build`` must stay free of side effects: the WebUI's API calls ``Script.ui()`` twice more to read default values.

The schedule preview listens to the WebUI's own steps / sampler / schedule type / denoising strength components.
Those are created before or after our panel depending on the tab layout (``ui_reorder``), so the wiring is symmetric:
``Script.after_component`` hands every WebUI component to :func:`capture_component`, ``build`` registers the panel,
and whichever of the two comes second connects that component's ``.change`` to the preview. The values are kept per
browser session in a ``gr.State`` (each listener only needs its own component), so nothing depends on creation order,
and components that never appear (API-only use, another layout) simply keep their defaults.
"""

from __future__ import annotations

import dataclasses
import html
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
import torch

from lib_vpred import params as vp
from lib_vpred import preview as pv
from lib_vpred import schedule
from lib_vpred.plan import KDIFFUSION, OTHER, TIMESTEP, SamplerFacts, decide

logger = logging.getLogger("vpred")

PANEL_LABEL = "V-Prediction / Zero Terminal SNR"
#: Samplers of the WebUI's timestep family (``modules.sd_samplers_timesteps``) and others we never touch.
TIMESTEP_SAMPLERS = frozenset({"DDIM", "DDIM CFG++", "PLMS", "UniPC"})
OTHER_SAMPLERS = frozenset({"LCM"})

#: Hover hint of the Refresh button (``javascript/vpred-hints.js`` must carry the same text; tests enforce it).
REFRESH_HINT = "Re-read the loaded checkpoint and update the status line and the schedule preview."
PREVIEW_PLACEHOLDER = "Press Refresh (or change a setting) to see the schedule the next generation will use."

#: The WebUI's components the preview follows, by ``elem_id`` (v1.10.1 ``processing_scripts/sampler.py`` and
#: ``ui.py``), per tab (False: txt2img, True: img2img). Keys name the values passed to the preview.
WEBUI_COMPONENTS: dict[bool, dict[str, str]] = {
    False: {
        "txt2img_steps": "steps",
        "txt2img_sampling": "sampler",
        "txt2img_scheduler": "scheduler",
        "txt2img_hr-checkbox": "enable_hr",  # InputAccordion(elem_id="txt2img_hr")'s hidden checkbox
        "txt2img_hires_steps": "hr_steps",
        "txt2img_denoising_strength": "denoise",
        "hr_sampler": "hr_sampler",
        "hr_scheduler": "hr_scheduler",
    },
    True: {
        "img2img_steps": "steps",
        "img2img_sampling": "sampler",
        "img2img_scheduler": "scheduler",
        "img2img_denoising_strength": "denoise",
    },
}
#: Values used for WebUI components that were not found (their v1.10.1 defaults).
WEBUI_DEFAULTS: dict[bool, dict[str, Any]] = {
    False: {
        "steps": 20,
        "sampler": None,
        "scheduler": "Automatic",
        "enable_hr": False,
        "hr_steps": 0,
        "denoise": 0.7,
        "hr_sampler": "Use same sampler",
        "hr_scheduler": "Use same scheduler",
    },
    True: {"steps": 20, "sampler": None, "scheduler": "Automatic", "denoise": 0.75},
}


def sampler_family_by_name(name: str | None) -> str:
    if name in TIMESTEP_SAMPLERS:
        return TIMESTEP
    if name in OTHER_SAMPLERS:
        return OTHER
    return KDIFFUSION


class InfotextField(str):
    """One control's entry in ``Script.infotext_fields``: the infotext key itself (a ``str``) that can also read the
    control's value from a parsed infotext (callable).

    The WebUI uses both faces: its paste button and the API's ``infotext`` field call a callable entry with the parsed
    dict, while its Send to img2img / inpaint buttons copy only the fields whose entry equals a name in
    ``paste_field_names``. A plain callable would never be copied by Send to; a plain string would hand the raw
    infotext text (``on (auto)``) to the control.
    """

    field: str
    default: Any

    def __new__(cls, key: str, field: str, default: Any) -> InfotextField:
        self = super().__new__(cls, key)
        self.field = field
        self.default = default
        return self

    def __call__(self, infotext_params: dict[str, Any]) -> Any:
        """The control's value from the infotext, or the default when the infotext has none of our keys (so an old
        image does not inherit the current settings). Legacy CFG rescale keys of other extensions are read too."""
        return vp.parse_infotext(infotext_params).get(self.field, self.default)


def status_html(text: str) -> str:
    return f"<p class='vpred-status'>{html.escape(text)}</p>"


def build(
    script: Any,
    is_img2img: bool,
    input_accordion: type,
    status_fn: Callable[..., str],
    defaults: vp.VPredParams | None = None,
    preview_fn: Callable[..., str] | None = None,
) -> list[Any]:
    """Create the panel; returns the input components in :data:`lib_vpred.params.PARAMS` order.

    ``defaults`` (from Settings) are the controls' initial values; the API uses them for calls without our args.
    ``preview_fn(control_values, webui_values, is_img2img) -> html`` renders the schedule preview (default:
    :func:`webui_preview_html`).
    """
    table = vp.PARAMS_BY_NAME
    defaults = defaults or vp.defaults()
    preview_fn = preview_fn or webui_preview_html
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
        preview = gr.HTML(
            f"<div class='vpred-preview'><p>{html.escape(PREVIEW_PLACEHOLDER)}</p></div>",
            elem_id=script.elem_id("preview"),
        )
        # The WebUI's values as this browser session last saw them (filled by the listeners below).
        webui_state = gr.State({})
    controls = [enabled, prediction, ztsnr, spacing, cfg_rescale]
    panel = Panel(
        is_img2img=bool(is_img2img),
        controls=controls,
        status=status,
        preview=preview,
        state=webui_state,
        status_fn=status_fn,
        preview_fn=preview_fn,
    )

    refresh.click(fn=panel.update, inputs=[*controls, webui_state], outputs=[status, preview], show_progress=False)
    for control in controls:
        control.change(
            fn=panel.update, inputs=[*controls, webui_state], outputs=[status, preview], show_progress=False
        )

    script.infotext_fields = [
        (component, InfotextField(p.infotext_key, p.name, getattr(defaults, p.name)))
        for component, p in zip(controls, vp.PARAMS, strict=True)
    ]
    script.paste_field_names = [p.infotext_key for p in vp.PARAMS if p.infotext_key]
    script.vpred_status = status
    script.vpred_preview = preview
    script.vpred_controls = controls
    links(script).attach(panel)
    return controls


# --- the preview's link to the WebUI's own components -----------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Panel:
    """One built panel (one tab, one ``gr.Blocks``): its components and the functions its events run."""

    is_img2img: bool
    controls: list[Any]
    status: Any
    preview: Any
    state: Any
    status_fn: Callable[..., str]
    preview_fn: Callable[..., str]
    #: The WebUI components linked to this panel, by key (see :data:`WEBUI_COMPONENTS`).
    webui: dict[str, Any] = dataclasses.field(default_factory=dict)

    def webui_values(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """The WebUI values to preview: this session's last seen values, else the component's current value (which
        ``ui-config.json`` may have changed after the UI was built), else the WebUI's default."""
        values = dict(WEBUI_DEFAULTS[self.is_img2img])
        for key, component in self.webui.items():
            value = getattr(component, "value", None)
            if value is not None:
                values[key] = value
        values.update({k: v for k, v in (state or {}).items() if v is not None})
        return values

    def render(self, control_values: Sequence[Any], state: dict[str, Any] | None) -> tuple[str, str]:
        """(status html, preview html); never raises."""
        try:
            status = status_html(self.status_fn(*control_values))
        except Exception as e:  # the panel must keep working whatever the model or the settings are
            logger.exception("[VPred] status line failed")
            status = status_html(f"status unavailable: {e}")
        try:
            preview = self.preview_fn(list(control_values), self.webui_values(state), self.is_img2img)
        except Exception as e:
            logger.exception("[VPred] schedule preview failed")
            preview = preview_message(f"preview unavailable: {e}")
        return status, preview

    def update(self, *values: Any) -> tuple[str, str]:
        """Refresh / our own controls: ``(*control_values, state)``."""
        *control_values, state = values
        return self.render(control_values, state)

    def listener(self, key: str) -> Callable[..., tuple[dict[str, Any], str, str]]:
        """The ``.change`` function of one WebUI component: ``(value, state, *control_values)``."""

        def changed(value: Any, state: dict[str, Any] | None, *control_values: Any) -> tuple[dict[str, Any], str, str]:
            state = {**(state or {}), key: value}
            return (state, *self.render(control_values, state))

        return changed

    def link(self, key: str, component: Any) -> None:
        """Follow one WebUI component: its changes update this session's state, the status and the preview."""
        if key in self.webui:
            return
        self.webui[key] = component
        component.change(
            fn=self.listener(key),
            inputs=[component, self.state, *self.controls],
            outputs=[self.state, self.status, self.preview],
            show_progress=False,
        )


def _root_block() -> Any:
    try:
        from gradio.context import Context

        return Context.root_block
    except Exception:
        return None


class PreviewLinks:
    """Per script instance (one per tab): the WebUI components seen so far and the panel, for the current
    ``gr.Blocks``. A new Blocks (the API building throwaway UIs to read defaults) starts afresh, so components of the
    real UI are never wired into another Blocks."""

    def __init__(self) -> None:
        self.root: Any = None
        self.components: dict[str, Any] = {}
        self.panel: Panel | None = None

    def _sync_root(self) -> bool:
        root = _root_block()
        if root is not self.root:
            self.root, self.components, self.panel = root, {}, None
        return root is not None

    def capture(self, component: Any, is_img2img: bool) -> bool:
        """A component the WebUI just created (``after_component``): remember it if the preview follows it."""
        key = WEBUI_COMPONENTS[bool(is_img2img)].get(getattr(component, "elem_id", None) or "")
        if key is None or not self._sync_root():
            return False
        self.components[key] = component
        if self.panel is not None:
            self.panel.link(key, component)
        return True

    def attach(self, panel: Panel) -> None:
        """The panel was built: link every WebUI component captured before it."""
        if not self._sync_root():
            return
        self.panel = panel
        for key, component in self.components.items():
            panel.link(key, component)


def links(script: Any) -> PreviewLinks:
    found = getattr(script, "_vpred_links", None)
    if not isinstance(found, PreviewLinks):
        found = PreviewLinks()
        script._vpred_links = found
    return found


def capture_component(script: Any, component: Any) -> bool:
    """For ``Script.after_component``: never raises (a failure only means the preview misses that component)."""
    try:
        return links(script).capture(component, bool(getattr(script, "is_img2img", False)))
    except Exception:
        logger.exception("[VPred] could not link a WebUI component to the schedule preview")
        return False


# --- rendering the preview in the WebUI -------------------------------------------------------------------------------


def preview_message(text: str) -> str:
    return f"<div class='vpred-preview'><p>{html.escape(text)}</p></div>"


def _int(value: Any, default: int) -> int:
    try:
        return round(float(value))
    except (TypeError, ValueError, OverflowError):
        return default


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One sampling pass to preview."""

    title: str
    sampler: str | None
    scheduler: str | None
    steps: int
    denoise: float | None = None
    fixed_steps: bool = False


def passes_for(webui: dict[str, Any], is_img2img: bool, opts: Any) -> list[PassSpec]:
    """The passes of the next generation: txt2img (plus hires when enabled), or img2img."""
    steps = max(_int(webui.get("steps"), 20), 1)
    sampler, scheduler = webui.get("sampler"), webui.get("scheduler")
    if is_img2img:
        return [
            PassSpec(
                "img2img",
                sampler,
                scheduler,
                steps,
                denoise=_float(webui.get("denoise"), 0.75),
                fixed_steps=bool(getattr(opts, "img2img_fix_steps", False)),
            )
        ]
    out = [PassSpec("txt2img", sampler, scheduler, steps)]
    if webui.get("enable_hr"):
        hr_sampler = webui.get("hr_sampler")
        hr_scheduler = webui.get("hr_scheduler")
        out.append(
            PassSpec(
                "hires pass",
                sampler if hr_sampler in (None, "", "Use same sampler") else hr_sampler,
                scheduler if hr_scheduler in (None, "", "Use same scheduler") else hr_scheduler,
                max(_int(webui.get("hr_steps"), 0), 0) or steps,
                denoise=_float(webui.get("denoise"), 0.7),
                fixed_steps=True,
            )
        )
    return out


def _sampler_config(sd_samplers: Any, name: str | None) -> Any:
    try:
        config = sd_samplers.find_sampler_config(name)
    except Exception:
        config = None
    if config is None and name is None:
        samplers = getattr(sd_samplers, "all_samplers", None) or []
        config = samplers[0] if samplers else None
    return config


def render_pass(
    spec: PassSpec,
    params: vp.VPredParams,
    facts: Any,
    sd_model: Any,
    opts: Any,
    sd_schedulers: Any,
    sd_samplers: Any,
    ztsnr_table: Callable[[Any], torch.Tensor],
) -> str:
    """The preview of one pass, as the WebUI's ``KDiffusionSampler.get_sigmas`` will build it."""
    config = _sampler_config(sd_samplers, spec.sampler)
    name = getattr(config, "name", None) or spec.sampler or "?"
    family = sampler_family_by_name(name)
    title = f"{spec.title}, {name}"
    if family != KDIFFUSION:
        return preview_message(f"{title}: a timestep sampler; the schedule preview covers k-diffusion samplers only")
    options = getattr(config, "options", None) or {}
    discards = bool(
        options.get("discard_next_to_last_sigma", False) or getattr(opts, "always_discard_next_to_last_sigma", False)
    )
    label = spec.scheduler or "Automatic"
    scheduler_name = options.get("scheduler") if label == "Automatic" else label
    scheduler = sd_schedulers.schedulers_map.get(scheduler_name) if scheduler_name else None
    shown = scheduler.label if scheduler is not None else None
    plan = decide(
        params, facts, SamplerFacts(name=name, family=family, discards_penultimate_sigma=discards, scheduler=shown)
    )
    alphas = getattr(sd_model, "alphas_cumprod", None)
    if alphas is None:
        return preview_message(f"{title}: the model has no noise schedule to preview")
    if plan.active and plan.install_ztsnr_table:
        table = ztsnr_table(sd_model)
    else:
        table = schedule.sigmas_from_alphas_cumprod(alphas.detach().to("cpu", torch.float32)).float()
    trailing = plan.active and plan.trailing
    try:
        import k_diffusion.external

        inner_model = k_diffusion.external.DiscreteSchedule(table, quantize=False)
    except ImportError:
        inner_model = None
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    extra: dict[str, Any] = {}
    if getattr(opts, "use_old_karras_scheduler_sigmas", False):
        sigma_min, sigma_max = 0.1, 10.0
    if scheduler is not None and scheduler.function is not None:
        if getattr(opts, "sigma_min", 0) and opts.sigma_min != float(table[0]):
            sigma_min = opts.sigma_min
        if getattr(opts, "sigma_max", 0) and opts.sigma_max != float(table[-1]):
            sigma_max = opts.sigma_max
        rho = getattr(opts, "rho", 0)
        if scheduler.default_rho != -1 and rho and rho != scheduler.default_rho:
            extra["rho"] = rho
    how = "trailing (VPred)" if trailing else (f"schedule type {shown}" if shown else "sampler default (uniform)")
    table_kind = "ZTSNR" if (plan.active and plan.ztsnr) or facts.table_is_ztsnr else "stock"
    result = pv.build_preview(
        table,
        spec.steps,
        trailing=trailing,
        schedule_fn=None if scheduler is None else scheduler.function,
        need_inner_model=bool(getattr(scheduler, "need_inner_model", False)),
        inner_model=inner_model,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        extra_kwargs=extra,
        discard_penultimate=discards,
        denoising_strength=spec.denoise,
        fixed_steps=spec.fixed_steps,
        ztsnr=plan.active and plan.ztsnr,
        scheduler_label=shown,
    )
    head = f"{title}, {how}, {table_kind} sigmas"
    if not plan.active:
        head += f" (VPred: {plan.inactive_reason or 'not applied'})"
    return f"<div class='vpred-preview-head'>{html.escape(head)}</div>{result.html()}"


def webui_preview_html(control_values: Sequence[Any], webui: dict[str, Any], is_img2img: bool) -> str:
    """The panel's schedule preview for the loaded checkpoint (reads ``modules.shared`` lazily; never raises)."""
    try:
        from modules import sd_samplers, sd_schedulers, shared

        from lib_vpred.webui import hooks
    except Exception:
        return preview_message("schedule preview: only available inside the WebUI")
    try:
        params = vp.from_args(list(control_values))
    except vp.ParamError as e:
        return preview_message(f"invalid setting: {e}")
    sd_model = shared.sd_model
    if sd_model is None:
        return preview_message("no checkpoint loaded")
    facts = hooks.model_facts(sd_model, shared.opts)
    cache: dict[str, torch.Tensor] = {}

    def ztsnr_table(model: Any) -> torch.Tensor:
        if "t" not in cache:
            cache["t"] = hooks.ztsnr_sigma_table(model, torch.device("cpu"))
        return cache["t"]

    parts = [
        render_pass(spec, params, facts, sd_model, shared.opts, sd_schedulers, sd_samplers, ztsnr_table)
        for spec in passes_for(webui, is_img2img, shared.opts)
    ]
    return "<div class='vpred-preview'>" + "".join(parts) + "</div>"
