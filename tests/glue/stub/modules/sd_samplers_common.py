"""modules/sd_samplers_common.py (v1.10.1): Sampler base, img2img step arithmetic, refiner switch."""

import inspect
from collections import namedtuple

import torch
from modules import shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    pass


def setup_img2img_steps(p, steps=None):
    # sd_samplers_common.py:22-31
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def store_latent(decoded):
    pass


def apply_refiner(cfg_denoiser, sigma=None):
    # sd_samplers_common.py:158-202, reduced: switch by sigma, reload, update the inner model.
    p = cfg_denoiser.p
    info = getattr(p, "refiner_checkpoint_info", None)
    if info is None or shared.sd_model.sd_checkpoint_info == info:
        return False
    try:
        timestep = torch.argmin(torch.abs(cfg_denoiser.inner_model.sigmas.to(sigma.device) - torch.max(sigma)))
    except AttributeError:
        timestep = torch.max(sigma).to(dtype=int)
    completed_ratio = (999 - timestep) / 1000
    if p.refiner_switch_at is not None and completed_ratio < p.refiner_switch_at:
        return False
    from modules import sd_models

    p.extra_generation_params["Refiner"] = info.name
    sd_models.reload_model_weights(info=info)
    cfg_denoiser.update_inner_model()
    return True


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.eta = None
        self.config = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0
        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        state.sampling_step = d["i"]

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p):
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        extra_params_kwargs = {}
        if "eta" in inspect.signature(self.func).parameters:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            extra_params_kwargs["eta"] = self.eta
        return extra_params_kwargs

    def add_infotext(self, p):
        pass
