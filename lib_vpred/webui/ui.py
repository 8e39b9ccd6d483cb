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

PANEL_LABEL = "V-Prediction / ZTSNR"
#: Samplers of the WebUI's timestep family (``modules.sd_samplers_timesteps``) and others we never touch.
TIMESTEP_SAMPLERS = frozenset({"DDIM", "DDIM CFG++", "PLMS", "UniPC"})
OTHER_SAMPLERS = frozenset({"LCM"})

#: Hover hint of the Refresh button (``javascript/vpred-hints.js`` must carry the same text; tests enforce it).
REFRESH_HINT = (
    "Re-read the loaded checkpoint. Not needed normally: the panel updates by itself when the page loads, "
    "the checkpoint changes or a setting changes."
)
#: Hover hint of the accordion's header (``javascript/vpred-hints.js`` carries the same text).
PANEL_HINT = (
    "What the next generation will do with this checkpoint. Open it to see why and to change the settings; "
    "folding it away does not turn the extension off (use Enable inside)."
)
#: Shown only until the page's first update (``javascript/vpred-panel.js`` clicks Refresh once the UI is loaded).
PREVIEW_PLACEHOLDER = "Reading the loaded checkpoint…"
STATUS_PLACEHOLDER = "Reading the loaded checkpoint…"

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


def status_html(text: str, hover: str = "") -> str:
    title = f" title='{html.escape(hover, quote=True)}'" if hover else ""
    return f"<p class='vpred-status'{title}>{html.escape(text)}</p>"


@dataclasses.dataclass(frozen=True)
class Status:
    """What ``status_fn`` returns: the one status line, its hover text (reasons, warnings) and the header summary."""

    line: str
    hover: str = ""
    summary: str = ""


def panel_label(summary: str) -> str:
    """The accordion's header: the panel's name and what the next generation will do."""
    return f"{PANEL_LABEL}: {summary}" if summary else PANEL_LABEL


def settings_summary(params: vp.VPredParams) -> str:
    """The header before anything is known about the checkpoint (the controls only)."""
    if not params.enabled:
        return "off"
    phi = f"φ {params.cfg_rescale:g}" if params.cfg_rescale > 0 else "no CFG rescale"
    what = "Auto" if params.prediction == "Auto" else params.prediction
    spacing = {"Trailing": "trailing", "Auto": "spacing per sampler"}.get(params.spacing, "Schedule type")
    return " · ".join([what, spacing, phi])


def build(
    script: Any,
    is_img2img: bool,
    status_fn: Callable[..., str | Status],
    defaults: vp.VPredParams | None = None,
    preview_fn: Callable[..., str] | None = None,
) -> list[Any]:
    """Create the panel; returns the input components in :data:`lib_vpred.params.PARAMS` order.

    Layout: a closed accordion whose header summarises what the next generation will do; inside it an Enable checkbox
    (the first input, API position 0), the status line, the other controls and the schedule preview. Collapsing the
    accordion only hides it: it never turns the extension off.

    ``defaults`` (from Settings) are the controls' initial values; the API uses them for calls without our args.
    ``status_fn(*control_values[, sampler_name=<the tab's sampler>]) -> Status | str`` is the status line; ``preview_fn(control_values, webui_values,
    is_img2img) -> html`` renders the schedule preview (default: :func:`webui_preview_html`). Both run on page load and
    when the loaded checkpoint changes (``javascript/vpred-panel.js`` clicks Refresh) and on every relevant change.
    """
    table = vp.PARAMS_BY_NAME
    defaults = defaults or vp.defaults()
    preview_fn = preview_fn or webui_preview_html
    with gr.Accordion(
        panel_label(settings_summary(defaults)), open=False, elem_id=script.elem_id("panel")
    ) as accordion:
        with gr.Row(elem_classes="vpred-status-row"):
            enabled = gr.Checkbox(
                value=defaults.enabled,
                label=table["enabled"].label,
                elem_id=script.elem_id("enabled"),
                scale=0,
                min_width=100,
            )
            status = gr.HTML(status_html(STATUS_PLACEHOLDER), elem_id=script.elem_id("status"))
            refresh = gr.Button("Refresh", elem_id=script.elem_id("refresh"), size="sm", scale=0, min_width=80)
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
        accordion=accordion,
    )

    outputs = [status, preview, accordion]
    refresh.click(fn=panel.update, inputs=[*controls, webui_state], outputs=outputs, show_progress=False)
    for control in controls:
        control.change(fn=panel.update, inputs=[*controls, webui_state], outputs=outputs, show_progress=False)

    script.infotext_fields = [
        (component, InfotextField(p.infotext_key, p.name, getattr(defaults, p.name)))
        for component, p in zip(controls, vp.PARAMS, strict=True)
    ]
    script.paste_field_names = [p.infotext_key for p in vp.PARAMS if p.infotext_key]
    script.vpred_status = status
    script.vpred_preview = preview
    script.vpred_controls = controls
    script.vpred_accordion = accordion
    links(script).attach(panel)
    return controls


