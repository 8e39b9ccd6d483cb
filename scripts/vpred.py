"""sd-webui-vpred: v-prediction + zero terminal SNR + trailing spacing + CFG rescale for the A1111 WebUI and Forge.

Thin entry point: the UI is built from ``lib_vpred.params``, decisions come from ``lib_vpred.plan.decide`` and are
applied per sampling pass by the host adapter (``lib_vpred.webui.hooks`` on A1111, ``lib_vpred.webui.forge`` on Forge)
to objects that die with the pass.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from typing import Any

from fastapi.exceptions import HTTPException
from modules import script_callbacks, scripts, sd_schedulers, shared

from lib_vpred import params as vp
from lib_vpred.plan import SamplerFacts, decide
from lib_vpred.webui import api, host_check, schedulers, settings, ui, xyz

logger = logging.getLogger("vpred")
LOG_PREFIX = "[VPred]"
#: Warnings already printed to the console, so each is said once per checkpoint (process lifetime, not request state).
_warned: set[tuple[str, str]] = set()
#: Decided once at import: on a host this version does not support the extension changes no generation.
HOST = host_check.detect_host()
if not HOST.supported:
    print(f"{LOG_PREFIX} {HOST.message()}")
#: The host adapter, the one seam between the shared code and a host's back end (``lib_vpred.webui.hooks`` for
#: A1111, ``lib_vpred.webui.forge`` for Forge): model_facts, sampler_facts, apply_plan, restore_p, the sigma tables.
GLUE = importlib.import_module(f"lib_vpred.webui.{HOST.adapter}") if HOST.supported else None


class VPredArgumentError(vp.ParamError, HTTPException):
    """Invalid script arguments. As an ``HTTPException`` with status 422 the WebUI's API answers 422 with this message
    (``api.py`` ``handle_exception`` reads ``status_code`` and ``detail``) and logs it without a traceback."""

    def __init__(self, error: vp.ParamError) -> None:
        vp.ParamError.__init__(self, error.field, str(error).split(": ", 1)[-1])
        message = str(error)
        HTTPException.__init__(self, status_code=422, detail=message)
        self.field = error.field
        self.log_line = f"{LOG_PREFIX} invalid alwayson_scripts args for '{VPredScript.TITLE.lower()}': {message}"

    def __str__(self) -> str:
        return str(self.detail)


def _fail_generation(error: VPredArgumentError, *args: Any, **kwargs: Any) -> Any:
    raise error


def _status_text(*values: Any, sampler_name: str | None = None, img2img: bool = False) -> ui.Status:
    """The panel's status line for the loaded checkpoint, the given control values and the tab's sampler (and whether
    the tab is img2img): one line in plain words (what the next generation does), reasons and warnings as its hover."""
    if not HOST.supported:
        return ui.Status(HOST.message(), summary="not supported here: changes nothing")
    try:
        current = vp.from_args(values)
    except vp.ParamError as e:
        return ui.Status(f"invalid setting: {e}", summary="invalid setting")
    sd_model = shared.sd_model
    if sd_model is None:
        return ui.Status("no checkpoint loaded", summary="no checkpoint loaded")
    facts = GLUE.model_facts(sd_model, shared.opts)
    sampler = SamplerFacts(
        name=sampler_name or "k-diffusion samplers",
        family=ui.sampler_family_by_name(sampler_name),
        partial_denoise=img2img,
    )
    plan = decide(current, facts, sampler)
    line = f"{facts.name}: {plan.status()}"
    if plan.warnings:
        line += f" (⚠ {len(plan.warnings)} warning{'s' if len(plan.warnings) != 1 else ''}: hover)"
    return ui.Status(line, plan.details(), plan.summary())


def _api_status() -> dict[str, Any]:
    if not HOST.supported:
        return {"host": HOST.name, "supported": False, "status": HOST.message()}
    sd_model = shared.sd_model
    if sd_model is None:
        return {"checkpoint": None, "status": "no checkpoint loaded"}
    facts = GLUE.model_facts(sd_model, shared.opts)
    detection = facts.detection
    return {
        "checkpoint": facts.name,
        "webui_prediction": facts.webui_prediction,
        "detection": dataclasses.asdict(detection) if detection is not None else None,
        "status": decide(vp.defaults(), facts, SamplerFacts()).status(),
        "details": decide(vp.defaults(), facts, SamplerFacts()).details(),
    }


def _api_loaded() -> dict[str, Any]:
    """What the page polls (``javascript/vpred-panel.js``) to notice a checkpoint change, however it was made."""
    info = getattr(shared.sd_model, "sd_checkpoint_info", None) if shared.sd_model is not None else None
    return {"checkpoint": getattr(info, "title", None) if info is not None else None}


#: ``process_before_every_sampling`` exists from WebUI 1.10.0 (commit 17e84615); on 1.9.x it is emulated.
_HAS_EVERY_SAMPLING_HOOK = hasattr(scripts.ScriptRunner, "process_before_every_sampling")


def _emulate_every_sampling_hook(script: Any, p: Any, args: tuple[Any, ...]) -> None:
    """WebUI < 1.10: run ``script.process_before_every_sampling`` for every sampler this ``p`` creates while its
    ``sample`` runs (txt2img first pass and hires pass), and for img2img's sampler (made in ``init``) before sampling."""
    from modules import processing, sd_samplers

    original_sample = p.sample

    def sample(*a: Any, **kw: Any) -> Any:
        original_create = sd_samplers.create_sampler

        def create_sampler(*ca: Any, **ckw: Any) -> Any:
            sampler = original_create(*ca, **ckw)
            p.sampler = sampler
            script.process_before_every_sampling(p, *args)
            return sampler

        if isinstance(p, processing.StableDiffusionProcessingImg2Img) and getattr(p, "sampler", None) is not None:
            script.process_before_every_sampling(p, *args)
        sd_samplers.create_sampler = create_sampler
        try:
            return original_sample(*a, **kw)
        finally:
            sd_samplers.create_sampler = original_create

    p.sample = sample


