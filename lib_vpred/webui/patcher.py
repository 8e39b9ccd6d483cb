"""Glue shared by the hosts whose sampling runs through a model patcher (Forge's ``backend``, reForge's
``ldm_patched``): the same plans as on A1111, applied where those back ends keep things.

- The sigma table that the UNet's sigma -> t mapping reads is shared (Forge: ``forge_objects.unet.model.predictor``;
  reForge: ``forge_objects.unet.model.model_sampling``). It is the one thing changed outside the pass's own objects,
  so it is changed only for the duration of the pass's sampler call (instance wrappers of ``sample`` /
  ``sample_img2img``) and put back in ``finally``: an exception or an interrupt leaves the stock table. The hosts' own
  ZTSNR (their "Zero Terminal SNR" noise schedule or a ``ztsnr`` key) swaps the same table around ``p.sample``; then
  the table is already ZTSNR when the plan is made and ours is not installed again.
- Trailing spacing: ``p.sampler_noise_scheduler_override`` as on A1111 (both hosts' ``get_sigmas`` honour it).
- CFG rescale: a ``sampler_post_cfg_function`` on a **clone** of the pass's unet patcher (both hosts reset
  ``forge_objects`` before every pass; the clone copies ``model_options``, so the shared patcher and other extensions'
  CFG functions are untouched and compose). Both call ``process_before_every_sampling`` twice for the hires pass;
  everything here is idempotent.
- DDIM / PLMS / UniPC: the timestep loop in v form (:mod:`lib_vpred.timestep`, as on A1111), with the host's CFG
  denoiser asked for the denoised prediction in k-diffusion form (``classic_ddim_eps_estimation`` off for this
  sampler) at ``sigma_t = sqrt((1 - abar_t) / abar_t)``, so nothing is converted through eps where abar ~ 0 (paper
  Sec. 6).

An eps checkpoint (inactive plan) runs the host's own code, bit for bit. What differs between the hosts (where the
table and the prediction type live, how their own ZTSNR is switched on) is a :class:`PatcherHost` subclass in
:mod:`lib_vpred.webui.forge` and :mod:`lib_vpred.webui.reforge`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import types
from collections.abc import Callable
from typing import Any

import torch

from lib_vpred import guidance, sampling, schedule, timestep
from lib_vpred.params import VPredParams
from lib_vpred.plan import KDIFFUSION, TIMESTEP, ModelFacts, Plan
from lib_vpred.webui import common, timestep_glue

logger = logging.getLogger("vpred")

ATTR_STATE = "_vpred_patcher_pass"  # on the pass's sampler: its PassScope (installed once)
ATTR_EULER_FIRST = "_vpred_euler_first_step"  # on the sampler: its func already takes an Euler first step
#: The hosts' "Noise schedule for sampling" value that makes them swap in their own ZTSNR table.
HOST_ZTSNR_OPTION = "Zero Terminal SNR"


class PatcherHost:
    """Where a patcher-based host keeps the shared sigma table and the prediction type. Subclasses fill in the
    methods marked *host*; everything else (facts, the pass scope, CFG rescale, the timestep loops) is shared."""

    name = "patcher host"
    #: DDIM CFG++ gets the unconditional prediction it steps along (``last_noise_uncond`` as an eps estimate).
    supports_cfgpp = True
    #: :meth:`set_prediction` can make the model sample as the other prediction type (a Prediction type override).
    can_set_prediction = False
    #: The sampler's own k-diffusion wrapper holds a sigma table of its own (reForge: an A1111 ``CompVisDenoiser``
    #: for the schedule, while the UNet's t comes from the model sampling): it gets the ZTSNR table too.
    sampler_wrapper_has_table = False

    # --- host ---------------------------------------------------------------------------------------------------

    def table(self, sd_model: Any) -> Any:
        """*host*: the object with ``sigmas`` / ``log_sigmas`` / ``set_sigmas`` / ``timestep`` the UNet reads, or None."""
        raise NotImplementedError

    def prediction(self, table: Any) -> str | None:
        """*host*: "v" or "eps" as the host samples the model, None for anything else (EDM, flow)."""
        raise NotImplementedError

    def own_ztsnr(self, sd_model: Any, opts: Any) -> bool:
        """*host*: the host will swap in its own ZTSNR table around sampling."""
        raise NotImplementedError

    def stock_alphas(self, sd_model: Any) -> torch.Tensor:
        """*host*: the model's stock alpha-bar, float64 on the CPU."""
        raise NotImplementedError

    def set_prediction(self, table: Any, prediction: str) -> Callable[[], None] | None:
        """*host*: make the table's model sample as ``prediction``; returns the undo, or None when not possible."""
        return None

    # --- facts --------------------------------------------------------------------------------------------------

    def unsupported(self, sd_model: Any, table: Any) -> str | None:
        if getattr(sd_model, "is_sd3", False) or table is None:
            return "this model type has no discrete noise schedule (flow matching or unknown): not applicable"
        if self.prediction(table) is None:
            return f"{self.name} samples it with {type(table).__name__} (EDM or flow): not applicable"
        sigmas = getattr(table, "sigmas", None)
        if not isinstance(sigmas, torch.Tensor) or sigmas.numel() != schedule.NUM_TRAIN_TIMESTEPS:
            return "the model's noise schedule is not a 1000-step discrete table: not applicable"
        return None

    def prediction_reason(self, filename: str | None, detection: Any) -> str:
        yaml = filename and os.path.splitext(filename)[0] + ".yaml"
        if yaml and os.path.isfile(yaml):
            return "YAML beside the checkpoint: parameterization v"
        for reason in getattr(detection, "reasons", ()) or ():
            if "v_pred" in reason:
                return reason
        return f"{self.name} samples it as v"

    def model_facts(self, sd_model: Any, opts: Any, sampler: Any = None) -> ModelFacts:
        """Facts about the loaded model, read from the host's table. The table counts as ZTSNR when it is one now or
        when the host will make it one around sampling (so the status outside a generation says what will happen)."""
        info = getattr(sd_model, "sd_checkpoint_info", None)
        filename = getattr(info, "filename", None)
        table = self.table(sd_model)
        unsupported = self.unsupported(sd_model, table)
        webui_prediction = (self.prediction(table) if table is not None else None) or "eps"
        detection = common.detect_file(filename)
        builtin = self.own_ztsnr(sd_model, opts)
        table_is_ztsnr = False
        if unsupported is None:
            table_is_ztsnr = builtin or float(table.sigmas[-1]) > schedule.ZERO_SNR_SIGMA_THRESHOLD
        return ModelFacts(
            name=getattr(info, "name", None) or (os.path.basename(filename) if filename else "unknown"),
            webui_prediction=webui_prediction,
            webui_prediction_reason=self.prediction_reason(filename, detection) if webui_prediction == "v" else "",
            family=common.model_family(sd_model),
            table_is_ztsnr=table_is_ztsnr,
            builtin_ztsnr_option=builtin,
            is_edit_model=getattr(sd_model, "cond_stage_key", None) == "edit",
            unsupported_reason=unsupported,
            detection=detection,
            override=common.checkpoint_override(info, opts),
            assume_sd1_ztsnr=bool(getattr(opts, common.OPT_ASSUME_SD1_ZTSNR, True)),
        )

    def sampler_facts(self, sampler: Any, opts: Any, p: Any = None) -> Any:
        return common.sampler_facts(sampler, opts, p)

    # --- tables -------------------------------------------------------------------------------------------------

    def ztsnr_sigma_table(self, sd_model: Any, device: torch.device) -> torch.Tensor:
        """The ZTSNR sigma table (Algorithm 1, finite last entry; ascending, float32 on ``device``)."""
        abar = schedule.ztsnr_alphas_cumprod(self.stock_alphas(sd_model), dtype=torch.float64)
        return schedule.sigmas_from_alphas_cumprod(abar).to(device=device, dtype=torch.float32)

    def stock_sigma_table(self, sd_model: Any) -> torch.Tensor | None:
        """The host table's current sigmas (float32, CPU) for the schedule preview, or None."""
        sigmas = getattr(self.table(sd_model), "sigmas", None)
        return sigmas.detach().to("cpu", torch.float32) if isinstance(sigmas, torch.Tensor) else None

    # --- entry points -------------------------------------------------------------------------------------------

    def apply_plan(self, p: Any, plan: Plan, params: VPredParams, sd_model: Any, opts: Any) -> None:
        """Apply ``plan`` to this pass (``p.sampler``, a clone of the pass's unet patcher, ``p``). Idempotent: the
        hosts call it twice for the hires pass (after resetting ``forge_objects`` in between)."""
        common.restore_scheduler_override(p)
        if not plan.active:
            common.record_infotext(p, plan)
            return
        sampler = p.sampler
        family = common.sampler_family(sampler)
        if family not in (KDIFFUSION, TIMESTEP):
            return
        if getattr(sampler, ATTR_STATE, None) is None and not self._install(sampler, family, plan, sd_model):
            return
        if family == KDIFFUSION:
            common.set_spacing_override(p, sampler, plan)
        if plan.cfg_rescale > 0:
            install_cfg_rescale(p.sd_model, plan.cfg_rescale)
        common.record_infotext(p, plan)

    def _install(self, sampler: Any, family: str, plan: Plan, sd_model: Any) -> bool:
        """Wrap this pass's sampler (once); False when the plan cannot be applied here (nothing changed)."""
        table = self.table(sd_model)
        overridden = plan.override_prediction is not None and plan.override_prediction != self.prediction(table)
        if overridden and not self.can_set_prediction:
            logger.warning(
                "[VPred] %s cannot sample this checkpoint as %s from here (set it with a YAML beside the "
                "checkpoint): left unchanged",
                self.name,
                plan.override_prediction,
            )
            return False
        sigmas = self.ztsnr_sigma_table(sd_model, torch.device("cpu")) if plan.install_ztsnr_table else None
        kind = None
        if family == TIMESTEP:
            config = getattr(sampler, "config", None)
            kind = timestep.kind_of(getattr(config, "name", None)) or timestep.kind_of(getattr(sampler, "func", None))
            if kind is None or (kind == timestep.DDIM_CFGPP and not self.supports_cfgpp):
                logger.warning(
                    "[VPred] timestep sampler %r is not supported on %s: left unchanged",
                    getattr(config, "name", sampler),
                    self.name,
                )
                return False
        state = PassScope(self, plan, sd_model, sigmas, kind)
        setattr(sampler, ATTR_STATE, state)
        # the bound methods as they are now (another extension may have wrapped them already)
        sampler.sample = functools.partial(_scoped, sampler, sampler.sample, False)
        sampler.sample_img2img = functools.partial(_scoped, sampler, sampler.sample_img2img, True)
        if family == TIMESTEP:
            _install_timestep(sampler, state, plan)
            return True
        if sigmas is not None and self.sampler_wrapper_has_table:
            wrapper = sampler.model_wrap  # this pass's own k-diffusion wrapper: dies with the sampler
            table_here = sigmas.to(wrapper.sigmas.device)
            wrapper.sigmas = table_here
            wrapper.log_sigmas = table_here.log()
        if plan.euler_first_step and not getattr(sampler, ATTR_EULER_FIRST, False):
            sampler.func = sampling.with_euler_first_step(sampler.func)
            setattr(sampler, ATTR_EULER_FIRST, True)
        return True

    def restore_p(self, p: Any) -> None:
        """Undo what :meth:`apply_plan` left on ``p`` (called from ``postprocess``)."""
        common.restore_scheduler_override(p)

    def register_callbacks(self, script_callbacks: Any, sd_model_getter: Any, opts: Any) -> None:
        """No per-step callback is needed: CFG rescale is a post-CFG function of the pass's patcher."""