# --- the preview's link to the WebUI's own components -----------------------------------------------------------------


def _takes(fn: Callable[..., Any], name: str) -> bool:
    """Whether a status function takes keyword ``name``: the tab's sampler (``sampler_name=``) and whether the tab is
    img2img (``img2img=``: Auto spacing gives its passes trailing), so that its line is true for that tab."""
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


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
    #: The accordion whose header shows the summary (None: no header to update).
    accordion: Any = None
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

    def render(self, control_values: Sequence[Any], state: dict[str, Any] | None) -> tuple[str, str, Any]:
        """(status html, preview html, accordion update); never raises."""
        summary = ""
        webui = self.webui_values(state)
        try:
            kwargs: dict[str, Any] = {}
            if _takes(self.status_fn, "sampler_name"):
                kwargs["sampler_name"] = webui.get("sampler")
            if _takes(self.status_fn, "img2img"):
                kwargs["img2img"] = self.is_img2img
            found = self.status_fn(*control_values, **kwargs)
            if not isinstance(found, Status):
                found = Status(str(found))
            status = status_html(found.line, found.hover)
            summary = found.summary
        except Exception as e:  # the panel must keep working whatever the model or the settings are
            logger.exception("[VPred] status line failed")
            status = status_html(f"status unavailable: {e}")
        if not summary:
            try:
                summary = settings_summary(vp.from_args(list(control_values)))
            except vp.ParamError:
                summary = "invalid setting"
        try:
            preview = self.preview_fn(list(control_values), webui, self.is_img2img)
        except Exception as e:
            logger.exception("[VPred] schedule preview failed")
            preview = preview_message(f"preview unavailable: {e}")
        return status, preview, gr.update(label=panel_label(summary))

    def update(self, *values: Any) -> tuple[str, str, Any]:
        """Refresh / our own controls: ``(*control_values, state)``."""
        *control_values, state = values
        return self.render(control_values, state)

    def listener(self, key: str) -> Callable[..., tuple[Any, ...]]:
        """The ``.change`` function of one WebUI component: ``(value, state, *control_values)``."""

        def changed(value: Any, state: dict[str, Any] | None, *control_values: Any) -> tuple[Any, ...]:
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
            outputs=[self.state, self.status, self.preview, self.accordion],
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


