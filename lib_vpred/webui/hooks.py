"""A1111 WebUI adapter: gather facts about the loaded model and the pass's sampler, apply a :class:`Plan` per instance.

Every change lives on objects that die with the sampling pass (the sampler, its ``model_wrap`` and its
``model_wrap_cfg``) or on ``p`` (``sampler_noise_scheduler_override``, restored in ``postprocess`` and re-decided on
every pass). Nothing global is modified, so an exception, an interrupt or a model switch cannot leave the WebUI
changed, and an eps checkpoint (inactive plan) runs exactly the WebUI's own code.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

from lib_vpred import guidance, sampling, schedule
from lib_vpred.params import VPredParams
from lib_vpred.plan import KDIFFUSION, TIMESTEP, ModelFacts, Plan, decide
from lib_vpred.webui import common, timestep_glue

# Shared with the Forge adapter; re-exported here under their historical names.
from lib_vpred.webui.common import (  # noqa: F401
    OPT_ASSUME_SD1_ZTSNR,
    OPT_OVERRIDES,
    SpacingSchedule,
    checkpoint_override,
    detect_file,
    model_family,
    other_cfg_rescalers,
    sampler_facts,
    sampler_family,
    scheduler_label,
    ztsnr_alphas,
)

logger = logging.getLogger("vpred")

#: Attribute names used on per-pass objects. All start with ``_vpred``.
ATTR_PLAN = "_vpred_plan"  # on model_wrap_cfg: the Plan of this pass (also the callback's marker)
ATTR_PARAMS = "_vpred_params"  # on model_wrap_cfg: the VPredParams (to re-plan after a refiner switch)
ATTR_CFG_PARAMS = "_vpred_cfg_params"  # on model_wrap_cfg: this step's CFGDenoiserParams (noisy x and sigma)
ATTR_ORIGINAL_COMBINE = "_vpred_original_combine"  # on model_wrap_cfg: the combine_denoised we wrapped
ATTR_TABLE = "_vpred_ztsnr_table"  # on model_wrap: True once our ZTSNR sigma table is installed
ATTR_EULER_FIRST = "_vpred_euler_first_step"  # on the sampler: its func already takes an Euler first step


# --- facts ------------------------------------------------------------------------------------------------------------


def sampler_table_state(sampler: Any) -> tuple[bool, bool] | None:
    """(is ZTSNR, is finite) of the sigma table the pass's k-diffusion wrapper actually holds, or None without one.

    The img2img sampler is built in ``init()``, before the per-batch ``apply_alpha_schedule_override``, so its table
    can differ from the model's current ``alphas_cumprod``; and with "Downcast alphas_cumprod" the WebUI's fp16 ZTSNR
    table has sigma_max = inf.
    """
    sigmas = getattr(getattr(sampler, "model_wrap", None), "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.numel() == 0:
        return None
    last = float(sigmas[-1])
    finite = bool(torch.isfinite(sigmas).all())
    return (finite and last > schedule.ZERO_SNR_SIGMA_THRESHOLD), finite


def model_facts(sd_model: Any, opts: Any, sampler: Any = None) -> ModelFacts:
    """Facts about the loaded model (``shared.sd_model``) and the options that affect its schedule.

    With the pass's k-diffusion ``sampler``, whether the table is already ZTSNR is read from the table it will really
    use; a non-finite table (fp16 downcast + built-in ZTSNR) counts as not ZTSNR, so a finite one replaces it.
    """
    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None)
    webui_prediction = "v" if getattr(sd_model, "parameterization", "eps") == "v" else "eps"
    reason = ""
    if webui_prediction == "v":
        used_config = getattr(sd_model, "used_config", None) or ""
        near = filename and os.path.splitext(filename)[0] + ".yaml"
        if (
            used_config
            and near
            and os.path.normcase(os.path.abspath(used_config)) == os.path.normcase(os.path.abspath(near))
        ):
            reason = "YAML beside the checkpoint: parameterization v"
        elif used_config:
            reason = f"config {os.path.basename(used_config)}: parameterization v"
        else:
            reason = "WebUI samples it as v"
    alphas = getattr(sd_model, "alphas_cumprod", None)
    unsupported = None
    if getattr(sd_model, "is_sd3", False):
        unsupported = "SD3 is a flow-matching model: not applicable"
    elif alphas is None:
        unsupported = "model has no alphas_cumprod schedule: not applicable"
    return ModelFacts(
        name=getattr(info, "name", None) or (os.path.basename(filename) if filename else "unknown"),
        webui_prediction=webui_prediction,
        webui_prediction_reason=reason,
        family=model_family(sd_model),
        table_is_ztsnr=_table_is_ztsnr(alphas, sampler),
        builtin_ztsnr_option=getattr(opts, "sd_noise_schedule", "Default") == "Zero Terminal SNR",
        downcast_alphas_cumprod=bool(getattr(opts, "use_downcasted_alpha_bar", False)),
        is_edit_model=getattr(sd_model, "cond_stage_key", None) == "edit",
        unsupported_reason=unsupported,
        detection=detect_file(filename),
        override=checkpoint_override(info, opts),
        assume_sd1_ztsnr=bool(getattr(opts, OPT_ASSUME_SD1_ZTSNR, True)),
    )


def _table_is_ztsnr(alphas: Any, sampler: Any) -> bool:
    state = sampler_table_state(sampler) if sampler is not None and sampler_family(sampler) == KDIFFUSION else None
    if state is not None:
        return state[0]
    if alphas is None:
        return False
    a = alphas.detach().to(torch.float64)
    # an fp16 table rescaled to ZTSNR ends in a subnormal or 0: its sigma_max is not usable (sigma overflows fp16)
    return schedule.is_zero_terminal_snr(alphas) and not (alphas.dtype == torch.float16 and a[-1] < 1e-7)


# --- applying a plan --------------------------------------------------------------------------------------------------


def ztsnr_sigma_table(sd_model: Any, device: torch.device) -> torch.Tensor:
    """The model's ZTSNR k-diffusion sigma table (float32 on ``device``), from :func:`ztsnr_alphas`."""
    return schedule.sigmas_from_alphas_cumprod(ztsnr_alphas(sd_model)).to(device=device, dtype=torch.float32)