# --- the pass scope ---------------------------------------------------------------------------------------------------


class PassScope:
    """What one sampling pass installs on the shared table (and, for timestep samplers, on the model), only while the
    pass's sampler samples. Also the state the shared timestep helpers (``timestep_glue``) read."""

    def __init__(self, host: PatcherHost, plan: Plan, sd_model: Any, sigmas: torch.Tensor | None, kind: str | None):
        self.host = host
        self.plan = plan
        self.sd_model = sd_model
        self.table = host.table(sd_model)
        self.sigmas = sigmas  # ZTSNR table to install, or None
        # timestep samplers (``timestep_glue`` reads these): the model whose ``alphas_cumprod`` the loop uses
        self.kind = kind
        self.model = sd_model
        self.img2img = False
        self.grid: torch.Tensor | None = None
        self.v_path = False
        self.predict_v: Any = None
        self.uncond_v: Any = None
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> PassScope:
        table = self.table
        saved_sigmas, saved_log = table.sigmas, table.log_sigmas
        self._undo = [lambda: _put_table(table, saved_sigmas, saved_log)]
        if self.sigmas is not None:
            table.set_sigmas(self.sigmas.to(table.sigmas.device))
        if self.plan.override_prediction is not None:
            undo = self.host.set_prediction(table, self.plan.override_prediction)
            if undo is not None:
                self._undo.append(undo)
        if self.kind is not None:
            # the timestep samplers read the model's alphas_cumprod (img2img noising, DDIM coefficients)
            model = self.sd_model
            saved_alphas = getattr(model, "alphas_cumprod", None)
            self._undo.append(lambda: setattr(model, "alphas_cumprod", saved_alphas))
            model.alphas_cumprod = schedule.alphas_cumprod_from_sigmas(table.sigmas.to(torch.float64)).to(
                table.sigmas.device, torch.float32
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        self.img2img = False


def _put_table(table: Any, sigmas: torch.Tensor, log_sigmas: torch.Tensor) -> None:
    """Put the very tensors back (not a recomputed copy): the table is bit for bit what it was."""
    table.register_buffer("sigmas", sigmas)
    table.register_buffer("log_sigmas", log_sigmas)


def _scoped(sampler: Any, original: Any, img2img: bool, *args: Any, **kwargs: Any) -> Any:
    state: PassScope = getattr(sampler, ATTR_STATE)
    with state:
        state.img2img = img2img
        return original(*args, **kwargs)


# --- CFG rescale ------------------------------------------------------------------------------------------------------


class VSpaceCfgRescale:
    """A ``sampler_post_cfg_function``: CFG rescale (Algorithm 2) in v space on the guided denoised prediction.

    The positive prediction is what the host's CFG gives at scale 1: ``cond_denoised`` is the weighted mean of the AND
    sub-prompts and ``edit_strength`` (the weight sum) multiplies the guidance, so it is ``uncond + W (cond -
    uncond)``. With the CFG-1 shortcut (no uncond) there is nothing to rescale."""

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


# --- timestep samplers ------------------------------------------------------------------------------------------------


def predict_v(model: Any, x: torch.Tensor, t: Any, abar: float, extra_args: dict[str, Any]) -> torch.Tensor:
    """v at timestep ``t`` from the host's CFG denoiser asked in k-diffusion form: ``x0 = D(x / sqrt(abar), sigma_t)``,
    ``v = (sqrt(abar) x - x0) / sqrt(1 - abar)`` (Eq. 19 solved for v; never divides by sqrt(abar))."""
    sigma = math.sqrt((1.0 - abar) / abar)
    s_in = x.new_ones(x.shape[0], dtype=torch.float32) * sigma
    x0 = model(x * (1.0 / math.sqrt(abar)), s_in, **extra_args)
    v = (math.sqrt(abar) * x.to(torch.float64) - x0.to(torch.float64)) / math.sqrt(1.0 - abar)
    return v.to(x.dtype)


def uncond_v(model: Any, x: torch.Tensor, abar: float) -> torch.Tensor:
    """DDIM CFG++'s direction: the unconditional prediction as v, from the denoiser's ``last_noise_uncond`` (its eps
    in k-diffusion form, ``(x_ve - D_uncond) / sigma``)."""
    sigma = math.sqrt((1.0 - abar) / abar)
    x_ve = x.to(torch.float64) / math.sqrt(abar)
    x0 = x_ve - sigma * model.last_noise_uncond.to(torch.float64)
    return ((math.sqrt(abar) * x.to(torch.float64) - x0) / math.sqrt(1.0 - abar)).to(x.dtype)


def _install_timestep(sampler: Any, state: PassScope, plan: Plan) -> None:
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