def timestep_sampler_calls(
    kind: str, steps: int, *, trailing: bool, discard: bool, denoise: float | None, fixed: bool
) -> tuple[list[int], int]:
    """(timesteps of the model calls, descending; virtual steps) of a timestep sampler's pass, as the WebUI's
    ``CompVisSampler`` runs it (v1.10.1 ``sd_samplers_timesteps``), or as :mod:`lib_vpred.webui.timestep_glue` does
    with trailing spacing. PLMS's first step calls the model a second time; UniPC spaces its own times uniformly from
    t = 999 and uses only the list's length."""
    from lib_vpred import timestep

    virtual, t_enc = steps, None
    if denoise is not None:
        virtual, t_enc = pv.img2img_steps(steps, denoise, fixed=fixed)
        if virtual < 1:
            return [], 0
    if trailing:
        grid = timestep.trailing_timesteps(virtual, kind)
        loop = grid if t_enc is None else timestep.img2img_schedule(grid, kind, t_enc)
    else:
        n = virtual + (1 if discard else 0)
        grid = torch.clamp(torch.arange(0, 1000, 1000 // n) + 1, 0, 999)
        loop = grid if t_enc is None else grid[:t_enc]
    values = [int(t) for t in loop.tolist()]
    if kind == timestep.UNIPC:
        if trailing:
            return sorted(values, reverse=True), virtual
        start = 999 if t_enc is None else values[-1] if values else 0
        count = len(values)
        return [round(start * (count - i) / count) for i in range(count)], virtual
    return sorted(values[1:], reverse=True), virtual


def _stock_table_from_alphas(sd_model: Any) -> torch.Tensor | None:
    alphas = getattr(sd_model, "alphas_cumprod", None)
    if alphas is None:
        return None
    return schedule.sigmas_from_alphas_cumprod(alphas.detach().to("cpu", torch.float32)).float()


def render_pass(
    spec: PassSpec,
    params: vp.VPredParams,
    facts: Any,
    sd_model: Any,
    opts: Any,
    sd_schedulers: Any,
    sd_samplers: Any,
    ztsnr_table: Callable[[Any], torch.Tensor],
    stock_table: Callable[[Any], torch.Tensor | None] | None = None,
) -> str:
    """The preview of one pass, as the WebUI's ``KDiffusionSampler.get_sigmas`` will build it."""
    config = _sampler_config(sd_samplers, spec.sampler)
    name = getattr(config, "name", None) or spec.sampler or "?"
    family = sampler_family_by_name(name)
    title = f"{spec.title}, {name}"
    options = getattr(config, "options", None) or {}
    discards = bool(
        options.get("discard_next_to_last_sigma", False) or getattr(opts, "always_discard_next_to_last_sigma", False)
    )
    stock_table = stock_table or _stock_table_from_alphas
    if family == TIMESTEP:
        return render_timestep_pass(spec, name, title, params, facts, sd_model, discards, ztsnr_table, stock_table)
    if family != KDIFFUSION:
        return preview_message(f"{title}: runs unchanged (VPred applies to k-diffusion and timestep samplers)")
    label = spec.scheduler or "Automatic"
    scheduler_name = options.get("scheduler") if label == "Automatic" else label
    scheduler = sd_schedulers.schedulers_map.get(scheduler_name) if scheduler_name else None
    shown = scheduler.label if scheduler is not None else None
    plan = decide(
        params,
        facts,
        SamplerFacts(
            name=name,
            family=family,
            discards_penultimate_sigma=discards,
            scheduler=shown,
            partial_denoise=spec.denoise is not None,
        ),
    )
    stock = stock_table(sd_model)
    if stock is None:
        return preview_message(f"{title}: the model has no noise schedule to preview")
    table = ztsnr_table(sd_model) if plan.active and plan.install_ztsnr_table else stock
    ours = plan.spacing if plan.active and plan.overrides_schedule else None
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
    if ours:
        how = f"{ours} (VPred)"
        if label not in ("Automatic", "Trailing"):
            how += f", replacing the selected Schedule type {label} (set Timestep spacing to Schedule type to use it)"
    else:
        how = f"schedule type {shown}" if shown else "sampler default (uniform)"
    table_kind = "ZTSNR" if (plan.active and plan.ztsnr) or facts.table_is_ztsnr else "stock"
    result = pv.build_preview(
        table,
        spec.steps,
        spacing=ours,
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
        sampler_name=name,
    )
    return _pass_html(title, how, table_kind, plan, result)


def _pass_html(title: str, how: str, table_kind: str, plan: Any, result: pv.Preview) -> str:
    """One pass: its head line, the table and the warnings (the schedule's own, then the plan's other ones, each
    said once; the plan's schedule-type warning is the same rule as the schedule's and is left out when it warned)."""
    head = f"{title}, {how}, {table_kind} sigmas"
    if not plan.active:
        head += f" (VPred: {plan.inactive_reason or 'not applied'})"
    extra = [w for w in plan.warnings if not (result.warnings and w.startswith("schedule type "))]
    result = dataclasses.replace(result, warnings=(*result.warnings, *extra))
    return f"<div class='vpred-preview-head'>{html.escape(head)}</div>{result.html()}"


def render_timestep_pass(
    spec: PassSpec,
    name: str,
    title: str,
    params: vp.VPredParams,
    facts: Any,
    sd_model: Any,
    discards: bool,
    ztsnr_table: Callable[[Any], torch.Tensor],
    stock_table: Callable[[Any], torch.Tensor | None] | None = None,
) -> str:
    """The preview of a DDIM / PLMS / UniPC pass: the timesteps of its model calls."""
    from lib_vpred import timestep

    stock_table = stock_table or _stock_table_from_alphas
    kind = timestep.kind_of(name)
    plan = decide(params, facts, SamplerFacts(name=name, family=TIMESTEP, discards_penultimate_sigma=discards))
    stock = stock_table(sd_model)
    if kind is None or stock is None:
        return preview_message(f"{title}: no schedule to preview")
    table = ztsnr_table(sd_model) if plan.active and plan.install_ztsnr_table else stock
    trailing = plan.active and plan.trailing
    calls, virtual = timestep_sampler_calls(
        kind,
        spec.steps,
        trailing=trailing,
        discard=discards and not trailing,
        denoise=spec.denoise,
        fixed=spec.fixed_steps,
    )
    result = pv.preview_from_timesteps(table, calls, virtual_steps=virtual, denoising_strength=spec.denoise)
    how = "trailing (VPred)" if trailing else f"{name}'s own spacing"
    if kind == timestep.PLMS and calls:
        how += f", {len(calls) + 1} model calls (its first step calls the model twice)"
    table_kind = "ZTSNR" if (plan.active and plan.ztsnr) or facts.table_is_ztsnr else "stock"
    return _pass_html(title, how, table_kind, plan, result)


def webui_preview_html(
    control_values: Sequence[Any], webui: dict[str, Any], is_img2img: bool, glue: Any = None
) -> str:
    """The panel's schedule preview for the loaded checkpoint (reads ``modules.shared`` lazily; never raises).

    ``glue`` is the host adapter (facts and sigma tables): :mod:`lib_vpred.webui.hooks` (A1111) by default."""
    try:
        from modules import sd_samplers, sd_schedulers, shared

        if glue is None:
            from lib_vpred.webui import hooks as glue
    except Exception:
        return preview_message("schedule preview: only available inside the WebUI")
    try:
        params = vp.from_args(list(control_values))
    except vp.ParamError as e:
        return preview_message(f"invalid setting: {e}")
    sd_model = shared.sd_model
    if sd_model is None:
        return preview_message("no checkpoint loaded")
    facts = glue.model_facts(sd_model, shared.opts)
    cache: dict[str, torch.Tensor] = {}

    def ztsnr_table(model: Any) -> torch.Tensor:
        if "t" not in cache:
            cache["t"] = glue.ztsnr_sigma_table(model, torch.device("cpu"))
        return cache["t"]

    parts = [
        render_pass(
            spec, params, facts, sd_model, shared.opts, sd_schedulers, sd_samplers, ztsnr_table, glue.stock_sigma_table
        )
        for spec in passes_for(webui, is_img2img, shared.opts)
    ]
    return "<div class='vpred-preview'>" + "".join(parts) + "</div>"
