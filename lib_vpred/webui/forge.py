"""Forge glue (Stable Diffusion WebUI Forge, "Forge2" back end, dfdcbab): the same plans as on A1111, applied where
Forge keeps things.

- The sigma table is the shared predictor's (``sd_model.forge_objects.unet.model.predictor``: ``sigmas`` /
  ``log_sigmas``; the k-diffusion wrapper ``ForgeScheduleLinker`` only reads it, and the UNet's timestep is
  ``predictor.timestep(sigma)``). It is the one thing changed outside the pass's own objects, so it is changed only for
  the duration of the sampler's ``sample`` / ``sample_img2img`` call (instance wrappers on the pass's sampler) and put
  back in ``finally``: an exception or an interrupt leaves the stock table. Forge's own ZTSNR (its "Zero Terminal SNR"
  noise schedule or a ``ztsnr`` key) swaps the same table around ``p.sample``; then the table is already ZTSNR when
  the plan is made and ours is not installed again.
- Trailing spacing: ``p.sampler_noise_scheduler_override`` as on A1111 (Forge's ``get_sigmas`` honours it).
- CFG rescale: a ``sampler_post_cfg_function`` on a **clone** of the pass's unet patcher (Forge resets
  ``forge_objects`` before every pass; the clone deep-copies ``model_options``, so the shared patcher and other
  extensions' CFG functions are untouched and compose). Forge calls ``process_before_every_sampling`` twice for the
  hires pass; everything here is idempotent.
- DDIM / PLMS / UniPC: the timestep loop in v form (:mod:`lib_vpred.timestep`, as on A1111), with Forge's CFG denoiser
  asked for the denoised prediction in k-diffusion form (``classic_ddim_eps_estimation`` off for this sampler) at
  ``sigma_t = sqrt((1 - abar_t) / abar_t)``, so nothing is converted through eps where abar ~ 0 (paper Sec. 6).

An eps checkpoint (inactive plan) runs Forge's own code, bit for bit.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import types
from typing import Any

import torch

from lib_vpred import guidance, sampling, schedule, timestep
from lib_vpred.params import VPredParams
from lib_vpred.plan import KDIFFUSION, TIMESTEP, ModelFacts, Plan
from lib_vpred.webui import common, timestep_glue
from lib_vpred.webui.common import sampler_facts  # noqa: F401  (the adapter's interface)

logger = logging.getLogger("vpred")

ATTR_STATE = "_vpred_forge_pass"  # on the pass's sampler: its ForgePass (installed once)
ATTR_EULER_FIRST = "_vpred_euler_first_step"  # on the sampler: its func already takes an Euler first step

#: ``backend.modules.k_prediction`` names (AbstractPrediction.prediction_type) -> the extension's names.
FORGE_PREDICTIONS = {"v_prediction": "v", "epsilon": "eps"}
#: Forge's "Noise schedule for sampling" value that makes it swap in its own ZTSNR table (modules/shared_options.py).
FORGE_ZTSNR_OPTION = "Zero Terminal SNR"


# --- facts ------------------------------------------------------------------------------------------------------------


def predictor_of(sd_model: Any) -> Any:
    """The loaded model's k-diffusion predictor (the sigma table and the v/eps conversion), or None."""
    unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    return getattr(getattr(unet, "model", None), "predictor", None)


def forge_ztsnr(sd_model: Any, opts: Any) -> bool:
    """Forge will swap in its own ZTSNR table around sampling (``processing.py``): its option, or a ``ztsnr`` key."""
    by_key = bool(getattr(getattr(sd_model, "model_config", None), "ztsnr", False))
    return by_key or getattr(opts, "sd_noise_schedule", "Default") == FORGE_ZTSNR_OPTION