def stock_sigma_table(sd_model: Any) -> torch.Tensor | None:
    """The model's current sigma table (float32, CPU) from its ``alphas_cumprod``, for the schedule preview."""
    alphas = getattr(sd_model, "alphas_cumprod", None)
    if alphas is None:
        return None
    return schedule.sigmas_from_alphas_cumprod(alphas.detach().to("cpu", torch.float32)).float()


def install_sigma_table(model_wrap: Any, sigmas: torch.Tensor) -> None:
    """Replace a k-diffusion ``DiscreteSchedule``'s ``sigmas``/``log_sigmas`` buffers on this instance only."""
    model_wrap.sigmas = sigmas
    model_wrap.log_sigmas = sigmas.log()
    setattr(model_wrap, ATTR_TABLE, True)


def build_denoiser(prediction: str, sd_model: Any, opts: Any) -> Any:
    """A fresh k-diffusion wrapper of ``sd_model`` for ``prediction`` ("v" or "eps"), as the WebUI builds one."""
    import k_diffusion.external

    cls = k_diffusion.external.CompVisVDenoiser if prediction == "v" else k_diffusion.external.CompVisDenoiser
    return cls(sd_model, quantize=bool(getattr(opts, "enable_quantization", False)))


def combine_with_rescale(
    cfg_denoiser: Any, x_out: torch.Tensor, conds_list: Any, uncond: Any, cond_scale: float
) -> torch.Tensor:
    """The WebUI's ``combine_denoised``, then CFG rescale in v space with this step's noisy input and sigma."""
    original = getattr(cfg_denoiser, ATTR_ORIGINAL_COMBINE)
    denoised = original(x_out, conds_list, uncond, cond_scale)
    plan: Plan | None = getattr(cfg_denoiser, ATTR_PLAN, None)
    captured = getattr(cfg_denoiser, ATTR_CFG_PARAMS, None)
    if plan is None or plan.cfg_rescale <= 0 or captured is None:
        return denoised
    batch = uncond.shape[0]
    x, sigma = captured.x[-batch:], captured.sigma[-batch:]
    if x.shape != denoised.shape or sigma.shape[0] != batch:
        return denoised  # a layout this version does not know: leave plain CFG rather than guess
    positive = guidance.positive_prediction(x_out, conds_list, x_out[-batch:])
    return guidance.rescale_denoised(x, sigma, positive, denoised, plan.cfg_rescale)


def _install_cfg_rescale(cfg_denoiser: Any) -> None:
    if getattr(cfg_denoiser, ATTR_ORIGINAL_COMBINE, None) is None:
        setattr(cfg_denoiser, ATTR_ORIGINAL_COMBINE, cfg_denoiser.combine_denoised)
        cfg_denoiser.combine_denoised = functools.partial(combine_with_rescale, cfg_denoiser)