class VPredScript(scripts.Script):
    TITLE = "VPred"

    def title(self) -> str:
        return self.TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        if HOST.supported:
            preview_fn = functools.partial(ui.webui_preview_html, glue=GLUE)
        else:
            preview_fn = lambda *_: ui.preview_message(HOST.message())  # noqa: E731
        return ui.build(self, is_img2img, _status_text, settings.defaults(shared.opts), preview_fn)

    def after_component(self, component: Any, **kwargs: Any) -> None:
        # The schedule preview follows the tab's steps / sampler / schedule type / denoising strength components,
        # whether the WebUI creates them before or after our panel (lib_vpred.webui.ui.capture_component).
        ui.capture_component(self, component)

    def process(self, p: Any, *args: Any) -> None:
        if not HOST.supported:
            return
        # Start the job without our infotext keys, in a dict of this p's own: the XYZ script shallow-copies p, so
        # every cell shares one extra_generation_params and a key from an earlier cell would otherwise leak.
        # (Only when needed: otherwise the dict other scripts may hold a reference to stays the same object.)
        if vp.INFOTEXT_KEYS.intersection(p.extra_generation_params):
            p.extra_generation_params = {
                k: v for k, v in p.extra_generation_params.items() if k not in vp.INFOTEXT_KEYS
            }
        try:
            p._vpred_params = vp.from_args(args).replace(**xyz.overrides(p))
        except vp.ParamError as e:
            error = VPredArgumentError(e)
            p._vpred_params = None
            print(f"{error.log_line}; the generation is stopped before sampling.")
            # Script hooks' exceptions are only logged by the WebUI; failing the sampling call instead makes the
            # request fail cleanly (HTTP 422 with this message for the API) and leaves nothing behind.
            p.sample = functools.partial(_fail_generation, error)
            return
        if not _HAS_EVERY_SAMPLING_HOOK:
            _emulate_every_sampling_hook(self, p, args)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        current = getattr(p, "_vpred_params", None)
        if current is None:
            return
        sd_model = shared.sd_model
        plan = decide(
            current,
            GLUE.model_facts(sd_model, shared.opts, p.sampler),
            GLUE.sampler_facts(p.sampler, shared.opts, p),
        )
        GLUE.apply_plan(p, plan, current, sd_model, shared.opts)
        name = getattr(getattr(sd_model, "sd_checkpoint_info", None), "name", "?")
        for warning in plan.warnings:
            if (name, warning) not in _warned:
                _warned.add((name, warning))
                print(f"{LOG_PREFIX} {name}: {warning}")

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        if GLUE is not None:
            GLUE.restore_p(p)


script_callbacks.on_app_started(
    lambda _demo, app: api.register_routes(app, _api_status, _api_loaded), name="vpred_api"
)
script_callbacks.on_ui_settings(lambda: settings.register(shared.opts, shared.OptionInfo), name="vpred_settings")
if HOST.supported:
    GLUE.register_callbacks(script_callbacks, sd_model_getter=lambda: shared.sd_model, opts=shared.opts)
    script_callbacks.on_before_ui(lambda: xyz.register(scripts.scripts_data), name="vpred_xyz")
    # A "Trailing" Schedule type, usable without the panel; removed again when the scripts are unloaded (Reload UI).
    schedulers.register(sd_schedulers)
    script_callbacks.on_script_unloaded(lambda: schedulers.unregister(sd_schedulers), name="vpred_unload")