def _unsupported(sd_model: Any, predictor: Any) -> str | None:
    if getattr(sd_model, "is_sd3", False) or predictor is None:
        return "this model type has no discrete noise schedule (flow matching or unknown): not applicable"
    kind = getattr(predictor, "prediction_type", None)
    if kind not in FORGE_PREDICTIONS:
        return f"Forge samples it as '{kind}' (EDM or flow): not applicable"
    sigmas = getattr(predictor, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.numel() != schedule.NUM_TRAIN_TIMESTEPS:
        return "the model's noise schedule is not a 1000-step discrete table: not applicable"
    return None


def _prediction_reason(filename: str | None, detection: Any) -> str:
    yaml = filename and os.path.splitext(filename)[0] + ".yaml"
    if yaml and os.path.isfile(yaml):
        return "YAML beside the checkpoint: parameterization v"
    for reason in getattr(detection, "reasons", ()) or ():
        if "v_pred" in reason:
            return reason
    return "Forge samples it as v"


def model_facts(sd_model: Any, opts: Any, sampler: Any = None) -> ModelFacts:
    """Facts about the loaded model, read from Forge's predictor. The table counts as ZTSNR when it is one now or
    when Forge will make it one around sampling (so the status line outside a generation says what will happen)."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None)
    predictor = predictor_of(sd_model)
    unsupported = _unsupported(sd_model, predictor)
    webui_prediction = FORGE_PREDICTIONS.get(getattr(predictor, "prediction_type", None), "eps")
    detection = common.detect_file(filename)
    builtin = forge_ztsnr(sd_model, opts)
    table_is_ztsnr = False
    if unsupported is None:
        table_is_ztsnr = builtin or float(predictor.sigmas[-1]) > schedule.ZERO_SNR_SIGMA_THRESHOLD
    return ModelFacts(
        name=getattr(info, "name", None) or (os.path.basename(filename) if filename else "unknown"),
        webui_prediction=webui_prediction,
        webui_prediction_reason=_prediction_reason(filename, detection) if webui_prediction == "v" else "",
        family=common.model_family(sd_model),
        table_is_ztsnr=table_is_ztsnr,
        builtin_ztsnr_option=builtin,
        unsupported_reason=unsupported,
        detection=detection,
        override=common.checkpoint_override(info, opts),
        assume_sd1_ztsnr=bool(getattr(opts, common.OPT_ASSUME_SD1_ZTSNR, True)),
    )


# --- tables -------------------------------------------------------------------------------------------------------


def stock_alphas(sd_model: Any) -> torch.Tensor:
    """The predictor's stock alpha-bar in float64 on the CPU (its ``alphas_cumprod`` buffer, which ``set_sigmas``
    never changes; from its sigmas when it has none)."""
    predictor = predictor_of(sd_model)
    alphas = getattr(predictor, "alphas_cumprod", None)
    if isinstance(alphas, torch.Tensor) and alphas.numel() == predictor.sigmas.numel():
        return alphas.detach().to("cpu", torch.float64)
    return schedule.alphas_cumprod_from_sigmas(predictor.sigmas.detach().to("cpu", torch.float64))


def ztsnr_alphas(sd_model: Any) -> torch.Tensor:
    """The ZTSNR alpha-bar (Algorithm 1, finite last entry) of the model's stock schedule, float64 on the CPU."""
    return schedule.ztsnr_alphas_cumprod(stock_alphas(sd_model), dtype=torch.float64)


def ztsnr_sigma_table(sd_model: Any, device: torch.device) -> torch.Tensor:
    """The ZTSNR sigma table (ascending, float32 on ``device``), as the predictor stores sigmas."""
    return schedule.sigmas_from_alphas_cumprod(ztsnr_alphas(sd_model)).to(device=device, dtype=torch.float32)


def stock_sigma_table(sd_model: Any) -> torch.Tensor | None:
    """The predictor's current sigma table (float32, CPU) for the schedule preview, or None."""
    predictor = predictor_of(sd_model)
    sigmas = getattr(predictor, "sigmas", None)
    return sigmas.detach().to("cpu", torch.float32) if isinstance(sigmas, torch.Tensor) else None


# --- the pass scope -----------------------------------------------------------------------------------------------