def _fit_denoiser(cfg_denoiser: Any, plan: Plan, sd_model: Any, opts: Any) -> Any:
    """Give a k-diffusion CFG denoiser what an active ``plan`` asks for: the v/eps wrapper override, the ZTSNR sigma
    table on its wrapper, and the CFG-rescale combine. Returns the wrapper (the sampler's ``model_wrap``)."""
    if plan.override_prediction is not None:
        cfg_denoiser.model_wrap = build_denoiser(plan.override_prediction, sd_model, opts)
    wrapper = cfg_denoiser.inner_model  # the existing wrapper, or the WebUI builds one for the loaded model
    if plan.install_ztsnr_table:
        install_sigma_table(wrapper, ztsnr_sigma_table(sd_model, wrapper.sigmas.device))
    if plan.cfg_rescale > 0:
        _install_cfg_rescale(cfg_denoiser)
    return wrapper


def apply_plan(p: Any, plan: Plan, params: VPredParams, sd_model: Any, opts: Any) -> None:
    """Apply ``plan`` to this pass's sampler (``p.sampler``) and ``p``. An inactive plan changes nothing but undoes
    our own scheduler override from an earlier pass of the same ``p`` (and, when a refiner is set, leaves a marker so
    that a refiner our plan applies to is still handled after the switch)."""
    common.restore_scheduler_override(p)
    if not plan.active:
        common.record_infotext(p, plan)
        sampler = getattr(p, "sampler", None)
        if (
            params.enabled
            and getattr(p, "refiner_checkpoint_info", None) is not None
            and sampler_family(sampler) == KDIFFUSION
        ):
            # Nothing changes numerically: on_cfg_denoiser only re-plans once the WebUI has swapped in the refiner.
            setattr(sampler.model_wrap_cfg, ATTR_PLAN, plan)
            setattr(sampler.model_wrap_cfg, ATTR_PARAMS, params)
        return
    sampler = p.sampler
    if sampler_family(sampler) == TIMESTEP:
        if timestep_glue.apply(p, plan, sd_model, opts):
            common.record_infotext(p, plan)
        return
    cfg = sampler.model_wrap_cfg
    sampler.model_wrap = _fit_denoiser(cfg, plan, sd_model, opts)
    common.set_spacing_override(p, sampler, plan)
    if plan.euler_first_step and not getattr(sampler, ATTR_EULER_FIRST, False):
        sampler.func = sampling.with_euler_first_step(sampler.func)  # this sampler object only; dies with the pass
        setattr(sampler, ATTR_EULER_FIRST, True)
    setattr(cfg, ATTR_PLAN, plan)
    setattr(cfg, ATTR_PARAMS, params)
    common.record_infotext(p, plan)


def restore_p(p: Any) -> None:
    """Undo what :func:`apply_plan` left on ``p`` (called from ``postprocess``)."""
    common.restore_scheduler_override(p)


def on_cfg_denoiser(params: Any, *, sd_model_getter: Any, opts: Any) -> None:
    """``script_callbacks.on_cfg_denoiser``: remember this step's inputs; re-plan after a refiner switch.

    Returns at once for denoisers we did not touch (eps checkpoints, disabled, other samplers).
    """
    denoiser = getattr(params, "denoiser", None)
    plan = getattr(denoiser, ATTR_PLAN, None)
    if plan is None:
        return
    setattr(denoiser, ATTR_CFG_PARAMS, params)
    if denoiser.model_wrap is None:
        # The refiner was just loaded (sd_samplers_common.apply_refiner -> update_inner_model): follow its own detection.
        sd_model = sd_model_getter()
        vparams = getattr(denoiser, ATTR_PARAMS)
        new_plan = decide(vparams, model_facts(sd_model, opts), sampler_facts(denoiser.sampler, opts))
        if new_plan.active:
            _fit_denoiser(denoiser, new_plan, sd_model, opts)
        setattr(denoiser, ATTR_PLAN, new_plan if new_plan.active else Plan(active=False))


def register_callbacks(script_callbacks: Any, sd_model_getter: Any, opts: Any) -> None:
    """A1111's per-step callback: :func:`on_cfg_denoiser` captures each step's noisy input and sigma."""
    script_callbacks.on_cfg_denoiser(
        functools.partial(on_cfg_denoiser, sd_model_getter=sd_model_getter, opts=opts), name="vpred_capture"
    )