class ForgePass:
    """What one sampling pass installs on the shared predictor (and, for timestep samplers, on the model), only while
    the pass's sampler samples."""

    def __init__(self, plan: Plan, sd_model: Any, sigmas: torch.Tensor | None, kind: str | None) -> None:
        self.plan = plan
        self.sd_model = sd_model
        self.predictor = predictor_of(sd_model)
        self.sigmas = sigmas  # ZTSNR table to install, or None
        self.prediction_type = (
            {"v": "v_prediction", "eps": "epsilon"}[plan.override_prediction] if plan.override_prediction else None
        )
        # timestep samplers (``timestep_glue`` reads these): the model whose ``alphas_cumprod`` the loop uses
        self.kind = kind
        self.model = sd_model
        self.img2img = False
        self.grid: torch.Tensor | None = None
        self.v_path = False
        self.predict_v: Any = None
        self.uncond_v: Any = None

    def __enter__(self) -> ForgePass:
        predictor = self.predictor
        self._saved = (predictor.sigmas, predictor.log_sigmas, predictor.prediction_type)
        self._saved_alphas = getattr(self.sd_model, "alphas_cumprod", None)
        if self.sigmas is not None:
            predictor.set_sigmas(self.sigmas.to(predictor.sigmas.device))
        if self.prediction_type is not None:
            predictor.prediction_type = self.prediction_type
        if self.kind is not None:
            # Forge's timestep samplers read the model's alphas_cumprod (img2img noising, DDIM coefficients)
            self.sd_model.alphas_cumprod = schedule.alphas_cumprod_from_sigmas(predictor.sigmas.to(torch.float64)).to(
                predictor.sigmas.device, torch.float32
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        predictor = self.predictor
        sigmas, log_sigmas, prediction_type = self._saved
        predictor.register_buffer("sigmas", sigmas)
        predictor.register_buffer("log_sigmas", log_sigmas)
        predictor.prediction_type = prediction_type
        if self.kind is not None:
            self.sd_model.alphas_cumprod = self._saved_alphas
        self.img2img = False


def _scoped(sampler: Any, original: Any, img2img: bool, *args: Any, **kwargs: Any) -> Any:
    state: ForgePass = getattr(sampler, ATTR_STATE)
    with state:
        state.img2img = img2img
        return original(*args, **kwargs)


# --- CFG rescale --------------------------------------------------------------------------------------------------


class VSpaceCfgRescale:
    """A Forge ``sampler_post_cfg_function``: CFG rescale (Algorithm 2) in v space on the guided denoised prediction.

    The positive prediction is what Forge's CFG gives at scale 1 (``cond_denoised`` is already the weighted mean of
    the AND sub-prompts; ``edit_strength`` is their weight sum). With the CFG-1 shortcut (no uncond) there is nothing
    to rescale."""

    def __init__(self, phi: float) -> None:
        self.phi = float(phi)

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        denoised = args["denoised"]
        cond, uncond = args.get("cond_denoised"), args.get("uncond_denoised")
        if cond is None or uncond is None or self.phi <= 0:
            return denoised
        weights = sum(float(item.get("strength", 1.0)) for item in (args.get("cond") or ()))
        positive = cond if (weights == 0 or math.isclose(weights, 1.0)) else uncond + (cond - uncond) * weights
        return guidance.rescale_denoised(args["input"], args["sigma"], positive, denoised, self.phi)


def install_cfg_rescale(sd_model: Any, phi: float) -> None:
    """Put :class:`VSpaceCfgRescale` on a clone of this pass's unet patcher (once per pass)."""
    unet = sd_model.forge_objects.unet
    if any(isinstance(fn, VSpaceCfgRescale) for fn in unet.model_options.get("sampler_post_cfg_function", [])):
        return
    unet = unet.clone()
    unet.set_model_sampler_post_cfg_function(VSpaceCfgRescale(phi))
    sd_model.forge_objects.unet = unet


# --- timestep samplers ----------------------------------------------------------------------------------------------


def predict_v(model: Any, x: torch.Tensor, t: Any, abar: float, extra_args: dict[str, Any]) -> torch.Tensor:
    """v at timestep ``t`` from Forge's CFG denoiser asked in k-diffusion form: ``x0 = D(x / sqrt(abar), sigma_t)``,
    ``v = (sqrt(abar) x - x0) / sqrt(1 - abar)`` (Eq. 19 solved for v; never divides by sqrt(abar))."""
    sigma = math.sqrt((1.0 - abar) / abar)
    s_in = x.new_ones(x.shape[0], dtype=torch.float32) * sigma
    x0 = model(x * (1.0 / math.sqrt(abar)), s_in, **extra_args)
    v = (math.sqrt(abar) * x.to(torch.float64) - x0.to(torch.float64)) / math.sqrt(1.0 - abar)
    return v.to(x.dtype)


def uncond_v(model: Any, x: torch.Tensor, abar: float) -> torch.Tensor:
    """DDIM CFG++'s direction: the unconditional prediction as v, from Forge's ``last_noise_uncond`` (its eps in
    k-diffusion form, ``(x_ve - D_uncond) / sigma``)."""
    sigma = math.sqrt((1.0 - abar) / abar)
    x_ve = x.to(torch.float64) / math.sqrt(abar)
    x0 = x_ve - sigma * model.last_noise_uncond.to(torch.float64)
    return ((math.sqrt(abar) * x.to(torch.float64) - x0) / math.sqrt(1.0 - abar)).to(x.dtype)


def _install_timestep(p: Any, sampler: Any, state: ForgePass, plan: Plan) -> None:
    cfg = sampler.model_wrap_cfg
    setattr(sampler, timestep_glue.ATTR_STATE, state)  # the shared timestep helpers find their state there
    v_path = plan.prediction == "v"
    if v_path:
        cfg.classic_ddim_eps_estimation = False  # this sampler's denoiser answers in k-diffusion form
        state.v_path = True
        state.predict_v = predict_v
        state.uncond_v = uncond_v
    if plan.trailing:
        sampler.get_timesteps = types.MethodType(timestep_glue.get_trailing_timesteps, sampler)
    if plan.trailing or v_path:
        sampler.func = timestep_glue.make_func(sampler, state, sampler.func)


# --- entry points -----------------------------------------------------------------------------------------------------


def apply_plan(p: Any, plan: Plan, params: VPredParams, sd_model: Any, opts: Any) -> None:
    """Apply ``plan`` to this pass (``p.sampler``, a clone of the pass's unet patcher, ``p``). Idempotent: Forge calls
    it twice for the hires pass (after resetting ``forge_objects`` in between)."""
    common.restore_scheduler_override(p)
    if not plan.active:
        p.extra_generation_params.update(plan.infotext())
        return
    sampler = p.sampler
    family = common.sampler_family(sampler)
    if family not in (KDIFFUSION, TIMESTEP):
        return
    if getattr(sampler, ATTR_STATE, None) is None:
        sigmas = ztsnr_sigma_table(sd_model, torch.device("cpu")) if plan.install_ztsnr_table else None
        kind = None
        if family == TIMESTEP:
            config = getattr(sampler, "config", None)
            kind = timestep.kind_of(getattr(config, "name", None)) or timestep.kind_of(getattr(sampler, "func", None))
            if kind is None:
                logger.warning("timestep sampler %r not recognised: left unchanged", getattr(config, "name", sampler))
                return
        state = ForgePass(plan, sd_model, sigmas, kind)
        setattr(sampler, ATTR_STATE, state)
        # the bound methods as they are now (another extension may have wrapped them already)
        sampler.sample = functools.partial(_scoped, sampler, sampler.sample, False)
        sampler.sample_img2img = functools.partial(_scoped, sampler, sampler.sample_img2img, True)
        if family == TIMESTEP:
            _install_timestep(p, sampler, state, plan)
        elif plan.euler_first_step and not getattr(sampler, ATTR_EULER_FIRST, False):
            sampler.func = sampling.with_euler_first_step(sampler.func)
            setattr(sampler, ATTR_EULER_FIRST, True)
    if family == KDIFFUSION and plan.trailing:
        common.set_scheduler_override(p, common.TrailingSchedule(sampler))
    if plan.cfg_rescale > 0:
        install_cfg_rescale(p.sd_model, plan.cfg_rescale)
    p.extra_generation_params.update(plan.infotext())


def restore_p(p: Any) -> None:
    """Undo what :func:`apply_plan` left on ``p`` (called from ``postprocess``)."""
    common.restore_scheduler_override(p)


def register_callbacks(script_callbacks: Any, sd_model_getter: Any, opts: Any) -> None:
    """Forge needs no per-step callback: CFG rescale is a post-CFG function of the pass's patcher."""
